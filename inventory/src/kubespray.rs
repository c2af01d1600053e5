//! Converts a Kubespray (Ansible YAML) inventory into a capstan inventory.
//!
//! Only what capstan models is carried over: hosts, their addresses, group membership as roles,
//! SSH user/port/key and a `bastion` group. Everything else is listed in the output's header so
//! nothing disappears silently.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::diagnostic::{Diagnostics, Sink};
use crate::model::Role;
use crate::values;
use crate::yaml::{self, Node, Pos};

/// Kubespray group names (current and legacy) and the capstan role each one grants.
const GROUP_ROLES: &[(&str, Role)] = &[
    ("kube_control_plane", Role::ControlPlane),
    ("kube-master", Role::ControlPlane),
    ("kube_master", Role::ControlPlane),
    ("etcd", Role::Etcd),
    ("kube_node", Role::Node),
    ("kube-node", Role::Node),
];

/// Host variables that are translated; any others are reported as ignored.
const USED_VARS: &[&str] = &[
    "ansible_host",
    "ansible_ssh_host",
    "access_ip",
    "ip",
    "ansible_user",
    "ansible_ssh_user",
    "ansible_port",
    "ansible_ssh_port",
    "ansible_ssh_private_key_file",
];

#[derive(Default)]
struct Inventory {
    /// Host names in order of first appearance, with where they first appeared.
    hosts: Vec<(String, Pos)>,
    vars: BTreeMap<String, BTreeMap<String, String>>,
    group_hosts: BTreeMap<String, BTreeSet<String>>,
    group_children: BTreeMap<String, BTreeSet<String>>,
    /// `all.vars`, which apply to every host without its own value.
    global_vars: BTreeMap<String, String>,
    ignored_vars: BTreeSet<String>,
}

struct ImportedHost {
    name: String,
    address: String,
    private_address: Option<String>,
    roles: BTreeSet<Role>,
    user: Option<String>,
    port: Option<String>,
    identity_file: Option<String>,
}

/// Reads a Kubespray `hosts.yaml` and returns an equivalent capstan inventory YAML text.
///
/// The cluster name is taken from the inventory's directory (`inventory/<name>/hosts.yaml`).
pub fn import_kubespray(text: &str, file_name: &str) -> Result<String, Diagnostics> {
    let mut sink = Sink::new(file_name);
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(error) => {
            sink.error(error.pos, format!("invalid YAML: {}", error.message));
            return sink.finish(None);
        }
    };
    let Some(all) = root
        .as_ref()
        .and_then(|root| root.as_map())
        .and_then(|entries| entries.iter().find(|(key, _)| key.as_str() == Some("all")))
        .map(|(_, value)| value)
    else {
        let pos = root.as_ref().map_or(Pos { line: 1, column: 1 }, |root| root.pos);
        sink.error(pos, "expected a Kubespray inventory: a mapping with an `all` group");
        return sink.finish(None);
    };

    let mut inventory = Inventory::default();
    walk_group(&mut sink, &mut inventory, "all", all);
    let imported = hosts(&mut sink, &inventory);
    if sink.has_errors() {
        return sink.finish(None);
    }
    let output = render(&inventory, &imported, file_name);
    // Should the importer ever emit something capstan rejects, the problems are reported against
    // the generated text so the cause is visible.
    imported_output_check(&output, file_name)?;
    Ok(output)
}

fn imported_output_check(output: &str, file_name: &str) -> Result<(), Diagnostics> {
    let generated = format!("{file_name} (converted)");
    crate::parse_str(output, &generated, Path::new("/")).map(|_| ())
}

fn walk_group(sink: &mut Sink, inventory: &mut Inventory, group: &str, node: &Node) {
    if node.is_null() {
        return;
    }
    let Some(entries) = node.as_map() else {
        sink.error(
            node.pos,
            format!(
                "group `{group}`: expected a mapping with `hosts`, `children` or `vars`, found {}",
                node.describe()
            ),
        );
        return;
    };
    for (key, value) in entries {
        match key.as_str() {
            Some("hosts") => walk_hosts(sink, inventory, group, value),
            Some("vars") if group == "all" => inventory.global_vars = scalar_map(sink, value, "vars"),
            Some("vars") => {
                inventory.ignored_vars.insert(format!("{group}.vars"));
            }
            Some("children") => {
                let Some(children) = value.as_map() else {
                    if !value.is_null() {
                        sink.error(
                            value.pos,
                            format!(
                                "`children` of `{group}`: expected a mapping of groups, found {}",
                                value.describe()
                            ),
                        );
                    }
                    continue;
                };
                for (child, child_node) in children {
                    let Some(child) = child.as_str() else {
                        sink.error(child.pos, format!("expected a group name, found {}", child.describe()));
                        continue;
                    };
                    inventory
                        .group_children
                        .entry(group.to_string())
                        .or_default()
                        .insert(child.to_string());
                    walk_group(sink, inventory, child, child_node);
                }
            }
            _ => sink.error(
                key.pos,
                format!(
                    "group `{group}`: unknown key {}; expected `hosts`, `children` or `vars`",
                    key.describe()
                ),
            ),
        }
    }
}

fn walk_hosts(sink: &mut Sink, inventory: &mut Inventory, group: &str, node: &Node) {
    if node.is_null() {
        return;
    }
    let Some(entries) = node.as_map() else {
        sink.error(
            node.pos,
            format!(
                "`hosts` of `{group}`: expected a mapping of host names, found {}",
                node.describe()
            ),
        );
        return;
    };
    for (key, vars) in entries {
        let Some(name) = key.as_str() else {
            sink.error(key.pos, format!("expected a host name, found {}", key.describe()));
            continue;
        };
        if !inventory.vars.contains_key(name) {
            inventory.hosts.push((name.to_string(), key.pos));
        }
        let vars = scalar_map(sink, vars, name);
        for var in vars.keys().filter(|var| !USED_VARS.contains(&var.as_str())) {
            inventory.ignored_vars.insert(var.clone());
        }
        inventory.vars.entry(name.to_string()).or_default().extend(vars);
        inventory
            .group_hosts
            .entry(group.to_string())
            .or_default()
            .insert(name.to_string());
    }
}

/// A mapping of scalar variables; nested values (lists, dicts) are not needed and are skipped.
fn scalar_map(sink: &mut Sink, node: &Node, owner: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    if node.is_null() {
        return vars;
    }
    let Some(entries) = node.as_map() else {
        sink.error(
            node.pos,
            format!("variables of `{owner}`: expected a mapping, found {}", node.describe()),
        );
        return vars;
    };
    for (key, value) in entries {
        if let (Some(key), Some(value)) = (key.as_str(), value.as_str()) {
            vars.insert(key.to_string(), value.to_string());
        }
    }
    vars
}

/// Hosts of `group` and of all groups nested under it.
fn members(inventory: &Inventory, group: &str, seen: &mut BTreeSet<String>) -> BTreeSet<String> {
    let mut found = inventory.group_hosts.get(group).cloned().unwrap_or_default();
    if seen.insert(group.to_string()) {
        for child in inventory.group_children.get(group).into_iter().flatten() {
            found.extend(members(inventory, child, seen));
        }
    }
    found
}

fn hosts(sink: &mut Sink, inventory: &Inventory) -> Vec<ImportedHost> {
    let mut imported = Vec::new();
    for (name, pos) in &inventory.hosts {
        let vars = &inventory.vars[name];
        let var = |keys: &[&str]| {
            keys.iter()
                .find_map(|key| vars.get(*key).or_else(|| inventory.global_vars.get(*key)))
                .cloned()
        };
        let roles: BTreeSet<Role> = GROUP_ROLES
            .iter()
            .filter(|(group, _)| members(inventory, group, &mut BTreeSet::new()).contains(name))
            .map(|(_, role)| *role)
            .collect();
        if let Err(message) = values::check_host_name(name) {
            sink.error(*pos, format!("host `{name}` cannot be imported: {message}"));
        }
        let address = var(&["ansible_host", "ansible_ssh_host", "access_ip", "ip"]).unwrap_or_else(|| name.clone());
        let private_address = vars.get("ip").filter(|ip| **ip != address).cloned();
        for candidate in std::iter::once(&address).chain(private_address.as_ref()) {
            if let Err(message) = values::check_address(candidate) {
                sink.error(*pos, format!("host `{name}`: {message}"));
            }
        }
        imported.push(ImportedHost {
            name: name.clone(),
            address,
            private_address,
            roles,
            user: var(&["ansible_user", "ansible_ssh_user"]),
            port: var(&["ansible_port", "ansible_ssh_port"]),
            identity_file: var(&["ansible_ssh_private_key_file"]),
        });
    }
    let etcd_members = imported.iter().filter(|host| host.roles.contains(&Role::Etcd)).count();
    if etcd_members == 0 {
        let pos = inventory
            .hosts
            .first()
            .map_or(Pos { line: 1, column: 1 }, |(_, pos)| *pos);
        sink.error(
            pos,
            "no host is in the `etcd` group: capstan needs at least one etcd member",
        );
    }
    imported
}

/// The value every host shares for a setting, if all hosts set it identically.
fn shared(hosts: &[&ImportedHost], get: fn(&ImportedHost) -> &Option<String>) -> Option<String> {
    let first = get(hosts.first()?).clone()?;
    hosts
        .iter()
        .all(|host| get(host).as_ref() == Some(&first))
        .then_some(first)
}

fn render(inventory: &Inventory, imported: &[ImportedHost], file_name: &str) -> String {
    let bastions = members(inventory, "bastion", &mut BTreeSet::new());
    let bastion = imported.iter().find(|host| bastions.contains(&host.name));
    let (kept, skipped): (Vec<&ImportedHost>, Vec<&ImportedHost>) = imported
        .iter()
        .filter(|host| !bastions.contains(&host.name))
        .partition(|host| !host.roles.is_empty());
    let user = shared(&kept, |host| &host.user);
    let port = shared(&kept, |host| &host.port);
    let identity_file = shared(&kept, |host| &host.identity_file);
    let etcd_members = kept.iter().filter(|host| host.roles.contains(&Role::Etcd)).count();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# capstan inventory imported from the Kubespray inventory {file_name}"
    );
    out.push_str(
        "# Groups became roles: kube_control_plane -> control_plane, etcd -> etcd, kube_node -> node.\n\
         # Review before use: the cluster name, SSH authentication and known_hosts policy.\n",
    );
    for host in &skipped {
        let _ = writeln!(
            out,
            "# Skipped host {}: it is in no group that maps to a capstan role.",
            host.name
        );
    }
    if !inventory.ignored_vars.is_empty() {
        let ignored: Vec<&str> = inventory.ignored_vars.iter().map(String::as_str).collect();
        let _ = writeln!(out, "# Not imported: {}.", ignored.join(", "));
    }
    let _ = writeln!(out, "\ncluster:\n  name: {}", quote(&cluster_name(file_name)));
    out.push_str("ssh:\n");
    if let Some(user) = &user {
        let _ = writeln!(out, "  user: {}", quote(user));
    }
    if let Some(port) = &port {
        let _ = writeln!(out, "  port: {port}");
    }
    match &identity_file {
        Some(file) if file.starts_with(['/', '~']) => {
            let _ = writeln!(out, "  identity_file: {}", quote(file));
        }
        Some(file) => {
            // Ansible resolves relative key paths against its working directory, capstan against the inventory.
            let _ = writeln!(
                out,
                "  identity_file: {}  # relative to this file's directory",
                quote(file)
            );
        }
        None if kept.iter().any(|host| host.identity_file.is_none()) => {
            out.push_str("  agent: true  # Kubespray named no key; capstan uses keys from ssh-agent\n");
        }
        None => {}
    }
    if let Some(bastion) = bastion {
        let _ = writeln!(out, "  bastion:\n    address: {}", quote(&bastion.address));
        if let Some(port) = &bastion.port {
            let _ = writeln!(out, "    port: {port}");
        }
        if let Some(user) = &bastion.user {
            let _ = writeln!(out, "    user: {}", quote(user));
        }
    }
    out.push_str("hosts:\n");
    for host in &kept {
        let _ = writeln!(
            out,
            "  - name: {}\n    address: {}",
            quote(&host.name),
            quote(&host.address)
        );
        if let Some(private) = &host.private_address {
            let _ = writeln!(out, "    private_address: {}", quote(private));
        }
        let roles: Vec<&str> = host.roles.iter().map(|role| role.as_str()).collect();
        let _ = writeln!(out, "    roles: [{}]", roles.join(", "));
        let mut overrides = Vec::new();
        if user.is_none() {
            overrides.extend(host.user.as_ref().map(|user| format!("user: {}", quote(user))));
        }
        if port.is_none() {
            overrides.extend(host.port.as_ref().map(|port| format!("port: {port}")));
        }
        if identity_file.is_none() {
            overrides.extend(
                host.identity_file
                    .as_ref()
                    .map(|file| format!("identity_file: {}", quote(file))),
            );
        }
        if !overrides.is_empty() {
            let _ = writeln!(out, "    ssh: {{{}}}", overrides.join(", "));
        }
    }
    if etcd_members % 2 == 0 {
        out.push_str(
            "etcd:\n  # The Kubespray inventory has an even number of etcd members, which tolerates no more\n  \
             # failures than one member fewer; kept as imported.\n  allow_even_members: true\n",
        );
    }
    out
}

/// `inventory/<name>/hosts.yaml` names the cluster `<name>`, made valid for capstan.
fn cluster_name(file_name: &str) -> String {
    let directory = Path::new(file_name)
        .parent()
        .and_then(|dir| dir.file_name())
        .map(|name| name.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name: String = directory
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').chars().take(63).collect();
    let name = name.trim_end_matches('-').to_string();
    if name.is_empty() {
        "kubespray".to_string()
    } else {
        name
    }
}

/// A YAML scalar that reads back as the same string.
fn quote(text: &str) -> String {
    let plain_safe = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "._/-~".contains(c))
        && !text.starts_with(['-', '~', '.'])
        && !yaml::is_null_literal(text)
        && text.parse::<f64>().is_err()
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off"
        );
    if plain_safe {
        text.to_string()
    } else {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

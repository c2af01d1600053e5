//! Converts a Kubespray (Ansible) inventory, in YAML or INI form, into a capstan inventory.
//!
//! Only what capstan models is carried over: hosts, their addresses, group membership as roles,
//! SSH user/port/key and a `bastion` group. Everything else is listed in the output's header so
//! nothing disappears silently. Both forms are read into the same [`Inventory`] and then mapped
//! the same way.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::diagnostic::{Diagnostics, Sink};
use crate::model::Role;
use crate::values::{self, show};
use crate::yaml::{self, Node, Pos};

/// Most hosts an imported inventory may define (after expanding INI ranges like `node[1:3]`).
pub const MAX_IMPORT_HOSTS: usize = 10_000;

/// The two ways Ansible inventories are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubesprayFormat {
    /// `hosts.yaml`: a mapping with an `all` group.
    Yaml,
    /// `inventory.ini`: `[group]` sections of host lines.
    Ini,
}

impl KubesprayFormat {
    /// Guesses the format from the file name (`.ini`, `.yaml`/`.yml`) or else the first line
    /// with content: `[group]` or a `host key=value` line means INI.
    pub fn detect(text: &str, file_name: &str) -> KubesprayFormat {
        let lower = file_name.to_ascii_lowercase();
        if lower.ends_with(".ini") || lower.ends_with(".cfg") {
            return KubesprayFormat::Ini;
        }
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            return KubesprayFormat::Yaml;
        }
        let first = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'));
        match first {
            Some(line) if section_header(line).is_some() => KubesprayFormat::Ini,
            Some(line) if !line.contains(':') && line.contains('=') => KubesprayFormat::Ini,
            _ => KubesprayFormat::Yaml,
        }
    }
}

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

impl Inventory {
    /// Records `name` as a host of `group`; false (with an error) past [`MAX_IMPORT_HOSTS`].
    fn add_host(&mut self, sink: &mut Sink, group: &str, name: &str, pos: Pos) -> bool {
        if !self.vars.contains_key(name) {
            if self.hosts.len() >= MAX_IMPORT_HOSTS {
                sink.error(
                    pos,
                    format!("the inventory defines more than {MAX_IMPORT_HOSTS} hosts (limit of the importer)"),
                );
                return false;
            }
            self.hosts.push((name.to_string(), pos));
            self.vars.insert(name.to_string(), BTreeMap::new());
        }
        self.group_hosts
            .entry(group.to_string())
            .or_default()
            .insert(name.to_string());
        true
    }

    /// Host variables; those capstan does not use are listed as not imported.
    fn set_host_vars(&mut self, name: &str, vars: BTreeMap<String, String>) {
        for var in vars.keys().filter(|var| !USED_VARS.contains(&var.as_str())) {
            self.ignored_vars.insert(var.clone());
        }
        self.vars.entry(name.to_string()).or_default().extend(vars);
    }

    fn set_global_vars(&mut self, vars: BTreeMap<String, String>) {
        for var in vars.keys().filter(|var| !USED_VARS.contains(&var.as_str())) {
            self.ignored_vars.insert(format!("all.vars.{var}"));
        }
        self.global_vars.extend(vars);
    }
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

/// Reads the Kubespray inventory file at `path` (at most [`crate::MAX_FILE_BYTES`], YAML or INI)
/// and returns an equivalent capstan inventory YAML text.
pub fn import_kubespray_file(path: &Path) -> Result<String, Diagnostics> {
    let file_name = path.display().to_string();
    let text = crate::read_text(path, &file_name, "Kubespray inventory")?;
    import_kubespray(&text, &file_name)
}

/// Reads a Kubespray `hosts.yaml` or `inventory.ini` (the format is detected, see
/// [`KubesprayFormat::detect`]) and returns an equivalent capstan inventory YAML text.
///
/// The cluster name is taken from the inventory's directory (`inventory/<name>/hosts.yaml`).
pub fn import_kubespray(text: &str, file_name: &str) -> Result<String, Diagnostics> {
    let mut sink = Sink::new(file_name);
    let mut inventory = Inventory::default();
    if text.len() > crate::MAX_FILE_BYTES {
        sink.error(
            Pos { line: 1, column: 1 },
            format!(
                "the inventory is larger than {} MiB (limit of the importer)",
                crate::MAX_FILE_BYTES >> 20
            ),
        );
        return finish_failed(sink);
    }
    let read = match KubesprayFormat::detect(text, file_name) {
        KubesprayFormat::Yaml => read_yaml(&mut sink, &mut inventory, text),
        KubesprayFormat::Ini => read_ini(&mut sink, &mut inventory, text),
    };
    if !read {
        return finish_failed(sink);
    }
    let imported = hosts(&mut sink, &inventory);
    if sink.has_errors() {
        return finish_failed(sink);
    }
    let output = render(&inventory, &imported, file_name);
    // Should the importer ever emit something capstan rejects, the problems are reported against
    // the generated text so the cause is visible.
    imported_output_check(&output, file_name)?;
    Ok(output)
}

fn finish_failed(sink: Sink) -> Result<String, Diagnostics> {
    sink.finish::<String>(None).map(|(text, _)| text)
}

/// Reads the YAML form; false when nothing more can be checked.
fn read_yaml(sink: &mut Sink, inventory: &mut Inventory, text: &str) -> bool {
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(error) => {
            sink.error_with_hint(error.pos, format!("invalid YAML: {}", error.message), error.hint);
            return false;
        }
    };
    let Some(all) = root
        .as_ref()
        .and_then(|root| root.as_map())
        .and_then(|entries| entries.iter().find(|(key, _)| key.as_str() == Some("all")))
        .map(|(_, value)| value)
    else {
        let pos = root.as_ref().map_or(Pos { line: 1, column: 1 }, |root| root.pos);
        sink.error_with_hint(
            pos,
            "expected a Kubespray inventory: a mapping with an `all` group",
            Some("Kubespray's YAML (hosts.yaml) and INI (inventory.ini) forms are both accepted".into()),
        );
        return false;
    };
    walk_group(sink, inventory, "all", all);
    true
}

/// `[name]`, `[name:children]` or `[name:vars]` → the group and the section kind.
fn section_header(line: &str) -> Option<(&str, &str)> {
    let inner = line.strip_prefix('[')?.strip_suffix(']')?.trim();
    let (group, kind) = match inner.split_once(':') {
        Some((group, kind @ ("children" | "vars"))) => (group, kind),
        Some(_) => return None,
        None => (inner, "hosts"),
    };
    let valid = !group.is_empty() && group.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    valid.then_some((group, kind))
}

/// Reads the INI form: `[group]` host lines with `key=value` variables, `[group:children]`
/// and `[group:vars]`; hosts before any section are ungrouped. Always true: INI has no
/// structure whose failure stops the rest.
fn read_ini(sink: &mut Sink, inventory: &mut Inventory, text: &str) -> bool {
    let mut group = "ungrouped".to_string();
    let mut kind = "hosts";
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let column = raw.len() - raw.trim_start().len() + 1;
        let pos = Pos { line: line_no, column };
        if line.starts_with('[') {
            match section_header(line) {
                Some((name, section_kind)) => {
                    group = name.to_string();
                    kind = section_kind;
                }
                None => sink.error(
                    pos,
                    format!(
                        "`{}` is not a section header: expected `[group]`, `[group:children]` or `[group:vars]`",
                        show(line)
                    ),
                ),
            }
            continue;
        }
        match kind {
            "children" => {
                let Some(child) = line
                    .split_whitespace()
                    .next()
                    .filter(|child| section_header(&format!("[{child}]")).is_some())
                else {
                    sink.error(
                        pos,
                        format!("`[{group}:children]`: expected a group name, found `{}`", show(line)),
                    );
                    continue;
                };
                inventory
                    .group_children
                    .entry(group.clone())
                    .or_default()
                    .insert(child.to_string());
            }
            "vars" => {
                let Some((key, value)) = line.split_once('=') else {
                    sink.error(
                        pos,
                        format!("`[{group}:vars]`: expected `name=value`, found `{}`", show(line)),
                    );
                    continue;
                };
                let vars = BTreeMap::from([(key.trim().to_string(), unquote(value.trim()).to_string())]);
                if group == "all" {
                    inventory.set_global_vars(vars);
                } else {
                    inventory.ignored_vars.insert(format!("{group}.vars"));
                }
            }
            _ => {
                if !ini_host_line(sink, inventory, &group, line, pos) {
                    return true;
                }
            }
        }
    }
    true
}

/// `node[1:3] ansible_host=10.0.0.1 ip=10.0.0.1` (a `host:port` name sets `ansible_port`);
/// false once the host limit is reached.
fn ini_host_line(sink: &mut Sink, inventory: &mut Inventory, group: &str, line: &str, pos: Pos) -> bool {
    let words = match split_words(line) {
        Ok(words) => words,
        Err(message) => {
            sink.error(pos, message);
            return true;
        }
    };
    let Some((pattern, assignments)) = words.split_first() else {
        return true;
    };
    let mut vars = BTreeMap::new();
    for assignment in assignments {
        match assignment.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                vars.insert(key.to_string(), value.to_string());
            }
            _ => sink.error(
                pos,
                format!(
                    "host `{}`: expected `name=value` variables, found `{}`",
                    show(pattern),
                    show(assignment)
                ),
            ),
        }
    }
    // `host:port`; colons inside ranges (`node[1:3]`) do not count, and an IPv6 address has several.
    let mut depth = 0usize;
    let outside: Vec<usize> = pattern
        .char_indices()
        .filter_map(|(index, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                ':' if depth == 0 => return Some(index),
                _ => {}
            }
            None
        })
        .collect();
    let (pattern, port) = match outside.as_slice() {
        [colon] if pattern[colon + 1..].bytes().all(|b| b.is_ascii_digit()) && *colon + 1 < pattern.len() => {
            (&pattern[..*colon], Some(&pattern[colon + 1..]))
        }
        _ => (pattern.as_str(), None),
    };
    if let Some(port) = port {
        vars.entry("ansible_port".to_string())
            .or_insert_with(|| port.to_string());
    }
    let budget = MAX_IMPORT_HOSTS - inventory.hosts.len().min(MAX_IMPORT_HOSTS);
    let names = match expand_range(pattern, budget + 1) {
        Ok(names) => names,
        Err(message) => {
            sink.error(pos, format!("host `{}`: {message}", show(pattern)));
            return true;
        }
    };
    for name in names {
        if !inventory.add_host(sink, group, &name, pos) {
            return false;
        }
        inventory.set_host_vars(&name, vars.clone());
    }
    true
}

/// Splits at whitespace outside single or double quotes, removing the quotes.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in `{}`", show(line)));
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

/// Expands Ansible host ranges: `node[1:3]`, `node[01:10]` (zero-padded), `node[a:c]`,
/// `node[1:10:2]` (a step); several ranges multiply. At most `limit` names are produced.
fn expand_range(pattern: &str, limit: usize) -> Result<Vec<String>, String> {
    const MAX_RANGES: usize = 4;
    if pattern.matches('[').count() > MAX_RANGES {
        return Err(format!("expected at most {MAX_RANGES} ranges in one host pattern"));
    }
    let Some(open) = pattern.find('[') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or("unclosed `[` in a host range")?;
    let (head, spec, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let parts: Vec<&str> = spec.split(':').collect();
    let (start, end, step) = match parts.as_slice() {
        [start, end] => (*start, *end, 1usize),
        [start, end, step] => (
            *start,
            *end,
            step.parse::<usize>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or("the step of a host range must be a positive number")?,
        ),
        _ => return Err("expected a range such as `[1:3]`, `[01:10]` or `[a:c]`".into()),
    };
    let items: Vec<String> = if start.bytes().all(|b| b.is_ascii_digit()) && !start.is_empty() {
        let width = if start.len() > 1 && start.starts_with('0') {
            start.len()
        } else {
            0
        };
        let first: usize = start.parse().map_err(|_| "a host range bound is too large")?;
        let last: usize = end
            .parse()
            .map_err(|_| "expected the end of a numeric range to be a number")?;
        if first > last {
            return Err("a host range must not end before it starts".into());
        }
        let count = (last - first) / step + 1;
        if count > limit {
            return Err(format!(
                "the range expands to more than {MAX_IMPORT_HOSTS} hosts (limit of the importer)"
            ));
        }
        (first..=last).step_by(step).map(|n| format!("{n:0width$}")).collect()
    } else if let (Some(first), Some(last)) = (single_letter(start), single_letter(end)) {
        if first > last {
            return Err("a host range must not end before it starts".into());
        }
        (first..=last).step_by(step).map(String::from).collect()
    } else {
        return Err("expected a range of numbers (`[1:3]`) or of single letters (`[a:c]`)".into());
    };
    let mut names = Vec::new();
    let rests = expand_range(tail, limit)?;
    for item in items {
        for rest in &rests {
            names.push(format!("{head}{item}{rest}"));
            if names.len() > limit {
                return Err(format!(
                    "the range expands to more than {MAX_IMPORT_HOSTS} hosts (limit of the importer)"
                ));
            }
        }
    }
    Ok(names)
}

fn single_letter(text: &str) -> Option<char> {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => Some(c),
        _ => None,
    }
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
            Some("vars") if group == "all" => {
                let vars = scalar_map(sink, inventory, value, "vars", "all.vars.");
                inventory.set_global_vars(vars);
            }
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
        if !inventory.add_host(sink, group, name, key.pos) {
            return;
        }
        let vars = scalar_map(sink, inventory, vars, name, "");
        inventory.set_host_vars(name, vars);
    }
}

/// A mapping of scalar variables; nested values (lists, dicts such as `node_labels`) are not
/// imported and are listed as such, with `prefix` before their names.
fn scalar_map(
    sink: &mut Sink,
    inventory: &mut Inventory,
    node: &Node,
    owner: &str,
    prefix: &str,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    if node.is_null() {
        return vars;
    }
    let Some(entries) = node.as_map() else {
        sink.error(
            node.pos,
            format!(
                "variables of `{}`: expected a mapping, found {}",
                show(owner),
                node.describe()
            ),
        );
        return vars;
    };
    for (key, value) in entries {
        match (key.as_str(), value.as_str()) {
            (Some(key), Some(value)) => {
                vars.insert(key.to_string(), value.to_string());
            }
            (Some(key), None) if !value.is_null() => {
                inventory.ignored_vars.insert(format!("{prefix}{key}"));
            }
            _ => {}
        }
    }
    vars
}

/// Hosts of `group` and of all groups nested under it (iteratively, so deep or cyclic
/// `children` cannot exhaust the stack).
fn members(inventory: &Inventory, group: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut pending = vec![group];
    while let Some(group) = pending.pop() {
        if !seen.insert(group) {
            continue;
        }
        found.extend(inventory.group_hosts.get(group).into_iter().flatten().cloned());
        pending.extend(
            inventory
                .group_children
                .get(group)
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    }
    found
}

fn hosts(sink: &mut Sink, inventory: &Inventory) -> Vec<ImportedHost> {
    let mut imported = Vec::new();
    let role_members: Vec<(BTreeSet<String>, Role)> = GROUP_ROLES
        .iter()
        .map(|(group, role)| (members(inventory, group), *role))
        .collect();
    for (name, pos) in &inventory.hosts {
        let vars = &inventory.vars[name];
        let var = |keys: &[&str]| {
            keys.iter()
                .find_map(|key| vars.get(*key).or_else(|| inventory.global_vars.get(*key)))
                .cloned()
        };
        let roles: BTreeSet<Role> = role_members
            .iter()
            .filter(|(members, _)| members.contains(name))
            .map(|(_, role)| *role)
            .collect();
        if let Err(message) = values::check_host_name(name) {
            sink.error(*pos, format!("host `{}` cannot be imported: {message}", show(name)));
        }
        let address = var(&["ansible_host", "ansible_ssh_host", "access_ip", "ip"]).unwrap_or_else(|| name.clone());
        let private_address = vars.get("ip").filter(|ip| **ip != address).cloned();
        for candidate in std::iter::once(&address).chain(private_address.as_ref()) {
            if let Err(message) = values::check_address(candidate) {
                sink.error(*pos, format!("host `{}`: {message}", show(name)));
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
    let bastions = members(inventory, "bastion");
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
    let mapped: Vec<&str> = GROUP_ROLES.iter().map(|(group, _)| *group).collect();
    let unmapped: Vec<String> = inventory
        .group_hosts
        .iter()
        .filter(|(group, hosts)| {
            !hosts.is_empty()
                && !mapped.contains(&group.as_str())
                && !["all", "ungrouped", "bastion"].contains(&group.as_str())
        })
        .map(|(group, _)| show(group).to_string())
        .collect();
    if !unmapped.is_empty() {
        let _ = writeln!(out, "# Groups not imported (no capstan role): {}.", unmapped.join(", "));
    }
    if !inventory.ignored_vars.is_empty() {
        let ignored: Vec<String> = inventory.ignored_vars.iter().map(|var| show(var).to_string()).collect();
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
        return text.to_string();
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if values::is_unsafe_char(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

//! Data-driven tests: each case is an inventory text and the expected rendering of what capstan
//! makes of it: the resolved model as YAML, or the diagnostics one per line.
//! Refresh expectations with `UPDATE_EXPECT=1 cargo test -p capstan-inventory`.

use std::path::Path;

use capstan_inventory::{import_kubespray, load, parse_str, Role};
use expect_test::{expect, Expect};

/// Renders the outcome of parsing `input` as if it were `/inv/inventory.yaml`.
fn render(input: &str) -> String {
    let rendered = match parse_str(input, "inventory.yaml", Path::new("/inv")) {
        Ok(cluster) => serde_yaml::to_string(&cluster).unwrap(),
        Err(diagnostics) => format!("{diagnostics}\n"),
    };
    // The default known_hosts file lives under $HOME, which differs between machines.
    match std::env::var("HOME") {
        Ok(home) if !home.is_empty() => rendered.replace(&home, "$HOME"),
        _ => rendered,
    }
}

fn check(input: &str, expect: Expect) {
    expect.assert_eq(&render(input));
}

#[test]
fn minimal_inventory_gets_defaults() {
    check(
        r#"
cluster: {name: tiny}
ssh: {agent: true}
hosts:
  - {name: solo, address: 127.0.0.1, roles: [etcd]}
"#,
        expect![[r#"
            name: tiny
            hosts:
            - name: solo
              address: 127.0.0.1
              private_address: 127.0.0.1
              roles:
              - etcd
              labels: {}
              ssh:
                user: root
                port: 22
                identity_file: null
                agent: true
                sudo: auto
                known_hosts: strict
                known_hosts_file: $HOME/.ssh/known_hosts
                connect_timeout: 10s
                keepalive: 15s
                bastion: null
            versions:
              etcd: 3.5.33
              containerd: 1.7.34
              runc: 1.4.3
              crun: 1.8.1
              cni_plugins: 1.9.1
              prometheus: 2.42.0
              node_exporter: 1.5.0
              alertmanager: 0.25.0
            artifacts:
              mirror: null
              apt_source: null
            etcd:
              allow_even_members: false
              data_dir: /var/lib/etcd
            backup: null
            drill:
              expect_keys: []
            network:
              pod_cidr: 10.244.0.0/16
              node_prefix: 24
            runtime:
              sandbox_image: registry.k8s.io/pause:3.10
              registry_mirrors: {}
              lab_cgroupless: never
              disable_swap: false
            monitoring:
              retention_days: 15
              storage_path: /var/lib/prometheus/data
              receivers: []
              smtp: null
              alert_for: null
            api_endpoint:
              mode: local
            kubernetes:
              version: 1.32.5
              service_cidr: 10.96.0.0/12
              cluster_domain: cluster.local
              dns_image: registry.k8s.io/coredns/coredns:v1.11.3
              secrets_encryption: secretbox
              audit_log: false
            logging:
              journal_max_mib: 2048
              aggregator_max_mib: 16384
            source_path: /inv/inventory.yaml
        "#]],
    );
}

#[test]
fn full_inventory_resolves_overrides_and_paths() {
    check(
        r#"
cluster:
  name: demo
ssh:
  user: admin
  identity_file: keys/id_ed25519
  known_hosts: accept-new
  known_hosts_file: ~/.ssh/capstan_known_hosts
  connect_timeout: 1m30s
  keepalive: 0s
  bastion: {address: jump.example.com, user: jump}
hosts:
  - name: demo-1
    address: 10.0.0.1
    private_address: 192.168.0.1
    roles: [control_plane, etcd]
    labels: {zone: a, rack: 7}
  - name: demo-2
    address: 10.0.0.2
    roles: [etcd, node]
    ssh: {user: root, port: 2222, identity_file: /etc/capstan/key, sudo: always, connect_timeout: 500ms}
  - name: demo-3
    address: fd00::3
    roles: [etcd, monitoring, logging]
    ssh:
      bastion: {address: 203.0.113.9, port: 2200, identity_file: ./jump_key}
versions: {etcd: 3.5.17}
artifacts: {mirror: "https://mirror.example.com/"}
etcd: {data_dir: /data/etcd}
backup:
  target: s3://capstan-backups/demo/
  recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
  retention: {daily: 3}
drill:
  expect_keys: [/registry/namespaces/default, "app/*"]
"#,
        expect![[r#"
            name: demo
            hosts:
            - name: demo-1
              address: 10.0.0.1
              private_address: 192.168.0.1
              roles:
              - etcd
              - control_plane
              labels:
                rack: '7'
                zone: a
              ssh:
                user: admin
                port: 22
                identity_file: /inv/keys/id_ed25519
                agent: false
                sudo: auto
                known_hosts: accept-new
                known_hosts_file: $HOME/.ssh/capstan_known_hosts
                connect_timeout: 1m30s
                keepalive: 0s
                bastion:
                  address: jump.example.com
                  port: 22
                  user: jump
                  identity_file: /inv/keys/id_ed25519
            - name: demo-2
              address: 10.0.0.2
              private_address: 10.0.0.2
              roles:
              - etcd
              - node
              labels: {}
              ssh:
                user: root
                port: 2222
                identity_file: /etc/capstan/key
                agent: false
                sudo: always
                known_hosts: accept-new
                known_hosts_file: $HOME/.ssh/capstan_known_hosts
                connect_timeout: 500ms
                keepalive: 0s
                bastion:
                  address: jump.example.com
                  port: 22
                  user: jump
                  identity_file: /etc/capstan/key
            - name: demo-3
              address: fd00::3
              private_address: fd00::3
              roles:
              - etcd
              - monitoring
              - logging
              labels: {}
              ssh:
                user: admin
                port: 22
                identity_file: /inv/keys/id_ed25519
                agent: false
                sudo: auto
                known_hosts: accept-new
                known_hosts_file: $HOME/.ssh/capstan_known_hosts
                connect_timeout: 1m30s
                keepalive: 0s
                bastion:
                  address: 203.0.113.9
                  port: 2200
                  user: admin
                  identity_file: /inv/jump_key
            versions:
              etcd: 3.5.17
              containerd: 1.7.34
              runc: 1.4.3
              crun: 1.8.1
              cni_plugins: 1.9.1
              prometheus: 2.42.0
              node_exporter: 1.5.0
              alertmanager: 0.25.0
            artifacts:
              mirror: https://mirror.example.com
              apt_source: null
            etcd:
              allow_even_members: false
              data_dir: /data/etcd
            backup:
              target: s3://capstan-backups/demo
              recipients:
              - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
              retention:
                keep_last: 7
                daily: 3
                weekly: 0
                monthly: 0
              schedule: null
            drill:
              expect_keys:
              - /registry/namespaces/default
              - app/*
            network:
              pod_cidr: 10.244.0.0/16
              node_prefix: 24
            runtime:
              sandbox_image: registry.k8s.io/pause:3.10
              registry_mirrors: {}
              lab_cgroupless: never
              disable_swap: false
            monitoring:
              retention_days: 15
              storage_path: /var/lib/prometheus/data
              receivers: []
              smtp: null
              alert_for: null
            api_endpoint:
              mode: local
            kubernetes:
              version: 1.32.5
              service_cidr: 10.96.0.0/12
              cluster_domain: cluster.local
              dns_image: registry.k8s.io/coredns/coredns:v1.11.3
              secrets_encryption: secretbox
              audit_log: false
            logging:
              journal_max_mib: 2048
              aggregator_max_mib: 16384
            source_path: /inv/inventory.yaml
        "#]],
    );
}

#[test]
fn every_problem_is_reported_once_with_its_position() {
    check(
        r#"cluster:
  name: Demo_Cluster
ssh:
  identiy_file: ./id
  port: seventy
  sudo: sometimes
  connect_timeout: 10
hosts:
  - name: a
    address: 10.0.0.1
    roles: [etcd, contro_plane]
  - name: a
    address: 10.0.0.300
    roles: [etcd]
  - name: c
    address: 10.0.0.1
    roles: [etcd]
    ssh: {agent: true, known_hosts: yes}
etcd:
  allow_even_members: maybe
backup:
  target: ftp://backups
drill:
  expect_keys: ["", app/ok, "*"]
  check_keys: yes
"#,
        expect![[r#"
            inventory.yaml:2:9: error: `name`: invalid cluster name `Demo_Cluster`: expected 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`
            inventory.yaml:4:3: error: unknown key `identiy_file` in `ssh`; did you mean `identity_file`?
            inventory.yaml:5:9: error: `port`: expected an integer from 1 to 65535, found `seventy`
            inventory.yaml:6:9: error: `sudo`: expected one of `auto`, `always`, `never`, found `sometimes`
            inventory.yaml:7:20: error: `connect_timeout`: expected a duration such as `500ms`, `10s`, `5m` or `1h`; `10` has no unit
            inventory.yaml:11:19: error: `roles`: expected one of `etcd`, `control_plane`, `node`, `monitoring`, `logging`, found `contro_plane`; did you mean `control_plane`?
            inventory.yaml:12:11: error: duplicate host name `a` (first used at line 9); expected each host to have its own
            inventory.yaml:13:14: error: `address`: invalid IPv4 address `10.0.0.300`: expected an IPv4 address, an IPv6 address or a DNS name
            inventory.yaml:16:14: error: duplicate address `10.0.0.1` (first used at line 10); expected each host to have its own
            inventory.yaml:18:37: error: `known_hosts`: expected one of `strict`, `accept-new`, found `yes`
            inventory.yaml:20:23: error: `allow_even_members`: expected `true` or `false`, found `maybe`
            inventory.yaml:22:3: error: missing required key `recipients` in `backup`: expected a list of age recipients (backups are always encrypted)
            inventory.yaml:22:11: error: `target`: expected a URL starting with file:/// or s3://, found `ftp://backups`
            inventory.yaml:24:17: error: `expect_keys`: expected a key or a prefix ending in `*` (not empty, not `*` alone)
            inventory.yaml:24:29: error: `expect_keys`: expected a key or a prefix ending in `*` (not empty, not `*` alone)
            inventory.yaml:25:3: error: unknown key `check_keys` in `drill`; expected one of: expect_keys
        "#]],
    );
}

#[test]
fn semantic_checks_across_hosts() {
    check(
        r#"
cluster: {name: pair}
ssh: {agent: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd]}
  - {name: b, address: 10.0.0.2, roles: [etcd, node]}
  - {name: a, address: 10.0.0.1, roles: [node]}
"#,
        expect![[r#"
            inventory.yaml:5:3: error: 2 hosts have the `etcd` role: expected an odd number, since an even-sized etcd cluster tolerates no more failures than one member fewer (set `etcd.allow_even_members: true` to override)
            inventory.yaml:7:12: error: duplicate host name `a` (first used at line 5); expected each host to have its own
            inventory.yaml:7:24: error: duplicate address `10.0.0.1` (first used at line 5); expected each host to have its own
        "#]],
    );
    check(
        r#"
cluster: {name: pair}
ssh: {agent: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd]}
  - {name: b, address: 10.0.0.2, roles: [etcd, node]}
"#,
        expect![[r#"
            inventory.yaml:5:3: error: 2 hosts have the `etcd` role: expected an odd number, since an even-sized etcd cluster tolerates no more failures than one member fewer (set `etcd.allow_even_members: true` to override)
        "#]],
    );
    check(
        r#"
cluster: {name: pair}
ssh: {agent: true}
etcd: {allow_even_members: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd]}
  - {name: b, address: 10.0.0.2, roles: [etcd, node]}
"#,
        expect![[r#"
            name: pair
            hosts:
            - name: a
              address: 10.0.0.1
              private_address: 10.0.0.1
              roles:
              - etcd
              labels: {}
              ssh:
                user: root
                port: 22
                identity_file: null
                agent: true
                sudo: auto
                known_hosts: strict
                known_hosts_file: $HOME/.ssh/known_hosts
                connect_timeout: 10s
                keepalive: 15s
                bastion: null
            - name: b
              address: 10.0.0.2
              private_address: 10.0.0.2
              roles:
              - etcd
              - node
              labels: {}
              ssh:
                user: root
                port: 22
                identity_file: null
                agent: true
                sudo: auto
                known_hosts: strict
                known_hosts_file: $HOME/.ssh/known_hosts
                connect_timeout: 10s
                keepalive: 15s
                bastion: null
            versions:
              etcd: 3.5.33
              containerd: 1.7.34
              runc: 1.4.3
              crun: 1.8.1
              cni_plugins: 1.9.1
              prometheus: 2.42.0
              node_exporter: 1.5.0
              alertmanager: 0.25.0
            artifacts:
              mirror: null
              apt_source: null
            etcd:
              allow_even_members: true
              data_dir: /var/lib/etcd
            backup: null
            drill:
              expect_keys: []
            network:
              pod_cidr: 10.244.0.0/16
              node_prefix: 24
            runtime:
              sandbox_image: registry.k8s.io/pause:3.10
              registry_mirrors: {}
              lab_cgroupless: never
              disable_swap: false
            monitoring:
              retention_days: 15
              storage_path: /var/lib/prometheus/data
              receivers: []
              smtp: null
              alert_for: null
            api_endpoint:
              mode: local
            kubernetes:
              version: 1.32.5
              service_cidr: 10.96.0.0/12
              cluster_domain: cluster.local
              dns_image: registry.k8s.io/coredns/coredns:v1.11.3
              secrets_encryption: secretbox
              audit_log: false
            logging:
              journal_max_mib: 2048
              aggregator_max_mib: 16384
            source_path: /inv/inventory.yaml
        "#]],
    );
    check(
        r#"
cluster: {name: workers-only}
hosts:
  - {name: a, address: 10.0.0.1, roles: [node], ssh: {identity_file: ./k}}
  - {name: b, address: 10.0.0.2, roles: [node, node]}
"#,
        expect![[r#"
            inventory.yaml:5:5: error: host has no SSH authentication method: expected `ssh.identity_file` or `ssh.agent: true` (in the `ssh` defaults or on the host)
            inventory.yaml:5:48: error: `roles`: role `node` is listed twice
        "#]],
    );
}

#[test]
fn cluster_without_etcd_is_rejected() {
    check(
        r#"
cluster: {name: no-etcd}
ssh: {identity_file: ./k}
hosts:
  - {name: w1, address: w1.example.com, roles: [node]}
"#,
        expect![[r#"
            inventory.yaml:5:3: error: no host has the `etcd` role: expected at least one etcd member (3 for high availability)
        "#]],
    );
}

#[test]
fn missing_and_mistyped_sections() {
    check(
        "",
        expect![[r#"
        inventory.yaml:1:1: error: missing required key `cluster` in the inventory: expected a mapping with `name`
        inventory.yaml:1:1: error: missing required key `hosts` in the inventory: expected a list of hosts
    "#]],
    );
    check(
        "- just\n- a list\n",
        expect![[r#"
            inventory.yaml:1:1: error: expected a mapping for the inventory (keys: cluster, ssh, hosts, versions, artifacts, etcd, backup, drill, network, runtime, api_endpoint, monitoring, kubernetes, logging), found a sequence
        "#]],
    );
    check(
        r#"
cluster: demo
ssh: [root]
hosts: {name: a}
versions: {etcd: "3.5"}
backup: {target: "file://relative", recipients: []}
extra: 1
"#,
        expect![[r#"
            inventory.yaml:2:10: error: expected a mapping for `cluster` (keys: name), found `demo`
            inventory.yaml:3:6: error: expected a mapping for `ssh` (keys: user, port, identity_file, agent, sudo, known_hosts, known_hosts_file, connect_timeout, keepalive, bastion), found a sequence
            inventory.yaml:4:8: error: `hosts`: expected a list of hosts, found a mapping
            inventory.yaml:5:18: error: `etcd`: invalid version `3.5`: expected MAJOR.MINOR.PATCH such as `3.5.1`
            inventory.yaml:6:18: error: `target`: expected file:///absolute/path (three slashes), found `file://relative`
            inventory.yaml:6:49: error: `recipients`: expected at least one age recipient; backups are always encrypted
            inventory.yaml:7:1: error: unknown key `extra` in the inventory; expected one of: cluster, ssh, hosts, versions, artifacts, etcd, backup, drill, network, runtime, api_endpoint, monitoring, kubernetes, logging
        "#]],
    );
    check(
        r#"
cluster: {name: demo}
ssh: {agent: true}
hosts:
  - name: a
    roles: [etcd]
    labels: [x]
  - address: 10.0.0.2
    roles: []
  - just-a-string
"#,
        expect![[r#"
            inventory.yaml:5:5: error: missing required key `address` in `hosts[0]` (host `a`): expected an IP address or DNS name to connect to
            inventory.yaml:7:13: error: `labels`: expected a mapping of names to values, found a sequence
            inventory.yaml:8:5: error: missing required key `name` in `hosts[1]`: expected a unique host name
            inventory.yaml:9:12: error: `roles`: expected at least one of etcd, control_plane, node, monitoring, logging
            inventory.yaml:10:5: error: expected a mapping for a host (keys: name, address, private_address, roles, labels, ssh), found `just-a-string`
        "#]],
    );
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    check(
        "cluster:\n  name: demo\nhosts:\n  - name: [unclosed\n",
        expect![[r#"
            inventory.yaml:4:11: error: invalid YAML: `[` is never closed: expected `,` or `]`
        "#]],
    );
    check(
        "cluster: {name: demo}\n\tbad: tab\n",
        expect![[r#"
            inventory.yaml:2:1: error: invalid YAML: while parsing a block mapping, did not find expected key: a tab indents this line; YAML indentation must use spaces
        "#]],
    );
    check(
        "a: 1\n---\nb: 2\n",
        expect![[r#"
        inventory.yaml:2:1: error: invalid YAML: expected a single YAML document, found a second one
    "#]],
    );
}

#[test]
fn anchors_and_aliases_are_resolved() {
    let cluster = parse_str(
        r#"
cluster: {name: anchors}
ssh: {agent: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: &cp [etcd, control_plane]}
  - {name: b, address: 10.0.0.2, roles: *cp}
  - {name: c, address: 10.0.0.3, roles: *cp}
"#,
        "anchors.yaml",
        Path::new("/inv"),
    )
    .unwrap();
    assert_eq!(cluster.hosts_with_role(Role::ControlPlane).count(), 3);
}

#[test]
fn example_inventory_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inventory.yaml");
    let cluster = load(&path).unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(cluster.name, "demo");
    assert_eq!(cluster.hosts_with_role(Role::Etcd).count(), 3);
    assert_eq!(cluster.hosts_with_role(Role::Node).count(), 2);
    assert_eq!(cluster.hosts_with_role(Role::Monitoring).count(), 1);
    let examples = path.parent().unwrap().canonicalize().unwrap();
    let identity = cluster.hosts[0].ssh.identity_file.as_ref().unwrap();
    assert_eq!(identity.parent().unwrap().canonicalize().unwrap(), examples);
    assert!(cluster.backup.is_some());
    assert!(!cluster.host("monitor-1").unwrap().ssh.needs_sudo());
    assert!(cluster.host("demo-1").unwrap().ssh.needs_sudo());
}

#[test]
fn unreadable_file_is_a_diagnostic() {
    let error = load(Path::new("/nonexistent/capstan/inventory.yaml")).unwrap_err();
    expect![
        "/nonexistent/capstan/inventory.yaml: error: cannot read inventory: No such file or directory (os error 2)"
    ]
    .assert_eq(&error.to_string());
}

/// Imports `input` as `inventory/prod/hosts.yaml`; the output must itself be a valid inventory.
fn check_import(input: &str, expect: Expect) {
    let rendered = match import_kubespray(input, "inventory/prod/hosts.yaml") {
        Ok(output) => {
            if let Err(diagnostics) = parse_str(&output, "imported.yaml", Path::new("/inv")) {
                panic!("imported inventory does not validate:\n{diagnostics}\n{output}");
            }
            output
        }
        Err(diagnostics) => format!("{diagnostics}\n"),
    };
    expect.assert_eq(&rendered);
}

#[test]
fn kubespray_example_imports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubespray-hosts.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    check_import(
        &text,
        expect![[r#"
        # capstan inventory imported from the Kubespray inventory inventory/prod/hosts.yaml
        # Groups became roles: kube_control_plane -> control_plane, etcd -> etcd, kube_node -> node.
        # Review before use: the cluster name, SSH authentication and known_hosts policy.

        cluster:
          name: prod
        ssh:
          user: ubuntu
          agent: true  # Kubespray named no key; capstan uses keys from ssh-agent
        hosts:
          - name: node1
            address: 10.231.0.11
            private_address: 192.168.0.11
            roles: [etcd, control_plane]
          - name: node2
            address: 10.231.0.12
            private_address: 192.168.0.12
            roles: [etcd, control_plane]
          - name: node3
            address: 10.231.0.13
            private_address: 192.168.0.13
            roles: [etcd, control_plane]
          - name: node4
            address: 10.231.0.21
            private_address: 192.168.0.21
            roles: [node]
          - name: node5
            address: 10.231.0.22
            private_address: 192.168.0.22
            roles: [node]
            ssh: {port: 2222}
    "#]],
    );
}

#[test]
fn kubespray_hoists_shared_ssh_settings_and_maps_bastion() {
    check_import(
        r#"
all:
  hosts:
    cp1: {ansible_host: 203.0.113.1, ansible_user: admin, ansible_ssh_private_key_file: ~/.ssh/k8s, etcd_member_name: etcd1}
    cp2: {ansible_host: 203.0.113.2, ansible_user: admin, ansible_ssh_private_key_file: ~/.ssh/k8s}
    w1: {ip: 10.0.0.3, ansible_user: admin, ansible_port: 2200, ansible_ssh_private_key_file: ~/.ssh/k8s}
    lb: {ansible_host: 203.0.113.9}
    jump: {ansible_host: 198.51.100.1, ansible_user: hop}
  children:
    kube-master: {hosts: {cp1: , cp2: }}
    etcd: {hosts: {cp1: , cp2: }}
    kube-node: {hosts: {w1: }}
    bastion: {hosts: {jump: }}
"#,
        expect![[r##"
            # capstan inventory imported from the Kubespray inventory inventory/prod/hosts.yaml
            # Groups became roles: kube_control_plane -> control_plane, etcd -> etcd, kube_node -> node.
            # Review before use: the cluster name, SSH authentication and known_hosts policy.
            # Skipped host lb: it is in no group that maps to a capstan role.
            # Not imported: etcd_member_name.

            cluster:
              name: prod
            ssh:
              user: admin
              identity_file: "~/.ssh/k8s"
              bastion:
                address: 198.51.100.1
                user: hop
            hosts:
              - name: cp1
                address: 203.0.113.1
                roles: [etcd, control_plane]
              - name: cp2
                address: 203.0.113.2
                roles: [etcd, control_plane]
              - name: w1
                address: 10.0.0.3
                roles: [node]
                ssh: {port: 2200}
            etcd:
              # The Kubespray inventory has an even number of etcd members, which tolerates no more
              # failures than one member fewer; kept as imported.
              allow_even_members: true
        "##]],
    );
}

#[test]
fn kubespray_errors_point_at_the_source() {
    check_import(
        "all:\n  hosts:\n    Node_1: {ansible_host: 10.0.0.1}\n",
        expect![[r#"
            inventory/prod/hosts.yaml:3:5: error: host `Node_1` cannot be imported: invalid host name `Node_1`: expected dot-separated labels of a-z, 0-9 and `-` (each 1-63 characters, not starting or ending with `-`)
            inventory/prod/hosts.yaml:3:5: error: no host is in the `etcd` group: capstan needs at least one etcd member
        "#]],
    );
    check_import(
        "k8s:\n  hosts: {}\n",
        expect![[r#"
        inventory/prod/hosts.yaml:1:1: error: expected a Kubespray inventory: a mapping with an `all` group
    "#]],
    );
    check_import(
        "all: [unclosed\n",
        expect![[r#"
            inventory/prod/hosts.yaml:1:6: error: invalid YAML: `[` is never closed: expected `,` or `]`
        "#]],
    );
}

/// `network`, `runtime` and the runtime's `versions`: the resolved values, and each mistake at its
/// position.
#[test]
fn network_and_runtime_sections() {
    let hosts = "hosts:\n  - {name: a, address: 10.0.0.1, roles: [etcd, node]}\n  - {name: b, address: 10.0.0.2, roles: [node]}\n  - {name: c, address: 10.0.0.3, roles: [control_plane]}\n";
    let head = "cluster: {name: demo}\nssh: {identity_file: /dev/null}\n";
    let good = format!(
        "{head}{hosts}versions: {{containerd: 1.6.20, cni_plugins: 1.1.1}}\nnetwork: {{pod_cidr: 10.32.0.0/22, node_prefix: 24}}\n\
         runtime:\n  sandbox_image: mirror.local/pause:3.9\n  registry_mirrors:\n    docker.io: [\"https://mirror.local/\"]\n  lab_cgroupless: auto\n  disable_swap: true\n"
    );
    let cluster = parse_str(&good, "inventory.yaml", Path::new("/inv")).unwrap();
    assert_eq!(cluster.versions.containerd, "1.6.20");
    assert_eq!(cluster.versions.runc, capstan_inventory::DEFAULT_RUNC_VERSION);
    assert_eq!(cluster.network.pod_cidr, "10.32.0.0/22");
    assert_eq!(cluster.runtime.registry_mirrors["docker.io"], ["https://mirror.local"]);
    assert_eq!(cluster.runtime.lab_cgroupless, capstan_inventory::LabCgroupless::Auto);
    assert!(cluster.runtime.disable_swap);

    check(
        &format!(
            "{head}{hosts}network:\n  pod_cidr: 10.32.1.0/16\n  node_prefix: 8\nruntime:\n  sandbox_image: \"a b\"\n  registry_mirrors:\n    docker.io: [ftp://x]\n  lab_cgroupless: always\n  disable_swap: maybe\n  swap: off\n"
        ),
        expect![[r#"
            inventory.yaml:8:13: error: `pod_cidr`: `10.32.1.0/16` has host bits set: expected the network address `10.32.0.0/16`
            inventory.yaml:11:18: error: `sandbox_image`: expected an image reference such as `registry.k8s.io/pause:3.10`, found `a b`
            inventory.yaml:13:17: error: `registry_mirrors.docker.io`: expected a URL starting with http:// or https://, found `ftp://x`
            inventory.yaml:14:19: error: `lab_cgroupless`: expected one of `never`, `auto`, found `always`
            inventory.yaml:15:17: error: `disable_swap`: expected `true` or `false`, found `maybe`
            inventory.yaml:16:3: error: unknown key `swap` in `runtime`; expected one of: sandbox_image, registry_mirrors, lab_cgroupless, disable_swap
        "#]],
    );
    check(
        &format!("{head}{hosts}network: {{pod_cidr: 10.32.0.0/23, node_prefix: 16}}\n"),
        expect![[r#"
            inventory.yaml:7:48: error: `node_prefix`: /16 is larger than the pod network `10.32.0.0/23`: expected a prefix from 23 to 28
        "#]],
    );
    check(
        &format!("{head}{hosts}network: {{pod_cidr: 10.32.0.0/23, node_prefix: 24}}\n"),
        expect![[r#"
            inventory.yaml:7:10: error: 3 hosts run pods (roles `node`, `control_plane`) but `10.32.0.0/23` has room for 2 subnets of /24: expected a larger `pod_cidr` or a longer `node_prefix`
        "#]],
    );
}

#[test]
fn apt_source_is_one_sources_line() {
    check(
        r#"
cluster: {name: gap}
ssh: {agent: true}
artifacts:
  apt_source: "deb http://repo.example/debian bookworm"
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd]}
"#,
        expect![[r#"
            inventory.yaml:5:15: error: `apt_source`: suite `bookworm` needs at least one component (such as `main`)
        "#]],
    );
}

#[test]
fn monitoring_section_is_checked() {
    check(
        r#"
cluster: {name: m}
ssh: {agent: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd, monitoring]}
monitoring: {retention_days: 0, storage_path: data, replicas: 2}
versions: {prometheus: "2.42"}
"#,
        expect![[r#"
            inventory.yaml:6:30: error: `retention_days`: expected an integer from 1 to 3650, found `0`
            inventory.yaml:6:47: error: `storage_path`: expected an absolute path on the hosts (not `/`), found `data`
            inventory.yaml:6:53: error: unknown key `replicas` in `monitoring`; expected one of: retention_days, storage_path, receivers, smtp, alert_for
            inventory.yaml:7:24: error: `prometheus`: invalid version `2.42`: expected MAJOR.MINOR.PATCH such as `3.5.1`
        "#]],
    );
}

#[test]
fn kubernetes_section_is_checked() {
    check(
        r#"
cluster: {name: k}
ssh: {agent: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd, control_plane, node]}
network: {pod_cidr: 10.244.0.0/16}
kubernetes:
  version: "1.29.1"
  service_cidr: 10.240.0.0/12
  cluster_domain: "-bad.local"
  dns_image: "https://x"
  secrets_encryption: aesgcm
  audit_log: maybe
  feature_gates: {}
"#,
        expect![[r#"
            inventory.yaml:8:12: error: `version`: expected a Kubernetes version 1.31.x to 1.32.x, found `1.29.1`
            inventory.yaml:9:17: error: `service_cidr`: `10.240.0.0/12` overlaps the pod network `10.244.0.0/16`: expected a disjoint network
            inventory.yaml:10:19: error: `cluster_domain`: expected a DNS domain such as `cluster.local`, found `-bad.local`
            inventory.yaml:11:14: error: `dns_image`: expected an image reference such as `registry.k8s.io/pause:3.10`, found `https://x`
            inventory.yaml:12:23: error: `secrets_encryption`: expected one of `secretbox`, `aescbc`, found `aesgcm`
            inventory.yaml:13:14: error: `audit_log`: expected `true` or `false`, found `maybe`
            inventory.yaml:14:3: error: unknown key `feature_gates` in `kubernetes`; expected one of: version, service_cidr, cluster_domain, dns_image, secrets_encryption, audit_log
        "#]],
    );
}

#[test]
fn kubernetes_defaults_and_service_addresses() {
    let cluster = capstan_inventory::parse_str(
        "cluster: {name: k}\nssh: {agent: true}\nhosts:\n  - {name: a, address: 10.0.0.1, roles: [etcd]}\n\
         kubernetes: {service_cidr: 10.32.0.0/24, cluster_domain: Example.Internal}\n",
        "inventory.yaml",
        std::path::Path::new("/inv"),
    )
    .unwrap();
    assert_eq!(
        cluster.kubernetes.version,
        capstan_inventory::DEFAULT_KUBERNETES_VERSION
    );
    assert_eq!(cluster.kubernetes.apiserver_service_ip().to_string(), "10.32.0.1");
    assert_eq!(cluster.kubernetes.dns_service_ip().to_string(), "10.32.0.10");
    assert_eq!(cluster.kubernetes.cluster_domain, "example.internal");
    assert_eq!(
        cluster.kubernetes.secrets_encryption,
        capstan_inventory::SecretsEncryption::Secretbox
    );
}

#[test]
fn alert_receivers_are_checked_with_locations() {
    check(
        r#"
cluster: {name: m}
ssh: {agent: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd, monitoring]}
monitoring:
  alert_for: 1m30s
  receivers:
    - {name: pager, webhooks: ["ftp://x"], severities: [critical, urgent]}
    - {name: pager, emails: [ops@example.com]}
    - {name: empty}
    - {webhooks: ["http://10.0.0.9:9999/"]}
"#,
        expect![[r#"
            inventory.yaml:7:14: error: `alert_for`: expected a duration like `30s`, `5m` or `1h` (at least 1s), found `1m30s`
            inventory.yaml:9:32: error: `webhooks`: expected an http:// or https:// URL, found `ftp://x`
            inventory.yaml:9:67: error: `severities`: expected one of `critical`, `warning`, `info`, `none`, found `urgent`
            inventory.yaml:10:14: error: `name`: receiver `pager` is named twice (first at line 9)
            inventory.yaml:10:29: error: `emails`: email receivers need `monitoring.smtp` (smarthost, from) to send through
            inventory.yaml:11:7: error: receiver `empty`: expected at least one of `webhooks` or `emails`
            inventory.yaml:12:7: error: receiver: `name` is required
        "#]],
    );
}

#[test]
fn smtp_authentication_is_checked_with_locations() {
    check(
        r#"
cluster: {name: m}
ssh: {agent: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd, monitoring]}
monitoring:
  smtp: {smarthost: 'mail:587', from: a@example.com, username: alerts, password_file: /pw, password_env: PW}
"#,
        expect![[r#"
            inventory.yaml:7:87: error: `monitoring.smtp`: expected one of `password_file` or `password_env`, found both
        "#]],
    );
    check(
        r#"
cluster: {name: m}
ssh: {agent: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd, monitoring]}
monitoring:
  smtp: {smarthost: 'mail:587', from: a@example.com, username: "al erts", password_env: 1PW}
"#,
        expect![[r#"
            inventory.yaml:7:64: error: `username`: expected a login name without spaces, found `al erts`
            inventory.yaml:7:89: error: `password_env`: expected an environment variable name like `SMTP_PASSWORD`, found `1PW`
        "#]],
    );
    check(
        r#"
cluster: {name: m}
ssh: {agent: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd, monitoring]}
monitoring:
  smtp: {smarthost: 'mail:587', from: a@example.com, username: alerts}
"#,
        expect![[r#"
            inventory.yaml:7:64: error: `monitoring.smtp`: `username` needs its password: `password_file` (a file on this machine) or `password_env` (an environment variable)
        "#]],
    );
    check(
        r#"
cluster: {name: m}
ssh: {agent: true}
hosts:
  - {name: a, address: 10.0.0.1, roles: [etcd, monitoring]}
monitoring:
  smtp: {smarthost: 'mail:587', from: a@example.com, password_env: PW}
"#,
        expect![[r#"
            inventory.yaml:7:9: error: `monitoring.smtp`: a password needs `username`
        "#]],
    );
}

#[test]
fn smtp_authentication_resolves_the_password_file_next_to_the_inventory() {
    let cluster = capstan_inventory::parse_str(
        "cluster: {name: m}\nssh: {agent: true}\nhosts:\n  - {name: a, address: 10.0.0.1, roles: [etcd, monitoring]}\n\
         monitoring:\n  smtp: {smarthost: 'mail:587', from: a@example.com, username: alerts, password_file: secrets/smtp}\n",
        "inventory.yaml",
        std::path::Path::new("/inv"),
    )
    .unwrap();
    let auth = cluster.monitoring.smtp.unwrap().auth.unwrap();
    assert_eq!(auth.username, "alerts");
    assert_eq!(
        auth.password,
        capstan_inventory::SecretSource::File("/inv/secrets/smtp".into())
    );
}

#[test]
fn alert_receivers_resolve() {
    let cluster = capstan_inventory::parse_str(
        "cluster: {name: m}\nssh: {agent: true}\nhosts:\n  - {name: a, address: 10.0.0.1, roles: [etcd, monitoring]}\n\
         monitoring:\n  alert_for: 10s\n  smtp: {smarthost: 'mail.example.com:587', from: alerts@example.com}\n  receivers:\n\
         \x20   - {name: hook, webhooks: ['http://10.0.0.9:9999/alerts']}\n\
         \x20   - {name: mail, emails: [ops@example.com], severities: [critical]}\n",
        "inventory.yaml",
        std::path::Path::new("/inv"),
    )
    .unwrap();
    let m = &cluster.monitoring;
    assert_eq!(m.alert_for.as_deref(), Some("10s"));
    assert_eq!(m.smtp.as_ref().unwrap().smarthost, "mail.example.com:587");
    assert!(m.smtp.as_ref().unwrap().require_tls);
    assert_eq!(m.receivers.len(), 2);
    assert_eq!(m.receivers[0].severities, ["critical", "warning"]);
    assert_eq!(m.receivers[1].emails, ["ops@example.com"]);
    assert_eq!(cluster.versions.alertmanager, "0.25.0");
}

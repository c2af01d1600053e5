//! Issue 16: hostile inventories are read with bounded resources, messages are safe to print
//! and point at the mistake, and values are validated before anything connects.

use std::path::Path;
use std::time::{Duration, Instant};

use capstan_inventory::{import_kubespray, load, parse_str, Diagnostics};
use expect_test::{expect, Expect};

fn corpus(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(name);
    std::fs::read_to_string(path).unwrap()
}

fn diagnostics(input: &str) -> Diagnostics {
    match parse_str(input, "inventory.yaml", Path::new("/inv")) {
        Ok(cluster) => panic!("accepted: {cluster:?}"),
        Err(diagnostics) => diagnostics,
    }
}

fn check(input: &str, expect: Expect) {
    expect.assert_eq(&format!("{}\n", diagnostics(input)));
}

/// Runs `f`, failing if it takes longer than `limit`.
fn timed<T>(limit: Duration, f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = f();
    let elapsed = started.elapsed();
    assert!(elapsed < limit, "took {elapsed:?}");
    (value, elapsed)
}

// 1. Resource bounds.

#[test]
fn billion_laughs_stops_at_the_alias_budget() {
    let (result, _) = timed(Duration::from_secs(5), || diagnostics(&corpus("billion-laughs.yaml")));
    expect![[r#"
        inventory.yaml:8:14: error: invalid YAML: the document holds more than 250000 values with aliases expanded (limit of the inventory reader)
    "#]]
    .assert_eq(&format!("{result}\n"));
}

#[test]
fn deep_block_nesting_stops_at_the_depth_limit() {
    // 100 000 levels in 200 KB: this overflowed the stack when the tree was dropped.
    let text = format!("hosts:\n{}x\n", "- ".repeat(100_000));
    let (result, _) = timed(Duration::from_secs(5), || diagnostics(&text));
    expect![[r#"
        inventory.yaml:2:127: error: invalid YAML: collections are nested more than 64 levels deep (limit of the inventory reader)
    "#]]
    .assert_eq(&format!("{result}\n"));
    let flow = format!("hosts: {}\n", "[".repeat(100_000));
    assert!(diagnostics(&flow).to_string().contains("invalid YAML"));
}

#[test]
fn huge_keys_are_answered_quickly_and_shown_short() {
    for size in [1 << 20, 5 << 20] {
        // An explicit key (`? key`): plain keys longer than 1024 characters are a syntax error.
        let text = format!("cluster: {{name: demo}}\n? {}\n: 1\n", "k".repeat(size));
        // Parsing alone takes about 0.3 s per MiB in a debug build on a loaded machine; the bound
        // is generous, the suggestion itself is checked to be instant in `values`' unit tests.
        let (result, elapsed) = timed(Duration::from_secs(30), || diagnostics(&text));
        let message = result.to_string();
        assert!(message.len() < 600, "{size}: {} bytes of message", message.len());
        assert!(message.contains(&format!("({size} bytes in all)")), "{message}");
        eprintln!("{size}-byte key: {elapsed:?}");
    }
}

#[test]
fn oversized_files_name_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, "#".repeat(capstan_inventory::MAX_FILE_BYTES + 1)).unwrap();
    let error = load(&path).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("larger than 8 MiB (limit of the inventory reader)"),
        "{error}"
    );
    let error = capstan_inventory::import_kubespray_file(&path).unwrap_err();
    assert!(error.to_string().contains("larger than 8 MiB"), "{error}");
}

#[test]
fn import_has_the_same_bounds() {
    let error = import_kubespray(&corpus("billion-laughs.yaml"), "inventory/x/hosts.yaml").unwrap_err();
    assert!(error.to_string().contains("more than 250000 values"), "{error}");
    let error = import_kubespray(&corpus("kubespray-huge-range.ini"), "inventory/x/inventory.ini").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("more than 10000 hosts (limit of the importer)"),
        "{error}"
    );
    // A long chain of `children` groups is walked without recursion.
    let mut ini = String::from("[etcd]\nn1\n");
    for level in 0..20_000 {
        ini.push_str(&format!("[g{}:children]\ng{level}\n", level + 1));
    }
    ini.push_str("[g0:children]\netcd\n[kube_node:children]\ng20000\n");
    let output = import_kubespray(&ini, "inventory/x/inventory.ini").unwrap();
    assert!(output.contains("roles: [etcd, node]"), "{output}");
}

// 2. Output hygiene and locations.

#[test]
fn control_characters_never_reach_the_terminal() {
    let result = diagnostics(&corpus("control-characters.yaml")).to_string();
    assert!(!result.chars().any(|c| c.is_control() && c != '\n'), "{result:?}");
    expect![[r#"
        inventory.yaml:2:9: error: `name`: invalid cluster name `demo\u{1b}[31mred\u{7}`: expected 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`
        inventory.yaml:3:26: error: `user`: invalid user name `\u{1b}]0;owned\u{7}`: expected 1-32 characters of a-z, A-Z, 0-9, `_`, `-` and `.`, starting with a letter or `_`
    "#]]
    .assert_eq(&format!("{result}\n"));
}

#[test]
fn long_values_are_cut_short() {
    let text = format!(
        "cluster: {{name: \"{}\"}}\nssh: {{agent: true}}\nhosts: [{{name: a, address: 10.0.0.1, roles: [etcd]}}]\n",
        "x".repeat(5 << 20)
    );
    let result = diagnostics(&text).to_string();
    assert!(result.len() < 400, "{result}");
    assert!(result.contains("… (5242880 bytes in all)"), "{result}");
}

#[test]
fn syntax_errors_point_at_the_mistake() {
    check(
        &corpus("tab-indent.yaml"),
        expect![[r#"
            inventory.yaml:2:1: error: invalid YAML: while parsing a block mapping, did not find expected key: a tab indents this line; YAML indentation must use spaces
        "#]],
    );
    check(
        &corpus("unclosed-bracket.yaml"),
        expect![[r#"
            inventory.yaml:4:11: error: invalid YAML: `[` is never closed: expected `,` or `]`
        "#]],
    );
    check(
        &corpus("unclosed-brace.yaml"),
        expect![[r#"
            inventory.yaml:1:10: error: invalid YAML: `{` is never closed: expected `,` or `}`
        "#]],
    );
    check(
        &corpus("missing-space.yaml"),
        expect![[r#"
            inventory.yaml:4:7: error: invalid YAML: a space is missing after the colon in `port:22`
        "#]],
    );
    // Alone in a mapping, `port:22` is a valid scalar; the mismatch says what is missing.
    check(
        "cluster:\n  name: demo\nssh:\n  port:22\nhosts: []\n",
        expect![[r#"
            inventory.yaml:4:3: error: expected a mapping for `ssh` (keys: user, port, identity_file, agent, sudo, known_hosts, known_hosts_file, connect_timeout, keepalive, bastion), found `port:22`; a space is missing after the colon (`port: 22`)
            inventory.yaml:5:8: error: no host has the `etcd` role: expected at least one etcd member (3 for high availability)
        "#]],
    );
}

#[test]
fn non_utf8_bytes_have_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yaml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/non-utf8.yaml"),
        &path,
    )
    .unwrap();
    let error = load(&path).unwrap_err().to_string();
    let error = error.replace(&path.display().to_string(), "inventory.yaml");
    expect!["inventory.yaml:2:10: error: invalid UTF-8: byte 0xff at byte offset 18 is not valid UTF-8"]
        .assert_eq(&error);
}

#[test]
fn missing_keys_name_the_mapping() {
    check(
        &corpus("missing-keys.yaml"),
        expect![[r#"
            inventory.yaml:4:5: error: missing required key `address` in `hosts[0]` (host `a`): expected an IP address or DNS name to connect to
            inventory.yaml:6:5: error: missing required key `name` in `hosts[1]`: expected a unique host name
        "#]],
    );
    check(
        "cluster: {name: demo}\nssh: {agent: true, bastion: {port: 22}}\nhosts: [{name: a, address: 10.0.0.1, roles: [etcd]}]\n",
        expect![[r#"
            inventory.yaml:2:29: error: missing required key `address` in `ssh.bastion`: expected the jump host's IP address or DNS name
        "#]],
    );
}

#[test]
fn a_host_repeated_through_an_alias_is_reported_at_the_alias() {
    check(
        &corpus("alias-repeats-host.yaml"),
        expect![[r#"
            inventory.yaml:5:5: error: duplicate host name `a` (first used at line 4); expected each host to have its own
            inventory.yaml:5:5: error: duplicate address `10.0.0.1` (first used at line 4); expected each host to have its own
        "#]],
    );
}

#[test]
fn etcd_count_is_reported_with_the_other_errors() {
    check(
        "cluster: {name: demo}\nssh: {agent: true}\nhosts:\n  - {name: a, address: 10.0.0.300, roles: [etcd]}\n  - {name: b, address: 10.0.0.2, roles: [etcd]}\n",
        expect![[r#"
            inventory.yaml:4:3: error: 2 hosts have the `etcd` role: expected an odd number, since an even-sized etcd cluster tolerates no more failures than one member fewer (set `etcd.allow_even_members: true` to override)
            inventory.yaml:4:24: error: `address`: invalid IPv4 address `10.0.0.300`: expected an IPv4 address, an IPv6 address or a DNS name
        "#]],
    );
}

#[test]
fn closing_hint_depends_on_the_problem() {
    let unreadable = load(Path::new("/nonexistent/capstan/inventory.yaml")).unwrap_err();
    assert_eq!(unreadable.closing_hint(), "check the path and its permissions");
    let positional = diagnostics("cluster: {name: Bad}\n");
    assert!(positional.closing_hint().contains("file:line:column"));
}

// 3. Duplicates in canonical form, value validation.

#[test]
fn duplicates_are_compared_in_canonical_form() {
    check(
        &corpus("duplicates-written-differently.yaml"),
        expect![[r#"
            inventory.yaml:5:24: error: duplicate address `fd00:0:0::21`: the same as `fd00::21` (first used at line 4); expected each host to have its own
            inventory.yaml:7:24: error: duplicate address `NODE.example.com`: the same as `node.example.com` (first used at line 6); expected each host to have its own
            inventory.yaml:8:24: error: duplicate address `node.example.com.`: the same as `node.example.com` (first used at line 6); expected each host to have its own
            inventory.yaml:11:51: error: etcd members share the peer address `192.168.0.1` (first used at line 10); expected each etcd member to have its own
        "#]],
    );
}

#[test]
fn values_are_validated() {
    check(
        &corpus("unvalidated-values.yaml"),
        expect![[r#"
            inventory.yaml:3:9: error: `user`: invalid user name `root; rm -rf /`: expected 1-32 characters of a-z, A-Z, 0-9, `_`, `-` and `.`, starting with a letter or `_`
            inventory.yaml:5:20: error: `connect_timeout`: expected a duration from 1ms to 10m, found 4294967295h
            inventory.yaml:6:14: error: `keepalive`: expected a duration from 0s to 1h, found 2h
            inventory.yaml:8:24: error: `address`: `0.0.0.0` is not a host's address (unspecified, broadcast or multicast): expected the address of one host
            inventory.yaml:12:16: error: `recipients`: `age1` is not a valid age recipient (invalid Bech32 encoding); expected a complete `age1...` public key as age-keygen prints it
            inventory.yaml:12:22: error: `recipients`: `age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8` is not a valid age recipient (invalid Bech32 encoding); expected a complete `age1...` public key as age-keygen prints it
            inventory.yaml:13:13: error: `schedule`: expected a systemd OnCalendar expression such as `daily`, `*-*-* 02:00:00` or `Mon..Fri 22:30`; `every night`: `every` is not a weekday (expected Mon, Tue, ..., Sun or full names)
        "#]],
    );
}

#[test]
fn missing_identity_file_is_a_warning() {
    let cluster = parse_str(
        "cluster: {name: demo}\nssh: {identity_file: /nonexistent/key}\nhosts: [{name: a, address: 10.0.0.1, roles: [etcd]}]\n",
        "inventory.yaml",
        Path::new("/inv"),
    )
    .unwrap();
    expect!["inventory.yaml:2:22: warning: `identity_file`: /nonexistent/key does not exist; connecting will fail until it does"]
        .assert_eq(&cluster.warnings.to_string());
}

// 4. JSON report.

#[test]
fn diagnostics_serialise_for_editors_and_ci() {
    let report = serde_json::to_value(diagnostics(&corpus("missing-space.yaml")).report()).unwrap();
    expect![[r#"
        {
          "diagnostics": [
            {
              "column": 7,
              "file": "inventory.yaml",
              "hint": "write `port: 22`",
              "line": 4,
              "message": "invalid YAML: a space is missing after the colon in `port:22`",
              "severity": "error"
            }
          ],
          "errors": 1,
          "valid": false,
          "warnings": 0
        }"#]]
    .assert_eq(&serde_json::to_string_pretty(&report).unwrap());
}

// 5. Kubespray INI.

#[test]
fn kubespray_ini_imports_like_yaml() {
    let output = import_kubespray(&corpus("kubespray-inventory.ini"), "inventory/prod/inventory.ini").unwrap();
    parse_str(&output, "imported.yaml", Path::new("/inv")).unwrap();
    expect![[r#"
        # capstan inventory imported from the Kubespray inventory inventory/prod/inventory.ini
        # Groups became roles: kube_control_plane -> control_plane, etcd -> etcd, kube_node -> node.
        # Review before use: the cluster name, SSH authentication and known_hosts policy.
        # Not imported: all.vars.ansible_become, etcd_member_name.

        cluster:
          name: prod
        ssh:
          user: ubuntu
          agent: true  # Kubespray named no key; capstan uses keys from ssh-agent
        hosts:
          - name: node1
            address: 95.54.0.12
            private_address: 10.3.0.1
            roles: [etcd, control_plane]
          - name: node2
            address: 95.54.0.13
            private_address: 10.3.0.2
            roles: [etcd, control_plane]
          - name: node3
            address: 95.54.0.14
            private_address: 10.3.0.3
            roles: [etcd, control_plane]
          - name: worker1
            address: worker1
            roles: [node]
          - name: worker2
            address: worker2
            roles: [node]
          - name: worker3
            address: worker3
            roles: [node]
    "#]]
    .assert_eq(&output);
}

#[test]
fn kubespray_format_is_detected() {
    use capstan_inventory::KubesprayFormat;
    let ini = corpus("kubespray-inventory.ini");
    assert_eq!(KubesprayFormat::detect(&ini, "inventory.ini"), KubesprayFormat::Ini);
    assert_eq!(KubesprayFormat::detect(&ini, "hosts"), KubesprayFormat::Ini);
    assert_eq!(
        KubesprayFormat::detect("node1 ansible_host=10.0.0.1\n", "hosts"),
        KubesprayFormat::Ini
    );
    assert_eq!(
        KubesprayFormat::detect("all:\n  hosts: {}\n", "hosts"),
        KubesprayFormat::Yaml
    );
    assert_eq!(KubesprayFormat::detect("[all]\n", "hosts.yaml"), KubesprayFormat::Yaml);
}

#[test]
fn kubespray_ini_ranges_ports_and_errors() {
    let output = import_kubespray(
        "[etcd]\nn[1:3]\n[kube_node]\nw[a:b]:2222 ansible_user=core\nw[08:10:2] ansible_user=core ansible_port=2222\n",
        "inventory/lab/inventory.ini",
    )
    .unwrap();
    for expected in [
        "name: n1",
        "name: n3",
        "name: wa",
        "name: wb",
        "name: w08",
        "name: w10",
        "port: 2222",
    ] {
        assert!(output.contains(expected), "{expected} missing in\n{output}");
    }
    assert!(!output.contains("name: w09"), "{output}");
    let error = import_kubespray("[etcd]\nn[3:1]\n[bad section\n", "inventory/x/inventory.ini").unwrap_err();
    expect![[r#"
        inventory/x/inventory.ini:1:1: error: no host is in the `etcd` group: capstan needs at least one etcd member
        inventory/x/inventory.ini:2:1: error: host `n[3:1]`: a host range must not end before it starts
        inventory/x/inventory.ini:3:1: error: `[bad section` is not a section header: expected `[group]`, `[group:children]` or `[group:vars]`
    "#]]
    .assert_eq(&format!("{error}\n"));
}

#[test]
fn kubespray_lists_everything_not_imported() {
    let output = import_kubespray(&corpus("kubespray-hosts.yaml"), "inventory/prod/hosts.yaml").unwrap();
    assert!(
        output.contains("# Not imported: all.vars.ansible_become, node_labels."),
        "{output}"
    );
    let output = import_kubespray(
        "[etcd]\nn1\n[calico_rr]\nn1\n[kube_node:vars]\nfoo=bar\n",
        "inventory/x/inventory.ini",
    )
    .unwrap();
    assert!(
        output.contains("# Groups not imported (no capstan role): calico_rr."),
        "{output}"
    );
    assert!(output.contains("# Not imported: kube_node.vars."), "{output}");
}

#[test]
fn kubespray_example_names_the_real_command() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubespray-hosts.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("capstan inventory import --from kubespray"), "{text}");
    assert!(!text.contains("import-kubespray"));
}

//! `api_endpoint`: its three modes resolve into the model, and every mistake is reported at its
//! place. Each case is the section's text (appended to a small inventory) and the expected model
//! or diagnostics. Refresh with `UPDATE_EXPECT=1 cargo test -p capstan-inventory --test api_endpoint`.

use std::path::Path;

use capstan_inventory::{parse_str, ApiEndpoint};
use expect_test::{expect, Expect};

const HOSTS: &str = "\
cluster: {name: demo}
ssh: {agent: true}
hosts:
  - {name: cp1, address: 10.0.0.11, roles: [etcd, control_plane]}
  - {name: cp2, address: 10.0.0.12, private_address: 192.168.0.12, roles: [etcd, control_plane]}
  - {name: n1, address: 10.0.0.21, roles: [etcd, node]}
";

fn render(section: &str) -> String {
    let text = format!("{HOSTS}{section}");
    match parse_str(&text, "inventory.yaml", Path::new("/inv")) {
        Ok(cluster) => format!("{:?}\n", cluster.api_endpoint),
        Err(diagnostics) => format!("{diagnostics}\n"),
    }
}

fn check(section: &str, expect: Expect) {
    expect.assert_eq(&render(section));
}

#[test]
fn modes_resolve() {
    check(
        "",
        expect![[r#"
        Local
    "#]],
    );
    check(
        "api_endpoint: {mode: local}\n",
        expect![[r#"
        Local
    "#]],
    );
    check(
        "api_endpoint:\n",
        expect![[r#"
        Local
    "#]],
    );
    check(
        "api_endpoint: {mode: vip, address: 10.0.0.250}\n",
        expect![[r#"
            Vip { address: "10.0.0.250", interface: None, router_id: None }
        "#]],
    );
    check(
        "api_endpoint: {mode: vip, address: 10.0.0.250, interface: eth1, router_id: 51}\n",
        expect![[r#"
            Vip { address: "10.0.0.250", interface: Some("eth1"), router_id: Some(51) }
        "#]],
    );
    check(
        "api_endpoint: {mode: external, address: api.example.com}\n",
        expect![[r#"
            External { address: "api.example.com", port: 6443 }
        "#]],
    );
    check(
        "api_endpoint: {mode: external, address: 203.0.113.7, port: 443}\n",
        expect![[r#"
            External { address: "203.0.113.7", port: 443 }
        "#]],
    );
}

#[test]
fn mistakes_are_reported_where_they_are() {
    check(
        "api_endpoint: {mode: vpi}\n",
        expect![[r#"
            inventory.yaml:7:22: error: `mode`: expected one of `local`, `vip`, `external`, found `vpi`; did you mean `vip`?
        "#]],
    );
    check(
        "api_endpoint: {mode: vip}\n",
        expect![[r#"
            inventory.yaml:7:15: error: missing required key `address` in `api_endpoint`: expected the virtual IPv4 address
        "#]],
    );
    check(
        "api_endpoint:\n  mode: vip\n  address: 10.0.0.300\n  interface: eth0/1\n  router_id: 0\n",
        expect![[r#"
            inventory.yaml:9:12: error: `address`: expected a unicast IPv4 address for the virtual IP, found `10.0.0.300`
            inventory.yaml:10:14: error: `interface`: invalid interface name `eth0/1`: expected 1-15 characters without `/`, `:` or spaces, such as `eth0`
            inventory.yaml:11:14: error: `router_id`: expected an integer from 1 to 255, found `0`
        "#]],
    );
    check(
        "api_endpoint: {mode: vip, address: 192.168.0.12}\n",
        expect![[r#"
            inventory.yaml:7:36: error: `address`: the virtual IP `192.168.0.12` is host `cp2`'s address; expected an unused address in the hosts' subnet
        "#]],
    );
    check(
        "api_endpoint: {mode: local, address: 10.0.0.250, port: 443}\n",
        expect![[r#"
            inventory.yaml:7:38: error: `address` does not apply to `api_endpoint.mode: local`; expected only: mode
            inventory.yaml:7:56: error: `port` does not apply to `api_endpoint.mode: local`; expected only: mode
        "#]],
    );
    check(
        "api_endpoint: {mode: external, address: lb..example.com, port: 70000, router_id: 3}\n",
        expect![[r#"
            inventory.yaml:7:41: error: `address`: invalid address `lb..example.com`: expected an IPv4 address, an IPv6 address or a DNS name
            inventory.yaml:7:64: error: `port`: expected an integer from 1 to 65535, found `70000`
            inventory.yaml:7:82: error: `router_id` does not apply to `api_endpoint.mode: external`; expected only: mode, address, port
        "#]],
    );
    check(
        "api_endpoint: {mode: vip, adress: 10.0.0.250}\n",
        expect![[r#"
            inventory.yaml:7:15: error: missing required key `address` in `api_endpoint`: expected the virtual IPv4 address
            inventory.yaml:7:27: error: unknown key `adress` in `api_endpoint`; did you mean `address`?
        "#]],
    );
}

#[test]
fn a_vip_needs_control_plane_hosts() {
    let text = "\
cluster: {name: demo}
ssh: {agent: true}
hosts:
  - {name: e1, address: 10.0.0.11, roles: [etcd]}
api_endpoint: {mode: vip, address: 10.0.0.250}
";
    let diagnostics = parse_str(text, "inventory.yaml", Path::new("/inv")).unwrap_err();
    expect![[r#"
        inventory.yaml:5:36: error: `api_endpoint.mode: vip` needs hosts to hold the address: expected at least one host with the `control_plane` role
    "#]]
    .assert_eq(&format!("{diagnostics}\n"));
}

#[test]
fn the_outside_address_is_the_vip_or_the_load_balancer() {
    assert_eq!(ApiEndpoint::Local.address(), None);
    let vip = ApiEndpoint::Vip {
        address: "10.0.0.250".into(),
        interface: None,
        router_id: None,
    };
    assert_eq!(vip.address(), Some("10.0.0.250"));
    let external = ApiEndpoint::External {
        address: "api.example.com".into(),
        port: 443,
    };
    assert_eq!(external.address(), Some("api.example.com"));
}

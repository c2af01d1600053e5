//! What the endpoint's files say, rendered purely from the inventory: haproxy's config on every
//! host, and keepalived's config and health check on the control-plane hosts in VIP mode.
//! Templates are in `templates/files/endpoint/`.

use capstan_inventory::{ApiEndpoint, Cluster, Host, Role, DEFAULT_API_PORT};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::kube_pki::CA_CERT;

/// Where every host's local endpoint listens (on 127.0.0.1; on control-plane hosts on every
/// address, so the VIP and outside clients reach it too).
pub const ENDPOINT_PORT: u16 = DEFAULT_API_PORT;
/// The API server's secure port on the control-plane hosts: not 6443, which the endpoint holds.
pub const APISERVER_PORT: u16 = 6444;
/// haproxy's read-only statistics page, on 127.0.0.1 only (`/stats`, `/stats;csv`).
pub const STATS_PORT: u16 = 8404;

pub const HAPROXY_CONFIG: &str = "/etc/haproxy/haproxy.cfg";
pub const KEEPALIVED_CONFIG: &str = "/etc/keepalived/keepalived.conf";
pub const CHECK_SCRIPT: &str = "/etc/keepalived/capstan-check-endpoint.sh";

/// haproxy's active health checks of the API servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// Between two checks of one server, in milliseconds.
    pub interval_ms: u32,
    /// Failed checks in a row that mark a server down.
    pub fall: u32,
    /// Passed checks in a row that mark it up again.
    pub rise: u32,
    /// How long one check may take (connect, TLS handshake, answer), in milliseconds.
    pub timeout_ms: u32,
}

impl HealthCheck {
    pub const DEFAULT: HealthCheck = HealthCheck {
        interval_ms: 1000,
        fall: 2,
        rise: 2,
        timeout_ms: 2000,
    };

    /// The longest time from a server failing to haproxy marking it down: `fall` checks, each
    /// at most an interval apart plus its timeout.
    pub fn down_within_ms(&self) -> u32 {
        self.fall * (self.interval_ms + self.timeout_ms)
    }
}

/// One API server behind the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub name: String,
    pub address: String,
    pub port: u16,
}

/// Every control-plane host's API server, at its private address, in inventory order.
pub fn backends(cluster: &Cluster) -> Vec<Backend> {
    cluster
        .hosts_with_role(Role::ControlPlane)
        .map(|host| Backend {
            name: host.name.clone(),
            address: bracket_ipv6(&host.private_address),
            port: APISERVER_PORT,
        })
        .collect()
}

fn bracket_ipv6(address: &str) -> String {
    match address.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{address}]"),
        Err(_) => address.to_string(),
    }
}

/// Where `host`'s endpoint listens: loopback on every host; on control-plane hosts every
/// address (the VIP moves between them, and outside clients may use any of them).
pub fn binds(host: &Host) -> Vec<String> {
    if host.has_role(Role::ControlPlane) {
        vec![format!(":{ENDPOINT_PORT}")]
    } else {
        vec![format!("127.0.0.1:{ENDPOINT_PORT}")]
    }
}

#[derive(Serialize)]
struct HaproxyContext<'a> {
    cluster: &'a str,
    ca_sha256: String,
    ca_file: &'a str,
    binds: Vec<String>,
    servers: &'a [Backend],
    check_interval: String,
    fall: u32,
    rise: u32,
    timeout_check: String,
    timeout_connect: &'a str,
    timeout_idle: &'a str,
    hard_stop_after: &'a str,
    stats_port: u16,
}

/// haproxy's config for `host`, checking `backends` against the CA `ca_pem` (whose digest is in
/// the file, so a new CA changes the file and haproxy reloads).
pub fn render_haproxy(
    cluster: &Cluster,
    host: &Host,
    backends: &[Backend],
    ca_pem: &str,
    ca_file: &str,
    check: HealthCheck,
) -> Result<String, capstan_templates::TemplateError> {
    capstan_templates::render(
        "endpoint/haproxy.cfg",
        HaproxyContext {
            cluster: &cluster.name,
            ca_sha256: hex::encode(Sha256::digest(ca_pem.as_bytes())),
            ca_file,
            binds: binds(host),
            servers: backends,
            check_interval: format!("{}ms", check.interval_ms),
            fall: check.fall,
            rise: check.rise,
            timeout_check: format!("{}ms", check.timeout_ms),
            timeout_connect: "2s",
            // Longer than the API server's longest watch (--min-request-timeout 1800s, so
            // watches end after 30-60 minutes).
            timeout_idle: "1h",
            hard_stop_after: "1h",
            stats_port: STATS_PORT,
        },
    )
}

/// The VRRP router id: the inventory's, or one derived from the cluster name (1-255), so two
/// capstan clusters on one network differ unless their names hash alike.
pub fn router_id(cluster: &Cluster) -> u8 {
    match &cluster.api_endpoint {
        ApiEndpoint::Vip {
            router_id: Some(id), ..
        } => *id,
        _ => {
            let digest = Sha256::digest(cluster.name.as_bytes());
            (digest[0] % 255) + 1
        }
    }
}

/// keepalived's view of one control-plane host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VrrpConfig {
    pub cluster: String,
    pub host: String,
    pub interface: String,
    pub router_id: u8,
    /// Only breaks ties of the first election (`nopreempt` keeps the VIP where it is later).
    pub priority: u8,
    pub source: String,
    pub peers: Vec<String>,
    pub vip: String,
    pub check_script: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VrrpError {
    #[error("{host}: keepalived's unicast VRRP needs an IPv4 private address, found `{address}`")]
    NotIpv4 { host: String, address: String },
    #[error("{host}: no network interface holds {address}; set api_endpoint.interface")]
    NoInterface { host: String, address: String },
}

/// keepalived's config for control-plane host `host` (`interface`: from the inventory, or the
/// one [`interface_with_address`] found). `None` unless the inventory asks for a VIP.
pub fn vrrp_config(cluster: &Cluster, host: &Host, interface: Option<&str>) -> Result<Option<VrrpConfig>, VrrpError> {
    let ApiEndpoint::Vip {
        address,
        interface: configured,
        ..
    } = &cluster.api_endpoint
    else {
        return Ok(None);
    };
    let ipv4 = |h: &Host| match h.private_address.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => Ok(ip.to_string()),
        Err(_) => Err(VrrpError::NotIpv4 {
            host: h.name.clone(),
            address: h.private_address.clone(),
        }),
    };
    let control_plane: Vec<&Host> = cluster.hosts_with_role(Role::ControlPlane).collect();
    let index = control_plane.iter().position(|h| h.name == host.name).unwrap_or(0);
    let source = ipv4(host)?;
    let peers = control_plane
        .iter()
        .filter(|h| h.name != host.name)
        .map(|h| ipv4(h))
        .collect::<Result<Vec<_>, _>>()?;
    let interface = configured
        .as_deref()
        .or(interface)
        .ok_or_else(|| VrrpError::NoInterface {
            host: host.name.clone(),
            address: source.clone(),
        })?;
    Ok(Some(VrrpConfig {
        cluster: cluster.name.clone(),
        host: host.name.clone(),
        interface: interface.to_string(),
        router_id: router_id(cluster),
        priority: 150u8.saturating_sub(index.min(149) as u8),
        source,
        peers,
        vip: address.clone(),
        check_script: CHECK_SCRIPT.to_string(),
    }))
}

pub fn render_keepalived(config: &VrrpConfig) -> Result<String, capstan_templates::TemplateError> {
    capstan_templates::render("endpoint/keepalived.conf", config)
}

pub fn render_check_script() -> Result<String, capstan_templates::TemplateError> {
    #[derive(Serialize)]
    struct Context {
        ca_file: &'static str,
        port: u16,
    }
    capstan_templates::render(
        "endpoint/check-endpoint.sh",
        Context {
            ca_file: CA_CERT,
            port: ENDPOINT_PORT,
        },
    )
}

/// The interface holding `address`, from `ip -o -4 addr show` output.
pub fn interface_with_address(ip_output: &str, address: &str) -> Option<String> {
    ip_output.lines().find_map(|line| {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let name = tokens.get(1)?.trim_end_matches(':');
        let family = tokens.get(2)?;
        let cidr = tokens.get(3)?;
        let ip = cidr.split('/').next()?;
        (*family == "inet" && ip == address).then(|| name.split('@').next().unwrap_or(name).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;
    use std::path::Path;

    fn cluster(api_endpoint: &str) -> Cluster {
        crate::test_cluster(api_endpoint)
    }

    #[test]
    fn backends_are_the_control_plane_hosts_private_addresses() {
        let c = cluster("");
        let listed: Vec<String> = backends(&c)
            .iter()
            .map(|b| format!("{} {}:{}", b.name, b.address, b.port))
            .collect();
        assert_eq!(
            listed,
            ["cp1 10.0.0.11:6444", "cp2 192.168.0.12:6444", "cp3 10.0.0.13:6444"]
        );
    }

    #[test]
    fn nodes_listen_on_loopback_and_control_plane_hosts_everywhere() {
        let c = cluster("");
        let binds_of = |name: &str| binds(c.host(name).unwrap());
        assert_eq!(binds_of("n1"), ["127.0.0.1:6443"]);
        assert_eq!(binds_of("cp1"), [":6443"]);
        assert_eq!(binds_of("cp3"), [":6443"]);
    }

    #[test]
    fn haproxy_config_for_a_node() {
        let c = cluster("");
        let text = render_haproxy(
            &c,
            c.host("n1").unwrap(),
            &backends(&c),
            "CA",
            CA_CERT,
            HealthCheck::DEFAULT,
        )
        .unwrap();
        expect![[r#"
            # Written by capstan (API endpoint of cluster demo); changes here are overwritten.
            # Kubernetes CA sha256 4b650e5c4785025dee7bd65e3c5c527356717d7a1c0bfef5b4ada8ca1e9cbe17: a new CA changes this file, so haproxy reloads and re-reads it.
            global
                log /dev/log local0 notice
                chroot /var/lib/haproxy
                stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners
                user haproxy
                group haproxy
                # Old workers keep serving their connections (watches) after a reload, for at most this long.
                hard-stop-after 1h

            defaults
                mode tcp
                log global
                option tcplog
                option dontlognull
                option redispatch
                retries 3
                timeout connect 2s
                # Watches stay open for a long time with little traffic.
                timeout client 1h
                timeout server 1h
                timeout check 2000ms

            frontend kube-apiserver
                bind 127.0.0.1:6443
                default_backend kube-apiserver

            backend kube-apiserver
                balance leastconn
                option httpchk
                http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
                http-check expect status 200
                default-server inter 1000ms fall 2 rise 2 check check-ssl verify required ca-file /etc/kubernetes/pki/ca.crt
                server cp1 10.0.0.11:6444
                server cp2 192.168.0.12:6444
                server cp3 10.0.0.13:6444

            frontend stats
                mode http
                bind 127.0.0.1:8404
                stats enable
                stats uri /stats
                stats refresh 5s
        "#]]
        .assert_eq(&text);
    }

    #[test]
    fn the_check_window_bounds_detection() {
        assert_eq!(HealthCheck::DEFAULT.down_within_ms(), 6000);
    }

    #[test]
    fn router_ids_come_from_the_inventory_or_the_cluster_name() {
        assert_eq!(
            router_id(&cluster(
                "api_endpoint: {mode: vip, address: 10.0.0.250, router_id: 7}\n"
            )),
            7
        );
        let derived = router_id(&cluster("api_endpoint: {mode: vip, address: 10.0.0.250}\n"));
        assert!(derived >= 1);
        assert_eq!(derived, router_id(&cluster("")), "derived from the name alone");
    }

    #[test]
    fn vrrp_peers_are_the_other_control_plane_hosts() {
        let c = cluster("api_endpoint: {mode: vip, address: 10.0.0.250}\n");
        let cp2 = vrrp_config(&c, c.host("cp2").unwrap(), Some("eth1")).unwrap().unwrap();
        assert_eq!(cp2.source, "192.168.0.12");
        assert_eq!(cp2.peers, ["10.0.0.11", "10.0.0.13"]);
        assert_eq!(cp2.priority, 149);
        assert_eq!(cp2.interface, "eth1");
        expect![[r#"
            # Written by capstan (API endpoint VIP of cluster demo); changes here are overwritten.
            global_defs {
                router_id cp2
                script_user root
                enable_script_security
            }

            vrrp_script api_endpoint {
                script "/etc/keepalived/capstan-check-endpoint.sh"
                interval 1
                timeout 2
                fall 2
                rise 2
            }

            vrrp_instance api_endpoint {
                # Every host starts as backup and the VIP stays where it is (nopreempt): a host coming back
                # does not take the address away from a healthy holder, which would cut its connections.
                state BACKUP
                nopreempt
                interface eth1
                virtual_router_id 0
                priority 149
                advert_int 1
                unicast_src_ip 192.168.0.12
                unicast_peer {
                    10.0.0.11
                    10.0.0.13
                }
                virtual_ipaddress {
                    10.0.0.250/32 dev eth1
                }
                track_script {
                    api_endpoint
                }
            }
        "#]]
        .assert_eq(
            &render_keepalived(&cp2)
                .unwrap()
                .replace(&format!("virtual_router_id {}", cp2.router_id), "virtual_router_id 0"),
        );
        assert_eq!(
            vrrp_config(&cluster(""), c.host("cp1").unwrap(), Some("eth0")),
            Ok(None)
        );
        assert_eq!(
            vrrp_config(&c, c.host("cp1").unwrap(), None),
            Err(VrrpError::NoInterface {
                host: "cp1".into(),
                address: "10.0.0.11".into()
            })
        );
        let configured = cluster("api_endpoint: {mode: vip, address: 10.0.0.250, interface: bond0}\n");
        let cp1 = vrrp_config(&configured, configured.host("cp1").unwrap(), Some("eth0"))
            .unwrap()
            .unwrap();
        assert_eq!(cp1.interface, "bond0", "the inventory's interface wins");
    }

    #[test]
    fn vrrp_needs_ipv4_private_addresses() {
        let text = "cluster: {name: demo}\nssh: {agent: true}\nhosts:\n\
             - {name: cp1, address: 10.0.0.11, roles: [etcd, control_plane]}\n\
             - {name: cp2, address: cp2.example.com, roles: [control_plane]}\n\
             api_endpoint: {mode: vip, address: 10.0.0.250}\n";
        let c = capstan_inventory::parse_str(text, "inventory.yaml", Path::new("/inv")).unwrap();
        assert_eq!(
            vrrp_config(&c, c.host("cp1").unwrap(), Some("eth0")),
            Err(VrrpError::NotIpv4 {
                host: "cp2".into(),
                address: "cp2.example.com".into()
            })
        );
    }

    #[test]
    fn the_interface_is_found_by_address() {
        let output = "\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: host0    inet 10.33.0.2/24 brd 10.33.0.255 scope global host0\\       valid_lft forever preferred_lft forever
2: host0    inet 10.33.0.250/32 scope global host0\\       valid_lft forever preferred_lft forever
3: eth1@if9    inet 192.168.7.3/24 scope global eth1\\       valid_lft forever preferred_lft forever
";
        assert_eq!(interface_with_address(output, "10.33.0.2").as_deref(), Some("host0"));
        assert_eq!(interface_with_address(output, "192.168.7.3").as_deref(), Some("eth1"));
        assert_eq!(interface_with_address(output, "10.33.0.3"), None);
        assert_eq!(interface_with_address(output, "10.33.0.2/24"), None);
    }
}

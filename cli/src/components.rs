//! Every component capstan knows, in one list. The engine never names a component: commands hand
//! it this list, and it learns each component's roles and needs through
//! [`capstan_provisioner::component::Component`].

use capstan_backup::ScheduleComponent;
use capstan_endpoint::EndpointComponent;
use capstan_etcd::EtcdComponent;
use capstan_kubernetes::KubernetesComponent;
use capstan_logging::LoggingComponent;
use capstan_monitoring::MonitoringComponent;
use capstan_nodes::NodesComponent;
use capstan_provisioner::component::Component;

/// All components. `capstan plan`/`apply` run the installable ones the inventory enables in
/// dependency order ([`Component::after`]): etcd → API endpoint → control plane → nodes → addons →
/// monitoring → logging, as those components arrive. Preflight checks ports in this order within
/// a role.
pub static ALL: &[&dyn Component] = &[
    &EtcdComponent,
    &EndpointComponent,
    &NodesComponent,
    &KubernetesComponent,
    &MonitoringComponent { sources: all },
    &LoggingComponent,
    &ScheduleComponent,
];

/// [`ALL`], for monitoring, which scrapes every component's targets.
fn all() -> &'static [&'static dyn Component] {
    ALL
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    use capstan_inventory::Role;
    use capstan_provisioner::check::{
        check_ports, parse_ss_listeners, required_ports, CheckResult, CheckStatus, Listener,
    };

    #[test]
    fn components_have_distinct_names_and_ports_only_for_their_roles() {
        let names: BTreeSet<&str> = ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), ALL.len());
        let inventory_roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        for component in ALL {
            for role in component.roles() {
                assert!(
                    inventory_roles.contains(role),
                    "{}: unknown role {role}",
                    component.name()
                );
            }
            for port in component.required_ports() {
                assert!(component.roles().contains(&port.role), "{}: {port:?}", component.name());
            }
        }
    }

    #[test]
    fn roles_map_to_ports() {
        let ports: Vec<u16> = required_ports(
            ALL,
            &[
                "etcd".into(),
                "control_plane".into(),
                "node".into(),
                "etcd".into(),
                "monitoring".into(),
            ],
        )
        .iter()
        .map(|p| p.port)
        .collect();
        assert_eq!(
            ports,
            vec![2379, 2380, 9100, 6443, 8404, 6444, 10257, 10259, 10250, 9090, 9093, 9094]
        );
    }

    /// Real `ss -ltnpH` output (sshd and etcd as root; the last line from `ss -ltnH` without -p).
    const SS: &str = "\
LISTEN 0      128        127.0.0.1:40111      0.0.0.0:*    users:((\"sshd\",pid=4242,fd=3))
LISTEN 0      4096       127.0.0.1:2379       0.0.0.0:*    users:((\"etcd\",pid=77,fd=7))
LISTEN 0      4096            [::]:6443          [::]:*    users:((\"nginx\",pid=90,fd=6),(\"nginx\",pid=91,fd=6))
LISTEN 0      4096               *:10257            *:*    users:((\"kube-controller\",pid=12,fd=3))
LISTEN 0      128          0.0.0.0:10250      0.0.0.0:*
";

    #[test]
    fn ss_output_parses() {
        let listeners = parse_ss_listeners(SS);
        assert_eq!(listeners.len(), 5);
        assert_eq!(
            listeners[0],
            Listener {
                address: "127.0.0.1".into(),
                port: 40111,
                process: Some("sshd".into())
            }
        );
        assert_eq!(listeners[2].address, "[::]");
        assert_eq!(listeners[4].process, None);
    }

    #[test]
    fn ports_in_use_by_others_fail_and_ours_pass() {
        let listeners = parse_ss_listeners(SS);
        let results = check_ports(
            &listeners,
            &required_ports(ALL, &["etcd".into(), "control_plane".into(), "node".into()]),
        );
        let by_port: BTreeMap<&str, &CheckResult> = results.iter().map(|r| (r.name.as_str(), r)).collect();
        assert_eq!(by_port["port 2379"].status, CheckStatus::Pass);
        assert!(by_port["port 2379"].detail.contains("already served by etcd"));
        assert_eq!(by_port["port 2380"].status, CheckStatus::Pass);
        assert_eq!(by_port["port 6443"].status, CheckStatus::Fail);
        assert!(
            by_port["port 6443"].detail.contains("nginx on [::]"),
            "{}",
            by_port["port 6443"].detail
        );
        assert_eq!(
            by_port["port 10257"].status,
            CheckStatus::Pass,
            "comm names are truncated to 15 bytes"
        );
        assert_eq!(by_port["port 10259"].status, CheckStatus::Pass);
        assert_eq!(by_port["port 10250"].status, CheckStatus::Fail);
        assert!(by_port["port 10250"].detail.contains("unknown process"));
    }
}

//! Inventory hosts → SSH targets (`capstan_provisioner::targets`), from a parsed inventory.

use std::path::Path;

use capstan_provisioner::ssh::{KnownHostsPolicy, SudoMode};
use capstan_provisioner::targets::ssh_target;

#[test]
fn per_host_overrides_and_bastion_reach_the_target() {
    let text = r#"
cluster: {name: t}
ssh:
  user: admin
  identity_file: /keys/id
  known_hosts: accept-new
  known_hosts_file: /kh
  bastion: {address: 192.0.2.1, port: 2200, user: jump}
hosts:
  - name: a
    address: 10.0.0.1
    roles: [etcd]
    ssh: {port: 2222, sudo: never}
"#;
    let cluster = capstan_inventory::parse_str(text, "t.yaml", Path::new("/")).unwrap();
    let target = ssh_target(&cluster.hosts[0]);
    assert_eq!(
        (target.address.as_str(), target.port, target.user.as_str()),
        ("10.0.0.1", 2222, "admin")
    );
    assert_eq!(target.sudo, SudoMode::Never);
    assert_eq!(target.known_hosts, KnownHostsPolicy::AcceptNew);
    assert_eq!(target.identity_file.as_deref(), Some(Path::new("/keys/id")));
    let jump = target.bastion.expect("bastion");
    assert_eq!(
        (jump.address.as_str(), jump.port, jump.user.as_str()),
        ("192.0.2.1", 2200, "jump")
    );
    assert_eq!(jump.identity_file.as_deref(), Some(Path::new("/keys/id")));
    assert!(jump.bastion.is_none());
}

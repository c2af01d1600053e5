//! What `capstan reset` removes of etcd on a member, and the quorum check of a partial reset.

use std::sync::Arc;

use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::component::ComponentError;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{Absent, Command, Operation, RemovedUnit, Service};

use crate::apply::{BIN_DIR, SERVICE};
use crate::config::{DEFAULT_CONFIG_FILE, DEFAULT_PKI_DIR};
use crate::restore::{SAFETY_DIR, STAGING_DIR};

/// The binaries of etcd's release tarball (etcdutl only from 3.5 on: absent is fine).
const BINARIES: [&str; 3] = ["etcd", "etcdctl", "etcdutl"];

/// Stop and disable etcd, then remove its unit, binaries, config and PKI (the CA key with it),
/// data directory (and what a forced restore moved aside), and restore's staging and safety
/// directories.
pub fn teardown(cluster: &Cluster, host: &Host) -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
    if !host.roles.contains(&Role::Etcd) {
        return Ok(Vec::new());
    }
    let service = Service::new(SERVICE).map_err(|e| ComponentError {
        component: "etcd",
        message: e.to_string(),
        hint: None,
    })?;
    let mut ops: Vec<Arc<dyn Operation>> = vec![
        Arc::new(service.enabled(false).running(false)),
        Arc::new(RemovedUnit::new(&format!("{SERVICE}.service"))),
    ];
    for binary in BINARIES {
        ops.push(Arc::new(Absent::new(&format!("{BIN_DIR}/{binary}"))));
    }
    let config_dir = std::path::Path::new(DEFAULT_CONFIG_FILE)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/etc/etcd".into());
    debug_assert!(DEFAULT_PKI_DIR.starts_with(&config_dir));
    ops.push(Arc::new(Absent::new(&config_dir)));
    ops.push(Arc::new(Absent::new(&cluster.etcd.data_dir.display().to_string())));
    // What a forced restore moved aside (`<data dir>.before-restore-<stamp>`).
    let aside = format!("{}.before-restore-", cluster.etcd.data_dir.display());
    let pattern = format!("{}*", quote(&aside));
    ops.push(Arc::new(
        Command::new(&format!("remove {aside}*"), &format!("rm -rf -- {pattern}"))
            .unless(&format!("! ls -d -- {pattern} >/dev/null 2>&1")),
    ));
    ops.push(Arc::new(Absent::new(STAGING_DIR)));
    ops.push(Arc::new(Absent::new(SAFETY_DIR)));
    Ok(ops)
}

/// Resetting some members but not all leaves the others running with fewer members; refuse when
/// they would be too few for a quorum of the membership (which still counts the reset ones).
pub fn check_partial_reset(members: usize, reset: usize) -> Result<(), String> {
    if reset == 0 || reset == members {
        return Ok(());
    }
    let quorum = members / 2 + 1;
    let left = members - reset;
    if left < quorum {
        return Err(format!(
            "resetting {reset} of {members} etcd members leaves {left}, fewer than the quorum of {quorum}: \
             the remaining members would stop serving"
        ));
    }
    Ok(())
}

pub fn check_reset(cluster: &Cluster, hosts: &[&Host]) -> Result<(), ComponentError> {
    let members = cluster.hosts_with_role(Role::Etcd).count();
    let reset = hosts.iter().filter(|h| h.roles.contains(&Role::Etcd)).count();
    check_partial_reset(members, reset).map_err(|message| ComponentError {
        component: "etcd",
        message,
        hint: Some(
            "reset every etcd host at once, or fewer of them; --force resets them anyway (the rest lose quorum)".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_resets_keep_a_quorum() {
        let table = [
            (3, 0, true),
            (3, 1, true),
            (3, 2, false),
            (3, 3, true),
            (5, 2, true),
            (5, 3, false),
            (1, 1, true),
            (4, 2, false),
            (4, 1, true),
        ];
        for (members, reset, ok) in table {
            assert_eq!(check_partial_reset(members, reset).is_ok(), ok, "{reset} of {members}");
        }
        assert_eq!(
            check_partial_reset(3, 2).unwrap_err(),
            "resetting 2 of 3 etcd members leaves 1, fewer than the quorum of 2: the remaining members would stop serving"
        );
    }
}

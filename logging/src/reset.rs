//! What `capstan reset` removes of logging on a host ([`crate::LoggingComponent`]'s teardown):
//! every unit, script, certificate, key and state file capstan wrote, the stored journals on
//! `logging` hosts and the uploader's user. The Debian packages stay installed (other software may
//! use them), and so does the host's own journal; journald returns to its own settings.

use std::sync::Arc;

use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::ops::{Absent, Command, Operation, OperationExt, RemovedUnit, Service};

use crate::config::{self, aggregators, senders};
use crate::pki::PKI_DIR;

/// A unit stopped and disabled (when it exists), then its file removed.
fn removed(ops: &mut Vec<Arc<dyn Operation>>, service: &str, unit_file: Option<&str>) {
    if let Ok(service) = Service::new(service) {
        ops.push(Arc::new(service.enabled(false).running(false)));
    }
    if let Some(file) = unit_file {
        ops.push(Arc::new(RemovedUnit::new(file)));
    }
}

pub fn teardown_ops(cluster: &Cluster, host: &Host) -> Vec<Arc<dyn Operation>> {
    let mut ops: Vec<Arc<dyn Operation>> = Vec::new();
    for aggregator in aggregators(cluster) {
        removed(&mut ops, &config::upload_service(&aggregator.name), None);
    }
    ops.push(Arc::new(RemovedUnit::new(config::UPLOAD_UNIT)));
    removed(&mut ops, config::LAG_TIMER_UNIT, Some(config::LAG_TIMER_UNIT));
    removed(&mut ops, config::LAG_SERVICE_UNIT, Some(config::LAG_SERVICE_UNIT));
    if host.has_role(Role::Logging) {
        removed(&mut ops, config::VACUUM_TIMER_UNIT, Some(config::VACUUM_TIMER_UNIT));
        removed(&mut ops, config::VACUUM_SERVICE_UNIT, Some(config::VACUUM_SERVICE_UNIT));
        removed(&mut ops, config::TLS_UNIT, Some(config::TLS_UNIT));
        for sender in senders(cluster) {
            removed(&mut ops, &config::remote_service(&sender.name), None);
        }
        ops.push(Arc::new(RemovedUnit::new(config::REMOTE_UNIT)));
        ops.push(Arc::new(Absent::new(config::VACUUM_SCRIPT)));
        ops.push(Arc::new(Absent::new(config::REMOTE_DIR)));
    }
    if host.has_role(Role::Monitoring) {
        ops.push(Arc::new(Absent::new(config::ALERT_RULES_FILE)));
    }
    for path in [config::LAG_SCRIPT, config::METRICS_FILE, config::STATE_DIR, PKI_DIR] {
        ops.push(Arc::new(Absent::new(path)));
    }
    ops.push(Arc::new(
        Absent::new(config::JOURNALD_DROPIN).notify([config::JOURNALD_SERVICE]),
    ));
    let user = config::UPLOAD_USER;
    ops.push(Arc::new(
        Command::new(&format!("remove system user {user}"), &format!("userdel {user}"))
            .unless(&format!("! id -u {user} >/dev/null 2>&1")),
    ));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregator_loses_its_store_and_every_host_its_uploaders() {
        let cluster = crate::config::tests::sample_cluster("");
        let describe =
            |host: &Host| -> Vec<String> { teardown_ops(&cluster, host).iter().map(|op| op.describe()).collect() };
        let aggregator = describe(&cluster.hosts[0]).join("\n");
        for part in [
            "capstan-journal-upload@n1",
            "capstan-journal-remote@e2",
            "/var/log/journal/remote",
            "/etc/capstan/logging",
            "capstan-journal-upload",
        ] {
            assert!(aggregator.contains(part), "{part}: {aggregator}");
        }
        let sender = describe(&cluster.hosts[1]).join("\n");
        assert!(!sender.contains("/var/log/journal/remote"), "{sender}");
        assert!(
            sender.contains("/etc/systemd/journald.conf.d/capstan-logging.conf"),
            "{sender}"
        );
    }
}

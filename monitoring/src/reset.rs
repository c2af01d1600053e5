//! What `capstan reset` removes of monitoring on a host: node_exporter and the certificate-expiry
//! timer (every host), Prometheus and Alertmanager (wherever they are: a host that lost the
//! `monitoring` role may still have them), their configs, storage and system users.

use std::sync::Arc;

use capstan_inventory::Cluster;
use capstan_provisioner::component::ComponentError;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{Absent, Command, Operation, RemovedUnit, Service};

use crate::component::NAME;
use crate::config::{
    ALERTMANAGER_CONFIG_DIR, ALERTMANAGER_SERVICE, ALERTMANAGER_STORAGE, ALERTMANAGER_UNIT, ALERTMANAGER_USER, BIN_DIR,
    CERT_EXPIRY_SCRIPT, CERT_EXPIRY_SERVICE, CERT_EXPIRY_TIMER, CONFIG_DIR, NODE_EXPORTER_SERVICE, NODE_EXPORTER_UNIT,
    NODE_EXPORTER_USER, PROMETHEUS_SERVICE, PROMETHEUS_UNIT, PROMETHEUS_USER, STATE_DIR,
};

const BINARIES: [&str; 5] = ["node_exporter", "prometheus", "promtool", "alertmanager", "amtool"];

pub fn teardown(cluster: &Cluster) -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
    let failed = |e: capstan_provisioner::ops::OpError| ComponentError {
        component: NAME,
        message: e.to_string(),
        hint: None,
    };
    let mut ops: Vec<Arc<dyn Operation>> = vec![
        Arc::new(
            Service::new(CERT_EXPIRY_TIMER)
                .map_err(failed)?
                .enabled(false)
                .running(false),
        ),
        Arc::new(Service::new(CERT_EXPIRY_SERVICE).map_err(failed)?.running(false)),
    ];
    for service in [PROMETHEUS_SERVICE, ALERTMANAGER_SERVICE, NODE_EXPORTER_SERVICE] {
        ops.push(Arc::new(
            Service::new(service).map_err(failed)?.enabled(false).running(false),
        ));
    }
    for unit in [
        CERT_EXPIRY_TIMER,
        CERT_EXPIRY_SERVICE,
        PROMETHEUS_UNIT,
        ALERTMANAGER_UNIT,
        NODE_EXPORTER_UNIT,
    ] {
        ops.push(Arc::new(RemovedUnit::new(unit)));
    }
    for binary in BINARIES {
        ops.push(Arc::new(Absent::new(&format!("{BIN_DIR}/{binary}"))));
    }
    ops.push(Arc::new(Absent::new(CERT_EXPIRY_SCRIPT)));
    // Shared with other components' scripts: removed only once empty.
    if let Some(dir) = std::path::Path::new(CERT_EXPIRY_SCRIPT).parent() {
        let dir = dir.display().to_string();
        let quoted = quote(&dir);
        ops.push(Arc::new(
            Command::new(&format!("remove empty directory {dir}"), &format!("rmdir -- {quoted}"))
                .unless(&format!("[ ! -d {quoted} ] || [ -n \"$(ls -A -- {quoted})\" ]")),
        ));
    }
    let storage = cluster.monitoring.storage_path.display().to_string();
    for path in [
        CONFIG_DIR,
        ALERTMANAGER_CONFIG_DIR,
        ALERTMANAGER_STORAGE,
        storage.as_str(),
        STATE_DIR,
    ] {
        ops.push(Arc::new(Absent::new(path)));
    }
    for user in [PROMETHEUS_USER, ALERTMANAGER_USER, NODE_EXPORTER_USER] {
        ops.push(Arc::new(
            Command::new(&format!("remove system user {user}"), &format!("userdel {user}"))
                .unless(&format!("! id -u {user} >/dev/null 2>&1")),
        ));
    }
    Ok(ops)
}

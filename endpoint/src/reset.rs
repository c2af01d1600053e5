//! What `capstan reset` removes of the API endpoint on a host: haproxy and keepalived stopped and
//! disabled, capstan's configs and check script, and the Kubernetes PKI this component writes (the
//! cluster CA and the API server's certificate; kubernetes' teardown, which runs first, leaves
//! them to this one). The haproxy, keepalived and curl packages stay: capstan keeps no record of
//! whether they were installed before it (see docs/operations.md).

use std::sync::Arc;

use capstan_provisioner::component::ComponentError;
use capstan_provisioner::ops::{Absent, Command, Operation, Service};

use crate::config::{CHECK_SCRIPT, HAPROXY_CONFIG, KEEPALIVED_CONFIG};
use crate::kube_pki::{APISERVER_CERT, APISERVER_KEY, CA_CERT, CA_KEY, PKI_DIR};

const NAME: &str = "endpoint";

/// Every host (one that lost its role may still have it all); only services that exist are stopped.
pub fn teardown() -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
    let mut ops: Vec<Arc<dyn Operation>> = Vec::new();
    for service in ["keepalived", "haproxy"] {
        let op = Service::new(service).map_err(|e| ComponentError {
            component: NAME,
            message: e.to_string(),
            hint: None,
        })?;
        ops.push(Arc::new(op.enabled(false).running(false)));
    }
    for path in [
        KEEPALIVED_CONFIG,
        CHECK_SCRIPT,
        HAPROXY_CONFIG,
        APISERVER_KEY,
        APISERVER_CERT,
        CA_KEY,
        CA_CERT,
    ] {
        ops.push(Arc::new(Absent::new(path)));
    }
    ops.push(Arc::new(Command::remove_empty_dir(PKI_DIR)));
    if let Some(parent) = std::path::Path::new(PKI_DIR).parent() {
        ops.push(Arc::new(Command::remove_empty_dir(&parent.display().to_string())));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pki_and_configs_go_after_the_services_stop() {
        let described: Vec<String> = teardown().unwrap().iter().map(|op| op.describe()).collect();
        for path in [
            CA_KEY,
            CA_CERT,
            APISERVER_KEY,
            APISERVER_CERT,
            HAPROXY_CONFIG,
            KEEPALIVED_CONFIG,
            CHECK_SCRIPT,
        ] {
            assert!(
                described.iter().any(|d| d.contains(path)),
                "{path} missing: {described:?}"
            );
        }
        let stop = described
            .iter()
            .rposition(|d| d.contains("haproxy") && !d.contains('/'))
            .unwrap();
        let config = described.iter().position(|d| d.contains(HAPROXY_CONFIG)).unwrap();
        assert!(stop < config, "{described:?}");
    }
}

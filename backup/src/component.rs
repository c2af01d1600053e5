//! The backup and drill schedules as the engine sees them: capstan installs them with
//! `capstan backup schedule` / `capstan drill schedule` rather than `apply` (so `installs` is
//! false and the cluster plan leaves them out), but `capstan reset` removes them like any
//! component's clean-up, before etcd's.

use std::sync::Arc;

use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::check::RequiredPort;
use capstan_provisioner::component::{Component, ComponentError};
use capstan_provisioner::ops::{Absent, Operation};

use crate::schedule::{BINARY_PATH, CONFIG_DIR};
use crate::schedule_install::{push_teardown_ops, teardown_ops};

#[derive(Debug, Clone, Copy, Default)]
pub struct ScheduleComponent;

impl Component for ScheduleComponent {
    fn name(&self) -> &'static str {
        "backup-schedules"
    }

    fn roles(&self) -> &'static [&'static str] {
        &["etcd"]
    }

    fn required_ports(&self) -> Vec<RequiredPort> {
        Vec::new()
    }

    fn after(&self) -> &'static [&'static str] {
        &["etcd"]
    }

    fn teardown(&self, _cluster: &Cluster, host: &Host) -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
        if !host.roles.contains(&Role::Etcd) {
            // Hosts holding components' state may run the state push (and so hold the binary).
            let mut ops = push_teardown_ops();
            for path in [BINARY_PATH, CONFIG_DIR] {
                ops.push(Arc::new(Absent::new(path)));
            }
            return Ok(ops);
        }
        Ok(teardown_ops())
    }
}

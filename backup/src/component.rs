//! The backup and drill schedules as the engine sees them: capstan installs them with
//! `capstan backup schedule` / `capstan drill schedule` rather than `apply` (so `installs` is
//! false and the cluster plan leaves them out), but `capstan reset` removes them like any
//! component's clean-up, before etcd's.

use std::sync::Arc;

use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::check::RequiredPort;
use capstan_provisioner::component::{Component, ComponentError};
use capstan_provisioner::ops::Operation;

use crate::schedule_install::teardown_ops;

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
            return Ok(Vec::new());
        }
        Ok(teardown_ops())
    }
}

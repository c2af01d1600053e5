//! `monitoring`: Prometheus's retention and storage on the `monitoring` hosts.

use std::path::PathBuf;

use super::Checker;
use crate::model::*;
use crate::values::show;
use crate::yaml::Node;

/// Ten years: beyond that a typo is likelier than a wish.
const MAX_RETENTION_DAYS: u64 = 3650;

impl Checker<'_, '_> {
    pub(super) fn monitoring(&mut self, node: &Node) -> MonitoringSettings {
        let mut monitoring = MonitoringSettings::default();
        let Some(section) = self.section(node, "`monitoring`", &["retention_days", "storage_path"]) else {
            return monitoring;
        };
        if let Some(days) = section
            .get("retention_days")
            .and_then(|n| self.unsigned(n, "retention_days", 1, MAX_RETENTION_DAYS))
        {
            monitoring.retention_days = days as u32;
        }
        if let Some(node) = section.get("storage_path") {
            match self.string(node, "storage_path") {
                Some(path) if path.starts_with('/') && path.len() > 1 => monitoring.storage_path = PathBuf::from(path),
                Some(path) => self.error(
                    node.pos,
                    format!(
                        "`storage_path`: expected an absolute path on the hosts (not `/`), found `{}`",
                        show(&path)
                    ),
                ),
                None => {}
            }
        }
        monitoring
    }
}

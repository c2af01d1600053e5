//! `logging`: the journal budgets of every host and of the `logging` hosts.

use super::Checker;
use crate::model::*;
use crate::yaml::Node;

/// journald refuses less than a few MiB to be useful; 1 TiB is beyond any sane single journal.
const MIN_MIB: u64 = 16;
const MAX_MIB: u64 = 1 << 20;

impl Checker<'_, '_> {
    pub(super) fn logging(&mut self, node: &Node) -> LoggingSettings {
        let mut logging = LoggingSettings::default();
        let Some(section) = self.section(node, "`logging`", &["journal_max_mib", "aggregator_max_mib"]) else {
            return logging;
        };
        if let Some(mib) = section
            .get("journal_max_mib")
            .and_then(|n| self.unsigned(n, "journal_max_mib", MIN_MIB, MAX_MIB))
        {
            logging.journal_max_mib = mib as u32;
        }
        if let Some(mib) = section
            .get("aggregator_max_mib")
            .and_then(|n| self.unsigned(n, "aggregator_max_mib", MIN_MIB, MAX_MIB))
        {
            logging.aggregator_max_mib = mib as u32;
        }
        logging
    }
}

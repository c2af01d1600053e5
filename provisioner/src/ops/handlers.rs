//! Handler bookkeeping for one host's op list (pure).
//!
//! `daemon-reload` is deferred while consecutive unit files change, then runs
//! once before the next op that is not a unit write (and at the end). Service
//! restarts are collected and run once each, in order of first notification,
//! after the list.

use std::sync::Arc;

use super::systemd::{DaemonReload, Restart};
use super::{OpError, Operation, Trigger};

#[derive(Debug, Default)]
pub struct HandlerQueue {
    daemon_reload_pending: bool,
    restarts: Vec<String>,
}

impl HandlerQueue {
    /// Record the triggers of an op that changed something.
    pub fn record(&mut self, triggers: &[Trigger]) {
        for trigger in triggers {
            match trigger {
                Trigger::DaemonReload => self.daemon_reload_pending = true,
                Trigger::Restart(service) => {
                    if !self.restarts.contains(service) {
                        self.restarts.push(service.clone());
                    }
                }
            }
        }
    }

    /// Ops to run before an op with `next_triggers`: a pending reload, unless
    /// the next op writes a unit too (so a run of unit writes reloads once).
    pub fn before(&mut self, next_triggers: &[Trigger]) -> Vec<Arc<dyn Operation>> {
        if self.daemon_reload_pending && !next_triggers.contains(&Trigger::DaemonReload) {
            self.daemon_reload_pending = false;
            return vec![Arc::new(DaemonReload)];
        }
        Vec::new()
    }

    /// Ops to run after the list: a pending reload, then each restart once.
    pub fn finish(&mut self) -> Result<Vec<Arc<dyn Operation>>, OpError> {
        let mut ops: Vec<Arc<dyn Operation>> = Vec::new();
        if std::mem::take(&mut self.daemon_reload_pending) {
            ops.push(Arc::new(DaemonReload));
        }
        for service in std::mem::take(&mut self.restarts) {
            ops.push(Arc::new(Restart::new(&service)?));
        }
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ops: Vec<Arc<dyn Operation>>) -> Vec<String> {
        ops.iter().map(|op| op.describe()).collect()
    }

    /// Each step: the triggers of the next op and whether it changed.
    /// Expected: the handler ops interleaved, as the runner would run them.
    #[allow(clippy::type_complexity)] // data-driven case tables
    #[test]
    fn handler_sequences() {
        let unit = vec![Trigger::DaemonReload];
        let app = vec![Trigger::Restart("app".into())];
        let both = vec![Trigger::DaemonReload, Trigger::Restart("app".into())];
        let none: Vec<Trigger> = vec![];
        let cases: Vec<(Vec<(&Vec<Trigger>, bool)>, Vec<&str>)> = vec![
            (vec![(&none, true), (&none, false)], vec![]),
            (
                vec![(&unit, true), (&unit, true), (&none, false)],
                vec!["systemd daemon-reload"],
            ),
            (
                vec![(&unit, true), (&none, true), (&unit, true)],
                vec!["systemd daemon-reload", "systemd daemon-reload"],
            ),
            (vec![(&unit, false), (&none, true)], vec![]),
            (vec![(&unit, true)], vec!["systemd daemon-reload"]),
            (vec![(&app, true), (&app, true)], vec!["restart app (notified)"]),
            (vec![(&app, false), (&none, true)], vec![]),
            (
                vec![(&both, true), (&none, false)],
                vec!["systemd daemon-reload", "restart app (notified)"],
            ),
        ];
        for (steps, expected) in cases {
            let mut queue = HandlerQueue::default();
            let mut ran = Vec::new();
            for (triggers, changed) in &steps {
                ran.extend(names(queue.before(triggers)));
                if *changed {
                    queue.record(triggers);
                }
            }
            ran.extend(names(queue.finish().unwrap()));
            assert_eq!(ran, expected, "{steps:?}");
        }
    }
}

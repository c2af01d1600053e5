//! The rolling converge phase: existing members get their changes one at a time (followers first,
//! the leader last during a version change), each only while the others keep quorum and each gated
//! on answering again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::quorum::quorum;
use super::{failed, ApplyError, DesiredMember, EtcdRun, SERVICE};
use crate::client::{error_chain, poll_until, EtcdEndpoint};
use crate::upgrade::{next_in_rollout, Version};
use capstan_provisioner::ops::{Command, OperationExt, Service};
use capstan_provisioner::phases::{PhaseContext, PhaseError};
use capstan_provisioner::runner::{HostOps, Mode, NoProgress, RunOptions, Runner};

impl EtcdRun {
    fn converge_ops(&self, member: &DesiredMember) -> Result<HostOps, ApplyError> {
        let values = member
            .existing_values
            .clone()
            .unwrap_or_else(|| self.bootstrap_values());
        let mut ops = self.base_ops(member, true)?;
        if self.upgrade.as_ref().is_some_and(|u| u.member(member.name()).is_some()) {
            // An earlier run may have replaced the binary and stopped before the restart: the
            // running process then still executes the old, deleted file. Placed before the
            // artifact so that a binary replaced in this run restarts once, through its handler.
            let restart = Command::new("restart etcd onto the installed binary", "systemctl restart etcd").unless(
                "pid=$(systemctl show -p MainPID --value etcd); [ \"$pid\" = 0 ] || \
                 ! readlink /proc/$pid/exe | grep -q '(deleted)'",
            );
            ops.ops.insert(0, Arc::new(restart));
        }
        ops.push(self.config_file(member, &values)?.notify([SERVICE]));
        ops.push(Service::new(SERVICE)?.enabled(true).running(true));
        Ok(ops)
    }

    /// The member that leads now, asked of the given members.
    async fn leader_name(&self, indices: &[usize]) -> Option<String> {
        for &i in indices {
            let endpoint = self.endpoint(i);
            if let Ok(client) = self.client(std::slice::from_ref(&endpoint)).await {
                if let Ok(status) = client.status(&endpoint).await {
                    if status.leader {
                        return Some(self.members[i].name().to_string());
                    }
                }
            }
        }
        None
    }

    /// Poll until the member at `index` reports `target` as its server version.
    async fn wait_member_version(&self, index: usize, target: Version, timeout: Duration) -> Result<(), String> {
        let endpoint = self.endpoint(index);
        poll_until(timeout, Duration::from_millis(500), || async {
            let client = self
                .client(std::slice::from_ref(&endpoint))
                .await
                .map_err(|e| error_chain(&e))?;
            let status = client.status(&endpoint).await.map_err(|e| error_chain(&e))?;
            if Version::parse(&status.version) == Some(target) {
                Ok(())
            } else {
                Err(format!("it still runs etcd {}", status.version))
            }
        })
        .await
        .map_err(|last| {
            format!(
                "{} is healthy but not on etcd {target} after {}s: {last}",
                self.members[index].name(),
                timeout.as_secs()
            )
        })
    }

    /// What to tell the operator when a member did not come back during a rollout.
    fn rollout_failure_hint(&self, failed: &str, done: &[String], current: &[usize]) -> Option<String> {
        let upgrade = self.upgrade.as_ref()?;
        let from = upgrade.member(failed).map(|m| m.from)?;
        let untouched: Vec<&str> = current
            .iter()
            .map(|&i| self.members[i].name())
            .filter(|n| *n != failed && !done.iter().any(|d| d == n))
            .collect();
        let mut hint = format!(
            "the rollout stopped at {failed}; the other members keep quorum. {}{}\
             Look at `journalctl -u etcd -n 100` on {failed}, then either fix the cause and run `capstan apply` \
             again (it continues with {failed}), ",
            if done.is_empty() {
                String::new()
            } else {
                format!("Already on {}: {}. ", upgrade.target, done.join(", "))
            },
            if untouched.is_empty() {
                String::new()
            } else {
                format!("Not touched (still on their old version): {}. ", untouched.join(", "))
            },
        );
        if from.line() == upgrade.target.line() {
            hint.push_str(&format!(
                "or set versions.etcd back to {from} and run `capstan apply` to put {failed} back (docs/upgrade.md)"
            ));
        } else {
            hint.push_str(&format!(
                "or go back to {} by restoring the pre-upgrade backup (`capstan restore`, docs/upgrade.md)",
                from.line()
            ));
        }
        Some(hint)
    }

    pub(super) async fn converge(
        &self,
        ctx: &PhaseContext<EtcdRun>,
        phase: &str,
        mode: Mode,
        current: &[usize],
    ) -> Result<(), PhaseError> {
        let lists = |indices: &[usize]| -> Result<Vec<HostOps>, PhaseError> {
            indices
                .iter()
                .map(|&i| self.converge_ops(&self.members[i]).map_err(|e| failed(phase, e)))
                .collect()
        };
        if mode == Mode::DryRun {
            self.run_hosts(ctx, phase, lists(current)?, Mode::DryRun).await?;
            if let Some(upgrade) = &self.upgrade {
                let mut remaining: Vec<(&str, bool)> =
                    upgrade.members.iter().map(|m| (m.name.as_str(), m.down)).collect();
                let total = remaining.len();
                let mut step = 0;
                while !remaining.is_empty() {
                    let (name, _) = remaining.remove(next_in_rollout(&remaining, upgrade.leader.as_deref()));
                    step += 1;
                    let Some(member) = upgrade.member(name) else { continue };
                    let role = if upgrade.leader.as_deref() == Some(name) {
                        ", leader: last"
                    } else {
                        ""
                    };
                    self.note(
                        phase,
                        mode,
                        name,
                        "etcd version",
                        &format!(
                            "etcd {} → {} ({}, step {step} of {total}{role})",
                            member.from, upgrade.target, member.change
                        ),
                        Ok(()),
                        Duration::ZERO,
                    );
                }
            }
            return Ok(());
        }
        // Plan every member at once (probes only); members with nothing to do are done, the rest
        // are changed one at a time, each gated on being healthy again.
        let planner = Runner::new(
            RunOptions {
                mode: Mode::DryRun,
                concurrency: ctx.runner.options().concurrency,
            },
            Arc::new(NoProgress),
        );
        let planned = planner.run(lists(current)?).await;
        let mut unchanged = planned.clone();
        unchanged.mode = Mode::Apply;
        unchanged.hosts.retain(|h| h.changed == 0 && h.success());
        self.record(phase, unchanged);
        if let Some(bad) = planned.hosts.iter().find(|h| !h.success()) {
            let reason = bad.failures().next().and_then(|f| f.error.clone()).unwrap_or_default();
            return Err(failed(phase, format!("{}: {reason}", bad.host)));
        }
        let mut remaining: Vec<usize> = current
            .iter()
            .copied()
            .filter(|&i| {
                planned
                    .hosts
                    .iter()
                    .any(|h| h.host == self.members[i].name() && h.changed > 0)
            })
            .collect();
        let total = remaining.len();
        let mut done: Vec<String> = Vec::new();
        while !remaining.is_empty() {
            // Re-asked before every step: the leader goes last even if leadership moved.
            let leader = self.leader_name(current).await;
            let keys: Vec<(&str, bool)> = remaining
                .iter()
                .map(|&i| {
                    let name = self.members[i].name();
                    (name, self.down_at_start.contains(name))
                })
                .collect();
            let index = remaining.remove(next_in_rollout(&keys, leader.as_deref()));
            let name = self.members[index].name().to_string();
            let started = Instant::now();
            let result = self.converge_member(ctx, phase, current, index).await;
            let version_change = self
                .upgrade
                .as_ref()
                .and_then(|u| u.member(&name).map(|m| (m.from, m.change, u.target)));
            match result {
                Ok(()) => {
                    let step = total - remaining.len();
                    match version_change {
                        Some((from, change, target)) => {
                            self.note(
                                phase,
                                mode,
                                &name,
                                "etcd version",
                                &format!("etcd {from} → {target} ({change}, step {step} of {total})"),
                                Ok(()),
                                started.elapsed(),
                            );
                            self.say(&format!(
                                "{name}: healthy again on etcd {target} after {:.1}s",
                                started.elapsed().as_secs_f64()
                            ));
                        }
                        None => self.say(&format!("{name}: healthy again")),
                    }
                    done.push(name);
                }
                Err(reason) => {
                    if let Some((from, _, target)) = version_change {
                        self.note(
                            phase,
                            mode,
                            &name,
                            "etcd version",
                            &format!("etcd {from} → {target}"),
                            Err(reason.clone()),
                            started.elapsed(),
                        );
                    }
                    if let Some(hint) = self.rollout_failure_hint(&name, &done, current) {
                        *self.failure_hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(hint);
                    }
                    return Err(failed(phase, reason));
                }
            }
        }
        Ok(())
    }

    /// Change one member: only when the others keep quorum without it; then wait until it
    /// answers again (and, during a version change, runs the target version).
    async fn converge_member(
        &self,
        ctx: &PhaseContext<EtcdRun>,
        phase: &str,
        current: &[usize],
        index: usize,
    ) -> Result<(), String> {
        let name = self.members[index].name();
        let others: Vec<usize> = current.iter().copied().filter(|&i| i != index).collect();
        let endpoints: Vec<EtcdEndpoint> = others.iter().map(|&i| self.endpoint(i)).collect();
        // Members that were restarting when the run began may still be coming back: wait for
        // them (up to the ready timeout) rather than refuse at once.
        let deadline = Instant::now() + self.ready_timeout;
        let mut healthy_others;
        loop {
            healthy_others = 0;
            for endpoint in &endpoints {
                if let Ok(client) = self.client(std::slice::from_ref(endpoint)).await {
                    if client.health(endpoint).await.healthy {
                        healthy_others += 1;
                    }
                }
            }
            if healthy_others >= quorum(current.len())
                || self.down_at_start.contains(name)
                || Instant::now() >= deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if healthy_others < quorum(current.len()) && !self.down_at_start.contains(name) {
            return Err(format!(
                "{name} needs a restart, but only {healthy_others} of the other {} members are healthy; \
                 restarting it would lose quorum",
                others.len()
            ));
        }
        let ops = self.converge_ops(&self.members[index]).map_err(|e| e.to_string())?;
        self.run_hosts(ctx, phase, vec![ops], Mode::Apply)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let started = Instant::now();
        self.wait_member_ready(index, 0, self.ready_timeout).await?;
        if let Some(upgrade) = &self.upgrade {
            let left = self
                .ready_timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(5));
            self.wait_member_version(index, upgrade.target, left).await?;
        }
        Ok(())
    }
}

//! The scale phases: members are added one at a time (each caught up before the next), then removed
//! one at a time (each removal waits for a healthy cluster), and removed hosts still in the
//! inventory are stopped and wiped.

use std::time::{Duration, Instant};

use super::{failed, EtcdRun, SERVICE};
use crate::client::{EtcdEndpoint, Member as ListedMember};
use crate::config::InitialClusterState;
use crate::probe::BootstrapValues;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{Command, Service};
use capstan_provisioner::phases::{PhaseContext, PhaseError};
use capstan_provisioner::runner::{HostOps, Mode};

impl EtcdRun {
    #[allow(clippy::too_many_arguments)] // the phase's share of the membership, spelled out
    pub(super) async fn scale_up(
        &self,
        ctx: &PhaseContext<EtcdRun>,
        phase: &str,
        mode: Mode,
        listed: &[ListedMember],
        current: &[usize],
        add: &[(usize, Option<u64>)],
    ) -> Result<(), PhaseError> {
        let mut joined: Vec<usize> = current.to_vec();
        let mut listed: Vec<ListedMember> = listed.to_vec();
        for &(index, pending) in add {
            let member = &self.members[index];
            let name = member.name().to_string();
            let peer_url = member.host.member().peer_url();
            let mut prepare = self.base_ops(member, false).map_err(|e| failed(phase, e))?;
            prepare.push(Service::new(SERVICE).map_err(|e| failed(phase, e))?.enabled(true));
            self.run_hosts(ctx, phase, vec![prepare], mode).await?;

            let started = Instant::now();
            let initial_cluster = if let Some(id) = pending {
                self.note(
                    phase,
                    mode,
                    &name,
                    "etcd member add",
                    &format!("member {id:x} already added; starting it"),
                    Ok(()),
                    started.elapsed(),
                );
                listed
                    .iter()
                    .flat_map(|m| {
                        let n = if m.id == id { name.clone() } else { m.name.clone() };
                        m.peer_urls.iter().map(move |u| format!("{n}={u}"))
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            } else if mode == Mode::DryRun {
                self.note(
                    phase,
                    mode,
                    &name,
                    "etcd member add",
                    &format!("add member {name} ({peer_url})"),
                    Ok(()),
                    Duration::ZERO,
                );
                let mut parts: Vec<String> = listed
                    .iter()
                    .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
                    .collect();
                parts.push(format!("{name}={peer_url}"));
                parts.join(",")
            } else {
                let endpoints: Vec<EtcdEndpoint> = joined.iter().map(|&i| self.endpoint(i)).collect();
                let result = async {
                    let client = self.client(&endpoints).await?;
                    client.member_add(&name, std::slice::from_ref(&peer_url)).await
                }
                .await;
                let summary = format!("add member {name} ({peer_url})");
                match result {
                    Ok(added) => {
                        self.note(
                            phase,
                            mode,
                            &name,
                            "etcd member add",
                            &summary,
                            Ok(()),
                            started.elapsed(),
                        );
                        listed = added.members.clone();
                        added.initial_cluster
                    }
                    Err(e) => {
                        let reason = crate::client::error_chain(&e);
                        self.note(
                            phase,
                            mode,
                            &name,
                            "etcd member add",
                            &summary,
                            Err(reason.clone()),
                            started.elapsed(),
                        );
                        return Err(failed(phase, reason));
                    }
                }
            };
            let values = BootstrapValues {
                initial_cluster,
                initial_cluster_state: InitialClusterState::Existing,
                initial_cluster_token: self.token.clone(),
            };
            let mut start = HostOps::new(member.transport.clone());
            start.push(self.config_file(member, &values).map_err(|e| failed(phase, e))?);
            start.push(Self::start_no_block());
            let target = if mode == Mode::Apply {
                self.leader_raft_index(&joined).await
            } else {
                0
            };
            self.run_hosts(ctx, phase, vec![start], mode).await?;
            if mode == Mode::Apply {
                self.wait_member_ready(index, target, self.ready_timeout)
                    .await
                    .map_err(|e| failed(phase, e))?;
                self.say(&format!("{name}: joined and caught up (raft index ≥ {target})"));
            }
            joined.push(index);
        }
        Ok(())
    }

    pub(super) async fn scale_down(
        &self,
        ctx: &PhaseContext<EtcdRun>,
        phase: &str,
        mode: Mode,
        current: &[usize],
        remove: &[ListedMember],
    ) -> Result<(), PhaseError> {
        // After scale-up, every inventory member is a member; removals go through them.
        let keep: Vec<usize> = (0..self.members.len()).collect();
        let endpoints: Vec<EtcdEndpoint> = if mode == Mode::Apply {
            keep.iter().map(|&i| self.endpoint(i)).collect()
        } else {
            current.iter().map(|&i| self.endpoint(i)).collect()
        };
        let mut still_listed: Vec<ListedMember> = remove.to_vec();
        for member in remove {
            still_listed.retain(|m| m.id != member.id);
            let label = if member.name.is_empty() {
                format!("{:x}", member.id)
            } else {
                member.name.clone()
            };
            let summary = format!("remove member {label} (id {:x})", member.id);
            let started = Instant::now();
            if mode == Mode::Apply {
                let result = async {
                    let client = self.client(&endpoints).await?;
                    client.member_remove(member.id).await
                }
                .await;
                if let Err(e) = result {
                    let reason = crate::client::error_chain(&e);
                    self.note(
                        phase,
                        mode,
                        &label,
                        "etcd member remove",
                        &summary,
                        Err(reason.clone()),
                        started.elapsed(),
                    );
                    return Err(failed(phase, reason));
                }
            }
            self.note(
                phase,
                mode,
                &label,
                "etcd member remove",
                &summary,
                Ok(()),
                started.elapsed(),
            );
            match self.cleanup.get(&member.name) {
                Some(t) => {
                    let data_dir = quote(&self.settings.data_dir);
                    let ops = HostOps::new(t.clone())
                        .with(
                            Command::new("stop and disable etcd", "systemctl disable --now etcd")
                                .unless("! systemctl is-enabled --quiet etcd && ! systemctl is-active --quiet etcd"),
                        )
                        .with(
                            Command::new(
                                &format!("wipe etcd data dir {}", self.settings.data_dir),
                                &format!("rm -rf -- {data_dir}"),
                            )
                            .unless(&format!("[ ! -e {data_dir} ]")),
                        );
                    self.run_hosts(ctx, phase, vec![ops], mode).await?;
                }
                None => self.say(&format!(
                    "{label}: host not in the inventory or unreachable; stop etcd there and wipe its data dir yourself"
                )),
            }
            if mode == Mode::Apply {
                self.wait_cluster_ready(&keep, &still_listed, self.ready_timeout)
                    .await
                    .map_err(|e| failed(phase, e))?;
            }
        }
        Ok(())
    }
}

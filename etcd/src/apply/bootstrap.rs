//! The bootstrap phase: no member has data yet, so all start together as a new cluster.

use super::{failed, EtcdRun, SERVICE};
use capstan_provisioner::ops::Service;
use capstan_provisioner::phases::{PhaseContext, PhaseError};
use capstan_provisioner::runner::Mode;

impl EtcdRun {
    pub(super) async fn bootstrap(
        &self,
        ctx: &PhaseContext<EtcdRun>,
        phase: &str,
        mode: Mode,
    ) -> Result<(), PhaseError> {
        let values = self.bootstrap_values();
        let mut lists = Vec::new();
        for member in &self.members {
            let mut ops = self.base_ops(member, false).map_err(|e| failed(phase, e))?;
            ops.push(self.config_file(member, &values).map_err(|e| failed(phase, e))?);
            ops.push(Service::new(SERVICE).map_err(|e| failed(phase, e))?.enabled(true));
            ops.push(Self::start_no_block());
            lists.push(ops);
        }
        self.run_hosts(ctx, phase, lists, mode).await?;
        if mode == Mode::DryRun {
            self.say(&format!(
                "would wait for {} members to form a healthy cluster",
                self.members.len()
            ));
            return Ok(());
        }
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_cluster_ready(&all, &[], self.ready_timeout)
            .await
            .map_err(|e| failed(phase, e))?;
        self.say(&format!("{} members healthy", self.members.len()));
        Ok(())
    }
}

//! The phases of a run, in order, and which of them apply to the membership found.

use async_trait::async_trait;

use super::{EtcdPhase, EtcdRun, Membership, StepKind};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError};
use capstan_provisioner::runner::Mode;

#[async_trait]
impl Phase<EtcdRun> for EtcdPhase {
    fn name(&self) -> String {
        match self.0 {
            StepKind::Bootstrap => "etcd: bootstrap a new cluster",
            StepKind::Converge => "etcd: converge members (rolling, one at a time)",
            StepKind::ScaleUp => "etcd: add members (one at a time)",
            StepKind::ScaleDown => "etcd: remove members (one at a time)",
            StepKind::Verify => "etcd: verify cluster health",
        }
        .to_string()
    }

    async fn should_run(&self, ctx: &PhaseContext<EtcdRun>) -> Result<bool, PhaseError> {
        let state = &ctx.state;
        Ok(match (&state.membership, self.0) {
            (Membership::Bootstrap, StepKind::Bootstrap) => true,
            (Membership::Bootstrap, StepKind::Verify) => ctx.mode() == Mode::Apply,
            (Membership::Bootstrap, _) => false,
            (Membership::Existing { .. }, StepKind::Bootstrap) => false,
            (Membership::Existing { current, .. }, StepKind::Converge) => !current.is_empty(),
            (Membership::Existing { add, .. }, StepKind::ScaleUp) => !add.is_empty(),
            (Membership::Existing { remove, .. }, StepKind::ScaleDown) => !remove.is_empty(),
            (Membership::Existing { .. }, StepKind::Verify) => ctx.mode() == Mode::Apply,
        })
    }

    async fn run(&self, ctx: &PhaseContext<EtcdRun>) -> Result<(), PhaseError> {
        self.execute(ctx, Mode::Apply).await
    }

    async fn dry_run(&self, ctx: &PhaseContext<EtcdRun>) -> Result<(), PhaseError> {
        self.execute(ctx, Mode::DryRun).await
    }
}

impl EtcdPhase {
    async fn execute(&self, ctx: &PhaseContext<EtcdRun>, mode: Mode) -> Result<(), PhaseError> {
        let state = &ctx.state;
        let phase = self.name();
        match (&state.membership, self.0) {
            (_, StepKind::Bootstrap) => state.bootstrap(ctx, &phase, mode).await,
            (Membership::Existing { current, .. }, StepKind::Converge) => {
                state.converge(ctx, &phase, mode, current).await
            }
            (
                Membership::Existing {
                    listed, current, add, ..
                },
                StepKind::ScaleUp,
            ) => state.scale_up(ctx, &phase, mode, listed, current, add).await,
            (Membership::Existing { current, remove, .. }, StepKind::ScaleDown) => {
                state.scale_down(ctx, &phase, mode, current, remove).await
            }
            (_, StepKind::Verify) => state.verify(&phase).await,
            _ => Ok(()),
        }
    }
}

//! A release artifact that cannot be had here (not on the mirror, no pinned checksum): shown in a
//! plan as the install it would be, and failing, never faking, if it is ever applied. `apply`
//! refuses before changing anything when an artifact is unavailable, so only `plan` meets it.

use async_trait::async_trait;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{Change, OpError, Operation, Plan, Step};
use capstan_provisioner::transport::Transport;

#[derive(Debug, Clone)]
pub struct UnavailableArtifact {
    /// What would be installed, e.g. `/usr/local/bin/{kube-apiserver,kubectl}`.
    pub installs: String,
    /// The release it would come from and why it cannot be had.
    pub reason: String,
}

#[async_trait]
impl Operation for UnavailableArtifact {
    fn describe(&self) -> String {
        format!("artifact {}", self.installs)
    }

    async fn plan(&self, _t: &dyn Transport) -> Result<Plan, OpError> {
        let message = format!("cannot install {}: {}", self.installs, self.reason);
        Ok(Plan::single(Change {
            summary: format!("install {} (unavailable here: {})", self.installs, self.reason),
            diff: None,
            steps: vec![Step::Run(format!("echo {} >&2; exit 1", quote(&message)))],
        }))
    }
}

//! A config file that is validated before it replaces the running one, and then reloaded
//! (never restarted): haproxy's and keepalived's.
//!
//! The engine's [`File`] plans the change; this op rewrites its write step to go to a staging
//! file next to the target, runs the validator on the staging file, moves it into place only when
//! it passes, and then reloads the service if it runs. A config that fails validation leaves the
//! target and the running service untouched (the staging file is removed).

use async_trait::async_trait;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{Change, File, OpError, Operation, Plan, Step};
use capstan_provisioner::transport::Transport;

/// `file`, validated with `validate` (a command with `{}` where the config's path goes) and
/// followed by `systemctl reload service` when the service is active.
pub struct ValidatedConfig {
    file: File,
    validate: String,
    service: String,
}

impl ValidatedConfig {
    pub fn new(file: File, validate: &str, service: &str) -> ValidatedConfig {
        ValidatedConfig {
            file,
            validate: validate.to_string(),
            service: service.to_string(),
        }
    }

    fn staging_path(&self) -> String {
        format!("{}.capstan-new", self.file.path())
    }

    /// The commands that follow writing the staging file: validate, move into place, reload.
    pub fn commit_steps(&self) -> Vec<Step> {
        let staging = quote(&self.staging_path());
        let validate = self.validate.replace("{}", &staging);
        let service = quote(&self.service);
        vec![
            Step::Run(format!(
                "if ! out=$({validate} 2>&1); then rm -f -- {staging}; echo \"$out\" >&2; exit 1; fi; \
                 mv -f -- {staging} {}",
                quote(self.file.path())
            )),
            Step::Run(format!(
                "if systemctl is-active --quiet {service}; then systemctl reload {service}; fi"
            )),
        ]
    }
}

/// `plan`'s changes with every write of the target turned into a validated, reloading write.
pub fn validated_plan(plan: Plan, staging: &str, commit: Vec<Step>) -> Plan {
    let changes = plan
        .changes
        .into_iter()
        .map(|change| {
            if !change.steps.iter().any(|s| matches!(s, Step::WriteFile { .. })) {
                return change;
            }
            let mut steps: Vec<Step> = change
                .steps
                .into_iter()
                .map(|step| match step {
                    Step::WriteFile {
                        mut file,
                        content,
                        sha256,
                        size,
                        sensitive,
                    } => {
                        file.path = staging.to_string();
                        Step::WriteFile {
                            file,
                            content,
                            sha256,
                            size,
                            sensitive,
                        }
                    }
                    other => other,
                })
                .collect();
            steps.extend(commit.iter().cloned());
            Change {
                summary: format!("{} (validated, then reloaded)", change.summary),
                diff: change.diff,
                steps,
            }
        })
        .collect();
    Plan { changes }
}

#[async_trait]
impl Operation for ValidatedConfig {
    fn describe(&self) -> String {
        format!("{} (validated, reloads {})", self.file.describe(), self.service)
    }
    fn probes(&self) -> Vec<String> {
        self.file.probes()
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        let plan = self.file.plan(t).await?;
        Ok(validated_plan(plan, &self.staging_path(), self.commit_steps()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_provisioner::ops::Content;
    use capstan_provisioner::transport::RemoteFile;

    #[test]
    fn a_content_change_is_written_aside_validated_moved_and_reloaded() {
        let op = ValidatedConfig::new(
            File::new("/etc/haproxy/haproxy.cfg", "x"),
            "haproxy -c -f {}",
            "haproxy",
        );
        let write = Step::WriteFile {
            file: RemoteFile {
                path: "/etc/haproxy/haproxy.cfg".into(),
                mode: 0o644,
                owner: None,
                group: None,
            },
            content: Content::Bytes(b"x".to_vec().into()),
            sha256: "ab".repeat(32),
            size: 1,
            sensitive: false,
        };
        let plan = Plan {
            changes: vec![
                Change {
                    summary: "update /etc/haproxy/haproxy.cfg".into(),
                    diff: None,
                    steps: vec![write],
                },
                Change {
                    summary: "chmod".into(),
                    diff: None,
                    steps: vec![Step::Run("chmod 0644 /etc/haproxy/haproxy.cfg".into())],
                },
            ],
        };
        let planned = validated_plan(plan, &op.staging_path(), op.commit_steps());
        let shown: Vec<Vec<String>> = planned
            .changes
            .iter()
            .map(|c| c.steps.iter().map(Step::display).collect())
            .collect();
        assert_eq!(
            planned.changes[0].summary,
            "update /etc/haproxy/haproxy.cfg (validated, then reloaded)"
        );
        assert_eq!(
            shown,
            [
                vec![
                    "write /etc/haproxy/haproxy.cfg.capstan-new (1 bytes, sha256 abababababab, mode 0644)".to_string(),
                    "if ! out=$(haproxy -c -f /etc/haproxy/haproxy.cfg.capstan-new 2>&1); then rm -f -- \
                     /etc/haproxy/haproxy.cfg.capstan-new; echo \"$out\" >&2; exit 1; fi; mv -f -- \
                     /etc/haproxy/haproxy.cfg.capstan-new /etc/haproxy/haproxy.cfg"
                        .to_string(),
                    "if systemctl is-active --quiet haproxy; then systemctl reload haproxy; fi".to_string(),
                ],
                vec!["chmod 0644 /etc/haproxy/haproxy.cfg".to_string()],
            ]
        );
    }
}

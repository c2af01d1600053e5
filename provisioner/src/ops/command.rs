//! The escape hatch: a shell command, optionally guarded by a check.

use async_trait::async_trait;

use super::{Change, OpError, Operation, Plan, Step};
use crate::transport::{ExecOptions, Transport};

/// Run `run` unless `check` exits 0. The check runs in dry runs too, so it
/// must only read state. Without a check the command runs every time.
#[derive(Debug, Clone)]
pub struct Command {
    description: String,
    check: Option<String>,
    run: String,
}

impl Command {
    /// `rmdir dir` when it exists and is empty (a directory shared with others, or there before
    /// capstan, keeps what is in it).
    pub fn remove_empty_dir(dir: &str) -> Command {
        let quoted = super::shell::quote(dir);
        Command::new(&format!("remove empty directory {dir}"), &format!("rmdir -- {quoted}"))
            .unless(&format!("[ ! -d {quoted} ] || [ -n \"$(ls -A -- {quoted})\" ]"))
    }

    pub fn new(description: &str, run: &str) -> Command {
        Command {
            description: description.to_string(),
            check: None,
            run: run.to_string(),
        }
    }
    /// Skip the command when `check` succeeds (exit 0).
    pub fn unless(mut self, check: &str) -> Command {
        self.check = Some(check.to_string());
        self
    }
}

#[async_trait]
impl Operation for Command {
    fn describe(&self) -> String {
        self.description.clone()
    }
    fn probes(&self) -> Vec<String> {
        self.check.iter().cloned().collect()
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        if let Some(check) = &self.check {
            let output = t.exec(check, &ExecOptions::default()).await?;
            if output.success() {
                return Ok(Plan::unchanged());
            }
        }
        Ok(Plan::single(Change {
            summary: self.description.clone(),
            diff: None,
            steps: vec![Step::Run(self.run.clone())],
        }))
    }
}

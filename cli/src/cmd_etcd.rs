//! `capstan plan|apply|status|etcd ...` (being built; see the etcd issue).

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{ApplyArgs, EtcdCommand, StatusArgs};
use crate::output::{Failure, Output};

pub fn apply(_args: ApplyArgs, _dry_run: bool, _inventory: Option<&Path>, _out: &Output) -> anyhow::Result<ExitCode> {
    Err(Failure::new("apply is not available yet").into())
}

pub fn status(_args: StatusArgs, _inventory: Option<&Path>, _out: &Output) -> anyhow::Result<ExitCode> {
    Err(Failure::new("status is not available yet").into())
}

pub fn etcd(_cmd: EtcdCommand, _inventory: Option<&Path>, _out: &Output) -> anyhow::Result<ExitCode> {
    Err(Failure::new("etcd commands are not available yet").into())
}

//! The cluster lock around every command that changes a cluster (`capstan_provisioner::lock`):
//! a lock file on the inventory's first reachable host, and a lease-backed key in the cluster's
//! etcd when etcd answers (`capstan_etcd::lock`). Also `capstan unlock --force`.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use capstan_etcd::lock::EtcdLockStore;
use capstan_inventory::{Cluster, Role};
use capstan_provisioner::lock::{
    break_locks, ClusterLock, HostFileLock, LockHolder, LockMode, LockStore, DEFAULT_LOCK_TTL,
};
use capstan_provisioner::ssh::SshTransport;
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::Transport;

use crate::cli::UnlockArgs;
use crate::commands::inventory::load;
use crate::output::{Failure, Output};

/// The stores the lock lives in for `cluster`, and a note for each store left out.
async fn stores(cluster: &Cluster, with_etcd: bool) -> Result<(Vec<Arc<dyn LockStore>>, Vec<String>), Failure> {
    let mut notes = Vec::new();
    let mut connected: Option<(&str, Arc<dyn Transport>)> = None;
    let mut errors = Vec::new();
    // One connection: the first host (inventory order) that accepts one.
    for host in &cluster.hosts {
        match SshTransport::connect(&ssh_target(host)).await {
            Ok(transport) => {
                connected = Some((host.name.as_str(), Arc::new(transport)));
                break;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let Some((host, transport)) = connected else {
        return Err(Failure::new(format!(
            "cannot take the cluster lock: no host reachable ({})",
            errors.join("; ")
        ))
        .hint("check that the inventory's hosts are reachable (`capstan check`)"));
    };
    let mut stores: Vec<Arc<dyn LockStore>> = vec![Arc::new(HostFileLock::new(transport.clone()))];
    if with_etcd && cluster.hosts_with_role(Role::Etcd).next().is_some() {
        // The etcd store reads the CA over the same connection when that host is an etcd host.
        match EtcdLockStore::for_cluster(cluster, Some((host, transport))).await {
            Ok(etcd) => stores.push(Arc::new(etcd)),
            Err(why) => notes.push(format!("etcd not used for the lock: {}", why.0)),
        }
    }
    Ok((stores, notes))
}

/// The command line as the holder record shows it.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_else(|| "capstan".into());
    std::iter::once(name)
        .chain(args.into_iter().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `work` holding the cluster lock in `mode`; fail at once when someone else holds it.
pub async fn locked<T>(
    cluster: &Cluster,
    mode: LockMode,
    out: &Output,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    lock_and_run(cluster, mode, false, out, work).await
}

/// [`locked`], for a run that removes etcd itself (`reset`): the lock is the host file alone,
/// since a key in the etcd being torn down could not be renewed or released.
pub async fn locked_without_etcd<T>(
    cluster: &Cluster,
    out: &Output,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    lock_and_run(cluster, LockMode::Fence, true, out, work).await
}

async fn lock_and_run<T>(
    cluster: &Cluster,
    mode: LockMode,
    tears_down_etcd: bool,
    out: &Output,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let (stores, notes) = stores(cluster, !tears_down_etcd).await?;
    for note in notes {
        out.status(format!("lock: {note}"));
    }
    let holder = LockHolder::this_process(&command_line(), mode);
    let lock = ClusterLock::acquire(stores, holder, DEFAULT_LOCK_TTL, out.reporter())
        .await
        .map_err(|e| Failure::of(&e))?;
    out.status(format!(
        "locked cluster {} for this run ({})",
        cluster.name,
        lock.stores().join(", ")
    ));
    let result = work.await;
    for error in lock.release().await {
        out.status(format!(
            "warning: releasing the cluster lock: {error} (it expires by itself)"
        ));
    }
    result
}

/// [`locked`], except in a dry run (which changes nothing and so takes no lock).
pub async fn locked_unless_dry_run<T>(
    dry_run: bool,
    cluster: &Cluster,
    mode: LockMode,
    out: &Output,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    if dry_run {
        work.await
    } else {
        locked(cluster, mode, out, work).await
    }
}

/// `capstan unlock --force`: remove the lock whoever holds it, saying whom it overrode.
pub fn unlock(args: UnlockArgs, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    if !args.force {
        return Err(Failure::new("unlock removes another run's lock; say --force to do it")
            .hint("a run that died frees the lock by itself within 30s; use --force only when no run is active")
            .code(2)
            .into());
    }
    let cluster = load(inventory)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (stores, notes) = stores(&cluster, true).await?;
        for note in notes {
            out.status(format!("lock: {note}"));
        }
        let now = std::time::SystemTime::now();
        let mut overrode = Vec::new();
        let mut failed = Vec::new();
        for (store, result) in break_locks(&stores).await {
            match result {
                Ok(holders) if holders.is_empty() => println!("{store}: no lock"),
                Ok(holders) => {
                    for holder in holders {
                        println!("{store}: removed the lock of {}", holder.describe(now));
                        overrode.push(holder);
                    }
                }
                Err(e) => failed.push(format!("{store}: {e}")),
            }
        }
        if !failed.is_empty() {
            return Err(Failure::new(failed.join("; ")).into());
        }
        out.status(if overrode.is_empty() {
            "the cluster was not locked".to_string()
        } else {
            format!("overrode {} lock record(s)", overrode.len())
        });
        Ok(ExitCode::SUCCESS)
    })
}

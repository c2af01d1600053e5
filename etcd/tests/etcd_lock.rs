//! The cluster lock's etcd store against a real 3-member etcd cluster over mutual TLS: one change
//! at a time, shared holders beside a change but never beside a fence, a dead holder's lease
//! expiring, renewal after the keys were lost, and `break_lock` naming whom it overrode. Skips
//! (with the reason) when no etcd 3.5 binary is installed.

#[path = "support/etcd.rs"]
mod etcd_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_etcd::lock::EtcdLockStore;
use capstan_provisioner::lock::{ClusterLock, LockError, LockHolder, LockMode, LockStore};
use capstan_provisioner::report::Reporter;
use etcd_support::{etcd_binary, LocalCluster};

const TTL: Duration = Duration::from_secs(3);

fn holder(name: &str, mode: LockMode) -> LockHolder {
    let mut holder = LockHolder::this_process(&format!("capstan {name}"), mode);
    holder.token = format!("{}-{name}", holder.token);
    holder
}

fn held_by(result: Result<(), LockError>) -> String {
    match result {
        Err(LockError::Held { holder, .. }) | Err(LockError::SharedHeld { holder, .. }) => holder.command,
        other => panic!("expected the lock to be held, got {other:?}"),
    }
}

#[tokio::test]
async fn etcd_lock_modes_expiry_and_break() {
    let Some(binary) = etcd_binary("3.5.") else {
        return;
    };
    let cluster = LocalCluster::start(&binary, 3).await.expect("etcd cluster");
    let client = cluster.client().await.unwrap();
    let store = || EtcdLockStore::new(&client);

    // One change at a time; the refusal names the holder.
    let apply = store();
    apply.acquire(&holder("apply", LockMode::Change), TTL).await.unwrap();
    let second = store();
    assert_eq!(
        held_by(second.acquire(&holder("apply again", LockMode::Change), TTL).await),
        "capstan apply"
    );
    assert_eq!(
        held_by(second.acquire(&holder("restore", LockMode::Fence), TTL).await),
        "capstan apply"
    );

    // A scheduled backup (shared) runs beside the change...
    let backup = store();
    backup
        .acquire(&holder("backup run", LockMode::Shared), TTL)
        .await
        .unwrap();
    apply.release(&holder("apply", LockMode::Change)).await.unwrap();
    // ...and a restore (fence) cannot start while it runs.
    let restore = store();
    assert_eq!(
        held_by(restore.acquire(&holder("restore", LockMode::Fence), TTL).await),
        "capstan backup run"
    );
    backup.release(&holder("backup run", LockMode::Shared)).await.unwrap();
    let fence = holder("restore", LockMode::Fence);
    restore.acquire(&fence, TTL).await.unwrap();
    // During the restore, no scheduled backup starts.
    assert_eq!(
        held_by(store().acquire(&holder("backup run", LockMode::Shared), TTL).await),
        "capstan restore"
    );

    // The restore's process dies (no release, no renewal): the lease expires by itself.
    drop(restore);
    let started = Instant::now();
    let next = store();
    let next_holder = holder("apply after", LockMode::Change);
    loop {
        match next.acquire(&next_holder, TTL).await {
            Ok(()) => break,
            Err(LockError::Held { .. }) if started.elapsed() < TTL * 3 => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("lock not freed {:?} after its holder died: {e}", started.elapsed()),
        }
    }
    eprintln!("dead holder's lease expired after {:?}", started.elapsed());
    assert!(started.elapsed() >= TTL / 2, "freed before the lease ran out");

    // Renewal keeps it; `unlock --force` (break_lock) removes it, naming the holder, and the
    // holder's next renewal reports the loss instead of taking it back.
    next.renew(&next_holder, TTL).await.unwrap();
    let removed = store().break_lock().await.unwrap();
    assert_eq!(
        removed.iter().map(|h| h.command.as_str()).collect::<Vec<_>>(),
        ["capstan apply after"]
    );
    assert!(matches!(
        next.renew(&next_holder, TTL).await,
        Err(LockError::Lost { .. })
    ));
    let other = store();
    other.acquire(&holder("other", LockMode::Change), TTL).await.unwrap();
    other.release(&holder("other", LockMode::Change)).await.unwrap();
    next.release(&next_holder).await.unwrap();

    // When the lease itself is gone (etcd restored from a snapshot holds no such lease), renewal
    // takes the lock again if it is free.
    let restored = store();
    let restorer = holder("restore", LockMode::Fence);
    restored.acquire(&restorer, TTL).await.unwrap();
    tokio::time::sleep(TTL * 3).await; // no renewal: the lease runs out, as if etcd lost it
    restored.renew(&restorer, TTL).await.unwrap();
    assert_eq!(
        held_by(store().acquire(&holder("other", LockMode::Change), TTL).await),
        "capstan restore"
    );
    restored.release(&restorer).await.unwrap();

    // The engine's ClusterLock renews in the background: held well past its TTL.
    let stores: Vec<Arc<dyn LockStore>> = vec![Arc::new(store())];
    let lock = ClusterLock::acquire(stores, holder("long apply", LockMode::Change), TTL, Reporter::sink())
        .await
        .unwrap();
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(
        held_by(store().acquire(&holder("other", LockMode::Change), TTL).await),
        "capstan long apply"
    );
    assert!(lock.release().await.is_empty());
    store()
        .acquire(&holder("after release", LockMode::Change), TTL)
        .await
        .unwrap();
    assert!(store().break_lock().await.unwrap().len() == 1);
    assert!(store().break_lock().await.unwrap().is_empty());
}

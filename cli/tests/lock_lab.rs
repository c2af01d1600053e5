//! The cluster lock on real lab machines: two concurrent applies (exactly one proceeds, the other
//! fails at once naming the holder), before etcd exists (the host lock file) and with etcd running
//! (host file + etcd lease); a holder killed with SIGKILL frees the lock within the lease time;
//! `capstan unlock --force` says whom it overrode. Needs root, the lab prerequisites and etcd
//! 3.5.1 in the artifact mirror; skips with a message naming what is missing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;
use support::{capstan_ok, etcd_lab, lab, mirror_etcd, remote, require, run_capstan, EtcdLab};

/// The lease/expiry time of the lock (capstan_provisioner::lock::DEFAULT_LOCK_TTL).
const TTL: Duration = Duration::from_secs(30);

/// A `capstan apply` running in the background, with its stderr lines arriving on a channel.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Background {
    fn apply(inventory: &Path) -> Background {
        let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .arg("-i")
            .arg(inventory)
            .arg("apply")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run capstan");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the line saying the lock is taken; returns it.
    fn wait_locked(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_secs(1)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains("locked cluster") {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("the background apply never took the lock:\n{}", self.seen.join("\n"));
    }

    fn wait_success(mut self) {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.try_iter());
        assert!(status.success(), "background apply failed:\n{}", self.seen.join("\n"));
    }

    fn kill(mut self) {
        // SIGKILL: no chance to release anything.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A second apply fails at once, naming the holder (user, machine, pid, command, since).
fn assert_refused(inventory: &Path, holder_pid: u32) {
    let started = Instant::now();
    let run = run_capstan(Some(inventory), &["apply"], &[]);
    assert_ne!(run.code, 0, "second apply proceeded:\n{}", run.stderr);
    assert!(
        run.stderr.contains("the cluster is locked by")
            && run.stderr.contains(&format!("(pid {holder_pid}) running `capstan -i"))
            && run.stderr.contains(" apply` since ")
            && run.stderr.contains("hint:")
            && run.stderr.contains("unlock --force"),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refusal took {:?}",
        started.elapsed()
    );
}

#[test]
fn lock_lab_one_apply_at_a_time_and_a_killed_holder_frees_it() {
    if !require(&[lab(), mirror_etcd(&["3.5.1"])]) {
        return;
    }
    let EtcdLab {
        guard: _guard,
        lab,
        inventory,
        work: _work,
    } = etcd_lab("lk", "3.5.1");
    let first = lab.machines[0].name.clone();

    // Fresh machines: no etcd yet, so the lock is the file on the first host.
    let mut holder = Background::apply(&inventory);
    let line = holder.wait_locked();
    assert!(line.contains(&format!("{first}:/run/capstan/cluster.lock")), "{line}");
    let pid = holder.child.id();
    assert_refused(&inventory, pid);
    holder.wait_success();
    assert_eq!(
        remote(
            &lab,
            &first,
            "test -e /run/capstan/cluster.lock && echo held || echo free"
        ),
        "free",
        "a finished run releases the lock"
    );

    // etcd runs now: the lock is also a lease-backed key. Kill the holder with SIGKILL.
    let mut holder = Background::apply(&inventory);
    let line = holder.wait_locked();
    assert!(line.contains("etcd /capstan/lock/cluster"), "{line}");
    let pid = holder.child.id();
    holder.kill();
    let killed = Instant::now();
    assert_refused(&inventory, pid);
    // Within the lease time (plus one retry's duration) the lock is free by itself.
    loop {
        let run = run_capstan(Some(&inventory), &["apply"], &[]);
        if run.code == 0 {
            break;
        }
        assert!(run.stderr.contains("the cluster is locked by"), "{}", run.stderr);
        assert!(
            killed.elapsed() < TTL + Duration::from_secs(15),
            "the lock was not freed within the lease time"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    let freed = killed.elapsed();
    eprintln!("lock freed {:.1}s after SIGKILL", freed.as_secs_f64());
    assert!(
        freed >= Duration::from_secs(10),
        "freed too soon ({freed:?}): was it held at all?"
    );

    // unlock --force removes a dead holder's lock at once and says whose it was.
    let mut holder = Background::apply(&inventory);
    holder.wait_locked();
    let pid = holder.child.id();
    holder.kill();
    let refused = run_capstan(Some(&inventory), &["unlock"], &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    let unlock = capstan_ok(&inventory, &["unlock", "--force"]);
    assert!(
        unlock.stdout.contains(&format!("(pid {pid})")) && unlock.stdout.contains("removed the lock of"),
        "{}",
        unlock.stdout
    );
    assert!(
        unlock.stdout.contains("etcd /capstan/lock/cluster"),
        "{}",
        unlock.stdout
    );
    capstan_ok(&inventory, &["apply"]);
    let again = capstan_ok(&inventory, &["unlock", "--force"]);
    assert!(again.stderr.contains("the cluster was not locked"), "{}", again.stderr);
}

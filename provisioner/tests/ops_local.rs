//! Operations applied for real through LocalTransport into a temp directory.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use capstan_provisioner::local::LocalTransport;
use capstan_provisioner::ops::{Absent, Command, Directory, File, OperationExt, Service, Template};
use capstan_provisioner::report::{render_changes, OpStatus, RunReport};
use capstan_provisioner::runner::{HostOps, Mode, NoProgress, RunOptions, Runner};
use capstan_provisioner::transport::{CountingTransport, Transport};

fn runner(mode: Mode) -> Runner {
    Runner::new(RunOptions { mode, concurrency: 4 }, Arc::new(NoProgress))
}

fn local(name: &str) -> Arc<dyn Transport> {
    Arc::new(LocalTransport::new(name))
}

fn is_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn path(dir: &Path, rel: &str) -> String {
    dir.join(rel).to_str().unwrap().to_string()
}

fn mode_of(p: &str) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn changed(report: &RunReport) -> usize {
    report.totals().changed
}

/// The op list of a small "config" role.
fn config_ops(dir: &Path, setting: &str) -> HostOps {
    let conf_dir = path(dir, "etc/app");
    HostOps::new(local("localhost"))
        .with(Directory::new(&conf_dir).mode(0o750))
        .with(
            File::new(
                &path(dir, "etc/app/app.conf"),
                format!("listen=127.0.0.1\nsetting={setting}\n"),
            )
            .mode(0o640),
        )
        .with(
            File::new(&path(dir, "etc/app/secret.key"), "hunter2\n")
                .mode(0o600)
                .sensitive(true),
        )
        .with(
            Template::render(
                &path(dir, "etc/app/name"),
                "name.j2",
                "name={{ name }}\n",
                serde_json::json!({"name": "demo"}),
            )
            .unwrap(),
        )
        .with(Absent::new(&path(dir, "etc/app/old.conf")))
}

#[tokio::test]
async fn apply_then_rerun_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("etc/app")).unwrap();
    fs::write(dir.path().join("etc/app/old.conf"), "stale").unwrap();

    let first = runner(Mode::Apply).run(vec![config_ops(dir.path(), "a")]).await;
    assert!(first.success(), "{first:#?}");
    assert_eq!(changed(&first), 5, "{first:#?}");
    let conf = path(dir.path(), "etc/app/app.conf");
    assert_eq!(fs::read_to_string(&conf).unwrap(), "listen=127.0.0.1\nsetting=a\n");
    assert_eq!(mode_of(&conf), 0o640);
    assert_eq!(mode_of(&path(dir.path(), "etc/app")), 0o750);
    assert_eq!(mode_of(&path(dir.path(), "etc/app/secret.key")), 0o600);
    assert_eq!(
        fs::read_to_string(path(dir.path(), "etc/app/name")).unwrap(),
        "name=demo\n"
    );
    assert!(!dir.path().join("etc/app/old.conf").exists());
    // No temp files left beside the targets.
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("etc/app"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("capstan"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let second = runner(Mode::Apply).run(vec![config_ops(dir.path(), "a")]).await;
    assert!(second.success(), "{second:#?}");
    assert_eq!(changed(&second), 0, "{second:#?}");
    assert_eq!(second.totals().ok, 5);
}

#[tokio::test]
async fn dry_run_changes_nothing_and_shows_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    assert!(runner(Mode::Apply)
        .run(vec![config_ops(dir.path(), "a")])
        .await
        .success());
    let conf = path(dir.path(), "etc/app/app.conf");
    let before = fs::read(&conf).unwrap();

    let mut ops = config_ops(dir.path(), "b");
    ops.push(
        File::new(&path(dir.path(), "etc/app/secret.key"), "hunter3\n")
            .mode(0o600)
            .sensitive(true),
    );
    let dry = runner(Mode::DryRun).run(vec![ops]).await;
    assert!(dry.success(), "{dry:#?}");
    assert_eq!(changed(&dry), 2, "{dry:#?}");
    assert_eq!(fs::read(&conf).unwrap(), before, "dry run modified the file");

    let shown = render_changes(&dry, false, true);
    assert!(shown.contains("localhost (2 would change)"), "{shown}");
    assert!(shown.contains("-setting=a\n      +setting=b"), "{shown}");
    assert!(shown.contains("content changed (sensitive, not shown)"), "{shown}");
    assert!(!shown.contains("hunter"), "secret leaked into dry-run output:\n{shown}");
}

#[tokio::test]
async fn mode_and_owner_drift_is_detected_and_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let conf = path(dir.path(), "etc/app/app.conf");
    assert!(runner(Mode::Apply)
        .run(vec![config_ops(dir.path(), "a")])
        .await
        .success());

    fs::set_permissions(&conf, fs::Permissions::from_mode(0o666)).unwrap();
    let report = runner(Mode::Apply).run(vec![config_ops(dir.path(), "a")]).await;
    let summaries: Vec<&str> = report.hosts[0]
        .ops
        .iter()
        .flat_map(|o| &o.changes)
        .map(|c| c.summary.as_str())
        .collect();
    assert_eq!(summaries, vec![format!("mode of {conf} 0666 → 0640").as_str()]);
    assert_eq!(mode_of(&conf), 0o640);

    if !is_root() {
        eprintln!("skipping owner drift: needs root to chown");
        return;
    }
    let owned = |owner: &str| {
        HostOps::new(local("localhost")).with(
            File::new(&conf, "listen=127.0.0.1\nsetting=a\n")
                .mode(0o640)
                .owner(owner)
                .group("root"),
        )
    };
    std::process::Command::new("chown")
        .args(["65534:65534", &conf])
        .status()
        .unwrap();
    let report = runner(Mode::Apply).run(vec![owned("root")]).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(changed(&report), 1);
    let meta = fs::metadata(&conf).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(
        changed(&runner(Mode::Apply).run(vec![owned("0")]).await),
        0,
        "numeric owner 0 is root"
    );
}

#[tokio::test]
async fn commands_run_only_when_their_check_fails() {
    let dir = tempfile::tempdir().unwrap();
    let marker = path(dir.path(), "marker");
    let counter = path(dir.path(), "count");
    let ops = || {
        HostOps::new(local("localhost"))
            .with(Command::new("create marker", &format!("touch {marker}")).unless(&format!("test -f {marker}")))
            .with(Command::new("count runs", &format!("echo run >> {counter}")))
    };
    let first = runner(Mode::Apply).run(vec![ops()]).await;
    assert_eq!(changed(&first), 2);
    let second = runner(Mode::Apply).run(vec![ops()]).await;
    assert_eq!(changed(&second), 1, "unguarded command runs every time");
    assert_eq!(second.hosts[0].ops[0].status, OpStatus::Ok);
    assert_eq!(fs::read_to_string(&counter).unwrap(), "run\nrun\n");
}

#[tokio::test]
async fn a_failing_host_stops_its_list_but_not_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec![
        HostOps::new(local("bad"))
            .with(Command::new("break", "echo 'disk on fire' >&2; exit 3"))
            .with(File::new(&path(dir.path(), "bad.txt"), "x")),
        HostOps::new(local("good")).with(File::new(&path(dir.path(), "good.txt"), "y")),
    ];
    let report = Runner::new(
        RunOptions {
            mode: Mode::Apply,
            concurrency: 1,
        },
        Arc::new(NoProgress),
    )
    .run(hosts)
    .await;
    assert!(!report.success());
    assert_eq!(report.failed_hosts(), vec!["bad"]);
    let bad = &report.hosts[0];
    assert_eq!((bad.failed, bad.skipped, bad.changed), (1, 1, 0));
    let error = bad.ops[0].error.as_deref().unwrap();
    assert!(error.contains("exit 3") && error.contains("disk on fire"), "{error}");
    assert!(!dir.path().join("bad.txt").exists());
    assert_eq!(report.hosts[1].changed, 1);
    assert!(dir.path().join("good.txt").exists());
}

#[tokio::test]
async fn notified_restarts_are_queued_once_and_only_on_change() {
    // Dry run: systemctl is never invoked, but the handler ops are planned
    // and reported exactly as an apply would run them.
    let dir = tempfile::tempdir().unwrap();
    let a = path(dir.path(), "a.conf");
    let b = path(dir.path(), "b.conf");
    fs::write(&b, "same\n").unwrap();
    fs::set_permissions(&b, fs::Permissions::from_mode(0o644)).unwrap();
    let ops = HostOps::new(local("localhost"))
        .with(File::new(&a, "new\n").notify(["etcd"]))
        .with(File::new(&b, "same\n").notify(["kubelet"]))
        .with(File::new(&a, "newer\n").notify(["etcd"]));
    let report = runner(Mode::DryRun).run(vec![ops]).await;
    let ops: Vec<(&str, OpStatus)> = report.hosts[0].ops.iter().map(|o| (o.op.as_str(), o.status)).collect();
    assert_eq!(
        ops,
        vec![
            (format!("file {a}").as_str(), OpStatus::Changed),
            (format!("file {b}").as_str(), OpStatus::Ok),
            (format!("file {a}").as_str(), OpStatus::Changed),
            ("restart etcd (notified)", OpStatus::Changed),
        ]
    );
    assert!(!Path::new(&a).exists());
}

#[tokio::test]
async fn conflicting_path_types_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = path(dir.path(), "thing");
    fs::create_dir(&d).unwrap();
    let report = runner(Mode::Apply)
        .run(vec![HostOps::new(local("localhost")).with(File::new(&d, "x"))])
        .await;
    let error = report.hosts[0].ops[0].error.clone().unwrap();
    assert_eq!(error, format!("localhost: {d} is a directory, expected a regular file"));
    assert!(Path::new(&d).is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_hosts_run_in_parallel_with_bars() {
    use capstan_provisioner::runner::BarProgress;
    let dir = tempfile::tempdir().unwrap();
    let hosts = || {
        (0..64)
            .map(|i| {
                let base = path(dir.path(), &format!("h{i}"));
                HostOps::new(local(&format!("h{i}")))
                    .with(Directory::new(&base).mode(0o700))
                    .with(File::new(&format!("{base}/a"), format!("host {i}\n")))
                    .with(File::new(&format!("{base}/b"), "shared\n").mode(0o600))
            })
            .collect::<Vec<_>>()
    };
    let runner = |mode| Runner::new(RunOptions { mode, concurrency: 32 }, Arc::new(BarProgress::new(false)));
    let first = runner(Mode::Apply).run(hosts()).await;
    assert!(first.success(), "{:?}", first.failed_hosts());
    assert_eq!(first.totals().changed, 64 * 3);
    let names: Vec<&str> = first.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(names[..3], ["h0", "h1", "h2"], "reports keep the input order");
    let second = runner(Mode::Apply).run(hosts()).await;
    assert_eq!(second.totals().changed, 0);
    eprintln!(
        "64 hosts x 3 ops: first apply {:.2}s, re-run {:.2}s",
        first.elapsed.as_secs_f64(),
        second.elapsed.as_secs_f64()
    );
}

/// The probes of a host's whole list cost one exec: a run with nothing to do is one round trip
/// per host, however many path and service ops the list has.
#[tokio::test]
async fn a_no_op_run_costs_one_exec_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let counting = Arc::new(CountingTransport::new(local("localhost")));
    let ops = || {
        let mut ops = config_ops(dir.path(), "a");
        ops.transport = counting.clone();
        for i in 0..3 {
            ops.push(File::new(&path(dir.path(), &format!("etc/app/extra-{i}")), format!("{i}\n")).mode(0o600));
        }
        ops.push(
            Service::new("capstan-test-no-such-unit")
                .unwrap()
                .enabled(false)
                .running(false),
        );
        ops.push(Command::new("marker", "true").unless("true"));
        ops
    };
    let probes: usize = ops().ops.iter().map(|op| op.probes().len()).sum();
    assert_eq!(probes, 10, "one probe per op");

    let first = runner(Mode::Apply).run(vec![ops()]).await;
    assert!(first.success(), "{first:#?}");
    assert_eq!(changed(&first), 7, "{first:#?}");
    let first_execs = counting.execs();

    counting.reset();
    let second = runner(Mode::Apply).run(vec![ops()]).await;
    assert!(second.success(), "{second:#?}");
    assert_eq!((changed(&second), second.totals().ok), (0, 10), "{second:#?}");
    assert_eq!(counting.execs(), 1, "{:#?}", counting.commands());

    counting.reset();
    std::fs::write(path(dir.path(), "etc/app/extra-2"), "drift\n").unwrap();
    let dry = runner(Mode::DryRun).run(vec![ops()]).await;
    assert_eq!(changed(&dry), 1, "{dry:#?}");
    let dry_execs = counting.commands();
    assert_eq!(dry_execs.len(), 2, "the batch and `cat` for the diff: {dry_execs:#?}");
    assert!(dry_execs[1].starts_with("cat -- "), "{dry_execs:#?}");
    eprintln!("{probes} probes: first apply {first_execs} execs, no-op re-apply 1, dry run with a diff 2");
}

/// After a step changed the host, later ops plan from what the host is now, never from what
/// was read before the change; and the run costs no more execs than one per probe.
#[tokio::test]
async fn ops_after_a_change_see_the_changed_host() {
    let dir = tempfile::tempdir().unwrap();
    let a = path(dir.path(), "a.conf");
    let counting = Arc::new(CountingTransport::new(local("localhost")));
    let ops = HostOps::new(counting.clone())
        .with(Directory::new(&path(dir.path(), "d")))
        .with(File::new(&a, "one\n"))
        .with(File::new(&a, "two\n"))
        .with(Absent::new(&a))
        .with(File::new(&path(dir.path(), "d/x"), "x\n"));
    let report = runner(Mode::Apply).run(vec![ops]).await;
    assert!(report.success(), "{report:#?}");
    let summaries: Vec<String> = report.hosts[0]
        .ops
        .iter()
        .flat_map(|o| &o.changes)
        .map(|c| c.summary.clone())
        .collect();
    let d = path(dir.path(), "d");
    let x = path(dir.path(), "d/x");
    assert_eq!(
        summaries,
        vec![
            format!("create directory {d}"),
            format!("create {a}"),
            format!("update {a}"),
            format!("remove file {a}"),
            format!("create {x}"),
        ]
    );
    assert!(!Path::new(&a).exists());
    // One exec per probe, one `cat` for the diff and one per step would be 11.
    assert!(counting.execs() <= 11, "{:#?}", counting.commands());
}

/// Probes read ahead (e.g. together with other probes of the host) are used by the run.
#[tokio::test]
async fn a_run_plans_from_facts_read_before_it() {
    use capstan_provisioner::facts::FactCache;
    use capstan_provisioner::ops::probe_batch::prefetch_commands;

    let dir = tempfile::tempdir().unwrap();
    assert!(runner(Mode::Apply)
        .run(vec![config_ops(dir.path(), "a")])
        .await
        .success());
    let counting = Arc::new(CountingTransport::new(local("localhost")));
    let facts = Arc::new(FactCache::new());
    let probes: Vec<String> = config_ops(dir.path(), "a")
        .ops
        .iter()
        .flat_map(|op| op.probes())
        .collect();
    prefetch_commands(counting.as_ref(), &facts, &probes).await.unwrap();
    assert_eq!(counting.execs(), 1);

    let mut ops = config_ops(dir.path(), "a").with_facts(facts);
    ops.transport = counting.clone();
    let report = runner(Mode::Apply).run(vec![ops]).await;
    assert_eq!((changed(&report), report.totals().ok), (0, 5), "{report:#?}");
    assert_eq!(counting.execs(), 1, "nothing read twice: {:#?}", counting.commands());
}

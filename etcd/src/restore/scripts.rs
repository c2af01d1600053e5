//! The pure parts of a restore: the marker next to a data dir, which tool restores snapshots (read
//! from its help text), and the shell scripts run on the members.

use serde::{Deserialize, Serialize};

use super::{KeptBeforeRestore, SAFETY_DIR};
use crate::config::{PkiPaths, DEFAULT_CONFIG_FILE, DEFAULT_PKI_DIR};
use capstan_provisioner::ops::shell::quote;

/// The marker next to a member's data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Marker {
    pub(super) backup_id: String,
    pub(super) restored: bool,
}

pub(super) fn marker_path(data_dir: &str) -> String {
    format!("{}.capstan-restore", data_dir.trim_end_matches('/'))
}

pub(super) fn parse_marker(text: &str) -> Option<Marker> {
    serde_json::from_str(text.trim()).ok()
}

/// Which tool restores snapshots on a member, from `detect_tool_script`'s output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RestoreTool {
    pub(super) command: String,
    pub(super) name: &'static str,
    /// `snapshot restore` defines both `--bump-revision` and `--mark-compacted` (etcd 3.5.10+).
    pub(super) bump_revision: bool,
    /// `snapshot restore` defines `--skip-hash-check` (etcdctl 3.4 and etcdutl 3.5 do).
    pub(super) skip_hash_check: bool,
}

/// Separates the tool's name from its `snapshot restore --help` text in the detection output.
const HELP_MARK: &str = "@@capstan:help";

/// Prints the tool's name, then its raw `snapshot restore --help`: support for the revision
/// flags is decided by `parse_tool` from that text, not by a remote grep.
pub(super) fn detect_tool_script() -> String {
    format!(
        "if [ -x /usr/local/bin/etcdutl ]; then echo etcdutl; echo {HELP_MARK}; \
         /usr/local/bin/etcdutl snapshot restore --help 2>&1 || true; \
         elif [ -x /usr/local/bin/etcdctl ]; then echo etcdctl; echo {HELP_MARK}; \
         ETCDCTL_API=3 /usr/local/bin/etcdctl snapshot restore --help 2>&1 || true; \
         else echo none; fi"
    )
}

pub(super) fn parse_tool(output: &str) -> Option<RestoreTool> {
    let (head, help) = output.split_once(HELP_MARK).unwrap_or((output, ""));
    let (command, name) = match head.trim() {
        "etcdutl" => ("/usr/local/bin/etcdutl".to_string(), "etcdutl"),
        "etcdctl" => ("ETCDCTL_API=3 /usr/local/bin/etcdctl".to_string(), "etcdctl"),
        _ => return None,
    };
    Some(RestoreTool {
        command,
        name,
        bump_revision: defines_flag(help, "--bump-revision") && defines_flag(help, "--mark-compacted"),
        skip_hash_check: defines_flag(help, "--skip-hash-check"),
    })
}

/// Whether a cobra help text defines `flag` as an option: a line that starts (after indentation
/// and an optional `-x, ` short form) with the flag, followed by its type (etcdutl: `--flag int`),
/// default (etcdctl 3.4: `--flag=""`) or nothing. A mention elsewhere (a description, an
/// "unknown flag" error) does not count, so an unsupported tool is never taken for a supporting one.
fn defines_flag(help: &str, flag: &str) -> bool {
    help.lines().any(|line| {
        let line = line.trim_start();
        let bytes = line.as_bytes();
        let line = if bytes.len() > 4 && bytes[0] == b'-' && bytes[1] != b'-' && &line[2..4] == ", " {
            &line[4..]
        } else {
            line
        };
        line.strip_prefix(flag)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '=', '[']))
    })
}

/// The shell script that replaces `data_dir` with the restored snapshot and marks it.
#[allow(clippy::too_many_arguments)] // one command line's arguments, spelled out
pub(super) fn restore_script(
    tool: &RestoreTool,
    snapshot: &str,
    data_dir: &str,
    name: &str,
    initial_cluster: &str,
    token: &str,
    peer_url: &str,
    bump: Option<(u64, bool)>,
    marker: &Marker,
) -> String {
    let data_dir = data_dir.trim_end_matches('/');
    let staging = format!("{data_dir}.restoring");
    let mut restore = format!(
        "{} snapshot restore {} --name {} --initial-cluster {} --initial-cluster-token {} \
         --initial-advertise-peer-urls {} --data-dir {}",
        tool.command,
        quote(snapshot),
        quote(name),
        quote(initial_cluster),
        quote(token),
        quote(peer_url),
        quote(&staging)
    );
    // The snapshot on the member was verified against the signed manifest's SHA-256 right after
    // it landed (the upload's check, or its probe on a re-run), and etcd's own trailing hash
    // was checked against the content when the backup was downloaded: the tool's check of that
    // trailer would hash the same bytes a third time, in Go's slower SHA-256 (2.8 of etcdutl's
    // 3.7 CPU-seconds for 1 GiB). It still strips the trailer.
    if tool.skip_hash_check {
        restore.push_str(" --skip-hash-check");
    }
    if let Some((revisions, mark_compacted)) = bump {
        restore.push_str(&format!(" --bump-revision {revisions}"));
        if mark_compacted {
            restore.push_str(" --mark-compacted");
        }
    }
    let marker_file = marker_path(data_dir);
    let marker_json = serde_json::to_string(marker).unwrap_or_default();
    format!(
        "set -e\nrm -rf -- {staging_q}\n{restore} >/dev/null\nrm -rf -- {data_q}\nmv -- {staging_q} {data_q}\n\
         chmod 700 {data_q}\nprintf '%s\\n' {marker_q} > {marker_tmp}\nmv -- {marker_tmp} {marker_file_q}\n",
        staging_q = quote(&staging),
        data_q = quote(data_dir),
        marker_q = quote(&marker_json),
        marker_tmp = quote(&format!("{marker_file}.tmp")),
        marker_file_q = quote(&marker_file),
    )
}

/// Saves a snapshot of the local member to `snapshot` (0600) and prints `saved`, when etcd runs.
pub(super) fn safety_snapshot_script(pki: &PkiPaths, snapshot: &str) -> String {
    format!(
        "set -e\nmkdir -p -m 0700 {SAFETY_DIR}\n\
         if systemctl is-active -q etcd; then\n  ETCDCTL_API=3 /usr/local/bin/etcdctl --endpoints https://127.0.0.1:2379 \
         --cacert {ca} --cert {cert} --key {key} --command-timeout 300s snapshot save {snap} >/dev/null\n  \
         chmod 600 {snap}\n  echo saved\nfi\n",
        ca = quote(&pki.ca_file),
        cert = quote(&pki.peer_cert_file),
        key = quote(&pki.peer_key_file),
        snap = quote(snapshot),
    )
}

/// Stops etcd and moves the data dir and config aside (suffix `.before-restore-<stamp>`), copies
/// the PKI dir, removes the restore marker; prints what it kept (`config`, `pki`).
pub(super) fn move_aside_script(data_dir: &str, marker_file: &str, stamp: u64) -> String {
    let suffix = format!(".before-restore-{stamp}");
    format!(
        "set -e\nsystemctl stop etcd 2>/dev/null || true\nmv -- {dd} {dd_kept}\n\
         if [ -e {config} ]; then mv -- {config} {config_kept}; echo config; fi\n\
         if [ -d {pki} ]; then rm -rf -- {pki_kept}; cp -a -- {pki} {pki_kept}; echo pki; fi\n\
         rm -f -- {marker}\n",
        dd = quote(data_dir),
        dd_kept = quote(&format!("{data_dir}{suffix}")),
        config = quote(DEFAULT_CONFIG_FILE),
        config_kept = quote(&format!("{DEFAULT_CONFIG_FILE}{suffix}")),
        pki = quote(DEFAULT_PKI_DIR),
        pki_kept = quote(&format!("{DEFAULT_PKI_DIR}{suffix}")),
        marker = quote(marker_file),
    )
}

/// After `--force` moved things aside: prints `saved` when the safety snapshot exists and, like
/// the move itself did, `config` and `pki` for what was kept (read by `parse_moved_aside`).
pub(super) fn kept_state_script(safety_snapshot: &str, stamp: u64) -> String {
    let suffix = format!(".before-restore-{stamp}");
    format!(
        "if [ -f {snap} ]; then echo saved; fi; if [ -e {config_kept} ]; then echo config; fi; \
         if [ -d {pki_kept} ]; then echo pki; fi; true",
        snap = quote(safety_snapshot),
        config_kept = quote(&format!("{DEFAULT_CONFIG_FILE}{suffix}")),
        pki_kept = quote(&format!("{DEFAULT_PKI_DIR}{suffix}")),
    )
}

/// The tool `apply` would install for etcd `version` (a dry run cannot ask binaries that are not
/// there yet): etcdutl from 3.5, with the revision flags from 3.5.10; etcdctl before.
pub(super) fn expected_tool(version: &str) -> Option<RestoreTool> {
    let v = crate::upgrade::Version::parse(version)?;
    Some(if v >= crate::upgrade::Version::new(3, 5, 0) {
        RestoreTool {
            command: "/usr/local/bin/etcdutl".into(),
            name: "etcdutl",
            bump_revision: v >= crate::upgrade::Version::new(3, 5, 10),
            skip_hash_check: true,
        }
    } else {
        RestoreTool {
            command: "ETCDCTL_API=3 /usr/local/bin/etcdctl".into(),
            name: "etcdctl",
            bump_revision: false,
            skip_hash_check: true,
        }
    })
}

pub(super) fn parse_moved_aside(
    output: &str,
    data_dir: &str,
    stamp: u64,
    safety_snapshot: Option<String>,
) -> KeptBeforeRestore {
    let suffix = format!(".before-restore-{stamp}");
    let said = |word: &str| output.lines().any(|l| l.trim() == word);
    KeptBeforeRestore {
        safety_snapshot,
        data_dir: format!("{data_dir}{suffix}"),
        config: said("config").then(|| format!("{DEFAULT_CONFIG_FILE}{suffix}")),
        pki_dir: said("pki").then(|| format!("{DEFAULT_PKI_DIR}{suffix}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `etcdutl snapshot restore --help` of etcd 3.5.1 (from the lab mirror's tarball).
    const ETCDUTL_3_5_1_HELP: &str = "Usage:
  etcdutl snapshot restore <filename> --data-dir {output dir} [options] [flags]

Flags:
      --data-dir string                      Path to the output data directory
  -h, --help                                 help for restore
      --initial-advertise-peer-urls string   List of this member's peer URLs to advertise to the rest of the cluster (default \"http://localhost:2380\")
      --initial-cluster string               Initial cluster configuration for restore bootstrap (default \"default=http://localhost:2380\")
      --initial-cluster-token string         Initial cluster token for the etcd cluster during restore bootstrap (default \"etcd-cluster\")
      --name string                          Human-readable name for this member (default \"default\")
      --skip-hash-check                      Ignore snapshot integrity hash value (required if copied from data directory)
      --wal-dir string                       Path to the WAL directory (use --data-dir if none given)

Global Flags:
  -w, --write-out string   set the output format (fields, json, protobuf, simple, table) (default \"simple\")
";

    /// The flag lines etcd 3.5.10 added (cobra's layout; the rest as in 3.5.1).
    const ADDED_IN_3_5_10: &str = "      --bump-revision uint                   How much to increase the latest revision after restore
      --mark-compacted                       Mark the latest revision after restore as the point of scheduled compaction (required if --bump-revision > 0, disallowed otherwise)
";

    /// `ETCDCTL_API=3 etcdctl snapshot restore --help` of etcd 3.4.23 (Debian's etcd-client), abridged.
    const ETCDCTL_3_4_23_HELP: &str = "OPTIONS:
      --data-dir=\"\"\t\t\t\t\t\tPath to the data directory
  -h, --help[=false]\t\t\t\t\t\thelp for restore
      --name=\"default\"\t\t\t\t\t\tHuman-readable name for this member
      --skip-hash-check[=false]\t\t\t\t\tIgnore snapshot integrity hash value (required if copied from data directory)
";

    fn detected(name: &str, help: &str) -> String {
        format!("{name}\n{HELP_MARK}\n{help}")
    }

    #[test]
    fn tool_detection_reads_the_flags_from_the_help_text() {
        let old = parse_tool(&detected("etcdutl", ETCDUTL_3_5_1_HELP)).unwrap();
        assert_eq!(old.command, "/usr/local/bin/etcdutl");
        assert!(!old.bump_revision, "etcd 3.5.1 has no --bump-revision");
        let with = ETCDUTL_3_5_1_HELP.replace("      --data-dir", &format!("{ADDED_IN_3_5_10}      --data-dir"));
        assert!(parse_tool(&detected("etcdutl", &with)).unwrap().bump_revision);
        let ctl = parse_tool(&detected("etcdctl", ETCDCTL_3_4_23_HELP)).unwrap();
        assert_eq!(ctl.name, "etcdctl");
        assert!(!ctl.bump_revision);
        assert!(old.skip_hash_check && ctl.skip_hash_check);
        assert!(
            !parse_tool(&detected("etcdutl", ADDED_IN_3_5_10))
                .unwrap()
                .skip_hash_check
        );
        assert!(ctl.command.starts_with("ETCDCTL_API=3 "));
        assert_eq!(parse_tool("none\n"), None);
        assert_eq!(parse_tool(""), None);
    }

    #[test]
    fn a_mere_mention_of_the_flags_is_not_support() {
        for help in [
            // Only one of the two flags.
            "      --bump-revision uint   How much to increase the latest revision\n",
            // Errors and descriptions that name them.
            "Error: unknown flag: --bump-revision\nError: unknown flag: --mark-compacted\n",
            "      --skip-hash-check   see --bump-revision and --mark-compacted\n",
            // Another flag that merely starts with the same letters.
            "      --bump-revision-by uint   x\n      --mark-compacted-at int   y\n",
            // The tool could not even run.
            "sh: 1: /usr/local/bin/etcdutl: Exec format error\n",
        ] {
            let tool = parse_tool(&detected("etcdutl", help)).unwrap();
            assert!(!tool.bump_revision, "wrongly supported for:\n{help}");
        }
        // etcdctl 3.4's `--flag=default` layout, when a release has them.
        let ctl = "      --bump-revision=0\t\tHow much\n      --mark-compacted[=false]\t\tMark\n";
        assert!(parse_tool(&detected("etcdctl", ctl)).unwrap().bump_revision);
    }

    #[test]
    fn force_keeps_the_previous_state_under_one_suffix() {
        let script = move_aside_script("/var/lib/etcd", "/var/lib/etcd.capstan-restore", 1700000000);
        assert!(script.starts_with("set -e\n"), "{script}");
        let stop_at = script.find("systemctl stop etcd").unwrap();
        let move_at = script
            .find("mv -- /var/lib/etcd /var/lib/etcd.before-restore-1700000000")
            .unwrap();
        assert!(stop_at < move_at, "{script}");
        assert!(script.contains("mv -- /etc/etcd/etcd.conf.yml /etc/etcd/etcd.conf.yml.before-restore-1700000000"));
        assert!(script.contains("cp -a -- /etc/etcd/pki /etc/etcd/pki.before-restore-1700000000"));
        let kept = parse_moved_aside("config\npki\n", "/var/lib/etcd", 1700000000, Some("/s.db".into()));
        assert_eq!(kept.data_dir, "/var/lib/etcd.before-restore-1700000000");
        assert_eq!(
            kept.config.as_deref(),
            Some("/etc/etcd/etcd.conf.yml.before-restore-1700000000")
        );
        assert_eq!(kept.pki_dir.as_deref(), Some("/etc/etcd/pki.before-restore-1700000000"));
        let bare = parse_moved_aside("", "/var/lib/etcd", 1, None);
        assert_eq!((bare.config, bare.pki_dir), (None, None));
    }

    #[test]
    fn markers_round_trip_and_garbage_is_no_marker() {
        let marker = Marker {
            backup_id: "20261128T041500Z-3f9a".into(),
            restored: true,
        };
        let text = serde_json::to_string(&marker).unwrap();
        assert_eq!(parse_marker(&format!("{text}\n")), Some(marker));
        assert_eq!(parse_marker(""), None);
        assert_eq!(parse_marker("not json"), None);
        assert_eq!(marker_path("/var/lib/etcd/"), "/var/lib/etcd.capstan-restore");
    }

    #[test]
    fn restore_script_uses_the_new_cluster_and_swaps_atomically() {
        let tool = RestoreTool {
            command: "/usr/local/bin/etcdutl".into(),
            name: "etcdutl",
            bump_revision: true,
            skip_hash_check: true,
        };
        let marker = Marker {
            backup_id: "20261128T041500Z-3f9a".into(),
            restored: true,
        };
        let script = restore_script(
            &tool,
            "/var/lib/capstan-restore/x/snapshot.db",
            "/var/lib/etcd",
            "new-1",
            "new-1=https://10.0.0.1:2380,new-2=https://10.0.0.2:2380",
            "demo-0badcafe",
            "https://10.0.0.1:2380",
            Some((1000, true)),
            &marker,
        );
        assert!(script.contains("--name new-1"), "{script}");
        assert!(script.contains("--initial-cluster-token demo-0badcafe"), "{script}");
        assert!(script.contains("--data-dir /var/lib/etcd.restoring"), "{script}");
        assert!(script.contains("--bump-revision 1000 --mark-compacted"), "{script}");
        assert!(script.contains(" --skip-hash-check"), "{script}");
        let restore_at = script.find("snapshot restore").unwrap();
        let swap_at = script.find("mv -- /var/lib/etcd.restoring /var/lib/etcd").unwrap();
        let mark_at = script.find("/var/lib/etcd.capstan-restore.tmp").unwrap();
        assert!(
            restore_at < swap_at && swap_at < mark_at,
            "restore, then swap, then mark:\n{script}"
        );
        assert!(script.starts_with("set -e\n"));
    }
}

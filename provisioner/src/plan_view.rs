//! A cluster run's changes for people: identical changes grouped across hosts (the change, then
//! the hosts: "all 20 hosts", "all 3 etcd hosts", or `node-[1-5,7]`), the per-host differences
//! only where hosts differ (each distinct diff once, with its hosts), and a summary per component
//! and host class. The per-host form stays in [`crate::report::render_changes`] (`-v`) and in the
//! JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use console::Style;

use crate::cluster_plan::ClusterOutcome;
use crate::report::{write_styled_diff, OpStatus, RunReport};
use crate::runner::Mode;

/// Which class each host belongs to (e.g. its roles, `etcd+node`), in inventory order.
#[derive(Debug, Clone, Default)]
pub struct HostClasses(Vec<(String, String)>);

impl HostClasses {
    pub fn new(hosts: impl IntoIterator<Item = (String, String)>) -> HostClasses {
        HostClasses(hosts.into_iter().collect())
    }

    fn class_of(&self, host: &str) -> &str {
        self.0
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, c)| c.as_str())
            .unwrap_or("-")
    }

    fn hosts_of(&self, class: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(_, c)| c == class)
            .map(|(h, _)| h.as_str())
            .collect()
    }

    fn all(&self) -> Vec<&str> {
        self.0.iter().map(|(h, _)| h.as_str()).collect()
    }
}

/// One distinct form of a change and the hosts it applies to.
struct Variant<'a> {
    diff: Option<&'a str>,
    commands: &'a [String],
    hosts: Vec<&'a str>,
}

/// A change (by its one-line summary) across hosts.
struct Group<'a> {
    summary: &'a str,
    variants: Vec<Variant<'a>>,
}

impl Group<'_> {
    fn hosts(&self) -> Vec<&str> {
        let mut hosts: Vec<&str> = self.variants.iter().flat_map(|v| v.hosts.iter().copied()).collect();
        hosts.dedup();
        hosts
    }
}

fn groups<'a>(report: &'a RunReport, show_commands: bool) -> (Vec<Group<'a>>, Vec<Group<'a>>) {
    let mut changes: Vec<Group<'a>> = Vec::new();
    let mut failures: Vec<Group<'a>> = Vec::new();
    for host in &report.hosts {
        for op in &host.ops {
            for change in &op.changes {
                let commands: &[String] = if show_commands { &change.commands } else { &[] };
                add(
                    &mut changes,
                    &change.summary,
                    change.diff.as_deref(),
                    commands,
                    &host.host,
                );
            }
            if op.status == OpStatus::Failed {
                let error = op.error.as_deref().unwrap_or("failed");
                add(&mut failures, &op.op, Some(error), &[], &host.host);
            }
        }
    }
    (changes, failures)
}

fn add<'a>(
    groups: &mut Vec<Group<'a>>,
    summary: &'a str,
    diff: Option<&'a str>,
    commands: &'a [String],
    host: &'a str,
) {
    let index = match groups.iter().position(|g| g.summary == summary) {
        Some(i) => i,
        None => {
            groups.push(Group {
                summary,
                variants: Vec::new(),
            });
            groups.len() - 1
        }
    };
    let group = &mut groups[index];
    match group
        .variants
        .iter_mut()
        .find(|v| v.diff == diff && v.commands == commands)
    {
        Some(variant) => variant.hosts.push(host),
        None => group.variants.push(Variant {
            diff,
            commands,
            hosts: vec![host],
        }),
    }
}

/// "all 3 hosts", "all 2 etcd hosts" or the names, runs of numbered names as ranges.
pub fn hosts_label(hosts: &[&str], classes: &HostClasses) -> String {
    let all = classes.all();
    if hosts.len() > 1 && same_set(hosts, &all) {
        return format!("all {} hosts", hosts.len());
    }
    if hosts.len() > 1 {
        let class = classes.class_of(hosts[0]);
        if same_set(hosts, &classes.hosts_of(class)) {
            return format!("all {} {class} hosts", hosts.len());
        }
    }
    compress_names(hosts)
}

fn same_set(a: &[&str], b: &[&str]) -> bool {
    a.len() == b.len() && a.iter().all(|h| b.contains(h))
}

/// `node-1, node-2, node-3, node-5, db` → `node-[1-3,5], db`.
pub fn compress_names(hosts: &[&str]) -> String {
    let mut runs: Vec<(&str, Vec<u64>, Vec<&str>)> = Vec::new();
    for host in hosts {
        let digits = host.len() - host.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (prefix, number) = host.split_at(host.len() - digits);
        // Numbers with leading zeros would not round-trip: keep those names whole.
        let parsed = (digits > 0 && !(number.starts_with('0') && number.len() > 1))
            .then(|| number.parse::<u64>().ok())
            .flatten();
        match (parsed, runs.iter_mut().find(|(p, _, _)| *p == prefix)) {
            (Some(n), Some(run)) => {
                run.1.push(n);
                run.2.push(host);
            }
            (Some(n), None) => runs.push((prefix, vec![n], vec![host])),
            (None, _) => runs.push((host, Vec::new(), vec![host])),
        }
    }
    runs.into_iter()
        .map(|(prefix, mut numbers, names)| {
            if numbers.len() < 2 {
                return names.join(", ");
            }
            numbers.sort_unstable();
            numbers.dedup();
            let mut parts: Vec<String> = Vec::new();
            let mut start = numbers[0];
            let mut end = start;
            for &n in &numbers[1..] {
                if n == end + 1 {
                    end = n;
                    continue;
                }
                parts.push(range(start, end));
                start = n;
                end = n;
            }
            parts.push(range(start, end));
            format!("{prefix}[{}]", parts.join(","))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn range(start: u64, end: u64) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

/// Every component's changes grouped across hosts, then its failures; "no changes" when none.
pub fn render_grouped(outcome: &ClusterOutcome, classes: &HostClasses, color: bool, show_commands: bool) -> String {
    let bold = Style::new().bold().force_styling(color);
    let red = Style::new().red().bold().force_styling(color);
    let verb = match outcome.mode {
        Mode::Apply => "changed",
        Mode::DryRun => "would change",
    };
    let mut out = String::new();
    for component in &outcome.components {
        let (changes, failures) = groups(&component.summary, show_commands);
        if changes.is_empty() && failures.is_empty() {
            continue;
        }
        let count: usize = changes.iter().map(|g| g.hosts().len()).sum();
        let _ = writeln!(
            out,
            "{} ({count} {verb} on {})",
            bold.apply_to(component.component),
            hosts_label(
                &component
                    .summary
                    .hosts
                    .iter()
                    .filter(|h| h
                        .ops
                        .iter()
                        .any(|op| !op.changes.is_empty() || op.status == OpStatus::Failed))
                    .map(|h| h.host.as_str())
                    .collect::<Vec<_>>(),
                classes
            )
        );
        for group in &changes {
            let _ = writeln!(out, "  ~ {}  [{}]", group.summary, hosts_label(&group.hosts(), classes));
            let differs = group.variants.len() > 1;
            for variant in &group.variants {
                let indent = if differs {
                    let _ = writeln!(out, "      on {}:", hosts_label(&variant.hosts, classes));
                    "        "
                } else {
                    "      "
                };
                if let Some(diff) = variant.diff {
                    write_styled_diff(&mut out, diff, indent, color);
                }
                for command in variant.commands {
                    let mut lines = command.lines();
                    let _ = writeln!(out, "{indent}$ {}", lines.next().unwrap_or_default());
                    for line in lines {
                        let _ = writeln!(out, "{indent}  {line}");
                    }
                }
            }
        }
        for group in &failures {
            for variant in &group.variants {
                let _ = writeln!(
                    out,
                    "  {} {}  [{}]: {}",
                    red.apply_to("!"),
                    group.summary,
                    hosts_label(&variant.hosts, classes),
                    variant.diff.unwrap_or("failed")
                );
            }
        }
    }
    if out.is_empty() {
        out.push_str("no changes\n");
    }
    out
}

/// Counts per component and host class, and the run's totals.
pub fn render_class_summary(outcome: &ClusterOutcome, classes: &HostClasses) -> String {
    let changed_label = match outcome.mode {
        Mode::Apply => "CHANGED",
        Mode::DryRun => "TO CHANGE",
    };
    let mut rows: Vec<[String; 6]> = vec![[
        "COMPONENT".into(),
        "HOSTS".into(),
        "OK".into(),
        changed_label.into(),
        "FAILED".into(),
        "SKIPPED".into(),
    ]];
    for component in &outcome.components {
        let mut by_class: BTreeMap<&str, (usize, [usize; 4])> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        for host in &component.summary.hosts {
            let class = classes.class_of(&host.host);
            if !order.contains(&class) {
                order.push(class);
            }
            let entry = by_class.entry(class).or_default();
            entry.0 += 1;
            entry.1[0] += host.ok;
            entry.1[1] += host.changed;
            entry.1[2] += host.failed;
            entry.1[3] += host.skipped;
        }
        for class in order {
            let (hosts, [ok, changed, failed, skipped]) = by_class[class];
            rows.push([
                component.component.to_string(),
                format!("{hosts} × {class}"),
                ok.to_string(),
                changed.to_string(),
                failed.to_string(),
                skipped.to_string(),
            ]);
        }
    }
    let totals = outcome.summary.totals();
    rows.push([
        "TOTAL".into(),
        match outcome.summary.hosts.len() {
            1 => "1 host".to_string(),
            n => format!("{n} hosts"),
        },
        totals.ok.to_string(),
        totals.changed.to_string(),
        totals.failed.to_string(),
        totals.skipped.to_string(),
    ]);
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i < 2 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
            if i < 5 {
                line.push_str("  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use expect_test::{expect, Expect};

    use super::*;
    use crate::component::ComponentOutcome;
    use crate::report::{ChangeRecord, HostReport, OpRecord};

    fn op(name: &str, status: OpStatus, changes: &[(&str, Option<&str>)], error: Option<&str>) -> OpRecord {
        OpRecord {
            op: name.into(),
            status,
            changes: changes
                .iter()
                .map(|(summary, diff)| ChangeRecord {
                    summary: summary.to_string(),
                    diff: diff.map(str::to_string),
                    commands: vec![format!("run {summary}")],
                })
                .collect(),
            error: error.map(str::to_string),
            elapsed: Duration::ZERO,
        }
    }

    fn host(name: &str, ops: Vec<OpRecord>) -> HostReport {
        let mut report = HostReport::new(name);
        for op in ops {
            report.push(op);
        }
        report
    }

    fn component(name: &'static str, mode: Mode, hosts: Vec<HostReport>) -> ComponentOutcome {
        ComponentOutcome {
            component: name,
            phases: Vec::new(),
            reports: Vec::new(),
            summary: RunReport {
                mode,
                hosts,
                elapsed: Duration::ZERO,
            },
            error: None,
            hint: None,
        }
    }

    fn outcome(mode: Mode, components: Vec<ComponentOutcome>) -> ClusterOutcome {
        let reports: Vec<&RunReport> = components.iter().map(|c| &c.summary).collect();
        let summary = RunReport::merged(mode, &reports, Duration::from_secs(3));
        ClusterOutcome {
            mode,
            components,
            summary,
            error: None,
            hint: None,
        }
    }

    fn classes() -> HostClasses {
        HostClasses::new(
            [
                ("demo-1", "etcd"),
                ("demo-2", "etcd"),
                ("demo-3", "etcd"),
                ("node-1", "node"),
                ("node-2", "node"),
            ]
            .map(|(h, c)| (h.to_string(), c.to_string())),
        )
    }

    fn config_diff(name: &str) -> String {
        format!("--- /etc/app.conf\n+++ /etc/app.conf (desired)\n@@ -0,0 +1 @@\n+name: {name}\n")
    }

    fn check(outcome: &ClusterOutcome, show_commands: bool, expected: Expect) {
        let text = format!(
            "{}\n{}",
            render_grouped(outcome, &classes(), false, show_commands),
            render_class_summary(outcome, &classes())
        );
        expected.assert_eq(&text);
    }

    fn plan() -> ClusterOutcome {
        let same = "--- /etc/shared.conf\n+++ /etc/shared.conf (desired)\n@@ -1 +1 @@\n-a\n+b\n";
        let etcd_host = |name: &str, start: bool| {
            let diff = config_diff(name);
            let mut ops = vec![
                op(
                    "directory /etc/app",
                    OpStatus::Changed,
                    &[("create directory /etc/app", None)],
                    None,
                ),
                op(
                    "file /etc/app.conf",
                    OpStatus::Changed,
                    &[("create /etc/app.conf", Some(diff.as_str()))],
                    None,
                ),
                op(
                    "file /etc/shared.conf",
                    OpStatus::Changed,
                    &[("update /etc/shared.conf", Some(same))],
                    None,
                ),
            ];
            if start {
                ops.push(op("service app", OpStatus::Changed, &[("start app", None)], None));
            } else {
                ops.push(op("service app", OpStatus::Ok, &[], None));
            }
            host(name, ops)
        };
        let node_host = |name: &str| {
            host(
                name,
                vec![
                    op(
                        "directory /etc/app",
                        OpStatus::Changed,
                        &[("create directory /etc/app", None)],
                        None,
                    ),
                    op(
                        "file /etc/shared.conf",
                        OpStatus::Changed,
                        &[("update /etc/shared.conf", Some(same))],
                        None,
                    ),
                ],
            )
        };
        outcome(
            Mode::DryRun,
            vec![
                component(
                    "etcd",
                    Mode::DryRun,
                    vec![
                        etcd_host("demo-1", true),
                        etcd_host("demo-2", true),
                        etcd_host("demo-3", false),
                    ],
                ),
                component(
                    "nodes",
                    Mode::DryRun,
                    vec![
                        node_host("demo-1"),
                        node_host("demo-2"),
                        node_host("demo-3"),
                        node_host("node-1"),
                        node_host("node-2"),
                    ],
                ),
            ],
        )
    }

    #[test]
    fn identical_changes_are_grouped_and_differences_shown_per_host() {
        check(
            &plan(),
            false,
            expect![[r#"
                etcd (11 would change on all 3 etcd hosts)
                  ~ create directory /etc/app  [all 3 etcd hosts]
                  ~ create /etc/app.conf  [all 3 etcd hosts]
                      on demo-1:
                        --- /etc/app.conf
                        +++ /etc/app.conf (desired)
                        @@ -0,0 +1 @@
                        +name: demo-1
                      on demo-2:
                        --- /etc/app.conf
                        +++ /etc/app.conf (desired)
                        @@ -0,0 +1 @@
                        +name: demo-2
                      on demo-3:
                        --- /etc/app.conf
                        +++ /etc/app.conf (desired)
                        @@ -0,0 +1 @@
                        +name: demo-3
                  ~ update /etc/shared.conf  [all 3 etcd hosts]
                      --- /etc/shared.conf
                      +++ /etc/shared.conf (desired)
                      @@ -1 +1 @@
                      -a
                      +b
                  ~ start app  [demo-[1-2]]
                nodes (10 would change on all 5 hosts)
                  ~ create directory /etc/app  [all 5 hosts]
                  ~ update /etc/shared.conf  [all 5 hosts]
                      --- /etc/shared.conf
                      +++ /etc/shared.conf (desired)
                      @@ -1 +1 @@
                      -a
                      +b

                COMPONENT  HOSTS     OK  TO CHANGE  FAILED  SKIPPED
                etcd       3 × etcd   1         11       0        0
                nodes      3 × etcd   0          6       0        0
                nodes      2 × node   0          4       0        0
                TOTAL      5 hosts    1         21       0        0
            "#]],
        );
    }

    #[test]
    fn commands_failures_and_no_changes() {
        let failed = outcome(
            Mode::Apply,
            vec![component(
                "etcd",
                Mode::Apply,
                vec![
                    host(
                        "demo-1",
                        vec![op(
                            "service app",
                            OpStatus::Failed,
                            &[],
                            Some("Job for app.service failed"),
                        )],
                    ),
                    host(
                        "demo-2",
                        vec![op("service app", OpStatus::Changed, &[("restart app", None)], None)],
                    ),
                    host(
                        "demo-3",
                        vec![op("service app", OpStatus::Changed, &[("restart app", None)], None)],
                    ),
                ],
            )],
        );
        check(
            &failed,
            true,
            expect![[r#"
                etcd (2 changed on all 3 etcd hosts)
                  ~ restart app  [demo-[2-3]]
                      $ run restart app
                  ! service app  [demo-1]: Job for app.service failed

                COMPONENT  HOSTS     OK  CHANGED  FAILED  SKIPPED
                etcd       3 × etcd   0        2       1        0
                TOTAL      3 hosts    0        2       1        0
            "#]],
        );
        let quiet = outcome(
            Mode::DryRun,
            vec![component(
                "etcd",
                Mode::DryRun,
                vec![host("demo-1", vec![op("service app", OpStatus::Ok, &[], None)])],
            )],
        );
        check(
            &quiet,
            false,
            expect![[r#"
                no changes

                COMPONENT  HOSTS     OK  TO CHANGE  FAILED  SKIPPED
                etcd       1 × etcd   1          0       0        0
                TOTAL      1 host     1          0       0        0
            "#]],
        );
    }

    #[test]
    fn host_names_compress_into_ranges() {
        assert_eq!(
            compress_names(&["node-1", "node-2", "node-3", "node-5", "db", "node-7", "node-8"]),
            "node-[1-3,5,7-8], db"
        );
        assert_eq!(compress_names(&["a01", "a02"]), "a01, a02");
        assert_eq!(compress_names(&["web-4"]), "web-4");
        let classes = classes();
        assert_eq!(hosts_label(&["node-2", "node-1"], &classes), "all 2 node hosts");
        assert_eq!(hosts_label(&["demo-1"], &classes), "demo-1");
    }
}

//! Carrying out the steps of several planned ops in as few execs as possible.
//!
//! The runner queues the plans of consecutive self-contained ops ([`super::Operation::self_contained`])
//! and hands them here together. Consecutive [`Step::Run`]s and in-memory [`Step::WriteFile`]s go
//! into one script: each step in its own `sh -c` (stdin from /dev/null, as a direct exec), file
//! content base64-encoded in a here-document piped into [`write_file_command`], and after each
//! step a marker line with the batch's nonce on stdout and stderr. The script stops at the first
//! failing step; the markers tell which step of which op failed, and which part of stderr is its
//! own. A file streamed from a local file (a large artifact), or content too large for a script,
//! gets its own exec as with [`super::Plan::apply`], after what precedes it.
//!
//! The script travels on the exec's stdin (`sh -s`), not in its command line: there is no
//! argument-size limit to respect, and file content (keys included) never shows in the host's
//! process list.

use std::time::Duration;

use super::probe_batch::{batch_script, find, new_nonce, parse_batch};
use super::shell::quote;
use super::{ensure_success, execute_step, write_file_command, Content, OpError, Plan, Step};
use crate::transport::{ExecOptions, ExecOutput, Transport};

/// Marker lines start with this, then the script's nonce.
const MARK_PREFIX: &str = "@@capstan-apply-";

/// Scripts larger than this are split over several execs (memory stays bounded); one step
/// larger than this alone is streamed on its own exec instead.
pub const APPLY_SCRIPT_LIMIT: usize = 1024 * 1024;

/// A script's budget, as a streamed file's ([`execute_step`]).
const APPLY_TIMEOUT: Duration = Duration::from_secs(1800);

/// Where a step sits: the index of its plan in the batch and its index in that plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRef {
    pub plan: usize,
    pub step: usize,
}

/// One exec of a batched apply.
#[derive(Debug)]
pub enum BatchExec<'a> {
    /// Steps run one after the other by one shell script.
    Script {
        nonce: String,
        script: String,
        steps: Vec<(StepRef, &'a Step)>,
    },
    /// A step run alone, as [`super::Plan::apply`] runs it.
    Alone { at: StepRef, step: &'a Step },
}

/// Splits the steps of `plans` (in order) into execs: scripts of at most `limit` bytes, and
/// the steps that must run alone.
pub fn batch_execs<'a>(plans: &[&'a Plan], limit: usize) -> Vec<BatchExec<'a>> {
    let steps = plans.iter().enumerate().flat_map(|(plan, p)| {
        p.changes
            .iter()
            .flat_map(|c| c.steps.iter())
            .enumerate()
            .map(move |(step, s)| (StepRef { plan, step }, s))
    });
    let mut execs = Vec::new();
    let mut open = OpenScript::new();
    for (at, step) in steps {
        let fits = |section: &String| SCRIPT_HEADER.len() + section.len() <= limit;
        let Some(mut section) = script_section(&open.nonce, at, step).filter(fits) else {
            open.close(&mut execs);
            execs.push(BatchExec::Alone { at, step });
            continue;
        };
        if !open.steps.is_empty() && open.script.len() + section.len() > limit {
            open.close(&mut execs);
            // The new script has a new nonce.
            section = script_section(&open.nonce, at, step).unwrap_or_default();
        }
        open.script.push_str(&section);
        open.steps.push((at, step));
    }
    open.close(&mut execs);
    execs
}

/// The script [`batch_execs`] is filling.
struct OpenScript<'a> {
    nonce: String,
    script: String,
    steps: Vec<(StepRef, &'a Step)>,
}

impl<'a> OpenScript<'a> {
    fn new() -> OpenScript<'a> {
        OpenScript {
            nonce: new_nonce(),
            script: SCRIPT_HEADER.to_string(),
            steps: Vec::new(),
        }
    }
    /// Ends the script (when it has steps) and starts the next.
    fn close(&mut self, execs: &mut Vec<BatchExec<'a>>) {
        if self.steps.is_empty() {
            return;
        }
        let done = std::mem::replace(self, OpenScript::new());
        execs.push(BatchExec::Script {
            nonce: done.nonce,
            script: done.script,
            steps: done.steps,
        });
    }
}

const SCRIPT_HEADER: &str = "set -e\n";

fn mark(nonce: &str, at: StepRef) -> String {
    format!("{MARK_PREFIX}{nonce} ok {} {}", at.plan, at.step)
}

/// The script lines for one step, or None for a step that must run alone (streamed content).
fn script_section(nonce: &str, at: StepRef, step: &Step) -> Option<String> {
    let run = match step {
        Step::Run(command) => format!("sh -c {} </dev/null || exit\n", quote(command)),
        Step::WriteFile {
            file,
            content: Content::Bytes(bytes),
            sha256,
            size,
            ..
        } => {
            // base64 text never contains the delimiter (it has no `_` or `@`).
            let delimiter = format!("CAPSTAN_{nonce}_EOF");
            let encoded = data_encoding::BASE64.encode(bytes);
            let mut lines = String::with_capacity(encoded.len() + encoded.len() / 76 + 1);
            for chunk in encoded.as_bytes().chunks(76) {
                lines.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                lines.push('\n');
            }
            format!(
                "base64 -d <<'{delimiter}' | sh -c {} || exit\n{lines}{delimiter}\n",
                quote(&write_file_command(file, sha256, *size))
            )
        }
        Step::WriteFile {
            content: Content::LocalFile(_),
            ..
        } => return None,
    };
    let mark = mark(nonce, at);
    Some(format!(
        "{run}printf '\\n%s\\n' '{mark}'; printf '\\n%s\\n' '{mark}' >&2\n"
    ))
}

/// How many of `steps` (in order) completed, by their markers in `out` (stdout or stderr of
/// the script), and where the output after the last completed one starts.
pub fn completed_steps(nonce: &str, steps: &[StepRef], out: &[u8]) -> (usize, usize) {
    let mut pos = 0;
    let mut done = 0;
    for at in steps {
        let line = format!("\n{}\n", mark(nonce, *at));
        match find(out, line.as_bytes(), pos) {
            Some(found) => {
                pos = found + line.len();
                done += 1;
            }
            None => break,
        }
    }
    (done, pos)
}

/// How a step is named in a failure, as [`execute_step`] names it.
fn step_name(step: &Step) -> String {
    match step {
        Step::Run(command) => command.clone(),
        Step::WriteFile { file, .. } => format!("write {}", file.path),
    }
}

/// What the failed step printed: its own part of stderr, and the script's exit status.
fn failure(t: &dyn Transport, nonce: &str, steps: &[(StepRef, &Step)], output: ExecOutput) -> (usize, OpError) {
    let refs: Vec<StepRef> = steps.iter().map(|(at, _)| *at).collect();
    let (done, _) = completed_steps(nonce, &refs, &output.stdout);
    let (at, step) = steps[done.min(steps.len() - 1)];
    // Its stderr starts after the last marker on stderr (of the steps before it).
    let (_, from) = completed_steps(nonce, &refs[..done], &output.stderr);
    let stderr = output.stderr.get(from..).unwrap_or_default().to_vec();
    let exit_code = match output.exit_code {
        // The markers stopped although the script succeeded: still this step's failure.
        Some(0) => Some(1),
        other => other,
    };
    let own = ExecOutput {
        stdout: Vec::new(),
        stderr,
        exit_code,
    };
    let error = ensure_success(t.host(), &step_name(step), own)
        .err()
        .unwrap_or_else(|| OpError::Invalid("unreachable: a failed step succeeded".into()));
    (at.plan, error)
}

/// Runs one script; on success returns its output and where its stdout goes on after the last
/// step's marker.
async fn run_script(
    t: &dyn Transport,
    nonce: &str,
    script: &str,
    steps: &[(StepRef, &Step)],
) -> Result<(ExecOutput, usize), (usize, OpError)> {
    let first = steps[0].0.plan;
    let opts = ExecOptions {
        timeout: APPLY_TIMEOUT,
        privileged: true,
    };
    let mut stdin: &[u8] = script.as_bytes();
    let output = t
        .exec_with_stdin("exec sh -s", &mut stdin, &opts)
        .await
        .map_err(|e| (first, OpError::from(e)))?;
    let refs: Vec<StepRef> = steps.iter().map(|(at, _)| *at).collect();
    match completed_steps(nonce, &refs, &output.stdout) {
        (done, after) if done == steps.len() => Ok((output, after)),
        _ => Err(failure(t, nonce, steps, output)),
    }
}

/// Carries out every step of `plans` in order, in as few execs as [`batch_execs`] allows;
/// stops at the first failing step and returns the index of its plan with the error.
pub async fn apply_plans(t: &dyn Transport, plans: &[&Plan]) -> Result<(), (usize, OpError)> {
    apply_plans_then_probe(t, plans, &[]).await.map(|_| ())
}

/// [`apply_plans`], and then, in the same exec as the last steps when they run in a script, the
/// read-only `probes` (as [`super::probe_batch::run_batch`] runs them): their outputs, or None
/// when they could not ride along (the last step ran alone, or their output did not parse).
pub async fn apply_plans_then_probe(
    t: &dyn Transport,
    plans: &[&Plan],
    probes: &[String],
) -> Result<Option<Vec<ExecOutput>>, (usize, OpError)> {
    let execs = batch_execs(plans, APPLY_SCRIPT_LIMIT);
    let count = execs.len();
    let mut probed = None;
    for (index, exec) in execs.into_iter().enumerate() {
        let with_probes = index + 1 == count && !probes.is_empty();
        match exec {
            // One step alone costs one exec either way: run it as Plan::apply would.
            BatchExec::Script { steps, .. } if steps.len() == 1 && !with_probes => {
                let (at, step) = steps[0];
                execute_step(t, step).await.map_err(|e| (at.plan, e))?;
            }
            BatchExec::Script {
                nonce,
                mut script,
                steps,
            } => {
                let probe_nonce = with_probes.then(new_nonce);
                if let Some(probe_nonce) = &probe_nonce {
                    // A failing probe is an answer, not a failed apply.
                    script.push_str("set +e\n");
                    script.push_str(&batch_script(probe_nonce, probes));
                }
                let (output, after) = run_script(t, &nonce, &script, &steps).await?;
                if let Some(probe_nonce) = probe_nonce {
                    probed = parse_batch(&probe_nonce, probes.len(), &output.stdout[after..]).ok();
                }
            }
            BatchExec::Alone { at, step } => execute_step(t, step).await.map_err(|e| (at.plan, e))?,
        }
    }
    Ok(probed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::local::LocalTransport;
    use crate::ops::{sha256_hex, Change};
    use crate::transport::{CountingTransport, RemoteFile};

    fn plan(steps: Vec<Step>) -> Plan {
        Plan::single(Change {
            summary: "test".into(),
            diff: None,
            steps,
        })
    }

    fn write(path: &std::path::Path, content: Content, mode: u32) -> Step {
        let bytes = match &content {
            Content::Bytes(b) => b.to_vec(),
            Content::LocalFile(p) => std::fs::read(p).unwrap(),
        };
        Step::WriteFile {
            file: RemoteFile {
                path: path.display().to_string(),
                mode,
                owner: None,
                group: None,
            },
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            content,
            sensitive: true,
        }
    }

    fn bytes(b: &[u8]) -> Content {
        Content::Bytes(Arc::from(b))
    }

    fn counting() -> CountingTransport {
        CountingTransport::new(Arc::new(LocalTransport::new("localhost")))
    }

    fn kinds(execs: &[BatchExec]) -> Vec<String> {
        execs
            .iter()
            .map(|e| match e {
                BatchExec::Script { steps, .. } => format!(
                    "script{:?}",
                    steps.iter().map(|(at, _)| (at.plan, at.step)).collect::<Vec<_>>()
                ),
                BatchExec::Alone { at, .. } => format!("alone({}, {})", at.plan, at.step),
            })
            .collect()
    }

    #[tokio::test]
    async fn files_and_commands_in_one_exec_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Content awkward for a here-document and a shell: binary, quotes, a line like a delimiter.
        let awkward: Vec<u8> = b"'$(reboot)' `x` \"\\\nEOF\nCAPSTAN_x_EOF\n\0\xff\r\n"
            .iter()
            .copied()
            .chain((0..=255u8).cycle().take(5000))
            .collect();
        let plans = [
            plan(vec![Step::Run(format!("mkdir -p {}/sub", d.display()))]),
            plan(vec![
                write(&d.join("sub/a"), bytes(&awkward), 0o600),
                write(&d.join("empty"), bytes(b""), 0o644),
            ]),
            // A command that reads stdin must not eat the script.
            plan(vec![Step::Run(format!("cat > {}/stdin; echo done", d.display()))]),
            plan(vec![Step::Run(format!("echo last > {}/last", d.display()))]),
        ];
        let refs: Vec<&Plan> = plans.iter().collect();
        let t = counting();
        apply_plans(&t, &refs).await.unwrap();
        assert_eq!(t.execs(), 1, "{:#?}", t.commands());
        assert_eq!(std::fs::read(d.join("sub/a")).unwrap(), awkward);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("sub/a")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
        assert_eq!(std::fs::read(d.join("empty")).unwrap(), b"");
        assert_eq!(std::fs::read(d.join("stdin")).unwrap(), b"");
        assert_eq!(std::fs::read_to_string(d.join("last")).unwrap(), "last\n");
        // The content travelled on stdin, never in a command line.
        assert_eq!(t.commands(), vec!["exec sh -s".to_string()]);
    }

    #[tokio::test]
    async fn streamed_files_run_alone_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let local = d.join("local-src");
        std::fs::write(&local, b"streamed\n").unwrap();
        let log = d.join("log");
        let append = |what: &str| Step::Run(format!("echo {what} >> {}", log.display()));
        let plans = [
            plan(vec![append("1"), append("2")]),
            plan(vec![
                write(&d.join("big"), Content::LocalFile(local.clone()), 0o755),
                Step::Run(format!("cat {}/big >> {}", d.display(), log.display())),
            ]),
            plan(vec![append("3"), append("4")]),
        ];
        let refs: Vec<&Plan> = plans.iter().collect();
        let execs = batch_execs(&refs, APPLY_SCRIPT_LIMIT);
        assert_eq!(
            kinds(&execs),
            vec![
                "script[(0, 0), (0, 1)]",
                "alone(1, 0)",
                "script[(1, 1), (2, 0), (2, 1)]"
            ]
        );
        let t = counting();
        apply_plans(&t, &refs).await.unwrap();
        assert_eq!(t.execs(), 3);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "1\n2\nstreamed\n3\n4\n");
    }

    #[tokio::test]
    async fn large_batches_are_split_and_large_content_runs_alone() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = d.join("log");
        let plans: Vec<Plan> = (0..10)
            .map(|i| {
                plan(vec![Step::Run(format!(
                    "echo {i} {} >> {}",
                    "x".repeat(300),
                    log.display()
                ))])
            })
            .chain([plan(vec![write(&d.join("big"), bytes(&[7u8; 3000]), 0o644)])])
            .collect();
        let refs: Vec<&Plan> = plans.iter().collect();
        let limit = 1500;
        let execs = batch_execs(&refs, limit);
        for exec in &execs {
            if let BatchExec::Script { script, .. } = exec {
                assert!(script.len() <= limit, "{} bytes", script.len());
            }
        }
        assert_eq!(
            kinds(&execs),
            vec![
                "script[(0, 0), (1, 0)]",
                "script[(2, 0), (3, 0)]",
                "script[(4, 0), (5, 0)]",
                "script[(6, 0), (7, 0)]",
                "script[(8, 0), (9, 0)]",
                "alone(10, 0)"
            ]
        );
        // Each script's markers carry its own nonce.
        let nonces: std::collections::HashSet<&str> = execs
            .iter()
            .filter_map(|e| match e {
                BatchExec::Script { nonce, script, .. } => {
                    assert!(script.contains(&format!("{MARK_PREFIX}{nonce} ok")));
                    Some(nonce.as_str())
                }
                BatchExec::Alone { .. } => None,
            })
            .collect();
        assert_eq!(nonces.len(), 5);
        let t = counting();
        apply_plans(&t, &refs).await.unwrap();
        let lines: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        assert_eq!(lines, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(std::fs::read(d.join("big")).unwrap(), vec![7u8; 3000]);
    }

    #[tokio::test]
    async fn a_failure_names_its_plan_step_and_own_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let plans = [
            plan(vec![Step::Run("echo noise of a good step >&2".into())]),
            plan(vec![
                Step::Run("printf 'no newline'".into()),
                Step::Run("echo boom >&2; exit 3".into()),
                Step::Run(format!("touch {}/never-1", d.display())),
            ]),
            plan(vec![Step::Run(format!("touch {}/never-2", d.display()))]),
        ];
        let refs: Vec<&Plan> = plans.iter().collect();
        let t = counting();
        let (index, error) = apply_plans(&t, &refs).await.unwrap_err();
        assert_eq!(t.execs(), 1);
        assert_eq!(index, 1);
        assert_eq!(
            error.to_string(),
            "localhost: `echo boom >&2; exit 3` failed (exit 3): boom"
        );
        assert!(!d.join("never-1").exists() && !d.join("never-2").exists());

        // A file whose directory cannot be made, as the second step of the first plan.
        let blocker = d.join("blocker");
        std::fs::write(&blocker, "a file").unwrap();
        let plans = [
            plan(vec![
                Step::Run("true".into()),
                write(&blocker.join("x"), bytes(b"x"), 0o644),
            ]),
            plan(vec![Step::Run("true".into())]),
        ];
        let refs: Vec<&Plan> = plans.iter().collect();
        let (index, error) = apply_plans(&t, &refs).await.unwrap_err();
        assert_eq!(index, 0);
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("localhost: `write {}/x` failed (exit 1): ", blocker.display())),
            "{text}"
        );
        assert!(text.contains("cannot create directory"), "{text}");
    }

    #[tokio::test]
    async fn probes_ride_along_after_the_last_steps() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let probes = vec![
            format!("cat {}/a", d.display()),
            "echo err >&2; exit 4".to_string(),
            format!("test -e {}/b", d.display()),
        ];
        let plans = [plan(vec![write(&d.join("a"), bytes(b"new\n"), 0o644)])];
        let refs: Vec<&Plan> = plans.iter().collect();
        let t = counting();
        let outputs = apply_plans_then_probe(&t, &refs, &probes).await.unwrap().unwrap();
        assert_eq!(t.execs(), 1);
        // Read after the step: the host as it is now.
        assert_eq!(outputs[0].stdout_str(), "new\n");
        assert_eq!(
            (outputs[1].stderr_str().as_str(), outputs[1].exit_code),
            ("err\n", Some(4))
        );
        assert_eq!(outputs[2].exit_code, Some(1));

        // A last step that runs alone (streamed) leaves the probes to the caller.
        let local = d.join("src");
        std::fs::write(&local, b"x").unwrap();
        let plans = [plan(vec![write(&d.join("b"), Content::LocalFile(local), 0o644)])];
        let refs: Vec<&Plan> = plans.iter().collect();
        t.reset();
        assert!(apply_plans_then_probe(&t, &refs, &probes).await.unwrap().is_none());
        assert_eq!(t.execs(), 1);
    }

    #[test]
    fn markers_of_other_scripts_or_out_of_order_are_not_counted() {
        let nonce = "0123456789abcdef0123456789abcdef";
        let other = "ffffffffffffffffffffffffffffffff";
        let steps = [
            StepRef { plan: 0, step: 0 },
            StepRef { plan: 0, step: 1 },
            StepRef { plan: 2, step: 0 },
        ];
        let line = |n: &str, p: usize, s: usize| format!("\n{MARK_PREFIX}{n} ok {p} {s}\n");
        let cases = [
            (String::new(), 0),
            (line(nonce, 0, 0), 1),
            (format!("out{}{}", line(nonce, 0, 0), line(nonce, 0, 1)), 2),
            (format!("{}{}", line(other, 0, 0), line(other, 0, 1)), 0),
            (format!("{}{}", line(nonce, 0, 1), line(nonce, 0, 0)), 1),
            // Not on a line of its own.
            (format!("{MARK_PREFIX}{nonce} ok 0 0 and more\n"), 0),
            (
                format!("{}x{}y{}", line(nonce, 0, 0), line(nonce, 0, 1), line(nonce, 2, 0)),
                3,
            ),
        ];
        for (out, done) in cases {
            assert_eq!(completed_steps(nonce, &steps, out.as_bytes()).0, done, "{out:?}");
        }
        let out = format!("a{}b{}c", line(nonce, 0, 0), line(nonce, 0, 1));
        let (done, from) = completed_steps(nonce, &steps, out.as_bytes());
        assert_eq!((done, &out[from..]), (2, "c"));
    }
}

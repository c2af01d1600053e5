//! One round trip for the probes of a host's op list.
//!
//! Each [`Operation`] lists the read-only commands its `plan` runs ([`Operation::probes`]).
//! Before a host's list is planned, the runner gathers the probes of all its ops and runs them
//! in ONE exec: a script with one delimited section per command, each command in its own
//! `sh -c` with stdin from /dev/null, its stdout, exit status and stderr captured. The results
//! land in a [`FactCache`] as [`CommandFact`]s, and the ops plan through a [`CachedTransport`]
//! that answers an exec of a prefetched command from the cache and passes everything else
//! (steps, uploads, commands nobody prefetched) to the real transport. Planning stays pure:
//! the ops parse the same output they would have read with their own exec.
//!
//! A step that changes the host drops the cache ([`ProbeSession::invalidate`]); the next op
//! that needs a probe gathers the probes of the ops still to plan again, in one exec. So every
//! op still sees the host as it is right before it is planned, and a run never costs more
//! probe execs than one exec per probe. When a batch fails (or its output does not parse) the
//! session falls back to exactly that: each op runs its own probes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use super::shell::quote;
use super::{OpError, Operation};
use crate::facts::{CommandFact, FactCache};
use crate::transport::{ExecOptions, ExecOutput, Transport, TransportError};

/// Marker lines start with this, then the batch's nonce.
const MARK_PREFIX: &str = "@@capstan-batch-";

/// Larger batches are split over several execs: the whole script travels in the exec request
/// (and, under sudo, as one argument of at most 128 KiB after quoting).
pub const BATCH_SCRIPT_LIMIT: usize = 32 * 1024;

/// The whole batch's budget; one probe alone has [`ExecOptions::default`]'s.
const BATCH_TIMEOUT: Duration = Duration::from_secs(300);

/// 128 random bits in hex: output that does not know them cannot fake a section marker.
pub fn new_nonce() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // RandomState is seeded from the OS as well; two of them give 128 bits.
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_usize(i);
            chunk.copy_from_slice(&hasher.finish().to_le_bytes());
        }
    }
    hex::encode(bytes)
}

/// The batch script for `commands`. Per command `i`, its output reads
/// `MARK out i\n` STDOUT `\nMARK status i CODE\n` STDERR `\nMARK done i\n`, and the
/// script ends with `MARK end\n` (`MARK` = [`MARK_PREFIX`] + nonce). The extra newlines
/// make the sections exact: output without a trailing newline stays as it is.
pub fn batch_script(nonce: &str, commands: &[String]) -> String {
    let mut script: String = commands
        .iter()
        .enumerate()
        .map(|(i, command)| script_section(nonce, i, command))
        .collect();
    script.push_str(&script_end(nonce));
    script
}

fn script_section(nonce: &str, i: usize, command: &str) -> String {
    let mark = format!("{MARK_PREFIX}{nonce}");
    // The command's stdout goes straight to ours (fd 3); its stderr, then its status, to $e.
    format!(
        "printf '%s\\n' '{mark} out {i}'\n\
         {{ e=$( {{ sh -c {command} </dev/null 2>&1 1>&3 3>&-; printf ' %s' \"$?\"; }} ); }} 3>&1\n\
         printf '\\n%s %s\\n%s\\n%s\\n' '{mark} status {i}' \"${{e##* }}\" \"${{e% *}}\" '{mark} done {i}'\n",
        command = quote(command),
    )
}

fn script_end(nonce: &str) -> String {
    format!("printf '%s\\n' '{MARK_PREFIX}{nonce} end'\n")
}

/// Where `needle` first occurs in `haystack` at or after `from`.
pub(crate) fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|at| from + at)
}

/// Splits the output of [`batch_script`] into one [`ExecOutput`] per command, byte-exact.
/// Anything but exactly `count` complete sections and the end marker is an error.
pub fn parse_batch(nonce: &str, count: usize, out: &[u8]) -> Result<Vec<ExecOutput>, String> {
    let mark = format!("{MARK_PREFIX}{nonce}");
    let mut pos = 0;
    let mut outputs = Vec::with_capacity(count);
    for i in 0..count {
        let start = format!("{mark} out {i}\n");
        if !out[pos..].starts_with(start.as_bytes()) {
            return Err(format!("section {i} does not start where expected"));
        }
        pos += start.len();
        let status = format!("\n{mark} status {i} ");
        let at = find(out, status.as_bytes(), pos).ok_or_else(|| format!("section {i} is truncated (no status)"))?;
        let stdout = out[pos..at].to_vec();
        pos = at + status.len();
        let eol = find(out, b"\n", pos).ok_or_else(|| format!("section {i} is truncated (in its status)"))?;
        let code = std::str::from_utf8(&out[pos..eol])
            .ok()
            .and_then(|code| code.parse::<u32>().ok())
            .ok_or_else(|| {
                format!(
                    "section {i}: bad exit status {:?}",
                    String::from_utf8_lossy(&out[pos..eol])
                )
            })?;
        pos = eol + 1;
        let done = format!("\n{mark} done {i}\n");
        let at = find(out, done.as_bytes(), pos).ok_or_else(|| format!("section {i} is truncated (no end)"))?;
        let stderr = out[pos..at].to_vec();
        pos = at + done.len();
        outputs.push(ExecOutput {
            stdout,
            stderr,
            exit_code: Some(code),
        });
    }
    if out[pos..] != *format!("{mark} end\n").as_bytes() {
        return Err("output is truncated or has extra text after the last section".into());
    }
    Ok(outputs)
}

/// Runs `commands` (privileged, as [`super::run_checked`] does) in as few execs as the
/// script size allows ([`BATCH_SCRIPT_LIMIT`]), usually one; returns their outputs in order.
pub async fn run_batch(t: &dyn Transport, commands: &[String]) -> Result<Vec<ExecOutput>, OpError> {
    let opts = ExecOptions {
        timeout: BATCH_TIMEOUT,
        privileged: true,
    };
    let mut outputs = Vec::with_capacity(commands.len());
    let mut next = 0;
    while next < commands.len() {
        let nonce = new_nonce();
        let mut script = String::new();
        let mut count = 0;
        // At least one command per exec; more while the script stays under the limit.
        for command in &commands[next..] {
            let section = script_section(&nonce, count, command);
            if count > 0 && script.len() + section.len() > BATCH_SCRIPT_LIMIT {
                break;
            }
            script.push_str(&section);
            count += 1;
        }
        script.push_str(&script_end(&nonce));
        let output = t.exec(&script, &opts).await?;
        let parsed = parse_batch(&nonce, count, &output.stdout).map_err(|reason| OpError::Probe {
            host: t.host().to_string(),
            what: format!("{count} batched probes"),
            reason: format!("{reason} (exit {:?}: {})", output.exit_code, output.stderr_str().trim()),
        })?;
        outputs.extend(parsed);
        next += count;
    }
    Ok(outputs)
}

/// Runs `commands` in one batch ([`run_batch`]) and records each output in `cache` as a
/// [`CommandFact`] of the host, where [`CachedTransport`] finds it.
pub async fn prefetch_commands(t: &dyn Transport, cache: &FactCache, commands: &[String]) -> Result<(), OpError> {
    let outputs = run_batch(t, commands).await?;
    for (command, output) in commands.iter().zip(outputs) {
        cache.insert(t.host(), &CommandFact::new(command.as_str()), output);
    }
    Ok(())
}

/// Prefetches the probes of `ops` (each command once, in list order) into `cache` in one batch:
/// a component reads every phase's probes of a host in one round trip before its first phase. A
/// failed batch only costs the ops their own probes later.
pub async fn prefetch_ops(t: &dyn Transport, cache: &FactCache, ops: &[Arc<dyn Operation>]) {
    let mut seen = HashSet::new();
    let commands: Vec<String> = ops
        .iter()
        .flat_map(|op| op.probes())
        .filter(|command| seen.insert(command.clone()))
        .collect();
    let _ = prefetch_commands(t, cache, &commands).await;
}

/// Probe results of one host's run: filled in batches, dropped whenever the host changes.
#[derive(Default)]
pub struct ProbeSession {
    cache: Arc<FactCache>,
    /// A batch failed: from then on each op runs its own probes, as without batching.
    disabled: AtomicBool,
}

impl ProbeSession {
    pub fn new() -> ProbeSession {
        ProbeSession::default()
    }

    /// Starts from (and fills) `cache`, which may already hold probe results of the host.
    pub fn with_cache(cache: Arc<FactCache>) -> ProbeSession {
        ProbeSession {
            cache,
            disabled: AtomicBool::new(false),
        }
    }

    /// Before planning `ops[0]`: when it needs a probe that is not cached, run the uncached
    /// probes of all of `ops` (the rest of the list) in one batch. A single missing probe is
    /// left to the op itself: that costs the same one exec.
    pub async fn prefetch(&self, t: &dyn Transport, ops: &[Arc<dyn Operation>]) {
        let commands = self.wanted(t.host(), ops);
        if commands.is_empty() {
            return;
        }
        if let Err(error) = prefetch_commands(t, &self.cache, &commands).await {
            self.batch_failed(t.host(), &error);
        }
    }

    /// The probes [`ProbeSession::prefetch`] would run in a batch before planning `ops[0]`
    /// (none when it would not run one).
    pub fn wanted(&self, host: &str, ops: &[Arc<dyn Operation>]) -> Vec<String> {
        let Some(next) = ops.first() else { return Vec::new() };
        if self.disabled.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let missing = |command: &String| {
            !command.contains('\0') && self.cache.cached(host, &CommandFact::new(command.as_str())).is_none()
        };
        if !next.probes().iter().any(missing) {
            return Vec::new();
        }
        let mut seen = HashSet::new();
        let commands: Vec<String> = ops
            .iter()
            .flat_map(|op| op.probes())
            .filter(|command| missing(command) && seen.insert(command.clone()))
            .collect();
        if commands.len() < 2 {
            return Vec::new();
        }
        commands
    }

    /// Outputs of `commands` read by a batch run elsewhere (e.g. at the end of an apply script).
    pub fn record(&self, host: &str, commands: &[String], outputs: Vec<ExecOutput>) {
        for (command, output) in commands.iter().zip(outputs) {
            self.cache.insert(host, &CommandFact::new(command.as_str()), output);
        }
    }

    fn batch_failed(&self, host: &str, error: &OpError) {
        tracing::debug!(host, "batched probes failed, probing one op at a time: {error}");
        self.disabled.store(true, Ordering::Relaxed);
    }

    /// The host is about to change: forget what was read.
    pub fn invalidate(&self, host: &str) {
        self.cache.invalidate_host(host);
    }

    /// `t` as the ops' `plan` should see it: prefetched probes answered from the cache.
    pub fn transport<'a>(&'a self, t: &'a dyn Transport) -> CachedTransport<'a> {
        CachedTransport {
            inner: t,
            cache: &self.cache,
        }
    }
}

/// Answers `exec` of a prefetched (privileged) command from the cache; everything else goes
/// to the real transport. Meant for planning only: steps are applied through the real one.
pub struct CachedTransport<'a> {
    inner: &'a dyn Transport,
    cache: &'a FactCache,
}

#[async_trait]
impl Transport for CachedTransport<'_> {
    fn host(&self) -> &str {
        self.inner.host()
    }

    async fn exec(&self, command: &str, opts: &ExecOptions) -> Result<ExecOutput, TransportError> {
        if opts.privileged {
            if let Some(output) = self.cache.cached(self.inner.host(), &CommandFact::new(command)) {
                return Ok(output);
            }
        }
        self.inner.exec(command, opts).await
    }

    async fn exec_with_stdin(
        &self,
        command: &str,
        stdin: &mut (dyn AsyncRead + Send + Unpin),
        opts: &ExecOptions,
    ) -> Result<ExecOutput, TransportError> {
        self.inner.exec_with_stdin(command, stdin, opts).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalTransport;
    use crate::ops::{Absent, Command, Directory, File, Service};
    use crate::transport::CountingTransport;

    fn direct(shell: &str, command: &str) -> ExecOutput {
        let out = std::process::Command::new(shell)
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        ExecOutput {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.status.code().map(|c| c as u32),
        }
    }

    /// Commands whose output is awkward to delimit, run through the batch and alone.
    fn awkward_commands() -> Vec<String> {
        [
            "echo out; echo err >&2; exit 3",
            "printf 'no newline'",
            "printf ''",
            "printf 'a\\n\\n\\n'",
            "printf 'x\\000y\\r\\n\\377'",
            "printf 'err without newline' >&2; printf 'err 12 34' >&2",
            "cat",
            "(echo in a subshell)",
            "exit 0; echo never",
            "x=1; cd /; echo \"$x\"",
            "echo \"${x:-unset}\"; pwd | grep -c '^/$' || true",
            "echo unterminated 'quote",
            "cat <<'EOF'\nheredoc $HOME\nEOF",
            "printf '%s\\n' \"$0\" 'it'\\''s'",
            // Output that looks like markers (another nonce, the facts format, a bare prefix).
            "echo '@@capstan-batch-00000000000000000000000000000000 status 0 0'; echo '@@capstan:end'",
            "printf '\\n@@capstan-batch- done 0\\n@@capstan-batch- end\\n'",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }

    #[test]
    fn sections_are_byte_exact_and_isolated() {
        let commands = awkward_commands();
        let nonce = new_nonce();
        for shell in ["sh", "bash"] {
            let batch = direct(shell, &batch_script(&nonce, &commands));
            assert_eq!(batch.exit_code, Some(0), "{shell}: {}", batch.stderr_str());
            let outputs = parse_batch(&nonce, commands.len(), &batch.stdout)
                .unwrap_or_else(|e| panic!("{shell}: {e}\n{}", String::from_utf8_lossy(&batch.stdout)));
            for (command, got) in commands.iter().zip(outputs) {
                // Each command runs in its own `sh -c`, like a direct exec would.
                let want = direct("sh", command);
                assert_eq!(got.stdout, want.stdout, "{shell}: stdout of {command:?}");
                assert_eq!(got.stderr, want.stderr, "{shell}: stderr of {command:?}");
                assert_eq!(got.exit_code, want.exit_code, "{shell}: status of {command:?}");
            }
        }
    }

    #[test]
    fn hostile_or_broken_output_is_never_misread() {
        let nonce = "0123456789abcdef0123456789abcdef";
        let other = "ffffffffffffffffffffffffffffffff";
        let mark = format!("{MARK_PREFIX}{nonce}");
        let fake = format!("{MARK_PREFIX}{other}");
        let section = |i: usize, stdout: &str, code: u32, stderr: &str| {
            format!("{mark} out {i}\n{stdout}\n{mark} status {i} {code}\n{stderr}\n{mark} done {i}\n")
        };
        // stdout full of marker lines of another batch, and of this batch without the newline
        // that precedes a real one.
        let hostile = format!(
            "{fake} status 0 0\n{fake} done 0\n{fake} end\nnot at a line start: {mark} status 0 1 {mark} done 0\n"
        );
        let good = format!(
            "{}{}{mark} end\n",
            section(0, &hostile, 0, &format!("{fake} done 0")),
            section(1, "", 2, "")
        );
        let parsed = parse_batch(nonce, 2, good.as_bytes()).unwrap();
        assert_eq!(parsed[0].stdout_str(), hostile);
        assert_eq!(parsed[0].stderr_str(), format!("{fake} done 0"));
        assert_eq!(parsed[0].exit_code, Some(0));
        assert_eq!(
            (parsed[1].stdout.len(), parsed[1].stderr.len(), parsed[1].exit_code),
            (0, 0, Some(2))
        );

        let broken = [
            String::new(),
            section(0, "x", 0, ""), // no end marker
            format!("{}{}{mark} end\n", section(0, "x", 0, ""), section(2, "", 0, "")), // wrong index
            format!("{}{mark} end\n", section(0, "x", 0, "")), // one section missing
            format!("{}{}{mark} end\nextra", section(0, "", 0, ""), section(1, "", 0, "")),
            format!("noise\n{}{}{mark} end\n", section(0, "", 0, ""), section(1, "", 0, "")),
            format!("{}{}{mark} end\n", section(0, "", 0, ""), section(1, "", 0, ""))
                .replace(" status 1 0", " status 1 x"),
            good.replace(nonce, other),         // another batch's output
            good[..good.len() - 1].to_string(), // cut short
        ];
        for text in broken {
            assert!(parse_batch(nonce, 2, text.as_bytes()).is_err(), "accepted {text:?}");
        }
        assert_eq!(
            parse_batch(nonce, 0, format!("{mark} end\n").as_bytes()).unwrap().len(),
            0
        );
    }

    #[test]
    fn nonces_are_random_hex() {
        let (a, b) = (new_nonce(), new_nonce());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn large_batches_are_split() {
        let t = CountingTransport::new(Arc::new(LocalTransport::new("localhost")));
        let commands: Vec<String> = (0..40).map(|i| format!("echo {i} {}", "x".repeat(4000))).collect();
        let outputs = run_batch(&t, &commands).await.unwrap();
        assert_eq!(t.execs(), 6, "40 commands of 4 kB in 32 kB scripts");
        for (i, output) in outputs.iter().enumerate() {
            assert_eq!(output.stdout_str(), format!("{i} {}\n", "x".repeat(4000)));
        }
    }

    fn ops_in(dir: &std::path::Path) -> Vec<Arc<dyn Operation>> {
        let path = |rel: &str| dir.join(rel).display().to_string();
        vec![
            Arc::new(Directory::new(&path("d")).mode(0o750)),
            Arc::new(File::new(&path("d/a"), "a\n")),
            Arc::new(File::new(&path("d/b"), "b\n").mode(0o600)),
            Arc::new(Absent::new(&path("gone"))),
            Arc::new(Command::new("check", "false").unless("true")),
            Arc::new(
                Service::new("capstan-test-no-such-unit")
                    .unwrap()
                    .enabled(false)
                    .running(false),
            ),
        ]
    }

    /// What `plan` runs on a host where nothing is to be done is exactly what `probes` lists.
    #[tokio::test]
    async fn probes_list_what_plan_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let local: Arc<dyn Transport> = Arc::new(LocalTransport::new("localhost"));
        for op in ops_in(dir.path()) {
            op.plan(local.as_ref())
                .await
                .unwrap()
                .apply(local.as_ref())
                .await
                .unwrap();
            let t = CountingTransport::new(local.clone());
            let plan = op.plan(&t).await.unwrap();
            assert!(plan.is_unchanged(), "{}", op.describe());
            assert_eq!(t.commands(), op.probes(), "{}", op.describe());
        }
    }

    #[tokio::test]
    async fn one_batch_until_the_host_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let ops = ops_in(dir.path());
        let t = CountingTransport::new(Arc::new(LocalTransport::new("localhost")));
        let session = ProbeSession::new();
        let mut plans = Vec::new();
        for i in 0..ops.len() {
            session.prefetch(&t, &ops[i..]).await;
            plans.push(ops[i].plan(&session.transport(&t)).await.unwrap());
        }
        assert_eq!(t.execs(), 1, "{:#?}", t.commands());
        // The same plans as without the cache.
        for (op, plan) in ops.iter().zip(&plans) {
            let direct = op.plan(&LocalTransport::new("localhost")).await.unwrap();
            let steps = |p: &crate::ops::Plan| -> Vec<String> {
                p.changes
                    .iter()
                    .flat_map(|c| c.steps.iter().map(|s| s.display()))
                    .collect()
            };
            assert_eq!(steps(plan), steps(&direct), "{}", op.describe());
        }

        // After a change, what was read is gone and read again when needed.
        t.reset();
        session.invalidate("localhost");
        std::fs::write(dir.path().join("d/a"), "changed\n").unwrap();
        session.prefetch(&t, &ops[1..]).await;
        let plan = ops[1].plan(&session.transport(&t)).await.unwrap();
        assert_eq!(
            plan.changes[0].summary,
            format!("update {}", dir.path().join("d/a").display())
        );
        let commands = t.commands();
        assert_eq!(commands.len(), 2, "{commands:#?}");
        assert!(commands[0].contains(MARK_PREFIX), "the batch first");
        assert!(
            commands[1].starts_with("cat -- "),
            "then the old content for the diff, never cached"
        );
        // An op without probes never triggers a batch; one missing probe is left to the op.
        t.reset();
        session.invalidate("localhost");
        let no_probes: Arc<dyn Operation> = Arc::new(Command::new("always", "true"));
        session.prefetch(&t, &[no_probes, ops[1].clone()]).await;
        session.prefetch(&t, &ops[5..]).await;
        assert_eq!(t.execs(), 0);
    }

    /// A transport whose output no batch parser accepts.
    struct Garbled(LocalTransport);

    #[async_trait]
    impl Transport for Garbled {
        fn host(&self) -> &str {
            self.0.host()
        }
        async fn exec(&self, command: &str, opts: &ExecOptions) -> Result<ExecOutput, TransportError> {
            let mut output = self.0.exec(command, opts).await?;
            if command.contains(MARK_PREFIX) {
                output.stdout.truncate(output.stdout.len() / 2);
            }
            Ok(output)
        }
        async fn exec_with_stdin(
            &self,
            command: &str,
            stdin: &mut (dyn AsyncRead + Send + Unpin),
            opts: &ExecOptions,
        ) -> Result<ExecOutput, TransportError> {
            self.0.exec_with_stdin(command, stdin, opts).await
        }
        async fn close(&self) {}
    }

    #[tokio::test]
    async fn a_failed_batch_falls_back_to_one_probe_per_op() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let ops = ops_in(dir.path());
        let t = CountingTransport::new(Arc::new(Garbled(LocalTransport::new("localhost"))));
        let session = ProbeSession::new();
        for i in 0..ops.len() {
            session.prefetch(&t, &ops[i..]).await;
            ops[i].plan(&session.transport(&t)).await.unwrap();
        }
        let probes: usize = ops.iter().map(|op| op.probes().len()).sum();
        assert_eq!(t.execs(), 1 + probes, "one failed batch, then each op alone");
    }
}

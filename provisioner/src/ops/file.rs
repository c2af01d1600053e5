//! Files, templates, directories and removals.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::diff::{render_file_diff, DIFF_LIMIT_BYTES};
use super::fact::{parse_path_state, path_state_command, principal_matches, PathKind, PathState};
use super::shell::quote;
use super::{
    chown_spec, run_checked, sha256_hex, validate_remote_path, Change, Content, Footprint, OpError, Operation, Plan,
    Step,
};
use crate::transport::{RemoteFile, Transport};

/// A remote file as it should be.
#[derive(Debug, Clone)]
pub struct DesiredFile {
    pub file: RemoteFile,
    pub content: Content,
    pub sha256: String,
    pub size: u64,
    /// Secrets: never show their content (nor checksums) in a diff.
    pub sensitive: bool,
}

/// Probe the state of `path` on the host.
pub(crate) async fn probe_path(t: &dyn Transport, path: &str) -> Result<PathState, OpError> {
    let output = run_checked(t, &path_state_command(path)).await?;
    parse_path_state(&output.stdout_str()).map_err(|reason| OpError::Probe {
        host: t.host().to_string(),
        what: path.to_string(),
        reason,
    })
}

/// The probes [`probe_path`] runs for `paths` (none for a path that planning refuses anyway).
pub(crate) fn path_probes<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    paths
        .into_iter()
        .filter(|path| validate_remote_path(path).is_ok())
        .map(path_state_command)
        .collect()
}

fn validate_mode(path: &str, mode: u32) -> Result<(), OpError> {
    if mode > 0o7777 {
        return Err(OpError::Invalid(format!(
            "{path}: mode {mode:o} is not a permission mode (max 7777)"
        )));
    }
    Ok(())
}

/// chmod/chown changes needed to bring an existing path's attributes in line.
pub fn plan_path_attributes(desired: &RemoteFile, state: &PathState) -> Vec<Change> {
    let PathState::Present {
        mode,
        uid,
        user,
        gid,
        group,
        ..
    } = state
    else {
        return Vec::new();
    };
    let mut changes = Vec::new();
    let path = quote(&desired.path);
    if mode & 0o7777 != desired.mode {
        changes.push(Change {
            summary: format!("mode of {} {:04o} → {:04o}", desired.path, mode & 0o7777, desired.mode),
            diff: None,
            steps: vec![Step::Run(format!("chmod {:04o} -- {path}", desired.mode))],
        });
    }
    let owner = desired.owner.as_deref().filter(|o| !principal_matches(o, *uid, user));
    let new_group = desired.group.as_deref().filter(|g| !principal_matches(g, *gid, group));
    if let Some(spec) = chown_spec(owner, new_group) {
        changes.push(Change {
            summary: format!(
                "owner of {} {user}:{group} → {}",
                desired.path,
                spec.trim_start_matches(':')
            ),
            diff: None,
            steps: vec![Step::Run(format!("chown -h {} -- {path}", quote(&spec)))],
        });
    }
    changes
}

/// Pure planning for a file: `state` is the probe result, `remote_content`
/// the current content when it was fetched for a diff, `new_bytes` the desired
/// content when it is in memory.
pub fn plan_file(
    host: &str,
    desired: &DesiredFile,
    new_bytes: Option<&[u8]>,
    state: &PathState,
    remote_content: Option<&[u8]>,
) -> Result<Plan, OpError> {
    let path = &desired.file.path;
    let write = Step::WriteFile {
        file: desired.file.clone(),
        content: desired.content.clone(),
        sha256: desired.sha256.clone(),
        size: desired.size,
        sensitive: desired.sensitive,
    };
    let diff = |old_sha: Option<&str>| {
        if desired.sensitive {
            "content changed (sensitive, not shown)".to_string()
        } else {
            render_file_diff(path, remote_content, old_sha, new_bytes, &desired.sha256)
        }
    };
    match state {
        PathState::Absent => Ok(Plan::single(Change {
            summary: format!("create {path}"),
            diff: Some(diff(None)),
            steps: vec![write],
        })),
        PathState::Present {
            kind: PathKind::Symlink,
            ..
        } => Ok(Plan::single(Change {
            summary: format!("replace symlink {path} with a file"),
            diff: Some(diff(None)),
            steps: vec![write],
        })),
        PathState::Present {
            kind: PathKind::File,
            sha256: Some(remote_sha),
            ..
        } => {
            if *remote_sha != desired.sha256 {
                return Ok(Plan::single(Change {
                    summary: format!("update {path}"),
                    diff: Some(diff(Some(remote_sha))),
                    steps: vec![write],
                }));
            }
            Ok(Plan {
                changes: plan_path_attributes(&desired.file, state),
            })
        }
        PathState::Present { kind, .. } => Err(OpError::Conflict {
            host: host.to_string(),
            path: path.clone(),
            found: kind.noun().to_string(),
            expected: "a regular file".to_string(),
        }),
    }
}

/// Probe, fetch the old content when a text diff is possible, and plan.
pub(crate) async fn plan_desired_file(
    t: &dyn Transport,
    desired: &DesiredFile,
    new_bytes: Option<&[u8]>,
) -> Result<Plan, OpError> {
    validate_remote_path(&desired.file.path)?;
    validate_mode(&desired.file.path, desired.file.mode)?;
    let state = probe_path(t, &desired.file.path).await?;
    let wants_text_diff = !desired.sensitive
        && new_bytes.is_some_and(|b| b.len() <= DIFF_LIMIT_BYTES && !b.contains(&0) && std::str::from_utf8(b).is_ok());
    let remote_content = match &state {
        PathState::Present {
            kind: PathKind::File,
            sha256: Some(sha),
            size,
            ..
        } if wants_text_diff && *sha != desired.sha256 && *size <= DIFF_LIMIT_BYTES as u64 => Some(
            run_checked(t, &format!("cat -- {}", quote(&desired.file.path)))
                .await?
                .stdout,
        ),
        _ => None,
    };
    plan_file(t.host(), desired, new_bytes, &state, remote_content.as_deref())
}

/// A file with the given content, mode and ownership.
#[derive(Debug, Clone)]
pub struct File {
    desired: DesiredFile,
    bytes: Arc<[u8]>,
}

impl File {
    /// Mode defaults to 0644; owner and group are left as they are unless set.
    pub fn new(path: &str, content: impl Into<Vec<u8>>) -> File {
        let bytes: Arc<[u8]> = content.into().into();
        File {
            desired: DesiredFile {
                file: RemoteFile {
                    path: path.to_string(),
                    mode: 0o644,
                    owner: None,
                    group: None,
                },
                content: Content::Bytes(bytes.clone()),
                sha256: sha256_hex(&bytes),
                size: bytes.len() as u64,
                sensitive: false,
            },
            bytes,
        }
    }
    pub fn mode(mut self, mode: u32) -> File {
        self.desired.file.mode = mode;
        self
    }
    pub fn owner(mut self, owner: &str) -> File {
        self.desired.file.owner = Some(owner.to_string());
        self
    }
    pub fn group(mut self, group: &str) -> File {
        self.desired.file.group = Some(group.to_string());
        self
    }
    /// Hide the content from diffs and dry-run output (keys, tokens, passwords).
    pub fn sensitive(mut self, sensitive: bool) -> File {
        self.desired.sensitive = sensitive;
        self
    }
    pub fn path(&self) -> &str {
        &self.desired.file.path
    }
    pub fn content(&self) -> &[u8] {
        &self.bytes
    }
}

#[async_trait]
impl Operation for File {
    fn footprint(&self) -> Vec<Footprint> {
        vec![Footprint::Path(self.desired.file.path.clone())]
    }
    fn self_contained(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("file {}", self.desired.file.path)
    }
    fn probes(&self) -> Vec<String> {
        path_probes([self.desired.file.path.as_str()])
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        plan_desired_file(t, &self.desired, Some(&self.bytes)).await
    }
}

/// Sugar: render a template, then manage the result as a [`File`].
pub struct Template;

impl Template {
    /// Render `source` (named `name` in error messages) with `context`.
    /// Undefined variables are errors, and a trailing newline is kept.
    pub fn render(path: &str, name: &str, source: &str, context: impl Serialize) -> Result<File, OpError> {
        let template_error = |e: minijinja::Error| OpError::Template {
            name: name.to_string(),
            reason: e.to_string(),
        };
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .map_err(template_error)?,
        );
        env.add_template(name, source).map_err(template_error)?;
        let rendered = env
            .get_template(name)
            .map_err(template_error)?
            .render(minijinja::Value::from(minijinja::value::Serde(context)))
            .map_err(template_error)?;
        Ok(File::new(path, rendered))
    }

    /// For content already rendered elsewhere (e.g. by `capstan-templates`).
    pub fn rendered(path: &str, rendered: String) -> File {
        File::new(path, rendered)
    }
}

/// A directory with the given mode and ownership (parents created as needed).
#[derive(Debug, Clone)]
pub struct Directory {
    desired: RemoteFile,
}

impl Directory {
    /// Mode defaults to 0755.
    pub fn new(path: &str) -> Directory {
        Directory {
            desired: RemoteFile {
                path: path.to_string(),
                mode: 0o755,
                owner: None,
                group: None,
            },
        }
    }
    pub fn mode(mut self, mode: u32) -> Directory {
        self.desired.mode = mode;
        self
    }
    pub fn owner(mut self, owner: &str) -> Directory {
        self.desired.owner = Some(owner.to_string());
        self
    }
    pub fn group(mut self, group: &str) -> Directory {
        self.desired.group = Some(group.to_string());
        self
    }

    /// Pure planning from the probe result.
    pub fn plan_from_state(&self, host: &str, state: &PathState) -> Result<Plan, OpError> {
        let d = &self.desired;
        match state {
            PathState::Absent => {
                let path = quote(&d.path);
                let mut command = format!("mkdir -p -- {path} && chmod {:04o} -- {path}", d.mode);
                if let Some(spec) = chown_spec(d.owner.as_deref(), d.group.as_deref()) {
                    command.push_str(&format!(" && chown {} -- {path}", quote(&spec)));
                }
                Ok(Plan::single(Change {
                    summary: format!("create directory {}", d.path),
                    diff: None,
                    steps: vec![Step::Run(command)],
                }))
            }
            PathState::Present {
                kind: PathKind::Directory,
                ..
            } => Ok(Plan {
                changes: plan_path_attributes(d, state),
            }),
            PathState::Present { kind, .. } => Err(OpError::Conflict {
                host: host.to_string(),
                path: d.path.clone(),
                found: kind.noun().to_string(),
                expected: "a directory".to_string(),
            }),
        }
    }
}

#[async_trait]
impl Operation for Directory {
    fn footprint(&self) -> Vec<Footprint> {
        vec![Footprint::Path(self.desired.path.clone())]
    }
    fn self_contained(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("directory {}", self.desired.path)
    }
    fn probes(&self) -> Vec<String> {
        path_probes([self.desired.path.as_str()])
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        validate_remote_path(&self.desired.path)?;
        validate_mode(&self.desired.path, self.desired.mode)?;
        let state = probe_path(t, &self.desired.path).await?;
        self.plan_from_state(t.host(), &state)
    }
}

/// A cheap probe: no checksum of what is about to be deleted.
fn absent_probe_command(path: &str) -> String {
    let path = quote(path);
    format!(
        "if [ -d {path} ] && [ ! -L {path} ]; then echo dir; elif [ -e {path} ] || [ -L {path} ]; then echo present; else echo absent; fi"
    )
}

/// Nothing at `path`: a file, symlink or whole directory tree is removed.
#[derive(Debug, Clone)]
pub struct Absent {
    path: String,
}

impl Absent {
    pub fn new(path: &str) -> Absent {
        Absent { path: path.to_string() }
    }
}

#[async_trait]
impl Operation for Absent {
    fn footprint(&self) -> Vec<Footprint> {
        vec![Footprint::Tree(self.path.clone())]
    }
    fn self_contained(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("absent {}", self.path)
    }
    fn probes(&self) -> Vec<String> {
        match validate_remote_path(&self.path) {
            Ok(()) => vec![absent_probe_command(&self.path)],
            Err(_) => Vec::new(),
        }
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        validate_remote_path(&self.path)?;
        let path = quote(&self.path);
        let output = run_checked(t, &absent_probe_command(&self.path)).await?;
        let found = output.stdout_str();
        let noun = match found.trim() {
            "absent" => return Ok(Plan::unchanged()),
            "dir" => "directory",
            "present" => "file",
            other => {
                return Err(OpError::Probe {
                    host: t.host().to_string(),
                    what: self.path.clone(),
                    reason: format!("unexpected output {other:?}"),
                })
            }
        };
        Ok(Plan::single(Change {
            summary: format!("remove {noun} {}", self.path),
            diff: None,
            steps: vec![Step::Run(format!("rm -rf -- {path}"))],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(kind: PathKind, mode: u32, user: &str, group: &str, sha: Option<&str>) -> PathState {
        let id = |name: &str| if name == "root" { 0 } else { 1000 };
        PathState::Present {
            kind,
            mode,
            uid: id(user),
            user: user.into(),
            gid: id(group),
            group: group.into(),
            size: 10,
            sha256: sha.map(Into::into),
        }
    }

    fn summaries(plan: &Plan) -> Vec<String> {
        plan.changes.iter().map(|c| c.summary.clone()).collect()
    }

    #[test]
    fn file_planning() {
        let file = File::new("/etc/x.conf", "a=1\n").mode(0o640).owner("root").group("app");
        let sha = file.desired.sha256.clone();
        let other = "0".repeat(64);
        let cases: Vec<(PathState, Vec<&str>)> = vec![
            (PathState::Absent, vec!["create /etc/x.conf"]),
            (present(PathKind::File, 0o640, "root", "app", Some(&sha)), vec![]),
            (
                present(PathKind::File, 0o644, "root", "app", Some(&sha)),
                vec!["mode of /etc/x.conf 0644 → 0640"],
            ),
            (
                present(PathKind::File, 0o640, "root", "root", Some(&sha)),
                vec!["owner of /etc/x.conf root:root → app"],
            ),
            (
                present(PathKind::File, 0o600, "app", "root", Some(&sha)),
                vec![
                    "mode of /etc/x.conf 0600 → 0640",
                    "owner of /etc/x.conf app:root → root:app",
                ],
            ),
            (
                present(PathKind::File, 0o600, "app", "root", Some(&other)),
                vec!["update /etc/x.conf"],
            ),
            (
                present(PathKind::Symlink, 0o777, "root", "root", None),
                vec!["replace symlink /etc/x.conf with a file"],
            ),
        ];
        for (state, expected) in cases {
            let plan = plan_file("h", &file.desired, Some(file.content()), &state, None).unwrap();
            assert_eq!(summaries(&plan), expected, "{state:?}");
        }
        let dir = present(PathKind::Directory, 0o755, "root", "root", None);
        assert!(matches!(
            plan_file("h", &file.desired, Some(file.content()), &dir, None),
            Err(OpError::Conflict { .. })
        ));
    }

    #[test]
    fn file_diffs_and_secrets() {
        let old_sha = "1".repeat(64);
        let state = present(PathKind::File, 0o644, "root", "root", Some(&old_sha));
        let file = File::new("/etc/x.conf", "a=2\n");
        let plan = plan_file("h", &file.desired, Some(file.content()), &state, Some(b"a=1\n")).unwrap();
        let diff = plan.changes[0].diff.clone().unwrap();
        assert!(diff.contains("-a=1\n+a=2\n"), "{diff}");

        let secret = File::new("/etc/x.key", "hunter2\n").sensitive(true);
        let plan = plan_file("h", &secret.desired, Some(secret.content()), &state, Some(b"old\n")).unwrap();
        let diff = plan.changes[0].diff.clone().unwrap();
        assert_eq!(diff, "content changed (sensitive, not shown)");
        let shown: String = plan.changes[0].steps.iter().map(Step::display).collect();
        assert_eq!(shown, "write /etc/x.key (sensitive, mode 0644)");
    }

    #[test]
    fn directory_planning() {
        let dir = Directory::new("/var/lib/app").mode(0o700).owner("app");
        let cases: Vec<(PathState, Vec<&str>)> = vec![
            (PathState::Absent, vec!["create directory /var/lib/app"]),
            (present(PathKind::Directory, 0o700, "app", "root", None), vec![]),
            (
                present(PathKind::Directory, 0o755, "app", "root", None),
                vec!["mode of /var/lib/app 0755 → 0700"],
            ),
            (
                present(PathKind::Directory, 0o700, "root", "root", None),
                vec!["owner of /var/lib/app root:root → app"],
            ),
        ];
        for (state, expected) in cases {
            assert_eq!(
                summaries(&dir.plan_from_state("h", &state).unwrap()),
                expected,
                "{state:?}"
            );
        }
        let file = present(PathKind::File, 0o644, "root", "root", Some(&"0".repeat(64)));
        let err = dir.plan_from_state("h", &file).unwrap_err().to_string();
        assert_eq!(err, "h: /var/lib/app is a regular file, expected a directory");
    }

    #[test]
    fn templates_render_strictly() {
        let file = Template::render(
            "/etc/t",
            "t.conf",
            "name={{ name }}\n",
            serde_json::json!({"name": "app"}),
        )
        .unwrap();
        assert_eq!(file.content(), b"name=app\n");
        let err = Template::render("/etc/t", "t.conf", "x={{ missing }}", serde_json::json!({})).unwrap_err();
        assert!(
            matches!(err, OpError::Template { ref name, .. } if name == "t.conf"),
            "{err}"
        );
        let err = Template::render("/etc/t", "t.conf", "{% if %}", serde_json::json!({})).unwrap_err();
        assert!(err.to_string().starts_with("template t.conf: "), "{err}");
    }
}

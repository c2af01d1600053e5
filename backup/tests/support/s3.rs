//! Test support: a real S3 server process (moto's server, from PyPI `moto[server]`) on a free
//! loopback port. Tests point the AWS SDK at it through the standard environment variables.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::require::require;

pub const INSTALL_HINT: &str = "pip install 'moto[server]>=5.2.5'";

/// moto 5.2.1 answers CompleteMultipartUpload with a `CompleteMultipartUploadResponse` root
/// element, which the AWS SDK rightly rejects; 5.2.5 answers correctly.
const MIN_MOTO: (u32, u32, u32) = (5, 2, 5);

/// The version of moto that `command` runs, from the Python next to it.
fn moto_version(command: &[String]) -> Option<(u32, u32, u32)> {
    let python = if command[0] == "moto_server" {
        let dir = std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| dir.join("moto_server").is_file())?;
        let local = dir.join("python3");
        if local.is_file() {
            local.display().to_string()
        } else {
            "python3".to_string()
        }
    } else {
        command[0].clone()
    };
    let output = Command::new(python)
        .args(["-c", "import moto; print(moto.__version__)"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut parts = text.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// How to launch moto: `moto_server` on PATH, else `python3 -m moto.server`.
fn launcher() -> Option<Vec<String>> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("moto_server").is_file()))
        .unwrap_or(false);
    if on_path {
        let works = Command::new("moto_server")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Some(vec!["moto_server".into()]);
        }
    }
    let importable = Command::new("python3")
        .args(["-c", "import moto.server, flask, werkzeug"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    importable.then(|| vec!["python3".into(), "-m".into(), "moto.server".into()])
}

pub struct S3Server {
    pub port: u16,
    command: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Start a server on a free port, or print why the calling test is skipped.
    pub fn start() -> Option<S3Server> {
        let Some(command) = launcher() else {
            require(&[Err(format!(
                "no S3 server: moto_server not found; install it with `{INSTALL_HINT}`"
            ))]);
            return None;
        };
        match moto_version(&command) {
            Some(version) if version >= MIN_MOTO => {}
            found => {
                require(&[Err(format!(
                    "moto {found:?} is older than {MIN_MOTO:?} (its multipart responses break the AWS SDK); \
                     upgrade with `{INSTALL_HINT}`"
                ))]);
                return None;
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = tempfile::Builder::new()
            .prefix("capstan-s3-")
            .tempdir()
            .expect("temp dir");
        let mut server = S3Server {
            port,
            command,
            child: None,
            log: dir.path().join("moto.log"),
            _dir: dir,
        };
        server.restart().expect("moto server starts");
        Some(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)start the process on the same port and wait until it accepts connections. moto
    /// keeps its state in memory, so a restarted server is empty.
    pub fn restart(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(&self.log).map_err(|e| e.to_string())?;
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", self.command))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "moto did not listen on {} within 30s: {}",
                    self.port,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Point this test process's AWS SDK at the server, with dummy credentials.
    pub fn export_env(&self) {
        std::env::set_var("AWS_ENDPOINT_URL", self.endpoint());
        std::env::set_var("AWS_ACCESS_KEY_ID", "capstan-test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "capstan-test-secret");
        std::env::set_var("AWS_REGION", "us-east-1");
        // Keep the SDK away from ~/.aws and instance metadata.
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent");
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }

    /// A raw SDK client for test setup and inspection (buckets, multipart uploads).
    pub async fn client(&self) -> aws_sdk_s3::Client {
        self.export_env();
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub async fn create_bucket(&self, bucket: &str) {
        self.client()
            .await
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
    }

    /// Unfinished multipart uploads in `bucket`, as `key` strings.
    pub async fn multipart_uploads(&self, bucket: &str) -> Vec<String> {
        let listed = self
            .client()
            .await
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("list multipart uploads: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
        listed
            .uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_string))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

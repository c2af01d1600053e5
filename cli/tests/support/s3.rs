//! Servers the lab tests start on the lab bridge's gateway address: any listening child process,
//! and moto's S3 server with the test bucket.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan_lab::{Lab, LabGuard, UpOptions};

use super::{age_keygen, required, run_capstan, Run};

/// The bucket [`Moto::start`] creates.
pub const BUCKET: &str = "capstan-lab";

/// A server child process listening on one address; killed when dropped.
pub struct ServerProcess {
    child: Child,
    pub url: String,
}

impl ServerProcess {
    /// Start `command` with `{host}` and `{port}` in its arguments replaced by `host` and a free
    /// port there; wait until it listens.
    pub fn start(command: &[&str], host: &str) -> Result<ServerProcess, String> {
        let port = TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port on {host}: {e}"))?
            .port();
        let args: Vec<String> = command[1..]
            .iter()
            .map(|a| a.replace("{host}", host).replace("{port}", &port.to_string()))
            .collect();
        let child = Command::new(command[0])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", command.join(" ")))?;
        let mut server = ServerProcess {
            child,
            url: format!("http://{host}:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((host, port)).is_err() {
            if Instant::now() > deadline || server.child.try_wait().ok().flatten().is_some() {
                return Err(format!("{} did not listen on {host}:{port}", command[0]));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's S3 server, bound to one address, with the test bucket.
pub struct Moto {
    _server: ServerProcess,
    pub endpoint: String,
}

impl Moto {
    pub fn start(host: &str) -> Result<Moto, String> {
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let command: Vec<&str> = if works("moto_server", &["--help"]) {
            vec!["moto_server"]
        } else if works("python3", &["-c", "import moto.server, flask, werkzeug"]) {
            vec!["python3", "-m", "moto.server"]
        } else {
            return Err("moto not found; install it with `pip install 'moto[server]>=5.2.5'`".into());
        };
        let command: Vec<&str> = command.into_iter().chain(["-H", "{host}", "-p", "{port}"]).collect();
        let server = ServerProcess::start(&command, host)?;
        let endpoint = server.url.clone();
        let created = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{endpoint}/{BUCKET}")])
            .status()
            .is_ok_and(|s| s.success());
        if !created {
            return Err("creating the bucket with curl failed".into());
        }
        Ok(Moto {
            _server: server,
            endpoint,
        })
    }
}

impl Moto {
    /// The environment that points the AWS SDK at this server, with test credentials and nothing
    /// from the user's AWS configuration.
    pub fn environment(&self) -> [(&str, &str); 7] {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "capstan-lab"),
            ("AWS_SECRET_ACCESS_KEY", "capstan-lab-secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_CONFIG_FILE", "/nonexistent"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
    }
}

/// A lab of `machines` machines named `<prefix><pid>`, moto on its bridge's gateway address, a work
/// directory and an age identity in it (`None`, with a message, when moto cannot start).
pub struct S3Lab {
    pub guard: LabGuard,
    pub lab: Lab,
    pub moto: Moto,
    pub work: tempfile::TempDir,
    pub identity: PathBuf,
    pub recipient: String,
}

impl S3Lab {
    pub fn up(prefix: &str, machines: usize) -> Option<S3Lab> {
        let guard = LabGuard::up(UpOptions::new(
            format!("{prefix}{}", std::process::id() % 10000),
            machines,
        ))
        .expect("lab up");
        let lab = guard.lab().clone();
        let moto = required("no S3 server", Moto::start(&lab.gateway))?;
        let work = tempfile::tempdir().unwrap();
        let identity = work.path().join("identity.txt");
        let recipient = age_keygen(&identity);
        Some(S3Lab {
            guard,
            lab,
            moto,
            work,
            identity,
            recipient,
        })
    }
}

/// `capstan -i inventory args...` with moto as its S3 endpoint and credentials.
pub fn capstan(inventory: &Path, moto: &Moto, args: &[&str]) -> Run {
    run_capstan(Some(inventory), args, &moto.environment())
}

/// [`capstan`], which must succeed.
pub fn capstan_ok(inventory: &Path, moto: &Moto, args: &[&str]) -> Run {
    let run = capstan(inventory, moto, args);
    assert_eq!(
        run.code, 0,
        "capstan {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run
}

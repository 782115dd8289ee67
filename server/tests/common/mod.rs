//! Starting the real `crispd` binary on a private socket and state directory.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cri_proto::v1::image_service_client::ImageServiceClient;
use cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub mod clients;
pub mod workload;

/// Every pod sandbox the daemon lists.
pub async fn list_pods(rt: &mut RuntimeServiceClient<Channel>) -> Vec<cri_proto::v1::PodSandbox> {
    rt.list_pod_sandbox(cri_proto::v1::ListPodSandboxRequest::default())
        .await
        .expect("list pods")
        .into_inner()
        .items
}

/// Every container the daemon lists.
pub async fn list_containers(
    rt: &mut RuntimeServiceClient<Channel>,
) -> Vec<cri_proto::v1::Container> {
    rt.list_containers(cri_proto::v1::ListContainersRequest::default())
        .await
        .expect("list containers")
        .into_inner()
        .containers
}

/// The crispd under test.
pub fn crispd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crispd"))
}

/// A scratch directory with a config file whose paths all point inside it.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox whose config holds the base paths plus `extra` TOML.
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("crisp-test-")
            .tempdir()
            .expect("tempdir");
        let sandbox = Self { dir };
        std::fs::create_dir_all(sandbox.path("cni")).expect("cni dir");
        sandbox.write_config(extra);
        sandbox
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("crisp.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("state/crisp.sock")
    }

    /// Rewrites the config file: base paths, then `extra`.
    pub fn write_config(&self, extra: &str) {
        let base = format!(
            "root = \"{root}\"\nstate = \"{state}\"\nlisten = \"{sock}\"\nlog_dir = \"{log}\"\n{extra}\n[cni]\nconf_dir = \"{cni}\"\n[nri]\nsocket_path = \"{nri}/nri.sock\"\nplugin_path = \"{nri}/plugins\"\nplugin_config_path = \"{nri}/conf.d\"\n",
            root = self.path("root").display(),
            state = self.path("state").display(),
            sock = self.socket().display(),
            log = self.path("log").display(),
            cni = self.path("cni").display(),
            nri = self.path("nri").display(),
        );
        std::fs::write(self.config_path(), base).expect("write config");
    }

    /// Runs `crispd <args> --config <ours>` to completion.
    pub fn run(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let out = crispd()
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .output()
            .expect("run crispd");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn start(&self) -> Daemon {
        self.start_with(|_| {})
    }

    /// Starts the daemon after `tweak` has adjusted the command.
    pub fn start_with(&self, tweak: impl FnOnce(&mut Command)) -> Daemon {
        let mut cmd = crispd();
        cmd.arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn crispd");
        // Drain the log as it comes: a full pipe would block crispd's logging.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = child.stderr.take().map(|mut stderr| {
            let log = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match stderr.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if let Ok(mut l) = log.lock() {
                                l.extend_from_slice(&buf[..n]);
                            }
                        }
                        // A signal is no reason to stop draining (crispd would lose its
                        // stderr).
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            })
        });
        let mut daemon = Daemon {
            child: Some(child),
            socket: self.socket(),
            log,
            reader,
        };
        daemon.wait_ready();
        daemon
    }
}

/// A running crispd; stopped with SIGTERM when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let err = self.take_log();
                panic!("crispd exited early with {status}: {err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "crispd did not listen on {} within 20s",
            self.socket.display()
        );
    }

    /// Everything logged so far, once the log has ended (the daemon exited).
    fn take_log(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let bytes = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our own child.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// SIGTERM, then the exit status and everything it logged.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait crispd");
        (status, self.take_log())
    }

    /// SIGKILL: the daemon gets no chance to clean up (a crash).
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn clients(&self) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
        let channel = match critest::connect(&self.socket).await {
            Ok(channel) => channel,
            // What the daemon said so far tells why (it may have exited).
            Err(e) => {
                let said = self.log.lock().map(|l| l.clone()).unwrap_or_default();
                panic!(
                    "connect to crispd: {e}; crispd said:\n{}",
                    String::from_utf8_lossy(&said)
                );
            }
        };
        (
            RuntimeServiceClient::new(channel.clone()),
            ImageServiceClient::new(channel),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as above.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// A channel to the CRI server on `socket`.
pub async fn connect(socket: &Path) -> Channel {
    critest::connect(socket).await.expect("connect to crispd")
}

/// Every process on this host whose command line holds all of `needles` (arguments are
/// NUL-separated there).
pub fn processes_naming(needles: &[&[u8]]) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| needles.iter().all(|n| c.windows(n.len()).any(|w| w == *n)))
        })
        .collect()
}

/// A CNI conflist naming the real plugins installed on this machine, if any directory
/// has them; tests that need network readiness use it.
pub fn real_plugin_dir() -> PathBuf {
    ["/usr/lib/cni", "/opt/cni/bin"]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.join("bridge").exists() && d.join("host-local").exists())
        .expect("CNI plugins (Debian's containernetworking-plugins) must be installed; `make test` installs them")
}

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// A sandbox whose CNI config puts pods on a private bridge and /24.
pub struct Net {
    pub sandbox: Sandbox,
    pub bridge: String,
    pub subnet_prefix: String,
}

impl Net {
    pub fn new(extra_plugin: &str) -> Self {
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let tag = (std::process::id() % 1000) * 10 + n;
        let bridge = format!("crp{tag}");
        let third = 100 + (tag % 150);
        let subnet_prefix = format!("10.{third}.{}.", n + 1);
        let sandbox = Sandbox::new("");
        let conflist = format!(
            r#"{{"cniVersion":"1.0.0","name":"test","plugins":[
                {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"hairpinMode":true,
                  "ipam":{{"type":"host-local","dataDir":"{ipam}","routes":[{{"dst":"0.0.0.0/0"}}],"ranges":[[{{"subnet":"{subnet_prefix}0/24"}}]]}}}},
                {{"type":"portmap","capabilities":{{"portMappings":true}}}},
                {{"type":"loopback"}}{extra_plugin}]}}"#,
            ipam = sandbox.path("ipam").display(),
        );
        std::fs::write(sandbox.path("cni/10-test.conflist"), conflist).expect("conflist");
        Self {
            sandbox,
            bridge,
            subnet_prefix,
        }
    }

    pub fn allocations(&self) -> usize {
        std::fs::read_dir(self.sandbox.path("ipam/test"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .parse::<std::net::IpAddr>()
                            .is_ok()
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn veths(&self) -> usize {
        let out = std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("master {} ", self.bridge)))
            .count()
    }

    pub fn mounts(&self) -> usize {
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        let state = self.sandbox.path("state").display().to_string();
        mounts.lines().filter(|l| l.contains(&state)).count()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

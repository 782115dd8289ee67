//! The contract every runtime handler kind keeps, run against each kind this host can
//! run: the `oci` handler with real runc and with real crun, the real crisp-monitor, on a
//! busybox rootfs. (The microVM handler will run the same suite.) The contract is the
//! one `runtime_handlers::handler` states in its module doc.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::{ProcessBuilder, Spec};
use runtime_handlers::{
    ContainerRef, ContainerSpec, OciRuntime, Recovered, RuntimeHandler, SandboxSpec,
};

/// The handler kinds (and runtimes) the contract runs against.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Runc,
    Crun,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Runc => "runc",
            Self::Crun => "crun",
        }
    }

    /// Whether this host can run it: Debian's crun 1.8 refuses a hybrid cgroup host whose
    /// cgroup2 still has controllers (`make test` runs scripts/cgroup-hybrid.sh first;
    /// server/tests/containers.rs checks the refusal itself).
    fn runs_here(self) -> bool {
        match self {
            Self::Runc => true,
            Self::Crun => !std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
                .is_ok_and(|c| !c.trim().is_empty()),
        }
    }
}

fn runtime(kind: Kind, dir: &Path) -> Arc<dyn RuntimeHandler> {
    let name = kind.name();
    Arc::new(OciRuntime {
        name: name.to_owned(),
        binary: runtime_handlers::resolve_binary(Path::new(name))
            .unwrap_or_else(|| panic!("{name} is installed")),
        root: dir.join(format!("{name}-root")),
        runtime_args: Vec::new(),
        monitor: PathBuf::from(env!("CARGO_BIN_EXE_crisp-monitor")),
        enter: PathBuf::from(env!("CARGO_BIN_EXE_crisp-enter")),
        runtime_exec: false,
    })
}

/// Runs each contract test against each kind.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod runc {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Kind::Runc).await;
                }
            )*
        }
        mod crun {
            $(
                #[tokio::test]
                async fn $test() {
                    if !super::Kind::Crun.runs_here() {
                        eprintln!("crun cannot run on this host's cgroup layout; see scripts/cgroup-hybrid.sh");
                        return;
                    }
                    super::$test(super::Kind::Crun).await;
                }
            )*
        }
    };
}

contract!(
    a_container_runs_logs_and_reports_its_exit,
    exec_with_output_and_timeout_then_kill,
    a_failed_create_is_reported_and_leaves_nothing,
    a_tty_container_logs_its_terminal_output,
    a_sandbox_is_started_recovered_and_stopped,
);

/// A rootfs with Debian's static busybox and its applets.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("rootfs");
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "echo", "sleep", "cat", "id", "true", "ls", "grep", "tty",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
    }
    root
}

fn spec(root: &Path, args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    let mut r = spec.root().clone().expect("default root");
    r.set_path(root.to_owned());
    r.set_readonly(Some(false));
    spec.set_root(Some(r));
    let process = ProcessBuilder::default()
        .args(args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_owned()])
        .cwd("/")
        .no_new_privileges(true)
        .build()
        .expect("process");
    spec.set_process(Some(process));
    spec.set_hostname(Some("crisp-test".to_owned()));
    spec
}

/// How the handler names a container these tests made (no pid or cgroup needed).
fn handle_of<'a>(id: &'a str, bundle: &'a Path) -> ContainerRef<'a> {
    ContainerRef {
        sandbox_id: SANDBOX,
        id,
        bundle,
        pid: 0,
        cgroup_path: "",
    }
}

/// The pod these containers belong to (the `oci` handler needs none made for them).
const SANDBOX: &str = "contract-pod";

/// Creates container `id` of `spec` in the contract's pod, logging to `log`.
async fn create(
    rt: &dyn RuntimeHandler,
    id: &str,
    bundle: &Path,
    spec: &Spec,
    log: &Path,
) -> Result<u32, runtime_handlers::HandlerError> {
    rt.create_container(&ContainerSpec {
        sandbox_id: SANDBOX,
        id,
        bundle,
        spec,
        log_path: log,
        stdin: false,
        stdin_once: false,
    })
    .await
}

/// The container's exit, as the handler reports it.
async fn wait_exit(rt: &dyn RuntimeHandler, c: &ContainerRef<'_>) -> runtime_handlers::ExitStatus {
    tokio::time::timeout(Duration::from_secs(20), rt.wait_container(c))
        .await
        .expect("the container exits within 20 s")
        .expect("its exit is reported")
}

async fn a_container_runs_logs_and_reports_its_exit(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(kind, dir.path());
    let root = rootfs(dir.path());
    let bundle = dir.path().join("bundle-a");
    let log = dir.path().join("logs/a.log");
    let id = format!("crisp-{}-a-{}", kind.name(), std::process::id());
    let spec = spec(
        &root,
        &[
            "sh",
            "-c",
            "echo hello; echo oops >&2; printf partial; exit 3",
        ],
    );
    let pid = create(rt.as_ref(), &id, &bundle, &spec, &log)
        .await
        .expect("create");
    assert!(pid > 0);
    let handle = ContainerRef {
        pid,
        ..handle_of(&id, &bundle)
    };
    assert_eq!(
        rt.container_state(&handle_of(&id, &bundle))
            .await
            .expect("state")
            .map(|s| s.status)
            .as_deref(),
        Some("created")
    );
    rt.start_container(&handle_of(&id, &bundle))
        .await
        .expect("start");
    let exit = wait_exit(rt.as_ref(), &handle).await;
    assert_eq!(exit.code, 3);
    // After a restart the handler tells the same.
    assert_eq!(
        rt.recover_container(&handle).await.expect("recover"),
        Recovered::Exited(exit)
    );
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F hello")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stderr F oops")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F partial")),
        "{text}"
    );
    // RFC3339Nano UTC timestamps.
    let ts = lines[0].split(' ').next().expect("timestamp");
    assert_eq!(ts.len(), 30, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    rt.delete_container(&handle_of(&id, &bundle), false)
        .await
        .expect("delete");
    assert_eq!(
        rt.container_state(&handle_of(&id, &bundle))
            .await
            .expect("state"),
        None
    );
    rt.delete_container(&handle_of(&id, &bundle), false)
        .await
        .expect("delete twice");
}

async fn exec_with_output_and_timeout_then_kill(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(kind, dir.path());
    let root = rootfs(dir.path());
    let bundle = dir.path().join("bundle-b");
    let id = format!("crisp-{}-b-{}", kind.name(), std::process::id());
    let log = dir.path().join("b.log");
    let pid = create(
        rt.as_ref(),
        &id,
        &bundle,
        &spec(&root, &["sleep", "300"]),
        &log,
    )
    .await
    .expect("create");
    let handle = ContainerRef {
        sandbox_id: SANDBOX,
        id: &id,
        bundle: &bundle,
        pid,
        cgroup_path: "",
    };
    rt.start_container(&handle_of(&id, &bundle))
        .await
        .expect("start");
    let state = rt
        .container_state(&handle)
        .await
        .expect("state")
        .expect("known");
    assert_eq!(state.status, "running");
    assert_eq!(
        rt.recover_container(&handle).await.expect("recover"),
        Recovered::Running
    );

    let process = ProcessBuilder::default()
        .args(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "echo out; echo err >&2; exit 7".to_owned(),
        ])
        .env(vec!["PATH=/bin".to_owned()])
        .cwd("/")
        .build()
        .expect("process");
    let out = rt
        .exec_sync(&handle, &process, Some(Duration::from_secs(10)))
        .await
        .expect("exec");
    assert_eq!(
        (out.exit_code, out.stdout.as_slice(), out.stderr.as_slice()),
        (7, &b"out\n"[..], &b"err\n"[..])
    );

    // A duration of its own, so the check below cannot see another test's process (the
    // runc and crun tests run at once).
    let seconds = format!("{}", 3000 + (std::process::id() % 1000) * 2 + kind as u32);
    let cmdline = format!("sleep\0{seconds}\0");
    let slow = ProcessBuilder::default()
        .args(vec!["sleep".to_owned(), seconds.clone()])
        .env(vec!["PATH=/bin".to_owned()])
        .cwd("/")
        .build()
        .expect("process");
    let err = rt
        .exec_sync(&handle, &slow, Some(Duration::from_millis(300)))
        .await
        .expect_err("timeout");
    assert!(err.to_string().contains("timed out"), "{err}");
    // The timed-out process was killed (at most a zombie of it remains).
    for _ in 0..50 {
        if live_processes_with_cmdline(cmdline.as_bytes()) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live_processes_with_cmdline(cmdline.as_bytes()), 0);

    let stats = rt.container_stats(&handle, true).await.expect("stats");
    assert!(stats.pids >= 1, "{stats:?}");
    assert!(
        stats.cpu_usage_ns > 0 && stats.memory_usage > 0,
        "{stats:?}"
    );

    let waiter = {
        let rt = Arc::clone(&rt);
        let (id, bundle) = (id.clone(), bundle.clone());
        tokio::spawn(async move {
            rt.wait_container(&ContainerRef {
                sandbox_id: SANDBOX,
                id: &id,
                bundle: &bundle,
                pid,
                cgroup_path: "",
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "the container still runs");
    rt.kill_container(&handle_of(&id, &bundle), libc::SIGKILL, false)
        .await
        .expect("kill");
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("wait returns once the container exits")
        .expect("join")
        .expect("exit");
    assert_eq!(waited.code, 128 + libc::SIGKILL);
    assert_eq!(wait_exit(rt.as_ref(), &handle).await, waited);
    rt.kill_container(&handle_of(&id, &bundle), libc::SIGKILL, false)
        .await
        .expect("killing a dead container is fine");
    rt.delete_container(&handle, false).await.expect("delete");
}

async fn a_failed_create_is_reported_and_leaves_nothing(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(kind, dir.path());
    let bundle = dir.path().join("bundle-c");
    let id = format!("crisp-{}-c-{}", kind.name(), std::process::id());
    let missing = dir.path().join("no-such-rootfs");
    let log = dir.path().join("c.log");
    let err = create(rt.as_ref(), &id, &bundle, &spec(&missing, &["true"]), &log)
        .await
        .expect_err("no rootfs");
    assert!(err.to_string().contains("create"), "{err}");
    assert_eq!(
        rt.container_state(&handle_of(&id, &bundle))
            .await
            .expect("state"),
        None
    );
}

/// Host processes, not zombies, whose cmdline is exactly `cmdline`.
fn live_processes_with_cmdline(cmdline: &[u8]) -> usize {
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == cmdline))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .map(|r| r.trim_start().starts_with('Z'))
                })
                == Some(false)
        })
        .count()
}

async fn a_tty_container_logs_its_terminal_output(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(kind, dir.path());
    let root = rootfs(dir.path());
    let bundle = dir.path().join("bundle-t");
    let log = dir.path().join("t.log");
    let id = format!("crisp-{}-t-{}", kind.name(), std::process::id());
    let mut spec = spec(&root, &["sh", "-c", "tty; echo on a terminal"]);
    if let Some(mut process) = spec.process().clone() {
        process.set_terminal(Some(true));
        spec.set_process(Some(process));
    }
    let pid = create(rt.as_ref(), &id, &bundle, &spec, &log)
        .await
        .expect("create");
    rt.start_container(&handle_of(&id, &bundle))
        .await
        .expect("start");
    let handle = ContainerRef {
        pid,
        ..handle_of(&id, &bundle)
    };
    assert_eq!(wait_exit(rt.as_ref(), &handle).await.code, 0);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains(" stdout F /dev/pts/0"), "{text}");
    assert!(text.contains(" stdout F on a terminal"), "{text}");
    assert!(!bundle.join("console.sock").exists());
    rt.delete_container(&handle_of(&id, &bundle), false)
        .await
        .expect("delete");
}

async fn a_sandbox_is_started_recovered_and_stopped(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(kind, dir.path());
    for share_pid in [false, true] {
        let sandbox = SandboxSpec {
            id: format!("crisp-{}-pod-{share_pid}", kind.name()),
            state_dir: dir.path().join(format!("pod-{share_pid}")),
            share_pid,
            host_pid: false,
            host_ipc: false,
            pid_pin: dir.path().join(format!("pod-{share_pid}/ns/pid")),
            userns: None,
            netns: None,
            hostname: String::new(),
            cgroups_path: String::new(),
            sysctls: Default::default(),
            resources: Default::default(),
        };
        let started = rt.start_sandbox(&sandbox).await.expect("start sandbox");
        // Its state survives a round trip through the pod's record.
        let saved = serde_json::to_string(&started.state).expect("encode");
        let state = serde_json::from_str(&saved).expect("decode");
        assert_eq!(
            started.namespace_holder > 0,
            share_pid,
            "a shared PID namespace has a holder"
        );
        assert!(rt.recover_sandbox(&sandbox, &state).await.expect("recover"));
        rt.stop_sandbox(&sandbox, &state).await.expect("stop");
        rt.stop_sandbox(&sandbox, &state).await.expect("stop again");
        if share_pid {
            // The init is gone (a zombie at most until the handler reaps it).
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while rt.recover_sandbox(&sandbox, &state).await.expect("recover") {
                assert!(std::time::Instant::now() < deadline, "init still alive");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

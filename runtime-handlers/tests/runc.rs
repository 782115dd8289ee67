//! The oci handler with real runc and the real crisp-monitor, on a busybox rootfs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{ProcessBuilder, Spec};
use runtime_handlers::{ContainerRef, ContainerSpec, OciRuntime, RuntimeHandler, exit_status};

fn runtime(dir: &Path) -> OciRuntime {
    OciRuntime {
        name: "runc".to_owned(),
        binary: runtime_handlers::resolve_binary(Path::new("runc")).expect("runc is installed"),
        root: dir.join("runc-root"),
        runtime_args: Vec::new(),
        monitor: PathBuf::from(env!("CARGO_BIN_EXE_crisp-monitor")),
        enter: PathBuf::from(env!("CARGO_BIN_EXE_crisp-enter")),
        runtime_exec: false,
    }
}

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

async fn wait_exit(bundle: &Path) -> runtime_handlers::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = exit_status(bundle) {
            return s;
        }
        assert!(Instant::now() < deadline, "container did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_container_runs_logs_and_reports_its_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path());
    let root = rootfs(dir.path());
    let bundle = dir.path().join("bundle-a");
    let log = dir.path().join("logs/a.log");
    let id = format!("crisp-test-a-{}", std::process::id());
    let spec = spec(
        &root,
        &[
            "sh",
            "-c",
            "echo hello; echo oops >&2; printf partial; exit 3",
        ],
    );
    let pid = rt
        .create_container(&ContainerSpec {
            sandbox_id: SANDBOX,
            id: &id,
            bundle: &bundle,
            spec: &spec,
            log_path: &log,
            stdin: false,
            stdin_once: false,
        })
        .await
        .expect("create");
    assert!(pid > 0);
    assert_eq!(
        rt.container_state(&id)
            .await
            .expect("state")
            .map(|s| s.status)
            .as_deref(),
        Some("created")
    );
    rt.start_container(&id).await.expect("start");
    let exit = wait_exit(&bundle).await;
    assert_eq!(exit.code, 3);
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
    assert_eq!(rt.container_state(&id).await.expect("state"), None);
    rt.delete_container(&handle_of(&id, &bundle), false)
        .await
        .expect("delete twice");
}

#[tokio::test]
async fn exec_with_output_and_timeout_then_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path());
    let root = rootfs(dir.path());
    let bundle = dir.path().join("bundle-b");
    let id = format!("crisp-test-b-{}", std::process::id());
    let log = dir.path().join("b.log");
    let pid = rt
        .create_container(&ContainerSpec {
            sandbox_id: SANDBOX,
            id: &id,
            bundle: &bundle,
            spec: &spec(&root, &["sleep", "300"]),
            log_path: &log,
            stdin: false,
            stdin_once: false,
        })
        .await
        .expect("create");
    let handle = ContainerRef {
        sandbox_id: SANDBOX,
        id: &id,
        bundle: &bundle,
        pid,
        cgroup_path: "",
    };
    rt.start_container(&id).await.expect("start");
    let state = rt
        .container_state(&id)
        .await
        .expect("state")
        .expect("known");
    assert_eq!(state.status, "running");

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

    let slow = ProcessBuilder::default()
        .args(vec!["sleep".to_owned(), "30".to_owned()])
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
    assert_eq!(live_processes_with_cmdline(b"sleep\x0030\x00"), 0);

    let stats = rt.container_stats(&handle, true).await.expect("stats");
    assert!(stats.pids >= 1, "{stats:?}");
    assert!(
        stats.cpu_usage_ns > 0 && stats.memory_usage > 0,
        "{stats:?}"
    );

    let waiter = {
        let rt = rt.clone();
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
    rt.kill_container(&id, libc::SIGKILL, false)
        .await
        .expect("kill");
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("wait returns once the container exits")
        .expect("join")
        .expect("exit");
    assert_eq!(waited.code, 128 + libc::SIGKILL);
    let exit = wait_exit(&bundle).await;
    assert_eq!(exit, waited);
    rt.kill_container(&id, libc::SIGKILL, false)
        .await
        .expect("killing a dead container is fine");
    rt.delete_container(&handle, false).await.expect("delete");
}

#[tokio::test]
async fn a_failed_create_is_reported_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path());
    let bundle = dir.path().join("bundle-c");
    let id = format!("crisp-test-c-{}", std::process::id());
    let missing = dir.path().join("no-such-rootfs");
    let log = dir.path().join("c.log");
    let err = rt
        .create_container(&ContainerSpec {
            sandbox_id: SANDBOX,
            id: &id,
            bundle: &bundle,
            spec: &spec(&missing, &["true"]),
            log_path: &log,
            stdin: false,
            stdin_once: false,
        })
        .await
        .expect_err("no rootfs");
    assert!(err.to_string().contains("create"), "{err}");
    assert_eq!(rt.container_state(&id).await.expect("state"), None);
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

#[tokio::test]
async fn a_tty_container_logs_its_terminal_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path());
    let root = rootfs(dir.path());
    let bundle = dir.path().join("bundle-t");
    let log = dir.path().join("t.log");
    let id = format!("crisp-test-t-{}", std::process::id());
    let mut spec = spec(&root, &["sh", "-c", "tty; echo on a terminal"]);
    if let Some(mut process) = spec.process().clone() {
        process.set_terminal(Some(true));
        spec.set_process(Some(process));
    }
    rt.create_container(&ContainerSpec {
        sandbox_id: SANDBOX,
        id: &id,
        bundle: &bundle,
        spec: &spec,
        log_path: &log,
        stdin: false,
        stdin_once: false,
    })
    .await
    .expect("create");
    rt.start_container(&id).await.expect("start");
    assert_eq!(wait_exit(&bundle).await.code, 0);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains(" stdout F /dev/pts/0"), "{text}");
    assert!(text.contains(" stdout F on a terminal"), "{text}");
    assert!(!bundle.join("console.sock").exists());
    rt.delete_container(&handle_of(&id, &bundle), false)
        .await
        .expect("delete");
}

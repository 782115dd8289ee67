//! The daemon on its socket: the real crispd binary, spoken to over CRI.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Sandbox, real_plugin_dir};
use cri_proto::v1 as cri;

fn condition<'a>(status: &'a cri::StatusResponse, kind: &str) -> &'a cri::RuntimeCondition {
    status
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_status_and_runtime_config_answer() {
    // runc, crun and runsc come by default (make test installs all three); a handler
    // whose binary is missing is configured but not offered.
    let sandbox = Sandbox::new(
        "[runtimes.runc]\npath = \"/bin/true\"\n[runtimes.ghost]\npath = \"/nonexistent/ghost-runtime\"\n",
    );
    let daemon = sandbox.start();
    let (mut runtime, _) = daemon.clients().await;

    let version = runtime
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(version.runtime_name, "crisp");
    assert_eq!(version.runtime_api_version, "v1");
    assert_eq!(version.runtime_version, env!("CARGO_PKG_VERSION"));

    let config = runtime
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        config.linux.map(|l| l.cgroup_driver()),
        Some(cri::CgroupDriver::Cgroupfs)
    );

    let status = runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(condition(&status, "RuntimeReady").status);
    let network = condition(&status, "NetworkReady");
    assert!(!network.status, "no CNI config yet: {network:?}");
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(
        network
            .message
            .contains("no valid CNI network configuration"),
        "{}",
        network.message
    );
    assert!(status.info.is_empty(), "info only when verbose");
    let handlers: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(handlers, ["", "crun", "microvm", "runc", "runsc"]);

    // `crictl info` says which handlers can run and why the others cannot.
    let verbose = runtime
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let report: serde_json::Value =
        serde_json::from_str(&verbose.info["runtimeHandlers"]).expect("JSON");
    assert_eq!(report["runc"]["usable"], true, "{report}");
    assert_eq!(report["runsc"]["usable"], true, "{report}");
    assert_eq!(report["ghost"]["usable"], false, "{report}");
    let reason = report["ghost"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("/nonexistent/ghost-runtime"), "{reason}");

    // A pod asking for it is refused before anything is made.
    let err = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "ghost".into(),
                    uid: "ghost-uid".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            runtime_handler: "ghost".into(),
        })
        .await
        .expect_err("missing runtime binary");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("ghost-runtime"), "{}", err.message());
    let pods = common::list_pods(&mut runtime).await;
    assert!(pods.is_empty(), "{pods:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_ready_follows_the_cni_directory_without_restart() {
    let plugins = real_plugin_dir();
    let sandbox = Sandbox::new(&format!(
        "[cni]\nplugin_dirs = [\"{}\"]\n",
        plugins.display()
    ));
    // The [cni] table is written twice otherwise; put conf_dir into the same table.
    let text = std::fs::read_to_string(sandbox.config_path()).expect("read config");
    let text = text.replace("\n[cni]\nconf_dir", "\nconf_dir");
    std::fs::write(sandbox.config_path(), text).expect("write config");
    let daemon = sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let ready = |s: &cri::StatusResponse| condition(s, "NetworkReady").status;

    let before = runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(!ready(&before));

    // A conflist naming a plugin that does not exist is not usable.
    std::fs::write(
        sandbox.path("cni/10-bad.conflist"),
        r#"{"cniVersion":"1.0.0","name":"bad","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .expect("write conflist");
    let bad = runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(!ready(&bad));
    assert!(
        condition(&bad, "NetworkReady")
            .message
            .contains("no-such-plugin")
    );

    std::fs::write(
        sandbox.path("cni/20-crisp.conflist"),
        r#"{"cniVersion":"1.0.0","name":"crisp","plugins":[{"type":"bridge","bridge":"crisp0","ipam":{"type":"host-local","subnet":"10.88.0.0/16"}},{"type":"loopback"}]}"#,
    )
    .expect("write conflist");
    let after = runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(ready(&after), "{:?}", condition(&after, "NetworkReady"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_ready_is_false_without_the_runtime_binary() {
    let sandbox = Sandbox::new("[runtimes.runc]\npath = \"/nonexistent/runc\"\n");
    let daemon = sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let status = runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let ready = condition(&status, "RuntimeReady");
    assert!(!ready.status);
    assert!(
        ready.message.contains("/nonexistent/runc"),
        "{}",
        ready.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_status_returns_the_effective_config_without_secrets() {
    let sandbox = Sandbox::new(
        "[registry.auths.\"registry.example.com\"]\nusername = \"alice\"\npassword = \"s3cret\"\n",
    );
    let daemon = sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let status = runtime
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let config = status.info.get("config").expect("config in verbose info");
    let json: serde_json::Value = serde_json::from_str(config).expect("config is JSON");
    assert_eq!(json["listen"], sandbox.socket().display().to_string());
    assert_eq!(
        json["registry"]["auths"]["registry.example.com"]["username"],
        "alice"
    );
    assert!(!config.contains("s3cret"), "password leaked: {config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_checkpoint_calls_name_what_is_wrong() {
    let sandbox = Sandbox::new("");
    let daemon = sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let err = runtime
        .exec(cri::ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("no such container");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = runtime
        .attach(cri::AttachRequest::default())
        .await
        .expect_err("nothing to attach");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "nope".into(),
            port: vec![80],
        })
        .await
        .expect_err("no such pod");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = runtime
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such container");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let sandbox = Sandbox::new("");
    let first = sandbox.start();
    let (status, _, stderr) = sandbox.run(&[]);
    assert!(!status.success());
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
    // The first one still serves.
    assert!(std::os::unix::net::UnixStream::connect(sandbox.socket()).is_ok());
}

#[test]
fn socket_is_0660_and_removed_on_sigterm() {
    let sandbox = Sandbox::new("");
    let daemon = sandbox.start();
    let mode = std::fs::metadata(sandbox.socket())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(!sandbox.socket().exists(), "socket left behind");
}

#[test]
fn a_stale_socket_from_a_dead_daemon_is_replaced() {
    let sandbox = Sandbox::new("");
    std::fs::create_dir_all(sandbox.path("state")).expect("state dir");
    // A socket file nobody listens on any more, as a killed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(sandbox.socket()).expect("bind"));
    assert!(sandbox.socket().exists());
    let daemon = sandbox.start();
    let (status, log) = daemon.stop();
    assert!(status.success(), "{status}: {log}");
}

#[test]
fn readiness_is_notified_to_systemd() {
    let sandbox = Sandbox::new("");
    let notify_path = sandbox.path("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind notify");
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let daemon = sandbox.start_with(|cmd| {
        cmd.env("NOTIFY_SOCKET", &notify_path);
    });
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("a notification");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("READY=1"), "{text}");
    assert!(
        text.contains(&format!("MAINPID={}", daemon.pid())),
        "{text}"
    );
    drop(daemon);
    let n = listener.recv(&mut buf).expect("stopping notification");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn sighup_reloads_live_settings_and_reports_the_rest() {
    let sandbox = Sandbox::new("");
    let daemon = sandbox.start();
    sandbox.write_config(
        "log_level = \"debug\"\npinned_images = [\"registry.k8s.io/pause:3.10\"]\ncgroup_driver = \"systemd\"\n",
    );
    daemon.signal(libc::SIGHUP);
    // The reload is asynchronous; the log tells when it happened.
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = daemon.stop();
    assert!(status.success());
    assert!(log.contains("log_level: info -> debug"), "{log}");
    assert!(log.contains("pinned_images"), "{log}");
    assert!(
        log.contains("cgroup_driver") && log.contains("needs a restart"),
        "{log}"
    );
}

#[test]
fn a_bad_reload_keeps_the_running_configuration() {
    let sandbox = Sandbox::new("");
    let daemon = sandbox.start();
    std::fs::write(sandbox.config_path(), "log_level = \"loud\"\n").expect("write");
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::os::unix::net::UnixStream::connect(sandbox.socket()).is_ok());
    let (_, log) = daemon.stop();
    assert!(log.contains("reload failed"), "{log}");
}

#[test]
fn bad_streaming_tls_settings_stop_crispd_with_a_clear_message() {
    let sandbox = Sandbox::new("[streaming]\ntls_cert = \"/nonexistent/crisp.crt\"\n");
    let (status, _, stderr) = sandbox.run(&[]);
    assert!(!status.success());
    assert!(stderr.contains("tls_key"), "{stderr}");
    let sandbox = Sandbox::new(
        "[streaming]\ntls_cert = \"/nonexistent/crisp.crt\"\ntls_key = \"/nonexistent/crisp.key\"\n",
    );
    let (status, _, stderr) = sandbox.run(&[]);
    assert!(!status.success());
    assert!(stderr.contains("/nonexistent/crisp.crt"), "{stderr}");
    assert!(!sandbox.socket().exists(), "no socket left behind");
}

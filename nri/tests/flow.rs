//! The runtime side and the plugin side of NRI talking over a real unix socket: a plugin
//! registers, is configured and synchronized, gets events in order, adjusts a container,
//! fails a hook, and is dropped when it stops answering.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nri::api;
use nri::peer::{Handler, Reply};
use nri::stub::Stub;
use nri::ttrpc::{Status, code};
use prost::Message as _;

struct Host {
    pods: Vec<api::PodSandbox>,
}

impl nri::Host for Host {
    fn snapshot(
        &self,
    ) -> nri::adaptation::BoxFuture<'_, (Vec<api::PodSandbox>, Vec<api::Container>)> {
        Box::pin(async move { (self.pods.clone(), Vec::new()) })
    }
    fn update(
        &self,
        updates: Vec<api::ContainerUpdate>,
    ) -> nri::adaptation::BoxFuture<'_, Vec<api::ContainerUpdate>> {
        Box::pin(async move { updates })
    }
    fn evict(&self, _: Vec<api::ContainerEviction>) -> nri::adaptation::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn runtime(dir: &std::path::Path, request_timeout: Duration) -> Arc<nri::Nri> {
    let host = Host {
        pods: vec![api::PodSandbox {
            id: "existing".into(),
            ..Default::default()
        }],
    };
    nri::Nri::new(
        nri::Config {
            socket_path: Some(dir.join("nri.sock")),
            plugin_path: dir.join("plugins"),
            plugin_config_path: dir.join("conf.d"),
            registration_timeout: Duration::from_secs(5),
            request_timeout,
            runtime_name: "crisp".into(),
            runtime_version: "test".into(),
        },
        Arc::new(host),
    )
}

type Log = Arc<Mutex<Vec<String>>>;

/// A plugin that logs every call and answers with `answer`.
fn plugin(log: &Log, answer: fn(&str, &[u8]) -> Reply) -> Handler {
    let log = Arc::clone(log);
    Arc::new(move |method: String, payload: Vec<u8>| {
        let log = Arc::clone(&log);
        Box::pin(async move {
            if method == "Configure" {
                return Ok(Vec::new());
            }
            let what = match method.as_str() {
                "Synchronize" => {
                    let sync = api::SynchronizeRequest::decode(payload.as_slice()).expect("sync");
                    format!("Synchronize {}", sync.pods.len())
                }
                _ => method.clone(),
            };
            log.lock().expect("log").push(what);
            answer(&method, &payload)
        })
    })
}

/// Waits until `n` plugins are registered.
async fn plugins(nri: &nri::Nri, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nri.plugins().await.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {n} plugins"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_plugin_registers_gets_events_in_order_and_adjusts_containers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nri = runtime(dir.path(), Duration::from_secs(2));
    nri.start().await.expect("start");
    let log: Log = Arc::default();
    let adjusting = |method: &str, _: &[u8]| -> Reply {
        if method != "CreateContainer" {
            return Ok(Vec::new());
        }
        Ok(api::CreateContainerResponse {
            adjust: Some(api::ContainerAdjustment {
                env: vec![api::KeyValue {
                    key: "FROM_NRI".into(),
                    value: "yes".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec())
    };
    let _stub = Stub::connect(
        &dir.path().join("nri.sock"),
        "test",
        "05",
        0,
        plugin(&log, adjusting),
    )
    .await
    .expect("connect");
    plugins(&nri, 1).await;
    assert_eq!(nri.plugins().await, ["05-test"]);

    let pod = api::PodSandbox {
        id: "p1".into(),
        ..Default::default()
    };
    let container = api::Container {
        id: "c1".into(),
        env: vec!["A=1".into()],
        ..Default::default()
    };
    nri.run_pod_sandbox(&pod).await.expect("run");
    let adjust = nri
        .create_container(&pod, &container)
        .await
        .expect("create")
        .expect("adjusted");
    let mut spec = serde_json::json!({"process": {"env": ["A=1"]}});
    nri::oci::apply(&mut spec, &adjust).expect("apply");
    assert_eq!(
        spec["process"]["env"],
        serde_json::json!(["A=1", "FROM_NRI=yes"])
    );
    nri.container_notice(nri::api::Event::StartContainer, &pod, &container)
        .await
        .expect("start");
    nri.stop_container(&pod, &container).await.expect("stop");
    nri.container_notice(nri::api::Event::RemoveContainer, &pod, &container)
        .await
        .expect("remove");
    nri.stop_pod_sandbox(&pod).await.expect("stop pod");
    nri.remove_pod_sandbox(&pod).await.expect("remove pod");
    assert_eq!(
        *log.lock().expect("log"),
        [
            "Synchronize 1",
            "RunPodSandbox",
            "CreateContainer",
            "StartContainer",
            "StopContainer",
            "RemoveContainer",
            "StopPodSandbox",
            "RemovePodSandbox"
        ]
    );
}

#[tokio::test]
async fn a_failing_hook_fails_the_event_and_a_silent_plugin_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nri = runtime(dir.path(), Duration::from_millis(300));
    nri.start().await.expect("start");
    let log: Log = Arc::default();
    let refusing = |method: &str, _: &[u8]| -> Reply {
        match method {
            "RunPodSandbox" => Err(Status {
                code: code::UNKNOWN,
                message: "no pods today".into(),
            }),
            _ => Ok(Vec::new()),
        }
    };
    let socket = dir.path().join("nri.sock");
    let _refuser = Stub::connect(&socket, "refuser", "01", 0, plugin(&log, refusing))
        .await
        .expect("connect");
    // A plugin whose StopPodSandbox never answers.
    let silent: Handler = Arc::new(|method: String, _| {
        Box::pin(async move {
            if method == "StopPodSandbox" {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(Vec::new())
        })
    });
    let _silent = Stub::connect(&socket, "silent", "02", 0, silent)
        .await
        .expect("connect");
    plugins(&nri, 2).await;

    let pod = api::PodSandbox {
        id: "p1".into(),
        ..Default::default()
    };
    let err = nri.run_pod_sandbox(&pod).await.expect_err("refused");
    assert_eq!(
        err.to_string(),
        "NRI plugin 01-refuser failed RunPodSandbox: no pods today"
    );
    // The silent plugin is dropped after the request timeout; the event succeeds.
    nri.stop_pod_sandbox(&pod)
        .await
        .expect("goes on without it");
    assert_eq!(nri.plugins().await, ["01-refuser"]);

    // A validator of adjustments (event 14) is turned away: crisp would never ask it.
    let validator = Stub::connect(&socket, "validator", "03", 1 << 13, plugin(&log, empty))
        .await
        .expect("it registers");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !validator.is_closed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the validator is still connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(nri.plugins().await, ["01-refuser"]);
}

fn empty(_: &str, _: &[u8]) -> Reply {
    Ok(Vec::new())
}

#[tokio::test]
async fn a_pre_installed_plugin_is_started_with_its_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (plugins, conf) = (dir.path().join("plugins"), dir.path().join("conf.d"));
    std::fs::create_dir_all(&plugins).expect("plugins");
    std::fs::create_dir_all(&conf).expect("conf.d");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_crisp-nri-env"), plugins.join("07-env"))
        .expect("install the plugin");
    std::fs::write(
        conf.join("07-env.conf"),
        "# set in every container\nGREETING = configured\n",
    )
    .expect("its configuration");
    // Not NN-name: skipped. Not executable: not a plugin.
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_crisp-nri-env"), plugins.join("env"))
        .expect("ill-named");
    std::fs::write(plugins.join("08-notes.txt"), "not a plugin").expect("a file");

    let nri = runtime(dir.path(), Duration::from_secs(2));
    nri.start().await.expect("start");
    assert_eq!(nri.plugins().await, ["07-env"]);
    let pod = api::PodSandbox::default();
    let adjust = nri
        .create_container(&pod, &api::Container::default())
        .await
        .expect("create")
        .expect("adjusted");
    assert_eq!(
        adjust.env,
        [api::KeyValue {
            key: "GREETING".into(),
            value: "configured".into()
        }]
    );
    nri.shutdown().await;
    assert!(nri.plugins().await.is_empty());
}

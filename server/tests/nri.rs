//! NRI plugins against the real crispd: a Rust plugin (the `nri` crate's plugin side)
//! connects to crispd's NRI socket, registers, gets every event in order, adjusts a
//! container (an environment variable and a mount, seen inside it), refuses a pod once,
//! and another plugin dies in the middle of a call.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::workload::*;
use cri_proto::v1 as cri;
use nri::api;
use nri::peer::Handler;
use nri::stub::Stub;
use prost::Message as _;

type Log = Arc<Mutex<Vec<String>>>;

fn entries(log: &Log) -> Vec<String> {
    log.lock().expect("log").clone()
}

/// A plugin that logs `Method pod-name/container-name` for every call, adjusts every
/// container (NRI_GREETING and a read-only mount of `share` at /nri), and refuses the
/// first RunPodSandbox of a pod named "refused" and the first CreateContainer of a
/// container named "refused".
fn recorder(log: &Log, share: std::path::PathBuf) -> Handler {
    let log = Arc::clone(log);
    let refused_once = Arc::new(AtomicBool::new(false));
    let refused_container = Arc::new(AtomicBool::new(false));
    Arc::new(move |method: String, payload: Vec<u8>| {
        let log = Arc::clone(&log);
        let refused_once = Arc::clone(&refused_once);
        let refused_container = Arc::clone(&refused_container);
        let share = share.clone();
        Box::pin(async move {
            if method == "Configure" {
                return Ok(Vec::new());
            }
            if method == "Synchronize" {
                log.lock().expect("log").push(method);
                return Ok(api::SynchronizeResponse::default().encode_to_vec());
            }
            // Every event's request has the pod as field 1 and the container (if any)
            // as field 2.
            let request = api::ContainerRequest::decode(payload.as_slice()).unwrap_or_default();
            let pod = request.pod.unwrap_or_default();
            let container = request.container.map(|c| c.name).unwrap_or_default();
            if method == "CreateContainer"
                && container == "refused"
                && !refused_container.swap(true, Ordering::SeqCst)
            {
                log.lock()
                    .expect("log")
                    .push(format!("{method} {}/{container}", pod.name));
                return Err(nri::ttrpc::Status {
                    code: nri::ttrpc::code::UNKNOWN,
                    message: "not this container, not now".into(),
                });
            }
            log.lock()
                .expect("log")
                .push(format!("{method} {}/{container}", pod.name));
            match method.as_str() {
                "RunPodSandbox"
                    if pod.name == "refused" && !refused_once.swap(true, Ordering::SeqCst) =>
                {
                    Err(nri::ttrpc::Status {
                        code: nri::ttrpc::code::UNKNOWN,
                        message: "not this pod, not now".into(),
                    })
                }
                "CreateContainer" => Ok(api::CreateContainerResponse {
                    adjust: Some(api::ContainerAdjustment {
                        env: vec![api::KeyValue {
                            key: "NRI_GREETING".into(),
                            value: "from-the-plugin".into(),
                        }],
                        mounts: vec![api::Mount {
                            destination: "/nri".into(),
                            r#type: "bind".into(),
                            source: share.display().to_string(),
                            options: vec!["rbind".into(), "ro".into()],
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .encode_to_vec()),
                _ => Ok(Vec::new()),
            }
        })
    })
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_every_event_in_order_adjust_containers_and_may_refuse_or_die() {
    let s = setup();
    // The request timeout is generous: the dying plugin below must be dropped because
    // its connection ends, not because it ran out of time.
    let config = s.net.sandbox.config_path();
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("request_timeout = \"20s\"\n");
    std::fs::write(&config, text).expect("config");
    let daemon = s.net.sandbox.start();
    let mut rt = pulled(&s, &daemon).await;
    let socket = s.net.sandbox.path("nri/nri.sock");
    let share = s.net.sandbox.path("share");
    std::fs::create_dir_all(&share).expect("share");
    std::fs::write(share.join("hello"), "hello from the host\n").expect("share file");

    let log: Log = Arc::default();
    let _recorder = Stub::connect(&socket, "recorder", "10", 0, recorder(&log, share.clone()))
        .await
        .expect("the recorder registers");
    wait_for("the recorder's Synchronize", || {
        entries(&log) == ["Synchronize"]
    })
    .await;

    // A plugin before the recorder (index 05) whose connection ends while crispd waits
    // for its CreateContainer answer.
    let dying_log: Log = Arc::default();
    let (dying_tx, mut dying_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let dying_handler: Handler = {
        let dying_log = Arc::clone(&dying_log);
        Arc::new(move |method: String, _| {
            let dying_tx = dying_tx.clone();
            let dying_log = Arc::clone(&dying_log);
            Box::pin(async move {
                if method == "Configure" {
                    return Ok(Vec::new());
                }
                dying_log.lock().expect("log").push(method.clone());
                if method == "CreateContainer" {
                    let _ = dying_tx.send(());
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok(Vec::new())
            })
        })
    };
    // Subscribed to CreateContainer only (event 4: bit 3).
    let dying = Arc::new(
        Stub::connect(&socket, "dying", "05", 1 << 3, dying_handler)
            .await
            .expect("the dying plugin registers"),
    );
    wait_for("the dying plugin's Synchronize", || {
        entries(&dying_log) == ["Synchronize"]
    })
    .await;
    let killer = {
        let dying = Arc::clone(&dying);
        tokio::spawn(async move {
            if dying_rx.recv().await.is_some() {
                dying.close().await;
            }
        })
    };

    // A pod the recorder refuses once: RunPodSandbox fails with the plugin's message
    // and leaves nothing; the same pod then runs.
    let (veths, allocations, mounts) = (s.net.veths(), s.net.allocations(), s.net.mounts());
    let refused = named_pod(&s, "refused");
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(refused.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("the plugin refuses the pod");
    assert!(
        err.message()
            .contains("NRI plugin 10-recorder failed RunPodSandbox: not this pod, not now"),
        "{err:?}"
    );
    assert!(common::list_pods(&mut rt).await.is_empty());
    assert_eq!(
        (s.net.veths(), s.net.allocations(), s.net.mounts()),
        (veths, allocations, mounts),
        "a refused pod leaves no veth, address or mount"
    );
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(refused),
            runtime_handler: String::new(),
        })
        .await
        .expect("the retry runs")
        .into_inner()
        .pod_sandbox_id;

    // The container sees the adjustment, exits by itself, and its StopContainer event
    // comes without a StopContainer call.
    let mut config = container(&s, "worker", "echo $NRI_GREETING; cat /nri/hello; exit 3");
    config.log_path = "worker.log".into();
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(named_pod(&s, "refused")),
        })
        .await
        .expect("create goes on without the dying plugin")
        .into_inner()
        .container_id;
    killer.await.expect("killer");
    assert!(dying.is_closed());
    start(&mut rt, &id).await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!(st.exit_code, 3);
    let output = std::fs::read_to_string(s.net.sandbox.path("logs/worker.log")).expect("log");
    assert!(output.contains(" stdout F from-the-plugin\n"), "{output}");
    assert!(
        output.contains(" stdout F hello from the host\n"),
        "{output}"
    );
    wait_for("the StopContainer event", || {
        entries(&log).iter().any(|e| e.starts_with("StopContainer"))
    })
    .await;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("remove");

    // A container the recorder refuses once: CreateContainer fails with its message,
    // nothing of it is mounted or listed, and the retry is created.
    let mounts = s.net.mounts();
    let refused_container = || cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container(&s, "refused", "sleep 1000")),
        sandbox_config: Some(named_pod(&s, "refused")),
    };
    let err = rt
        .create_container(refused_container())
        .await
        .expect_err("the plugin refuses the container");
    assert!(
        err.message()
            .contains("NRI plugin 10-recorder failed CreateContainer: not this container, not now"),
        "{err:?}"
    );
    assert_eq!(
        s.net.mounts(),
        mounts,
        "a refused container leaves no mount"
    );
    let listed = common::list_containers(&mut rt).await;
    assert!(listed.is_empty(), "{listed:?}");
    let retried = rt
        .create_container(refused_container())
        .await
        .expect("the retry is created")
        .into_inner()
        .container_id;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: retried,
    })
    .await
    .expect("remove the retry");
    stop_and_remove_pod(&mut rt, &pod).await;

    let c = "refused/worker";
    assert_eq!(
        entries(&log),
        [
            "Synchronize".to_owned(),
            "RunPodSandbox refused/".into(),
            // The refused attempt's undo.
            "StopPodSandbox refused/".into(),
            "RemovePodSandbox refused/".into(),
            "RunPodSandbox refused/".into(),
            format!("CreateContainer {c}"),
            format!("PostCreateContainer {c}"),
            format!("StartContainer {c}"),
            format!("PostStartContainer {c}"),
            format!("StopContainer {c}"),
            format!("RemoveContainer {c}"),
            // The refused container: plugins that had agreed forget it.
            "CreateContainer refused/refused".into(),
            "StopContainer refused/refused".into(),
            "RemoveContainer refused/refused".into(),
            // The retry, created and removed without a start.
            "CreateContainer refused/refused".into(),
            "PostCreateContainer refused/refused".into(),
            "StopContainer refused/refused".into(),
            "RemoveContainer refused/refused".into(),
            "StopPodSandbox refused/".into(),
            "RemovePodSandbox refused/".into(),
        ]
    );
    assert_eq!(entries(&dying_log), ["Synchronize", "CreateContainer"]);
    teardown(&mut rt).await;
}

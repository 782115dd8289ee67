//! The container lifecycle's rules against the fake handler: no root, no runtime, no
//! processes.

use std::sync::Arc;

use runtime_handlers::RuntimeHandler;
use runtime_handlers::fake::{FakeBehaviour, FakeHandler};

use super::*;
use crate::container::{ContainerRecord, RECORD_VERSION};

struct World {
    _dir: tempfile::TempDir,
    daemon: Arc<Daemon>,
    fake: Arc<FakeHandler>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = conf::Config {
        root: dir.path().join("root"),
        state: dir.path().join("state"),
        default_runtime: "fake".to_owned(),
        runtimes: [("fake".to_owned(), conf::RuntimeHandlerConfig::default())].into(),
        ..conf::Config::default()
    };
    let fake = Arc::new(FakeHandler::new("fake"));
    let handlers = Arc::new(crate::handlers::Handlers::from_handlers(vec![
        Arc::clone(&fake) as Arc<dyn RuntimeHandler>,
    ]));
    let images = image::Images::open(crate::options::image_options(&config))
        .await
        .expect("images");
    let pods = crate::pod::restore(&config, &handlers).await.expect("pods");
    let containers = crate::container::load(&config.root).expect("containers");
    let daemon = Arc::new(Daemon::new(config, images, pods, containers, handlers));
    World {
        _dir: dir,
        daemon,
        fake,
    }
}

/// A container the fake has created, recorded as crisp records it.
async fn created(w: &World, name: &str, behaviour: FakeBehaviour) -> String {
    let id = crate::pod::new_id();
    let bundle = w.daemon.config().state.join("containers").join(&id);
    w.fake.next_behaves(behaviour);
    let spec = oci_spec::runtime::Spec::default();
    w.fake
        .create_container(&runtime_handlers::ContainerSpec {
            id: &id,
            sandbox_id: "pod",
            bundle: &bundle,
            spec: &spec,
            log_path: std::path::Path::new(""),
            stdin: false,
            stdin_once: false,
        })
        .await
        .expect("fake create");
    let record = ContainerRecord {
        v: RECORD_VERSION,
        id: id.clone(),
        pod_id: "pod".to_owned(),
        name: name.to_owned(),
        attempt: 0,
        image: "busybox".to_owned(),
        image_id: "sha256:0".to_owned(),
        image_ref: "sha256:0".to_owned(),
        labels: Default::default(),
        annotations: Default::default(),
        created_at: now_ns(),
        started_at: 0,
        log_path: String::new(),
        handler: "fake".to_owned(),
        bundle,
        mounts: Vec::new(),
        stop_signal: libc::SIGTERM,
        process: serde_json::Value::Null,
        chain_ids: Vec::new(),
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        cgroup_path: String::new(),
        pid: 1,
        stdin_once: false,
        image_volumes: 0,
        exit: None,
    };
    w.daemon.containers.save(&record).expect("save");
    let entry = w.daemon.containers.insert(record);
    crate::container::watch(
        w.daemon.handlers.get("fake").expect("fake"),
        entry,
        Arc::clone(&w.daemon),
    );
    id
}

fn state(w: &World, id: &str) -> State {
    w.daemon
        .containers
        .get(id)
        .map(|c| c.snapshot().state())
        .expect("known")
}

#[tokio::test]
async fn start_then_stop_records_one_exit_and_stopping_again_does_nothing() {
    let w = world().await;
    let id = created(&w, "app", FakeBehaviour::default()).await;
    assert_eq!(state(&w, &id), State::Created);
    start(&w.daemon, &id).await.expect("start");
    assert_eq!(state(&w, &id), State::Running);
    // A second start is refused: the state allows it once.
    assert!(matches!(
        start(&w.daemon, &id).await,
        Err(LifecycleError::Precondition(_))
    ));
    stop(&w.daemon, &id, 10).await.expect("stop");
    assert!(matches!(state(&w, &id), State::Exited { code: 143, .. }));
    let calls = w.fake.calls().len();
    stop(&w.daemon, &id, 10).await.expect("stop again");
    assert_eq!(
        w.fake.calls().len(),
        calls,
        "an exited container is not signalled"
    );
    // The exit survives in the saved record.
    let saved = std::fs::read_to_string(
        w.daemon
            .config()
            .root
            .join("containers-meta")
            .join(format!("{id}.json")),
    )
    .expect("record");
    assert!(saved.contains("\"exit\""), "{saved}");
}

#[tokio::test]
async fn a_container_ignoring_sigterm_is_killed_after_its_grace() {
    let w = world().await;
    let behaviour = FakeBehaviour {
        ignores_sigterm: true,
        ..FakeBehaviour::default()
    };
    let id = created(&w, "stubborn", behaviour).await;
    start(&w.daemon, &id).await.expect("start");
    stop(&w.daemon, &id, 1).await.expect("stop");
    let kills: Vec<String> = w
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("kill"))
        .collect();
    assert_eq!(kills, [format!("kill {id} 15"), format!("kill {id} 9")]);
    assert!(matches!(state(&w, &id), State::Exited { code: 137, .. }));
}

#[tokio::test]
async fn an_exit_on_its_own_is_recorded_by_the_watcher() {
    let w = world().await;
    let id = created(&w, "short", FakeBehaviour::default()).await;
    start(&w.daemon, &id).await.expect("start");
    w.fake.exit(&id, 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while state(&w, &id) == State::Running {
        assert!(std::time::Instant::now() < deadline, "exit not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches!(state(&w, &id), State::Exited { code: 3, .. }));
}

#[tokio::test]
async fn remove_stops_deletes_and_forgets_and_is_idempotent() {
    let w = world().await;
    let id = created(&w, "gone", FakeBehaviour::default()).await;
    start(&w.daemon, &id).await.expect("start");
    remove(&w.daemon, &id).await.expect("remove");
    assert!(!w.fake.has(&id));
    assert!(w.daemon.containers.get(&id).is_none());
    remove(&w.daemon, &id).await.expect("remove again");
    stop(&w.daemon, &id, 1)
        .await
        .expect("stop of an unknown ID");
    let calls = w.fake.calls();
    let kill = calls
        .iter()
        .position(|c| c.starts_with("kill"))
        .expect("killed");
    let delete = calls
        .iter()
        .position(|c| c.starts_with("delete"))
        .expect("deleted");
    assert!(kill < delete, "stopped before it is deleted: {calls:?}");
}

#[tokio::test]
async fn restart_recovery_tells_running_exited_and_lost_apart() {
    let w = world().await;
    let alive = created(&w, "alive", FakeBehaviour::default()).await;
    let ended = created(&w, "ended", FakeBehaviour::default()).await;
    let lost = created(
        &w,
        "lost",
        FakeBehaviour {
            lost_on_recover: true,
            ..FakeBehaviour::default()
        },
    )
    .await;
    for id in [&alive, &ended, &lost] {
        start(&w.daemon, id).await.expect("start");
    }
    // While crispd is away (its records unchanged), one exits.
    let mut record = w
        .daemon
        .containers
        .get(&ended)
        .expect("known")
        .snapshot()
        .as_ref()
        .clone();
    w.fake.exit(&ended, 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    record.exit = None;
    for id in [&ended, &lost] {
        let entry = w.daemon.containers.get(id).expect("known");
        let mut r = entry.record.lock().await;
        if *id == ended {
            *r = record.clone();
        }
        r.exit = None;
        w.daemon.containers.save(&r).expect("save");
    }
    crate::container::recover(&w.daemon).await;
    assert_eq!(state(&w, &alive), State::Running);
    assert!(matches!(state(&w, &ended), State::Exited { code: 0, .. }));
    let lost_record = w.daemon.containers.get(&lost).expect("known").snapshot();
    let exit = lost_record.exit.clone().expect("lost is exited");
    assert_eq!((exit.code, exit.reason().0), (255, "Unknown"));
    // Lost containers stop and remove at once.
    stop(&w.daemon, &lost, 30).await.expect("stop");
    remove(&w.daemon, &lost).await.expect("remove");
}

#[tokio::test]
async fn a_sandbox_its_handler_cannot_finish_is_undone() {
    let w = world().await;
    w.fake.fail_next_finish();
    let host = |m: cri_proto::v1::NamespaceMode| i32::from(m);
    let request = cri_proto::v1::RunPodSandboxRequest {
        config: Some(cri_proto::v1::PodSandboxConfig {
            metadata: Some(cri_proto::v1::PodSandboxMetadata {
                name: "p".into(),
                uid: "uid-p".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            // The host's namespaces: no CNI, nothing to mount.
            linux: Some(cri_proto::v1::LinuxPodSandboxConfig {
                security_context: Some(cri_proto::v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri_proto::v1::NamespaceOption {
                        network: host(cri_proto::v1::NamespaceMode::Node),
                        pid: host(cri_proto::v1::NamespaceMode::Container),
                        ipc: host(cri_proto::v1::NamespaceMode::Node),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    };
    let err = crate::pod::run(&w.daemon, request)
        .await
        .expect_err("the handler could not finish");
    assert!(format!("{err:?}").contains("told to fail"), "{err:?}");
    // The handler was told to end what it started; nothing is recorded or left on disk.
    let calls = w.fake.calls();
    let finished = calls
        .iter()
        .position(|c| c.starts_with("finish_sandbox "))
        .expect("finish asked");
    let id = calls[finished]
        .trim_start_matches("finish_sandbox ")
        .to_owned();
    assert!(
        calls[finished..].contains(&format!("stop_sandbox {id}")),
        "{calls:?}"
    );
    assert!(!w.fake.sandbox_running(&id));
    assert!(w.daemon.pods.all().is_empty());
    let pods_dir = w.daemon.config().state.join("pods");
    let left = std::fs::read_dir(&pods_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "pod directories left in {}", pods_dir.display());
}

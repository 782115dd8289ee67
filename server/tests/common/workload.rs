//! A registry with a busybox image, a pod on a private network, and the calls the
//! container tests share.

use std::time::{Duration, Instant};

use super::{Daemon, Net};
use cri_proto::v1 as cri;
use cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use critest::fixture::{self, ImageBuilder, Registry};
use tonic::transport::Channel;

pub struct Setup {
    pub net: Net,
    pub _registry: Registry,
    pub image: String,
}

pub fn setup() -> Setup {
    let net = Net::new("");
    let registry = Registry::start(&net.sandbox.path("registry"), None).expect("registry");
    let image = ImageBuilder::new()
        .layer(fixture::busybox_layer().expect("busybox-static"))
        .cmd(&["sh"])
        .build();
    fixture::push(&registry, "busybox", "test", &image).expect("push");
    let name = format!("{}/busybox:test", registry.addr);
    Setup {
        net,
        _registry: registry,
        image: name,
    }
}

/// The daemon's runtime client, with the test image pulled.
pub async fn pulled(s: &Setup, daemon: &Daemon) -> RuntimeServiceClient<Channel> {
    let (runtime, mut images) = daemon.clients().await;
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: s.image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull");
    runtime
}

pub async fn ready(s: &Setup, daemon: &Daemon) -> (RuntimeServiceClient<Channel>, String) {
    let runtime = pulled(s, daemon).await;
    let mut rt = runtime.clone();
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(s)),
            runtime_handler: String::new(),
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    (runtime, pod)
}

pub fn pod_config(s: &Setup) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "app".into(),
            uid: "uid-app".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "app-host".into(),
        log_directory: s.net.sandbox.path("logs").display().to_string(),
        ..Default::default()
    }
}

/// The test pod's config under another name (and UID), for a second pod.
pub fn named_pod(s: &Setup, name: &str) -> cri::PodSandboxConfig {
    let mut config = pod_config(s);
    if let Some(m) = config.metadata.as_mut() {
        m.name = name.into();
        m.uid = format!("uid-{name}");
    }
    config
}

/// `config` with these namespace options.
pub fn with_namespaces(
    mut config: cri::PodSandboxConfig,
    namespaces: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(namespaces),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// A CreateContainer that must be refused; its status.
pub async fn create_refused(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    config: cri::ContainerConfig,
) -> tonic::Status {
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: None,
    })
    .await
    .expect_err("the create must be refused")
}

pub fn container(s: &Setup, name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: s.image.clone(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        envs: vec![cri::KeyValue {
            key: "GREETING".into(),
            value: b"hi".to_vec(),
        }],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// Stops and removes every pod (and so every container) the daemon has: crisp keeps
/// pods running across daemon restarts, so a test must not leave any.
pub async fn teardown(rt: &mut RuntimeServiceClient<Channel>) {
    let pods = super::list_pods(rt).await;
    for pod in pods {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id,
        })
        .await
        .expect("remove pod");
    }
}

pub async fn create(
    rt: &mut RuntimeServiceClient<Channel>,
    s: &Setup,
    pod: &str,
    config: cri::ContainerConfig,
) -> String {
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(pod_config(s)),
    })
    .await
    .expect("create")
    .into_inner()
    .container_id
}

pub async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("status")
    .into_inner()
    .status
    .expect("status body")
}

pub async fn wait_exited(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(rt, id).await;
        if s.state == i32::from(cri::ContainerState::ContainerExited) {
            return s;
        }
        assert!(Instant::now() < deadline, "container {id} did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most `within`) for pod `pod` to turn NotReady by itself.
pub async fn wait_not_ready(rt: &mut RuntimeServiceClient<Channel>, pod: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let state = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.to_owned(),
                verbose: false,
            })
            .await
            .expect("pod status")
            .into_inner()
            .status
            .map(|s| s.state);
        if state == Some(i32::from(cri::PodSandboxState::SandboxNotready)) {
            return;
        }
        assert!(Instant::now() < deadline, "pod {pod} did not turn NotReady");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops and removes a pod, which must succeed.
pub async fn stop_and_remove_pod(rt: &mut RuntimeServiceClient<Channel>, pod: &str) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.to_owned(),
    })
    .await
    .expect("stop pod");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.to_owned(),
    })
    .await
    .expect("remove pod");
}

/// Starts a created container.
pub async fn start(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.to_owned(),
    })
    .await
    .expect("start");
}

/// ExecSync: exit code, and stdout followed by stderr.
pub async fn exec_out(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> (i32, String) {
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: 10,
        })
        .await
        .expect("exec")
        .into_inner();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

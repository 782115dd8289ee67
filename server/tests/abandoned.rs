//! A call its client gives up on still finishes or undoes what it made. Alone in its test
//! binary: it counts the host's pod init processes before and after.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{Net, real_plugin_dir};
use cri_proto::v1 as cri;

/// `crisp-monitor --pause` processes on this host (pod PID-namespace inits).
fn pod_inits() -> usize {
    common::processes_naming(&[b"crisp-monitor\0--pause"]).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pod_sandbox_abandoned_during_a_slow_cni_add_leaves_nothing() {
    // A plugin that takes 3 s to fail an ADD, after the bridge chain made the veth and
    // took an address.
    let net = Net::new(r#",{"type":"slow-fail"}"#);
    let plugins = net.sandbox.path("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    let plugin = plugins.join("slow-fail");
    // It marks when an ADD began and when it answered, so the test knows the abandoned
    // call reached CNI and saw it fail.
    let (began, answered) = (
        net.sandbox.path("add-began"),
        net.sandbox.path("add-answered"),
    );
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then touch {began}; sleep 3; touch {answered}; \
             echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"slow and failing\"}}'; exit 1; fi\n\
             if [ \"$CNI_COMMAND\" = VERSION ]; then \
             echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}'; fi\nexit 0\n",
            began = began.display(),
            answered = answered.display(),
        ),
    )
    .expect("plugin");
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Into the [cni] table the sandbox's config already has.
    let config = std::fs::read_to_string(net.sandbox.config_path()).expect("config");
    let dirs = format!(
        "[cni]\nplugin_dirs = [\"{}\", \"{}\"]\n",
        plugins.display(),
        real_plugin_dir().display()
    );
    std::fs::write(
        net.sandbox.config_path(),
        config.replacen("[cni]\n", &dirs, 1),
    )
    .expect("config");
    let daemon = net.sandbox.start();
    let (mut runtime, _) = daemon.clients().await;
    let inits_before = pod_inits();

    // PID mode POD (the default): the pod gets an init before its network.
    let mut request = tonic::Request::new(cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "abandoned".into(),
                uid: "uid-abandoned".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    });
    request.set_timeout(Duration::from_millis(800));
    let err = runtime
        .run_pod_sandbox(request)
        .await
        .expect_err("the client gives up first");
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );

    assert!(
        began.exists(),
        "the call reached CNI before its client gave up"
    );
    // The call goes on without its client, fails in CNI, and undoes everything.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !answered.exists() {
        assert!(Instant::now() < deadline, "the plugin never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let pods_left = std::fs::read_dir(net.sandbox.path("state/pods"))
            .expect("the pods directory")
            .count();
        let clean = pods_left == 0
            && pod_inits() <= inits_before
            && net.allocations() == 0
            && net.mounts() == 0;
        if clean {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left: {pods_left} pod dirs, {} pod inits (before: {inits_before}), {} addresses, {} mounts",
            pod_inits(),
            net.allocations(),
            net.mounts()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert!(listed.is_empty(), "{listed:?}");
}

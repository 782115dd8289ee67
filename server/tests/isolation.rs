//! Isolation a pod or mount asks for beyond the defaults: recursive read-only mounts and
//! pod user namespaces, through the real crispd and runc.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::workload::*;
use cri_proto::v1 as cri;

/// Prepared bind copies of this test's daemon still mounted on the host (other tests run
/// alongside, with their own state directories).
fn copies_on_host(s: &Setup) -> usize {
    let state = s.net.sandbox.path("state").display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .expect("mounts")
        .lines()
        .filter(|l| l.contains(&state) && l.contains("/binds/"))
        .count()
}

fn mount_tmpfs(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(dir)
        .status()
        .expect("mount")
        .success();
    assert!(ok, "mount tmpfs on {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_mounts_reach_submounts() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner();
    let runc = status
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .and_then(|h| h.features)
        .expect("default handler");
    assert!(
        runc.recursive_read_only_mounts,
        "kernel 5.12+ and crisp's own copies"
    );

    // A volume with a tmpfs mounted inside it, as kubelet's pod volumes can have.
    let volume = s.net.sandbox.path("volume");
    let sub = volume.join("tmpfs");
    mount_tmpfs(&sub);
    let bind = |recursive: bool| cri::Mount {
        container_path: "/mnt".into(),
        host_path: volume.display().to_string(),
        readonly: true,
        recursive_read_only: recursive,
        ..Default::default()
    };
    let mut plain = container(&s, "ro", "sleep 1000");
    plain.mounts = vec![bind(false)];
    let plain = create(&mut rt, &s, &pod, plain).await;
    start(&mut rt, &plain).await;
    let mut rro = container(&s, "rro", "sleep 1000");
    rro.mounts = vec![bind(true)];
    let rro = create(&mut rt, &s, &pod, rro).await;
    start(&mut rt, &rro).await;

    let write = [
        "sh",
        "-c",
        "touch /mnt/tmpfs/f 2>&1; touch /mnt/top 2>&1; true",
    ];
    let (_, out) = exec_out(&mut rt, &plain, &write).await;
    assert!(
        !out.contains("/mnt/tmpfs/f") && out.contains("/mnt/top"),
        "a plain read-only bind leaves submounts writable: {out}"
    );
    let (_, out) = exec_out(&mut rt, &rro, &write).await;
    assert!(
        out.contains("touch: /mnt/tmpfs/f: Read-only file system")
            && out.contains("touch: /mnt/top: Read-only file system"),
        "{out}"
    );
    // The copy crisp made lives only in the container's mount namespace: the host's
    // mount table is as before, and the volume's owner can take its submount down and
    // remove the directory while the container runs.
    assert_eq!(copies_on_host(&s), 0, "no copy left on the host");
    let ok = std::process::Command::new("umount")
        .arg(&sub)
        .status()
        .expect("umount")
        .success();
    assert!(ok);
    std::fs::remove_dir(&sub).expect("the submount's directory is not busy");

    for (bad, why) in [
        (
            cri::Mount {
                readonly: false,
                ..bind(true)
            },
            "readonly",
        ),
        (
            cri::Mount {
                propagation: cri::MountPropagation::PropagationHostToContainer.into(),
                ..bind(true)
            },
            "propagation",
        ),
        (
            cri::Mount {
                propagation: cri::MountPropagation::PropagationBidirectional.into(),
                ..bind(true)
            },
            "propagation",
        ),
    ] {
        let mut config = container(&s, "bad-rro", "true");
        config.mounts = vec![bad];
        let err = create_refused(&mut rt, &pod, config).await;
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
        assert!(err.message().contains(why), "{}", err.message());
    }
    let listed = common::list_containers(&mut rt).await;
    assert_eq!(listed.len(), 2, "refused creates left nothing");
    teardown(&mut rt).await;
    assert_eq!(s.net.mounts(), 0, "nothing mounted under the state dir");
}

fn userns_pod(
    s: &Setup,
    name: &str,
    uids: Vec<cri::IdMapping>,
    mode: cri::NamespaceMode,
) -> cri::PodSandboxConfig {
    with_namespaces(
        named_pod(s, name),
        cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: mode.into(),
                gids: uids.clone(),
                uids,
            }),
            ..Default::default()
        },
    )
}

fn range(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
    cri::IdMapping {
        container_id,
        host_id,
        length,
    }
}

/// The host uid of process `pid` (its effective one).
fn host_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn pause_processes() -> usize {
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains("crisp-monitor\0--pause\0--userns")
            })
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_in_its_own_user_namespace() {
    let s = setup();
    // The runtime enters the container's rootfs as the pod's root, an unprivileged host
    // user: the way there must be open to it, as a node's /run is.
    std::fs::set_permissions(
        s.net.sandbox.path(""),
        std::fs::Permissions::from_mode(0o711),
    )
    .expect("chmod");
    let daemon = s.net.sandbox.start();
    let (mut rt, _) = ready(&s, &daemon).await;
    let pauses_before = pause_processes();
    let host = 300_000;
    let config = userns_pod(
        &s,
        "userns",
        vec![range(0, host, 65536)],
        cri::NamespaceMode::Pod,
    );
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("userns pod")
        .into_inner()
        .pod_sandbox_id;
    // A volume owned by the host's root, once ID-mapped (as kubelet asks for a pod's
    // volumes) and once plain.
    let volume = s.net.sandbox.path("volume");
    std::fs::create_dir_all(&volume).expect("volume");
    std::fs::write(volume.join("file"), "x").expect("volume file");
    let mut c = container(
        &s,
        "inside",
        "cat /proc/self/uid_map; id -u; echo data > /written; stat -c %u /bin/busybox; sleep 1000",
    );
    c.linux = None;
    let mapped = vec![range(0, host, 65536)];
    c.mounts = vec![
        cri::Mount {
            container_path: "/mapped".into(),
            host_path: volume.display().to_string(),
            uid_mappings: mapped.clone(),
            gid_mappings: mapped.clone(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/plain".into(),
            host_path: volume.display().to_string(),
            ..Default::default()
        },
    ];
    let mut wrong = c.clone();
    if let Some(m) = wrong.metadata.as_mut() {
        m.name = "wrong-map".into();
    }
    wrong.mounts[0].uid_mappings = vec![range(0, 5000, 65536)];
    let err = create_refused(&mut rt, &pod, wrong).await;
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(c),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("create in userns pod")
        .into_inner()
        .container_id;
    start(&mut rt, &id).await;
    let (code, out) = exec_out(
        &mut rt,
        &id,
        &["sh", "-c", "cat /proc/self/uid_map; id -u; stat -c %u /bin/busybox; touch /new && echo wrote; ip link show eth0 >/dev/null && echo net"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fields,
        ["0", "300000", "65536", "0", "0", "wrote", "net"],
        "mapped, root inside, the image's files owned by the pod's root, writable, on the pod network: {out}"
    );
    // On the host, the container's processes run as the mapped user and what it wrote
    // belongs to that user; the image's own files are untouched.
    let upper = s
        .net
        .sandbox
        .path("root")
        .join("containers")
        .join(&id)
        .join("upper");
    let meta = std::fs::metadata(upper.join("new")).expect("written file in the writable layer");
    assert_eq!((meta.uid(), meta.gid()), (host, host));
    // The ID-mapped volume shows the host root's file as the pod root's, and what the
    // pod's root writes there belongs to the host's root; the plain one shows nobody.
    let (code, out) = exec_out(
        &mut rt,
        &id,
        &[
            "sh",
            "-c",
            "stat -c %u /mapped/file /plain/file; touch /mapped/new && echo wrote",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "65534", "wrote"],
        "{out}"
    );
    let meta = std::fs::metadata(volume.join("new")).expect("written through the mapping");
    assert_eq!(meta.uid(), 0);
    assert_eq!(copies_on_host(&s), 0, "no ID-mapped copy left on the host");
    let info = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .expect("verbose status")
        .into_inner()
        .info;
    let info: serde_json::Value =
        serde_json::from_str(info.get("info").expect("info")).expect("info json");
    let init = info["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("pid");
    assert_eq!(
        host_uid(init),
        Some(host),
        "the init runs as the mapped host user"
    );
    let pod_status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("pod status")
        .into_inner()
        .status
        .expect("status body");
    let userns = pod_status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options)
        .expect("userns options");
    assert_eq!(userns.mode, i32::from(cri::NamespaceMode::Pod));
    assert_eq!(userns.uids, vec![range(0, host, 65536)]);

    // Requests the CRI says must fail, each failing before anything is made.
    for (name, uids, mode) in [
        (
            "two",
            vec![range(0, 1000, 1000), range(1000, 5000, 1000)],
            cri::NamespaceMode::Pod,
        ),
        (
            "unmapped-root",
            vec![range(1, 1000, 1000)],
            cri::NamespaceMode::Pod,
        ),
        ("container", Vec::new(), cri::NamespaceMode::Container),
        ("target", Vec::new(), cri::NamespaceMode::Target),
        (
            "node-with-maps",
            vec![range(0, 1000, 1000)],
            cri::NamespaceMode::Node,
        ),
    ] {
        let err = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(userns_pod(&s, name, uids, mode)),
                runtime_handler: String::new(),
            })
            .await
            .expect_err(name);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{name}: {}",
            err.message()
        );
    }
    let pods = common::list_pods(&mut rt).await;
    assert_eq!(pods.len(), 2, "refused pods left nothing");

    teardown(&mut rt).await;
    assert_eq!(
        pause_processes(),
        pauses_before,
        "the namespace holder is gone"
    );
    assert_eq!(s.net.mounts(), 0, "pins, shm and rootfs unmounted");
}

//! ExecSync through crisp's own entry into a container (`crisp-monitor --enter`) against
//! the same through `runc exec`: the process must land in the same place with the same
//! confinement either way.

mod common;

use common::workload::*;
use cri_proto::v1 as cri;

/// What an exec'd process can tell about its confinement, with the container's init (pid 1:
/// the pods below do not share a PID namespace) for comparison.
const PROBE: &str = "id; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status; \
     for n in mnt net ipc uts pid cgroup; do [ \"$(readlink /proc/self/ns/$n)\" = \"$(readlink /proc/1/ns/$n)\" ] && echo same-$n; done; \
     [ \"$(cat /proc/self/cgroup)\" = \"$(cat /proc/1/cgroup)\" ] && echo same-cgroups; \
     ulimit -n; umask; pwd; echo $GREETING; unshare -U true 2>/dev/null; echo unshare=$?; touch /x 2>/dev/null; echo touch=$?";

/// Host processes of crisp-enter working on container `id`.
fn enter_helpers(id: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline);
            text.contains("crisp-enter") && text.contains(id)
        })
        .collect()
}

fn confined(s: &Setup, name: &str) -> cri::ContainerConfig {
    let mut c = container(s, name, "sleep 1000");
    c.working_dir = "/etc".into();
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            supplemental_groups: vec![1234],
            no_new_privs: true,
            readonly_rootfs: true,
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["NET_RAW".into(), "CHOWN".into()],
                add_capabilities: vec!["SYS_NICE".into()],
                ..Default::default()
            }),
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault.into(),
                ..Default::default()
            }),
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

fn pod(s: &Setup, name: &str) -> cri::PodSandboxConfig {
    with_namespaces(
        named_pod(s, name),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Container.into(),
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_exec_confines_the_process_as_runc_exec_does() {
    let s = setup();
    let text = std::fs::read_to_string(s.net.sandbox.config_path()).expect("config");
    std::fs::write(
        s.net.sandbox.config_path(),
        format!("{text}\n[runtimes.runc-cli]\npath = \"runc\"\nruntime_exec = true\n"),
    )
    .expect("config");
    let daemon = s.net.sandbox.start();
    let (mut rt, _) = ready(&s, &daemon).await;
    let mut outputs = Vec::new();
    for handler in ["runc", "runc-cli"] {
        let config = pod(&s, handler);
        let pod_id = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .expect("pod")
            .into_inner()
            .pod_sandbox_id;
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id,
                config: Some(confined(&s, "probe")),
                sandbox_config: Some(config),
            })
            .await
            .expect("create")
            .into_inner()
            .container_id;
        start(&mut rt, &id).await;
        let (code, out) = exec_out(&mut rt, &id, &["sh", "-c", PROBE]).await;
        assert_eq!(code, 0, "{handler}: {out}");
        // Exit codes, a missing command and a timeout.
        let (code, _) = exec_out(&mut rt, &id, &["sh", "-c", "exit 7"]).await;
        assert_eq!(code, 7, "{handler}");
        let missing = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["no-such-command".into()],
                timeout: 5,
            })
            .await;
        let missing_failed = match missing {
            Err(_) => true,
            Ok(r) => r.into_inner().exit_code != 0,
        };
        assert!(missing_failed, "{handler}: a missing command fails");
        let started = std::time::Instant::now();
        let timed_out = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sleep".into(), "30".into()],
                timeout: 1,
            })
            .await
            .expect_err("timeout");
        assert_eq!(timed_out.code(), tonic::Code::DeadlineExceeded, "{handler}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let (_, ps) = exec_out(&mut rt, &id, &["ps", "-o", "args"]).await;
        assert!(
            !ps.contains("sleep 30"),
            "{handler}: the timed-out process is gone: {ps}"
        );
        // Which path ran: crisp-enter shows on the host, running from a file nobody can
        // write or chmod through /proc/<pid>/exe (so a container cannot replace or
        // subvert the host's binary that way).
        let mut rt2 = rt.clone();
        let probe = id.clone();
        let long = tokio::spawn(async move { exec_out(&mut rt2, &probe, &["sleep", "2"]).await });
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let helpers = enter_helpers(&id);
        assert_eq!(
            helpers.len(),
            usize::from(handler == "runc"),
            "{handler}: {helpers:?}"
        );
        for pid in helpers {
            let exe = format!("/proc/{pid}/exe");
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open(&exe)
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"overwritten"));
            assert!(written.is_err(), "the helper's image must not be writable");
            let chmod = std::fs::set_permissions(
                &exe,
                std::os::unix::fs::PermissionsExt::from_mode(0o4755),
            );
            assert!(chmod.is_err(), "nor can its mode change");
        }
        let (code, _) = long.await.expect("long exec");
        assert_eq!(code, 0);
        outputs.push(out);
    }
    assert_eq!(outputs[0], outputs[1], "native and runc exec see the same");
    let out = &outputs[0];
    for expected in [
        "uid=1000 gid=0(root) groups=1234",
        "CapBnd:\t00000000a88405fa",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "same-mnt",
        "same-net",
        "same-ipc",
        "same-uts",
        "same-pid",
        "same-cgroups",
        "unshare=1",
        "touch=1",
        "/etc",
        "hi",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    teardown(&mut rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_crisp_cannot_compile_is_left_to_the_runtime() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod_id) = ready(&s, &daemon).await;
    // runc skips a syscall name libseccomp does not know; crisp-enter refuses to guess,
    // so the exec goes through `runc exec`.
    let profile = s.net.sandbox.path("unknown-call.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["no_such_call","unshare"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .expect("profile");
    let mut c = container(&s, "odd-profile", "sleep 1000");
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Localhost.into(),
                localhost_ref: profile.display().to_string(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&mut rt, &s, &pod_id, c).await;
    start(&mut rt, &id).await;
    let mut rt2 = rt.clone();
    let probe = id.clone();
    let long = tokio::spawn(async move {
        exec_out(
            &mut rt2,
            &probe,
            &[
                "sh",
                "-c",
                "unshare -U true 2>/dev/null; echo unshare=$?; sleep 2",
            ],
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(enter_helpers(&id).is_empty(), "the runtime ran this exec");
    let (code, out) = long.await.expect("exec");
    assert_eq!(
        (code, out.trim()),
        (0, "unshare=1"),
        "the profile still applies"
    );
    teardown(&mut rt).await;
}

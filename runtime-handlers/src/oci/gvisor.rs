//! gVisor (runsc): one sandbox per pod, as Kubernetes means it.
//!
//! [`OciRuntime::finish_gvisor_sandbox`] starts the pod's gVisor sandbox as a runsc
//! container named after the pod (the "root" container, annotated
//! `io.kubernetes.cri.container-type: sandbox`): its only process is
//! `crisp-monitor --sandbox-init`, PID 1 of the sandbox, which reaps orphans; the sandbox
//! runs in the pod's network namespace and cgroup. Each of the pod's containers joins it
//! (`container-type: container`, `sandbox-id: <pod>`): runsc starts no host process for
//! such a subcontainer, and takes its stdio from `runsc start`, so its monitor runs both
//! `create` and, when crispd asks on the bundle's `start.sock`, `start`, and learns the
//! exit from the sandbox's control socket (as `runsc wait` does).
//!
//! A pod started before crisp did this has no sandbox container: its containers still get
//! a sandbox each.
//!
//! Inside the sandbox, IPC and UTS are the sandbox's for every container; PID namespaces
//! are matched by the spec's `path` as a label: a container with no PID namespace entry
//! shares the sandbox's (PID mode POD, with the sandbox init as PID 1), one with a label
//! gets a namespace of its own that a later container naming the same label joins (PID
//! mode TARGET).

use std::collections::HashMap;

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

use super::*;

/// The sandbox container's bundle, under the pod's state directory.
fn bundle_of(sandbox: &SandboxSpec) -> PathBuf {
    sandbox.state_dir.join("gvisor")
}

/// The capabilities gVisor knows (2022 and later: up to CAP_AUDIT_READ, bit 37).
pub(super) const GVISOR_CAPABILITIES: u64 = (1 << 38) - 1;

/// The prefix of the labels naming a container's own PID namespace inside the sandbox.
const PID_LABEL: &str = "crisp-gvisor-pid:";

/// The label a container's own PID namespace has inside its sandbox.
pub(super) fn pid_label(id: &str) -> PathBuf {
    PathBuf::from(format!("{PID_LABEL}{id}"))
}

/// The pid of the sandbox process `c` runs in: runsc writes it as a joining container's
/// pid file at create (a container with a sandbox of its own, its own); checked to still
/// be that sandbox (not a reused pid).
fn sandbox_pid_of(c: &ContainerRef<'_>) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(c.bundle.join("container.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let has = |needle: &[u8]| cmdline.windows(needle.len()).any(|w| w == needle);
    let ours = has(c.sandbox_id.as_bytes()) || has(c.id.as_bytes());
    (has(b"runsc-sandbox") && ours).then_some(pid)
}

/// Whether the container whose bundle is `bundle` joins its pod's sandbox (its
/// config.json says `container-type: container`).
pub(super) fn joins_sandbox(bundle: &Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["annotations"]["io.kubernetes.cri.container-type"] == "container")
}

/// Whether the ELF executable at `path` needs a dynamic loader (has a `PT_INTERP`).
fn is_dynamic(path: &Path) -> std::io::Result<bool> {
    let mut head = vec![0u8; 4096];
    let mut file = std::fs::File::open(path)?;
    let n = std::io::Read::read(&mut file, &mut head)?;
    head.truncate(n);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a 64-bit ELF file");
    if n < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into().map_err(|_| bad())?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let Some(at) = i.checked_mul(phentsize).and_then(|o| o.checked_add(phoff)) else {
            return Err(bad());
        };
        let Some(entry) = head.get(at..at.saturating_add(4)) else {
            return Err(bad());
        };
        // PT_INTERP
        if u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

impl OciRuntime {
    /// The sandbox container's spec: the monitor as `/pause`, bound read-only into an
    /// empty read-only root (with the host's library directories when the monitor is
    /// dynamically linked, as a debug build is), in the pod's network namespace and
    /// cgroup.
    fn sandbox_container_spec(
        &self,
        sandbox: &SandboxSpec,
        rootfs: &Path,
    ) -> Result<Spec, HandlerError> {
        let io = |source: std::io::Error| HandlerError::Io {
            path: rootfs.to_owned(),
            source,
        };
        for dir in ["proc", "dev", "sys"] {
            std::fs::create_dir_all(rootfs.join(dir)).map_err(io)?;
        }
        std::fs::write(rootfs.join("pause"), b"").map_err(io)?;
        let mut mounts = vec![
            serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            serde_json::json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                               "options": ["nosuid", "noexec", "nodev", "ro"]}),
            serde_json::json!({"destination": "/pause", "type": "bind", "source": self.monitor,
                               "options": ["rbind", "ro"]}),
        ];
        let dynamic = is_dynamic(&self.monitor).map_err(|source| HandlerError::Io {
            path: self.monitor.clone(),
            source,
        })?;
        if dynamic {
            // The loader's absolute paths (/lib64/ld-linux..., /lib/<triplet>/...) resolve
            // through `lib -> usr/lib`.
            std::fs::create_dir_all(rootfs.join("usr/lib")).map_err(io)?;
            std::fs::create_dir_all(rootfs.join("lib64")).map_err(io)?;
            let link = rootfs.join("lib");
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink("usr/lib", &link).map_err(io)?;
            }
            for dir in ["/usr/lib", "/lib64"] {
                mounts.push(serde_json::json!({"destination": dir, "type": "bind",
                                               "source": dir, "options": ["rbind", "ro"]}));
            }
        }
        let mut namespaces = vec![
            serde_json::json!({"type": "pid"}),
            serde_json::json!({"type": "ipc"}),
            serde_json::json!({"type": "uts"}),
            serde_json::json!({"type": "mount"}),
        ];
        // runsc's sandbox process enters this namespace (none: the caller's, the host's).
        if let Some(netns) = &sandbox.netns {
            namespaces.push(serde_json::json!({"type": "network", "path": netns}));
        }
        let mut linux = serde_json::json!({
            "namespaces": namespaces,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        });
        if !sandbox.cgroups_path.is_empty() {
            linux["cgroupsPath"] = sandbox.cgroups_path.clone().into();
        }
        let caps = crate::DEFAULT_CAPABILITIES;
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["/pause", "--sandbox-init"],
                "env": ["PATH=/"],
                "cwd": "/",
                // runsc gives the sandbox process these on the host (host network: a
                // container binding port 80 or opening a raw socket needs them there).
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "noNewPrivileges": true,
            },
            "root": {"path": rootfs, "readonly": true},
            "hostname": sandbox.hostname,
            "mounts": mounts,
            "annotations": {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-id": sandbox.id,
            },
            "linux": linux,
        });
        serde_json::from_value(spec).map_err(|e| HandlerError::Io {
            path: rootfs.to_owned(),
            source: std::io::Error::other(e),
        })
    }

    /// Starts the pod's gVisor sandbox (see the module doc); on failure nothing of it is
    /// left at the runtime. Returns the sandbox process's pid.
    pub(super) async fn finish_gvisor_sandbox(
        &self,
        sandbox: &SandboxSpec,
    ) -> Result<u32, HandlerError> {
        let bundle = bundle_of(sandbox);
        let rootfs = bundle.join("rootfs");
        let spec = self.sandbox_container_spec(sandbox, &rootfs)?;
        let container = ContainerSpec {
            id: &sandbox.id,
            sandbox_id: &sandbox.id,
            bundle: &bundle,
            spec: &spec,
            log_path: Path::new(""),
            stdin: false,
            stdin_once: false,
        };
        let pid = self.create(&container, false).await?;
        if let Err(e) = self.start(&sandbox.id).await {
            let _ = self.kill(&sandbox.id, libc::SIGKILL, false).await;
            let _ = self.delete(&sandbox.id, true).await;
            return Err(e);
        }
        Ok(pid)
    }

    /// Ends the pod's gVisor sandbox, and with it every container still in it, and
    /// removes its cgroup (runsc leaves it).
    pub(super) async fn stop_gvisor_sandbox(
        &self,
        sandbox: &SandboxSpec,
    ) -> Result<(), HandlerError> {
        let killed = self.kill(&sandbox.id, libc::SIGKILL, false).await;
        let deleted = self.delete(&sandbox.id, true).await;
        let path = &sandbox.cgroups_path;
        if !path.is_empty() && !path.contains(':') {
            crate::stats::remove_empty_cgroup(path);
        }
        deleted.and(killed)
    }

    /// Whether the pod's gVisor sandbox still runs.
    pub(super) async fn gvisor_sandbox_runs(&self, id: &str) -> Result<bool, HandlerError> {
        Ok(self.state(id).await?.is_some_and(|s| s.status == "running"))
    }

    /// The spec of a container joining its pod's sandbox: the annotations runsc reads, and
    /// its PID namespace as a label (see the module doc). A PID namespace entry with a
    /// path that is not one of our labels names the pod's shared namespace: the entry
    /// goes, and the container shares the sandbox's.
    pub(super) fn subcontainer_spec(spec: &Spec, sandbox_id: &str, id: &str) -> Spec {
        let mut spec = spec.clone();
        let mut annotations: HashMap<String, String> =
            spec.annotations().clone().unwrap_or_default();
        annotations.insert(
            "io.kubernetes.cri.container-type".to_owned(),
            "container".to_owned(),
        );
        annotations.insert(
            "io.kubernetes.cri.sandbox-id".to_owned(),
            sandbox_id.to_owned(),
        );
        spec.set_annotations(Some(annotations));
        if let Some(linux) = spec.linux_mut() {
            let namespaces: Vec<LinuxNamespace> = linux
                .namespaces()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|mut ns| {
                    if ns.typ() != LinuxNamespaceType::Pid {
                        return Some(ns);
                    }
                    match ns.path() {
                        None => {
                            ns.set_path(Some(pid_label(id)));
                            Some(ns)
                        }
                        Some(p) if p.to_string_lossy().starts_with(PID_LABEL) => Some(ns),
                        Some(_) => None,
                    }
                })
                .collect();
            linux.set_namespaces(Some(namespaces));
        }
        spec
    }

    /// A container's usage: CPU time is the container's own, as runsc counts it (`runsc
    /// events --stats`); everything else is the whole sandbox's, from its cgroup (gVisor
    /// 2022 accounts neither memory nor tasks per container).
    pub(super) async fn gvisor_stats(
        &self,
        c: &ContainerRef<'_>,
        detail: bool,
    ) -> Result<ContainerStats, HandlerError> {
        let id = c.id;
        let sandbox_pid =
            sandbox_pid_of(c).ok_or_else(|| HandlerError::NotFound { id: id.to_owned() })?;
        let out = self.run("events", id, &["events", "--stats", id]).await?;
        let event: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| HandlerError::Runtime {
                handler: self.name.clone(),
                operation: "events".to_owned(),
                id: id.to_owned(),
                message: format!("unreadable stats: {e}"),
            })?;
        let mut stats = tokio::task::spawn_blocking(move || cgroup_stats(sandbox_pid, detail))
            .await
            .map_err(|e| HandlerError::Io {
                path: PathBuf::from(format!("/proc/{sandbox_pid}/cgroup")),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| HandlerError::Io {
                path: PathBuf::from(format!("/proc/{sandbox_pid}/cgroup")),
                source,
            })?;
        if let Some(cpu) = event["data"]["cpu"]["usage"]["total"].as_u64() {
            stats.cpu_usage_ns = cpu;
        }
        stats.sandbox_wide = true;
        Ok(stats)
    }

    /// Asks a subcontainer's monitor to `start` it (or to `cancel`, when it is removed
    /// unstarted); `None` if no monitor waits for that (it started, or never will).
    pub(super) async fn ask_monitor(
        &self,
        id: &str,
        bundle: &Path,
        request: crate::start_socket::Request,
    ) -> Option<Result<(), HandlerError>> {
        use crate::start_socket::{MAX_LINE, Reply, SOCKET};
        let dir = std::fs::File::open(bundle).ok()?;
        let path = format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd());
        let mut stream = tokio::net::UnixStream::connect(&path).await.ok()?;
        drop(dir);
        let exchange = async {
            stream.write_all(request.encode()).await?;
            let mut reply = Vec::new();
            (&mut stream)
                .take(MAX_LINE as u64)
                .read_to_end(&mut reply)
                .await?;
            Ok::<_, std::io::Error>(reply)
        };
        let reply = match exchange.await {
            Ok(reply) => reply,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(source) => {
                return Some(Err(HandlerError::Io {
                    path: bundle.join(SOCKET),
                    source,
                }));
            }
        };
        // No reply: the monitor stopped listening (it is starting the container, or is
        // done with it); the caller goes on without it.
        match Reply::decode(&reply)? {
            Reply::Ok => Some(Ok(())),
            Reply::Error(message) => Some(Err(HandlerError::Runtime {
                handler: self.name.clone(),
                operation: request.name().to_owned(),
                id: id.to_owned(),
                message,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pid_path: Option<&str>) -> Spec {
        let mut ns = serde_json::json!({"type": "pid"});
        if let Some(p) = pid_path {
            ns["path"] = p.into();
        }
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/r"},
            "annotations": {"io.kubernetes.cri.container-name": "c"},
            "linux": {"namespaces": [{"type": "mount"}, ns]},
        }))
        .expect("spec")
    }

    fn pid_path(spec: &Spec) -> Option<Option<PathBuf>> {
        spec.linux()
            .as_ref()?
            .namespaces()
            .as_ref()?
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Pid)
            .map(|n| n.path().clone())
    }

    #[test]
    fn subcontainers_join_their_pod_and_share_or_label_pid_namespaces() {
        // PID mode POD (the pod's pinned namespace): the sandbox's own.
        let pod = OciRuntime::subcontainer_spec(&spec(Some("/run/x/ns/pid")), "pod", "a");
        assert_eq!(pid_path(&pod), None);
        let annotations = pod.annotations().clone().expect("annotations");
        assert_eq!(annotations["io.kubernetes.cri.container-type"], "container");
        assert_eq!(annotations["io.kubernetes.cri.sandbox-id"], "pod");
        assert_eq!(annotations["io.kubernetes.cri.container-name"], "c");
        // PID mode CONTAINER: a namespace of its own, labelled for TARGET.
        let own = OciRuntime::subcontainer_spec(&spec(None), "pod", "a");
        assert_eq!(pid_path(&own), Some(Some(pid_label("a"))));
        // TARGET: the target's label stays.
        let label = pid_label("a").to_string_lossy().into_owned();
        let target = OciRuntime::subcontainer_spec(&spec(Some(&label)), "pod", "b");
        assert_eq!(pid_path(&target), Some(Some(pid_label("a"))));
    }

    #[test]
    fn a_dynamic_executable_needs_a_loader() {
        // This test binary is dynamically linked (cargo's default).
        let me = std::env::current_exe().expect("exe");
        assert!(is_dynamic(&me).expect("elf"));
        assert!(is_dynamic(Path::new("/etc/hostname")).is_err());
    }
}

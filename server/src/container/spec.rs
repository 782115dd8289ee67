//! The CRI container config and the image config merged into an OCI runtime spec, the
//! way kubelet expects: command/args against Entrypoint/Cmd, env merged by key, the pod's
//! namespaces joined by path, the pod's hosts/resolv.conf/hostname/shm bind-mounted.

use std::path::Path;

use cri_proto::v1 as cri;
use serde_json::{Value, json};

use super::user::Identity;
use crate::errors::LifecycleError;
use crate::pod::{NsMode, SandboxRecord};

const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The image config fields a container inherits.
#[derive(Debug, Default, Clone)]
pub struct ImageDefaults {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` (`KEY=VALUE`).
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
    /// `StopSignal`.
    pub stop_signal: String,
}

impl ImageDefaults {
    /// From an image config blob.
    pub fn from_config(config: &[u8]) -> Self {
        let v: Value = serde_json::from_slice(config).unwrap_or(Value::Null);
        let c = &v["config"];
        Self {
            entrypoint: json_strings(&c["Entrypoint"]),
            cmd: json_strings(&c["Cmd"]),
            env: json_strings(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_owned(),
            user: c["User"].as_str().unwrap_or_default().to_owned(),
            stop_signal: c["StopSignal"].as_str().unwrap_or_default().to_owned(),
        }
    }
}

/// The process arguments kubelet means: `command` replaces Entrypoint (and drops Cmd);
/// `args` replaces Cmd.
pub fn process_args(
    request: &cri::ContainerConfig,
    image: &ImageDefaults,
) -> Result<Vec<String>, LifecycleError> {
    let (entry, args) = if request.command.is_empty() {
        let args = if request.args.is_empty() {
            image.cmd.clone()
        } else {
            request.args.clone()
        };
        (image.entrypoint.clone(), args)
    } else {
        (request.command.clone(), request.args.clone())
    };
    let all: Vec<String> = entry.into_iter().chain(args).collect();
    if all.is_empty() {
        return Err(LifecycleError::invalid(
            "no command: the request has neither command nor args and the image has no Entrypoint or Cmd",
        ));
    }
    Ok(all)
}

/// Image env, then the request's, merged by key (the request wins).
pub fn process_env(
    request: &cri::ContainerConfig,
    image: &ImageDefaults,
    hostname: &str,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(key, _)| key == k) {
        Some(slot) => slot.1 = v.to_owned(),
        None => env.push((k.to_owned(), v.to_owned())),
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v);
    }
    set("HOSTNAME", hostname);
    for kv in &request.envs {
        set(&kv.key, &String::from_utf8_lossy(&kv.value));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Everything the spec needs besides the request.
pub struct SpecInput<'a> {
    /// The container ID.
    pub id: &'a str,
    /// The pod.
    pub pod: &'a SandboxRecord,
    /// The mounted rootfs.
    pub rootfs: &'a Path,
    /// Who the process runs as.
    pub identity: &'a Identity,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// The cgroup driver.
    pub cgroup_driver: conf::CgroupDriver,
    /// The PID namespace of the container named by a TARGET namespace mode.
    pub target_pid_ns: Option<std::path::PathBuf>,
    /// Where each image volume (mounts with an image, in request order) is mounted.
    pub image_volumes: Vec<std::path::PathBuf>,
    /// The container's bundle directory.
    pub bundle: &'a Path,
    /// What the handler's side can grant (capabilities, OOM score).
    pub host: runtime_handlers::HostFacts,
}

/// A host device made available in the container: its OCI `linux.devices` entry and the
/// cgroup rule allowing it.
fn device(d: &cri::Device) -> Result<(Value, Value), LifecycleError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !d.container_path.starts_with('/') {
        return Err(LifecycleError::invalid(format!(
            "device path `{}` in the container must be absolute",
            d.container_path
        )));
    }
    let meta = std::fs::metadata(&d.host_path)
        .map_err(|e| LifecycleError::invalid(format!("device {}: {e}", d.host_path)))?;
    let kind = if meta.file_type().is_char_device() {
        "c"
    } else if meta.file_type().is_block_device() {
        "b"
    } else {
        return Err(LifecycleError::invalid(format!(
            "{} is not a character or block device",
            d.host_path
        )));
    };
    let permissions = if d.permissions.is_empty() {
        "rwm"
    } else {
        d.permissions.as_str()
    };
    if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(LifecycleError::invalid(format!(
            "device permissions `{permissions}` must be made of r, w and m"
        )));
    }
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    Ok((
        json!({"path": d.container_path, "type": kind, "major": major, "minor": minor,
               "fileMode": meta.mode() & 0o777, "uid": meta.uid(), "gid": meta.gid()}),
        json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": permissions}),
    ))
}

/// The cgroup of container (or sandbox) `id` under the pod's `parent`, as the runtime
/// is given it for `driver`.
pub fn cgroups_path(driver: conf::CgroupDriver, parent: &str, id: &str) -> String {
    match driver {
        conf::CgroupDriver::Cgroupfs => {
            let parent = if parent.is_empty() { "/crisp" } else { parent };
            format!("{}/crisp-{id}", parent.trim_end_matches('/'))
        }
        conf::CgroupDriver::Systemd => {
            let parent = if parent.is_empty() {
                "system.slice"
            } else {
                parent
            };
            format!("{parent}:crisp:{id}")
        }
    }
}

/// Builds the OCI spec, as JSON and as oci-spec's type (which validates it).
pub fn build(
    request: &cri::ContainerConfig,
    input: &SpecInput<'_>,
) -> Result<(Value, oci_spec::runtime::Spec), LifecycleError> {
    let linux = request.linux.clone().unwrap_or_default();
    let security = linux.security_context.clone().unwrap_or_default();
    let resources = linux.resources.clone().unwrap_or_default();
    let pod = input.pod;
    let caps = super::capabilities::granted(&security, &input.host);

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if security.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    if pod.ipc_mode == NsMode::Node {
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "rprivate", "rw"]}));
    } else {
        let shm = pod.state_dir.join("shm");
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rprivate", "rw"]}));
    }
    let requested: Vec<&str> = request
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    for file in ["hosts", "resolv.conf", "hostname"] {
        let dest = format!("/etc/{file}");
        if !requested.contains(&dest.as_str()) {
            let source = pod.state_dir.join(file);
            let ro = if security.readonly_rootfs { "ro" } else { "rw" };
            mounts.push(json!({"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rprivate", ro]}));
        }
    }
    let mut volumes = input.image_volumes.iter();
    for (n, m) in request.mounts.iter().enumerate() {
        if m.container_path.is_empty() || !m.container_path.starts_with('/') {
            return Err(LifecycleError::invalid(format!(
                "mount destination `{}` must be an absolute path",
                m.container_path
            )));
        }
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            // An image's filesystem, read-only (optionally one of its directories).
            let Some(root) = volumes.next() else {
                return Err(LifecycleError::internal("an image volume was not mounted"));
            };
            let sub = Path::new(&m.image_sub_path);
            if sub
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(LifecycleError::invalid(format!(
                    "image_sub_path `{}` must be a relative path inside the image",
                    m.image_sub_path
                )));
            }
            let source = root.join(sub);
            let inside = std::fs::canonicalize(&source)
                .ok()
                .filter(|s| s.starts_with(root) && s.is_dir());
            if inside.is_none() {
                return Err(LifecycleError::invalid(format!(
                    "image_sub_path `{}` is not a directory of the image",
                    m.image_sub_path
                )));
            }
            mounts.push(json!({"destination": m.container_path, "type": "bind", "source": source, "options": ["rbind", "rprivate", "ro"]}));
            continue;
        }
        let host = Path::new(&m.host_path);
        if !host.is_absolute() {
            return Err(LifecycleError::invalid(format!(
                "mount source `{}` must be an absolute path",
                m.host_path
            )));
        }
        if !host.exists() {
            // As containerd does: a missing host path becomes an empty directory.
            std::fs::create_dir_all(host).map_err(|e| {
                LifecycleError::invalid(format!(
                    "cannot create mount source {}: {e}",
                    host.display()
                ))
            })?;
        }
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
            Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
            _ => "rprivate",
        };
        let mut options = vec!["rbind", propagation, if m.readonly { "ro" } else { "rw" }];
        options.retain(|o| !o.is_empty());
        super::binds::check(m, pod.userns.as_ref())?;
        let source = super::binds::staged_source(input.bundle, n, m)
            .unwrap_or_else(|| std::path::PathBuf::from(&m.host_path));
        mounts.push(json!({"destination": m.container_path, "type": "bind", "source": source, "options": options}));
    }

    let mut namespaces = vec![json!({"type": "mount"})];
    match pod.pid_mode {
        NsMode::Node => {}
        NsMode::Pod => {
            namespaces.push(json!({"type": "pid", "path": network::pin_path(&pod.state_dir, network::NamespaceKind::Pid)}));
        }
        _ => {
            let mode = security.namespace_options.as_ref().map(|n| n.pid);
            match mode.map(cri::NamespaceMode::try_from) {
                Some(Ok(cri::NamespaceMode::Node)) => {}
                Some(Ok(cri::NamespaceMode::Target)) => match &input.target_pid_ns {
                    Some(path) => namespaces.push(json!({"type": "pid", "path": path})),
                    None => {
                        return Err(LifecycleError::invalid(
                            "PID namespace mode TARGET needs namespace_options.target_id",
                        ));
                    }
                },
                Some(Ok(cri::NamespaceMode::Pod)) => {
                    return Err(LifecycleError::invalid(
                        "the pod has no shared PID namespace (its PID mode is CONTAINER)",
                    ));
                }
                _ => namespaces.push(json!({"type": "pid"})),
            }
        }
    }
    if pod.network_mode != NsMode::Node {
        let ns = |k| network::pin_path(&pod.state_dir, k);
        namespaces.push(json!({"type": "network", "path": ns(network::NamespaceKind::Net)}));
        namespaces.push(json!({"type": "uts", "path": ns(network::NamespaceKind::Uts)}));
    }
    if pod.ipc_mode != NsMode::Node {
        namespaces.push(json!({"type": "ipc", "path": network::pin_path(&pod.state_dir, network::NamespaceKind::Ipc)}));
    }
    if pod.userns.is_some() {
        namespaces.push(json!({"type": "user", "path": network::pin_path(&pod.state_dir, network::NamespaceKind::User)}));
    }

    let cgroups_path = cgroups_path(input.cgroup_driver, &pod.cgroup_parent, input.id);
    let mut linux_resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let mut devices = Vec::new();
    for d in &request.devices {
        let (entry, rule) = device(d)?;
        devices.push(entry);
        if let Some(rules) = linux_resources["devices"].as_array_mut() {
            rules.push(rule);
        }
    }
    if !resources.hugepage_limits.is_empty() {
        linux_resources["hugepageLimits"] = resources
            .hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect();
    }
    if !resources.unified.is_empty() {
        linux_resources["unified"] = json!(resources.unified);
    }
    let mut cpu = serde_json::Map::new();
    if resources.cpu_shares > 0 {
        cpu.insert("shares".into(), resources.cpu_shares.into());
    }
    if resources.cpu_quota > 0 {
        cpu.insert("quota".into(), resources.cpu_quota.into());
    }
    if resources.cpu_period > 0 {
        cpu.insert("period".into(), resources.cpu_period.into());
    }
    if !resources.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), resources.cpuset_cpus.clone().into());
    }
    if !resources.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), resources.cpuset_mems.clone().into());
    }
    if !cpu.is_empty() {
        linux_resources["cpu"] = Value::Object(cpu);
    }
    if resources.memory_limit_in_bytes > 0 {
        let mut memory = json!({"limit": resources.memory_limit_in_bytes});
        if resources.memory_swap_limit_in_bytes > 0 {
            memory["swap"] = resources.memory_swap_limit_in_bytes.into();
        }
        linux_resources["memory"] = memory;
    }
    // Lower than the creator's needs CAP_SYS_RESOURCE: clipped.
    let oom = resources.oom_score_adj.max(input.host.min_oom_score_adj);

    let masked: Vec<String> = if security.privileged {
        Vec::new()
    } else if security.masked_paths.is_empty() {
        MASKED.iter().map(|s| (*s).to_owned()).collect()
    } else {
        security.masked_paths.clone()
    };
    let readonly: Vec<String> = if security.privileged {
        Vec::new()
    } else if security.readonly_paths.is_empty() {
        READONLY.iter().map(|s| (*s).to_owned()).collect()
    } else {
        security.readonly_paths.clone()
    };

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            // With a TTY the monitor receives the pty master from the runtime and logs
            // it; stdin stays unconnected until Attach exists.
            "terminal": request.tty,
            "user": {"uid": input.identity.uid, "gid": input.identity.gid, "additionalGids": input.identity.groups},
            "args": input.args,
            "env": input.env,
            "cwd": input.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": security.no_new_privs,
            "oomScoreAdj": oom,
        },
        "root": {"path": input.rootfs, "readonly": security.readonly_rootfs},
        "mounts": mounts,
        // No `io.kubernetes.cri.container-type`/`sandbox-id` annotations: runsc reads them
        // as "join the sandbox container", and crisp pods have none; each runsc container
        // gets its own gVisor sandbox in the pod's namespaces.
        "annotations": {
            "io.kubernetes.cri.container-name": request.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            "io.kubernetes.cri.sandbox-name": pod.name,
            "io.kubernetes.cri.sandbox-namespace": pod.namespace,
        },
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path,
            "resources": linux_resources,
            "devices": devices,
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
    });
    // Mounts that propagate need the rootfs to propagate too (runc applies mount
    // propagation under the rootfs's own), as containerd sets it.
    let propagations: Vec<i32> = request.mounts.iter().map(|m| m.propagation).collect();
    if propagations.contains(&i32::from(cri::MountPropagation::PropagationBidirectional)) {
        spec["linux"]["rootfsPropagation"] = "rshared".into();
    } else if propagations.contains(&i32::from(
        cri::MountPropagation::PropagationHostToContainer,
    )) {
        spec["linux"]["rootfsPropagation"] = "rslave".into();
    }
    if let Some(u) = pod.userns {
        // The runtime joins the pod's user namespace; it needs the maps too (to own what
        // it makes for the container, such as /dev).
        let map = |r: crate::pod::IdRange| json!([{"containerID": r.container, "hostID": r.host, "size": r.size}]);
        spec["linux"]["uidMappings"] = map(u.uid);
        spec["linux"]["gidMappings"] = map(u.gid);
    }
    if let Some(profile) = super::seccomp::profile(&security, &caps)? {
        spec["linux"]["seccomp"] = profile;
    }
    if pod.network_mode != NsMode::Node && !pod.hostname.is_empty() {
        // The pod's UTS namespace already has it; runtimes that do not share it (runsc
        // sandboxes) need it spelled out.
        spec["hostname"] = pod.hostname.clone().into();
    }
    let typed = serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone())
        .map_err(|e| LifecycleError::internal(format!("built an invalid OCI spec: {e}")))?;
    Ok((spec, typed))
}

/// The strings of a JSON array (none if it is not one; non-strings skipped).
pub(crate) fn json_strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: b"request".to_vec(),
            }],
            ..Default::default()
        }
    }

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["cmd-arg".into()],
            env: vec!["A=image".into(), "B=image".into(), "PATH=/image/bin".into()],
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_merge_like_kubelet_expects() {
        let img = image();
        assert_eq!(
            process_args(&request(&[], &[]), &img).expect("ok"),
            ["/entry", "cmd-arg"]
        );
        assert_eq!(
            process_args(&request(&[], &["x"]), &img).expect("ok"),
            ["/entry", "x"]
        );
        assert_eq!(
            process_args(&request(&["/bin/sh"], &[]), &img).expect("ok"),
            ["/bin/sh"]
        );
        assert_eq!(
            process_args(&request(&["/bin/sh"], &["-c", "y"]), &img).expect("ok"),
            ["/bin/sh", "-c", "y"]
        );
        assert!(process_args(&request(&[], &[]), &ImageDefaults::default()).is_err());
    }

    #[test]
    fn env_merges_by_key_with_the_request_winning() {
        let env = process_env(&request(&[], &[]), &image(), "pod-a");
        assert_eq!(
            env,
            ["PATH=/image/bin", "A=request", "B=image", "HOSTNAME=pod-a"]
        );
    }
}

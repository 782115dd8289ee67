//! RunPodSandbox: namespaces, files, shm, sysctls and the CNI attachment, all undone if
//! any step fails.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cri_proto::v1 as cri;

use super::{
    IdRange, NetworkJournal, NsMode, SandboxRecord, UsernsRecord, blocking, name_key, new_id,
    now_ns, release,
};
use crate::errors::LifecycleError;
use crate::state::Daemon;

/// Annotation older containerd setups use to ask for the untrusted-workload handler.
const UNTRUSTED: &str = "io.kubernetes.cri.untrusted-workload";

fn mode(m: i32) -> NsMode {
    match cri::NamespaceMode::try_from(m) {
        Ok(cri::NamespaceMode::Container) => NsMode::Container,
        Ok(cri::NamespaceMode::Node) => NsMode::Node,
        Ok(cri::NamespaceMode::Target) => NsMode::Target,
        _ => NsMode::Pod,
    }
}

/// Runs a sandbox and returns its ID.
pub async fn run(
    daemon: &std::sync::Arc<Daemon>,
    request: cri::RunPodSandboxRequest,
) -> Result<String, LifecycleError> {
    let config = daemon.config();
    let pod_config = request
        .config
        .ok_or_else(|| LifecycleError::invalid("RunPodSandbox needs a config"))?;
    let meta = pod_config
        .metadata
        .clone()
        .ok_or_else(|| LifecycleError::invalid("RunPodSandbox needs config.metadata"))?;
    for (field, value) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(LifecycleError::invalid(format!(
                "config.metadata.{field} must not be empty"
            )));
        }
        let max = if field == "namespace" {
            crate::limits::MAX_NAMESPACE
        } else {
            crate::limits::MAX_NAME
        };
        crate::limits::length(&format!("config.metadata.{field}"), value, max)?;
    }
    if pod_config.port_mappings.len() > crate::limits::MAX_PORT_MAPPINGS {
        return Err(LifecycleError::invalid(format!(
            "config.port_mappings has {} entries; at most {} are allowed",
            pod_config.port_mappings.len(),
            crate::limits::MAX_PORT_MAPPINGS
        )));
    }
    let untrusted = pod_config
        .annotations
        .get(UNTRUSTED)
        .is_some_and(|v| v == "true");
    let handler = config
        .handler_name(&request.runtime_handler, untrusted)
        .to_owned();
    if !config.runtimes.contains_key(&handler) {
        let known: Vec<&str> = config.runtimes.keys().map(String::as_str).collect();
        return Err(LifecycleError::invalid(format!(
            "runtime handler `{handler}` is not configured; configured handlers: {}",
            known.join(", ")
        )));
    }

    // kubelet retries a RunPodSandbox that outlived its deadline: the retry waits for the
    // first and gets its sandbox.
    let key = name_key(&meta.name, &meta.namespace, &meta.uid, meta.attempt);
    let lock = daemon.pods.name_lock(&key);
    let _held = lock.lock().await;
    // Saved copies: another pod's slow stop must not hold this lookup up.
    if let Some((_, existing)) = daemon
        .pods
        .snapshots_where(|p| p.name_key() == key)
        .into_iter()
        .next()
    {
        tracing::info!(pod = %key, id = %existing.id, "RunPodSandbox for an existing sandbox; returning it");
        return Ok(existing.id.clone());
    }

    let linux = pod_config.linux.clone().unwrap_or_default();
    let ns = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let userns = user_namespace(&ns)?;
    let id = new_id();
    let network_mode = mode(ns.network);
    let record = SandboxRecord {
        v: super::RECORD_VERSION,
        id: id.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        namespace: meta.namespace.clone(),
        attempt: meta.attempt,
        ready: true,
        created_at: now_ns(),
        labels: pod_config.labels.clone().into_iter().collect(),
        annotations: pod_config.annotations.clone().into_iter().collect(),
        runtime_handler: request.runtime_handler.clone(),
        handler,
        hostname: pod_config.hostname.clone(),
        log_directory: pod_config.log_directory.clone(),
        cgroup_parent: linux.cgroup_parent.clone(),
        network_mode,
        pid_mode: mode(ns.pid),
        ipc_mode: mode(ns.ipc),
        state_dir: config.state.join("pods").join(&id),
        network: None,
        ips: Vec::new(),
        pause_pid: 0,
        handler_state: None,
        userns,
        cgroups_path: crate::container::spec::cgroups_path(
            config.cgroup_driver,
            &linux.cgroup_parent,
            &id,
        ),
        sysctls: linux.sysctls.clone().into_iter().collect(),
        resources: pod_resources(&linux),
        nri_stopped: false,
    };
    let mut record = record;
    let ports: Vec<network::PortMapping> = pod_config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| network::PortMapping {
            host_port: u16::try_from(p.host_port).unwrap_or(0),
            container_port: u16::try_from(p.container_port).unwrap_or(0),
            protocol: match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            }
            .to_owned(),
            host_ip: p.host_ip.clone(),
        })
        .collect();
    if ports
        .iter()
        .any(|p| p.host_port == 0 || p.container_port == 0)
    {
        return Err(LifecycleError::invalid(
            "port mappings need ports between 1 and 65535",
        ));
    }
    let sysctls: BTreeMap<String, String> = linux.sysctls.clone().into_iter().collect();
    let bandwidth =
        network::bandwidth_from_annotations(|k| pod_config.annotations.get(k).map(String::as_str))
            .map_err(|e| LifecycleError::invalid(e.to_string()))?;
    let dns = pod_config.dns_config.clone();

    // Everything is validated: from here on, a failure undoes what was made.
    let runtime = daemon.handlers.get(&record.handler)?;
    let sandbox = record.sandbox_spec();
    // The pod's directory is its intent: a crash from here on leaves a directory that the
    // next start finds, and ends what the handler started for it (pod/mod.rs
    // `release_unknown`).
    let state_dir = record.state_dir.clone();
    blocking(move || {
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| LifecycleError::internal(format!("making {}: {e}", state_dir.display())))
    })
    .await?;
    let started = match runtime.start_sandbox(&sandbox).await {
        Ok(started) => started,
        Err(e) => {
            let _ = std::fs::remove_dir(&record.state_dir);
            return Err(LifecycleError::from(e));
        }
    };
    record.pause_pid = started.namespace_holder;
    record.handler_state = Some(started.state.clone());
    let setup_config = config.clone();
    let set_up = blocking(move || {
        let mut record = record;
        let network = Network {
            ports: &ports,
            bandwidth,
        };
        // On failure the record holds what was made, for the undo.
        let done = setup(&setup_config, &mut record, &network, &sysctls, dns.as_ref());
        Ok((record, done))
    })
    .await;
    let mut record = match set_up {
        Ok((record, Ok(()))) => record,
        Ok((record, Err(status))) => {
            undo(&config, &record, runtime.as_ref(), &started.state).await;
            return Err(status);
        }
        Err(status) => {
            // The setup task itself failed: its record is gone with it.
            if let Err(e) = runtime.stop_sandbox(&sandbox, &started.state).await {
                tracing::error!(id = %id, error = %e, "ending the sandbox of a failed RunPodSandbox");
            }
            return Err(status);
        }
    };
    // The namespaces and the network are in place: the handler brings up what runs in
    // them.
    match runtime.finish_sandbox(&sandbox, &started.state).await {
        Ok(state) => record.handler_state = Some(state),
        Err(e) => {
            undo(&config, &record, runtime.as_ref(), &started.state).await;
            return Err(LifecycleError::from(e));
        }
    }
    // NRI plugins see the pod before anyone else: it is listed only once they agree, and
    // a plugin that joins meanwhile synchronizes after it.
    let _sync = crate::nri::block_sync(daemon).await;
    if let Err(e) = crate::nri::run_pod(daemon, &record).await {
        tracing::warn!(id = %id, error = %e, "an NRI plugin refused the pod");
        crate::nri::pod_stopped(daemon, &record).await;
        crate::nri::pod_removed(daemon, &record).await;
        undo(&config, &record, runtime.as_ref(), &started.state).await;
        return Err(e);
    }
    if let Err(e) = daemon.pods.persist(&record).await {
        crate::nri::pod_stopped(daemon, &record).await;
        crate::nri::pod_removed(daemon, &record).await;
        undo(&config, &record, runtime.as_ref(), &started.state).await;
        return Err(LifecycleError::internal(format!(
            "cannot persist sandbox {id}: {e}"
        )));
    }
    tracing::info!(pod = %key, id = %id, ips = ?record.ips, "sandbox ready");
    daemon.pods.insert(record);
    super::watch(std::sync::Arc::clone(daemon), id.clone());
    Ok(id)
}

/// Undoes a RunPodSandbox whose pod was set up: the handler's part first (`state` as
/// `start_sandbox` returned it; a gVisor sandbox or a VM runs in the pod's namespaces),
/// then its network, namespaces and files, as StopPodSandbox does.
async fn undo(
    config: &std::sync::Arc<conf::Config>,
    record: &SandboxRecord,
    runtime: &dyn runtime_handlers::RuntimeHandler,
    state: &runtime_handlers::SandboxState,
) {
    if let Err(e) = runtime.stop_sandbox(&record.sandbox_spec(), state).await {
        tracing::error!(id = %record.id, error = %e, "ending the sandbox of a failed RunPodSandbox");
    }
    let released = blocking({
        let config = config.clone();
        let record = record.clone();
        move || {
            let released = release(&config, record.clone());
            let _ = std::fs::remove_dir_all(&record.state_dir);
            Ok(released)
        }
    })
    .await;
    if let Ok((_, failures)) = released
        && !failures.is_empty()
    {
        tracing::error!(id = %record.id, failures = ?failures, "cleaning up a failed RunPodSandbox");
    }
}

/// The pod's user namespace, from `namespace_options.userns_options`: NODE (or none)
/// is the host's; POD is the pod's own, with one ID range for users and one for groups,
/// which must map the pod's root. CONTAINER and TARGET have no meaning for a pod.
fn user_namespace(ns: &cri::NamespaceOption) -> Result<Option<UsernsRecord>, LifecycleError> {
    let Some(userns) = &ns.userns_options else {
        return Ok(None);
    };
    match cri::NamespaceMode::try_from(userns.mode) {
        Ok(cri::NamespaceMode::Node) => {
            if !userns.uids.is_empty() || !userns.gids.is_empty() {
                return Err(LifecycleError::invalid(
                    "user namespace mode NODE takes no ID mappings",
                ));
            }
            Ok(None)
        }
        Ok(cri::NamespaceMode::Pod) => {
            for (what, m) in [("network", ns.network), ("PID", ns.pid), ("IPC", ns.ipc)] {
                if m == i32::from(cri::NamespaceMode::Node) {
                    return Err(LifecycleError::invalid(format!(
                        "a pod in its own user namespace cannot use the host's {what} namespace"
                    )));
                }
            }
            let range = |what: &str, maps: &[cri::IdMapping]| -> Result<IdRange, LifecycleError> {
                let [m] = maps else {
                    return Err(LifecycleError::invalid(format!(
                        "user namespace mode POD needs exactly one {what} mapping, got {}",
                        maps.len()
                    )));
                };
                if m.container_id != 0 {
                    return Err(LifecycleError::invalid(format!(
                        "the {what} mapping must start at container ID 0 (the pod's root), not {}",
                        m.container_id
                    )));
                }
                if m.host_id == 0 {
                    return Err(LifecycleError::invalid(format!(
                        "the {what} mapping would make the pod's root the host's root (host ID 0)"
                    )));
                }
                if m.length == 0 || m.host_id.checked_add(m.length).is_none() {
                    return Err(LifecycleError::invalid(format!(
                        "the {what} mapping {}+{} is not a range of host IDs",
                        m.host_id, m.length
                    )));
                }
                Ok(IdRange {
                    container: m.container_id,
                    host: m.host_id,
                    size: m.length,
                })
            };
            Ok(Some(UsernsRecord {
                uid: range("uid", &userns.uids)?,
                gid: range("gid", &userns.gids)?,
            }))
        }
        _ => Err(LifecycleError::invalid(format!(
            "user namespace mode {} is not supported for a pod; use POD or NODE",
            cri::NamespaceMode::try_from(userns.mode)
                .map(|m| m.as_str_name())
                .unwrap_or("unknown")
        ))),
    }
}

/// What the pod asks of CNI.
struct Network<'a> {
    ports: &'a [network::PortMapping],
    bandwidth: Option<network::Bandwidth>,
}

/// The sync part. On error `record` holds what was made so far, for cleanup.
fn setup(
    config: &conf::Config,
    record: &mut SandboxRecord,
    wanted: &Network<'_>,
    sysctls: &BTreeMap<String, String>,
    dns: Option<&cri::DnsConfig>,
) -> Result<(), LifecycleError> {
    use network::NamespaceKind as Kind;
    macro_rules! attempt {
        ($e:expr, $status:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err($status(e.to_string())),
            }
        };
    }
    attempt!(
        std::fs::create_dir_all(&record.state_dir),
        LifecycleError::internal
    );
    if record.pause_pid > 0 {
        let pin = network::pin_path(&record.state_dir, Kind::Pid);
        attempt!(
            network::pin_process_namespace(Kind::Pid, record.pause_pid, &pin),
            LifecycleError::internal
        );
    }
    // A pod in its own user namespace got its namespaces from the handler's init, made
    // inside that user namespace; other pods get new ones here.
    let adopt_from = record.userns.map(|_| record.pause_pid);
    let make = |kind: Kind, hostname: Option<&str>| {
        let pin = network::pin_path(&record.state_dir, kind);
        match adopt_from {
            Some(pid) => network::adopt_namespace(kind, pid, &pin, hostname),
            None => network::create_namespace(kind, &pin, hostname),
        }
    };
    if let Some(pid) = adopt_from {
        attempt!(
            network::pin_process_namespace(
                Kind::User,
                pid,
                &network::pin_path(&record.state_dir, Kind::User)
            ),
            LifecycleError::internal
        );
    }
    let host_network = record.network_mode == NsMode::Node;
    let hostname = if host_network || record.hostname.is_empty() {
        host_hostname()
    } else {
        record.hostname.clone()
    };
    if !host_network {
        attempt!(make(Kind::Net, None), LifecycleError::internal);
        attempt!(make(Kind::Uts, Some(&hostname)), LifecycleError::internal);
    }
    if record.ipc_mode != NsMode::Node {
        attempt!(make(Kind::Ipc, None), LifecycleError::internal);
        attempt!(
            mount_shm(&record.state_dir.join("shm")),
            LifecycleError::internal
        );
    }
    for (key, value) in sysctls {
        let Some(kind) = network::sysctl_namespace(key) else {
            return Err(LifecycleError::invalid(format!(
                "sysctl {key} is not namespaced; a pod cannot set it"
            )));
        };
        let own = match kind {
            Kind::Net | Kind::Uts => !host_network,
            Kind::Ipc => record.ipc_mode != NsMode::Node,
            Kind::Pid | Kind::User => false,
        };
        if !own {
            return Err(LifecycleError::invalid(format!(
                "sysctl {key} would change the host: the pod shares the host's namespace"
            )));
        }
        let pin = network::pin_path(&record.state_dir, kind);
        attempt!(
            network::set_sysctl(&pin, key, value),
            LifecycleError::invalid
        );
    }
    attempt!(
        std::fs::write(record.state_dir.join("hostname"), format!("{hostname}\n")),
        LifecycleError::internal
    );
    attempt!(
        std::fs::write(record.state_dir.join("resolv.conf"), resolv_conf(dns)),
        LifecycleError::internal
    );

    if !host_network {
        let network_config = attempt!(crate::host::network_config(config), |m: String| {
            LifecycleError::precondition(format!("network plugin is not ready: {m}"))
        });
        let args = vec![
            ("K8S_POD_NAMESPACE".to_owned(), record.namespace.clone()),
            ("K8S_POD_NAME".to_owned(), record.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".to_owned(), record.id.clone()),
            ("K8S_POD_UID".to_owned(), record.uid.clone()),
        ];
        let attachment = network::Attachment {
            container_id: record.id.clone(),
            netns: network::pin_path(&record.state_dir, Kind::Net),
            ifname: "eth0".to_owned(),
            args: args.clone(),
            port_mappings: wanted.ports.to_vec(),
            bandwidth: wanted.bandwidth,
            ip_ranges: super::pod_cidrs(config),
        };
        let search = network::PluginSearch {
            dirs: &config.cni.plugin_dirs,
        };
        let journal = super::cni_journal(config);
        attempt!(
            journal.begin(&network_config.raw, &attachment),
            LifecycleError::internal
        );
        let attached = match network::add(&network_config, &search, &attachment) {
            Ok(attached) => attached,
            Err(e) => {
                // add() rolled the chain back.
                if let Err(j) = journal.end(&record.id) {
                    tracing::warn!(id = %record.id, error = %j, "forgetting a rolled-back CNI intent");
                }
                return Err(LifecycleError::retry(e.to_string()));
            }
        };
        let ips: Vec<String> = attached.ips.iter().map(ToString::to_string).collect();
        record.ips = ips.clone();
        record.network = Some(NetworkJournal {
            network: attached.network,
            result: attached.result,
            ips,
            args,
            ports: wanted.ports.to_vec(),
            bandwidth: attachment.bandwidth,
            ip_ranges: attachment.ip_ranges.clone(),
        });
    }
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = record.ips.first() {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    attempt!(
        std::fs::write(record.state_dir.join("hosts"), hosts),
        LifecycleError::internal
    );
    Ok(())
}

fn host_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// resolv.conf from the pod's DNS config, or the host's when it names none.
fn resolv_conf(dns: Option<&cri::DnsConfig>) -> String {
    match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut out = String::new();
            if !d.searches.is_empty() {
                out.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for server in &d.servers {
                out.push_str(&format!("nameserver {server}\n"));
            }
            if !d.options.is_empty() {
                out.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            out
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// The pod's /dev/shm: a 64 MiB tmpfs, as Docker and containerd size it.
fn mount_shm(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    let target = c_path(path)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            c"shm".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=1777,size=65536k".as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmounts the pod's /dev/shm if mounted; absent is fine.
pub fn unmount_shm(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let target = c_path(path)?;
    // SAFETY: `target` is a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    std::fs::remove_dir(path).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(e)
        }
    })
}

/// The pod's resources and overhead from its Linux config.
fn pod_resources(linux: &cri::LinuxPodSandboxConfig) -> runtime_handlers::PodResources {
    let memory = |r: Option<&cri::LinuxContainerResources>| {
        r.map_or(0, |r| u64::try_from(r.memory_limit_in_bytes).unwrap_or(0))
    };
    let cpu = |r: Option<&cri::LinuxContainerResources>| {
        r.map_or(0, |r| {
            match (u64::try_from(r.cpu_quota), u64::try_from(r.cpu_period)) {
                (Ok(quota), Ok(period)) if quota > 0 && period > 0 => {
                    (quota.saturating_mul(1000)).div_ceil(period)
                }
                _ => 0,
            }
        })
    };
    runtime_handlers::PodResources {
        memory_limit: memory(linux.resources.as_ref()),
        cpu_millis: cpu(linux.resources.as_ref()),
        overhead_memory: memory(linux.overhead.as_ref()),
        overhead_cpu_millis: cpu(linux.overhead.as_ref()),
    }
}

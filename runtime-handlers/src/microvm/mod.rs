//! The `microvm` handler: a VM per pod (QEMU, with KVM where it really works, else TCG),
//! crisp's agent as the guest's PID 1, reached over vsock; containers run inside the
//! guest, their root file systems and mounts shared from the host through one virtio-fs
//! daemon per pod, their logs written by the agent straight into the kubelet log files
//! (bind-mounted into that share), so nothing on the host copies output and logs flow
//! while crispd is down.
//!
//! Host side of a pod: `<root>/<id[..16]>/` holds the helpers' sockets and logs, the
//! guest console log, the shared directory and `state.json` (the [`vm::VmRecord`], also
//! persisted with the pod). QEMU, vhost-device-vsock and virtiofsd run in the pod's
//! cgroup, in sessions of their own, so they outlive a crispd restart; they are ended by
//! pidfd whatever the guest is doing.

mod net;
mod stream;
mod transport;
mod vm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_proto::agent_client::AgentClient;
use agent_proto::container_status_response::State;
use oci_spec::runtime::Process;
use tonic::transport::Channel;

use crate::HostFacts;
use crate::attach::{AttachReader, AttachWriter};
use crate::error::HandlerError;
use crate::exec::ExecSession;
use crate::handler::{
    ContainerRef, ContainerSpec, Features, Recovered, RuntimeHandler, SandboxSpec, SandboxState,
    StartedSandbox,
};
use crate::host_check::{CheckLevel, HostCheck};
use crate::oci::{ExecOutput, ExitStatus, ResourceUpdate, RuntimeState};
use crate::stats::ContainerStats;
use vm::VmRecord;

pub use transport::Transport;

/// The sandbox-state format this handler writes.
const STATE_VERSION: u32 = 1;
/// How long an ordinary agent call may take.
const CALL_DEADLINE: Duration = Duration::from_secs(15);
/// How long reconnecting to a running guest's agent may take.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// How QEMU runs guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accelerator {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
    /// KVM where it really works, else TCG.
    #[default]
    Auto,
}

/// A `[runtimes.<name>]` table of type `microvm`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MicroVmConfig {
    /// The handler's name.
    pub name: String,
    /// QEMU.
    pub vmm: PathBuf,
    /// The vhost-user-vsock backend (vhost-device-vsock).
    pub vsock_backend: PathBuf,
    /// The virtio-fs daemon.
    pub virtiofsd: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs (holding the agent).
    pub initrd: PathBuf,
    /// KVM, TCG or auto.
    pub accelerator: Accelerator,
    /// QEMU machine type (`microvm`, `q35`).
    pub machine: String,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// How long a guest has to answer once QEMU starts.
    pub boot_timeout: Duration,
    /// Where VM directories live.
    pub root: PathBuf,
    /// The command that builds the guest image, for the error when it is missing.
    pub image_command: String,
}

/// A VM this crispd knows.
#[derive(Debug)]
struct Vm {
    record: VmRecord,
    qemu: Option<std::os::fd::OwnedFd>,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

impl Vm {
    fn alive(&self) -> bool {
        self.qemu
            .as_ref()
            .is_some_and(|fd| !crate::pidfd::exited(fd))
    }

    /// Returns once QEMU has exited (at once when it was not found).
    async fn died(&self) {
        if let Some(fd) = &self.qemu {
            crate::pidfd::wait(fd).await;
        }
    }
}

/// The microVM handler.
#[derive(Debug)]
pub struct MicroVm {
    config: MicroVmConfig,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
    /// The virtio-fs daemon is QEMU's C one (7.2 and older), which takes its options as
    /// `-o key=value`; the Rust virtiofsd takes flags.
    legacy_virtiofsd: bool,
}

/// Whether `binary` is QEMU's C virtiofsd ("virtiofsd version 7.2.x"), not the Rust one
/// ("virtiofsd 1.x").
fn is_legacy_virtiofsd(binary: &Path) -> bool {
    std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("virtiofsd version"))
}

/// The virtio-fs daemon's arguments: the share at `source`, served on `socket`, with the
/// kernel's page cache, chrooted, each request on the queue's thread (no pool: a VM pod's
/// share sees little parallel I/O, and a pool costs memory).
fn virtiofsd_args(legacy: bool, socket: &Path, source: &Path) -> Vec<String> {
    let mut args = vec![
        format!("--socket-path={}", socket.display()),
        "--thread-pool-size=0".to_owned(),
    ];
    if legacy {
        for option in [
            format!("source={}", source.display()),
            "cache=auto".to_owned(),
            "sandbox=chroot".to_owned(),
        ] {
            args.extend(["-o".to_owned(), option]);
        }
    } else {
        args.extend([
            format!("--shared-dir={}", source.display()),
            "--cache=auto".to_owned(),
            "--sandbox=chroot".to_owned(),
        ]);
    }
    args
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Runs `work` to its end on a runtime of its own (for the handler's synchronous calls,
/// which may come from inside crispd's runtime).
fn block_on<F: std::future::Future<Output = ()> + Send + 'static>(work: F) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    })
    .join();
}

fn bind(source: &Path, target: &Path, recursive: bool) -> std::io::Result<()> {
    let s = std::ffi::CString::new(source.as_os_str().as_encoded_bytes())?;
    let t = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())?;
    let flags = libc::MS_BIND | if recursive { libc::MS_REC } else { 0 };
    // SAFETY: NUL-terminated paths; no data.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Binds `source` (file or directory) at `target`, making the mount point; read-only on
/// the host when `read_only` (virtiofsd then cannot write it, whatever the guest does).
fn share(source: &Path, target: &Path, recursive: bool, read_only: bool) -> Result<(), String> {
    let meta = std::fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let made = if meta.is_dir() {
        std::fs::create_dir_all(target)
    } else {
        std::fs::File::create(target).map(|_| ())
    };
    made.map_err(|e| format!("{}: {e}", target.display()))?;
    bind(source, target, recursive)
        .map_err(|e| format!("share {} with the VM: {e}", source.display()))?;
    if read_only {
        let t = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: a NUL-terminated path; no data.
        let r = unsafe {
            libc::mount(
                std::ptr::null(),
                t.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            unmount(target);
            return Err(format!("share {} read-only: {e}", source.display()));
        }
    }
    Ok(())
}

/// What [`MicroVm::pid_namespace`] names a container's PID namespace by: this, then the
/// container's ID.
const TARGET_PID_NAMESPACE: &str = "microvm-container:";

/// The PID mode of a container of `spec` in the guest, and the container whose
/// namespace it joins: a `pid` namespace without a path is its own (CONTAINER), one
/// naming a container is that container's (TARGET), any other path is the pod's (POD).
/// Without one it would share the node's, which a VM cannot give.
fn pid_mode(spec: &oci_spec::runtime::Spec) -> Result<(agent_proto::PidMode, String), String> {
    let pid = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|n| {
            n.iter()
                .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid)
        });
    let Some(pid) = pid else {
        return Err("a container of a VM pod cannot share the node's PID namespace".to_owned());
    };
    Ok(match pid.path().as_ref().map(|p| p.to_string_lossy()) {
        None => (agent_proto::PidMode::Container, String::new()),
        Some(p) => match p.strip_prefix(TARGET_PID_NAMESPACE) {
            Some(target) => (agent_proto::PidMode::Target, target.to_owned()),
            None => (agent_proto::PidMode::Pod, String::new()),
        },
    })
}

/// The cgroup limits of a container's OCI resources, for its cgroup in the guest.
fn resources_of(r: &oci_spec::runtime::LinuxResources) -> agent_proto::Resources {
    let cpu = r.cpu().as_ref();
    let memory = r.memory().as_ref();
    agent_proto::Resources {
        memory_limit: memory.and_then(|m| m.limit()),
        memory_swap: memory.and_then(|m| m.swap()),
        cpu_quota: cpu.and_then(|c| c.quota()),
        cpu_period: cpu.and_then(|c| c.period()),
        cpu_shares: cpu.and_then(|c| c.shares()),
        pids_limit: r.pids().as_ref().map(|p| p.limit()),
        // The node's CPU and memory-node numbers mean nothing in the guest, whose kernel
        // refuses CPUs it does not have (kubelet's static CPU manager sets them for
        // every container); the VM's own placement is the host's business, as in Kata.
        cpuset_cpus: None,
        cpuset_mems: None,
    }
}

/// The memory (MiB) and vCPUs of the VM of a pod with `resources`, from the configured
/// base (the guest's kernel, agent and page cache) plus the pod's limits, as Kata sizes
/// its VMs; the overhead is the host's cost of the VM, not the guest's. A VM that could
/// not fit in the host's memory (`host_mib`, 0 if unknown) is refused; vCPUs beyond the
/// host's CPUs would only contend, so they are capped (the CPU limits still apply in the
/// guest's cgroups).
fn size_for(
    base_mib: u32,
    base_vcpus: u32,
    resources: &crate::PodResources,
    host_mib: u64,
    host_cpus: u64,
) -> Result<(u32, u32), String> {
    const MIB: u64 = 1 << 20;
    let limits_mib = resources.memory_limit.div_ceil(MIB);
    let memory = u64::from(base_mib).saturating_add(limits_mib);
    if host_mib > 0 && memory > host_mib {
        return Err(format!(
            "memory for the pod's VM: {memory} MiB ({base_mib} MiB for the guest plus the pod's limits of {limits_mib} MiB), and this host has {host_mib} MiB"
        ));
    }
    let vcpus = (u64::from(base_vcpus) + resources.cpu_millis.div_ceil(1000))
        .min(host_cpus.max(u64::from(base_vcpus)));
    Ok((
        u32::try_from(memory).map_err(|_| format!("a VM of {memory} MiB"))?,
        u32::try_from(vcpus).unwrap_or(base_vcpus),
    ))
}

/// The host's memory, MiB (0 if unknown).
fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib / 1024)
}

/// Stops what a record names: the helpers, the network plumbing, the cgroup, the
/// directory.
async fn teardown(record: &VmRecord) -> Result<(), String> {
    // QEMU first: the guest stops touching the share and the tap before the daemons go.
    let mut order: Vec<&vm::Helper> = record.helpers.iter().collect();
    order.sort_by_key(|h| h.name != "qemu");
    for h in order {
        vm::kill(h).await;
    }
    if let Some(netns) = &record.netns {
        let netns = netns.clone();
        let index = record.nic.as_ref().map(|n| n.veth_index).unwrap_or(0);
        let _ = tokio::task::spawn_blocking(move || net::unplumb(&netns, index)).await;
    }
    for dir in &record.cgroups {
        let _ = std::fs::remove_dir(dir);
    }
    if record.dir.as_os_str().is_empty() {
        return Ok(());
    }
    vm::remove_dir(&record.dir)
}

impl MicroVm {
    /// The handler; VMs left by a crash whose pods crisp no longer has are ended now.
    pub fn new(config: MicroVmConfig) -> Self {
        let legacy_virtiofsd = is_legacy_virtiofsd(&config.virtiofsd);
        let handler = Self {
            config,
            vms: Mutex::new(HashMap::new()),
            legacy_virtiofsd,
        };
        handler.sweep();
        handler
    }

    /// Ends VMs whose pod directory is gone (crisp forgot the pod, or never recorded it).
    fn sweep(&self) {
        let Ok(dirs) = std::fs::read_dir(&self.config.root) else {
            return;
        };
        let orphans: Vec<VmRecord> = dirs
            .flatten()
            .filter_map(|d| VmRecord::load(&d.path()))
            .filter(|r| !r.pod_dir.as_os_str().is_empty() && !r.pod_dir.exists())
            .collect();
        if orphans.is_empty() {
            return;
        }
        block_on(async move {
            for r in orphans {
                match teardown(&r).await {
                    Ok(()) => {
                        tracing::info!(id = %r.id, "ended the VM of a pod crisp has no record of")
                    }
                    Err(e) => tracing::warn!(id = %r.id, error = %e, "ending an orphaned VM"),
                }
            }
        });
    }

    fn dir_of(&self, id: &str) -> PathBuf {
        let short: String = id.chars().take(16).collect();
        self.config.root.join(short)
    }

    fn accelerator(&self) -> Accelerator {
        match self.config.accelerator {
            Accelerator::Auto if vm::kvm_usable() => Accelerator::Kvm,
            Accelerator::Auto => Accelerator::Tcg,
            other => other,
        }
    }

    fn unsupported(&self, what: &str) -> HandlerError {
        HandlerError::Unsupported {
            handler: self.config.name.clone(),
            what: what.to_owned(),
        }
    }

    fn vm_error(&self, id: &str, message: impl Into<String>, timed_out: bool) -> HandlerError {
        HandlerError::Vm {
            handler: self.config.name.clone(),
            id: id.to_owned(),
            message: message.into(),
            timed_out,
        }
    }

    /// The VM of sandbox `id`: known, or found through its record on disk.
    fn vm(&self, id: &str) -> Result<Arc<Vm>, HandlerError> {
        if let Some(vm) = lock(&self.vms).get(id) {
            return Ok(Arc::clone(vm));
        }
        let record = VmRecord::load(&self.dir_of(id))
            .filter(|r| r.id == id)
            .ok_or_else(|| self.vm_error(id, "the pod has no VM on this host", false))?;
        let vm = Arc::new(Vm {
            qemu: record.helper("qemu").and_then(vm::pidfd),
            record,
            channel: tokio::sync::Mutex::new(None),
        });
        lock(&self.vms).insert(id.to_owned(), Arc::clone(&vm));
        Ok(vm)
    }

    async fn client(
        &self,
        vm: &Vm,
        patience: Duration,
    ) -> Result<AgentClient<Channel>, HandlerError> {
        let id = &vm.record.id;
        if !vm.alive() {
            return Err(self.vm_error(id, "the pod's VM has stopped", false));
        }
        let mut slot = vm.channel.lock().await;
        if let Some(channel) = slot.as_ref() {
            return Ok(agent_client(channel.clone()));
        }
        let transport = vm
            .record
            .transport
            .clone()
            .ok_or_else(|| self.vm_error(id, "the VM's record names no transport", false))?;
        let channel = tokio::select! {
            c = transport.channel(agent_proto::AGENT_PORT, patience) => c
                .map_err(|e| self.vm_error(id, format!("the agent does not answer: {e}"), true))?,
            _ = vm.died() => return Err(self.vm_error(id, self.death_note(&vm.record), false)),
        };
        *slot = Some(channel.clone());
        Ok(agent_client(channel))
    }

    /// Why a VM died, from what QEMU and the guest printed.
    fn death_note(&self, record: &VmRecord) -> String {
        let qemu = vm::tail(&record.dir.join("qemu.log"), 3);
        let console = vm::tail(&record.dir.join("console.log"), 5);
        format!("the VM stopped (QEMU: {qemu:?}; guest console: {console:?})")
    }

    /// One agent call on sandbox `sandbox`'s VM, bounded by `deadline` and by the VM's
    /// life.
    async fn call<T, F, Fut>(
        &self,
        sandbox: &str,
        what: &str,
        id: &str,
        deadline: Duration,
        f: F,
    ) -> Result<T, HandlerError>
    where
        F: FnOnce(AgentClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let vm = self.vm(sandbox)?;
        let client = self.client(&vm, RECONNECT_PATIENCE).await?;
        let answer = tokio::select! {
            r = tokio::time::timeout(deadline, f(client)) => r,
            _ = vm.died() => return Err(self.vm_error(sandbox, self.death_note(&vm.record), false)),
        };
        match answer {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                Err(HandlerError::NotFound { id: id.to_owned() })
            }
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unavailable {
                    // The connection broke: dial again next time.
                    *vm.channel.lock().await = None;
                }
                Err(HandlerError::Agent {
                    handler: self.config.name.clone(),
                    operation: what.to_owned(),
                    id: id.to_owned(),
                    code: status.code(),
                    message: status.message().to_owned(),
                })
            }
            Err(_) => Err(self.vm_error(
                sandbox,
                format!("the agent did not answer {what} {id} within {deadline:?}"),
                true,
            )),
        }
    }

    /// Boots the VM for `sandbox`, recording each helper as it starts; on failure the
    /// caller tears down what the record names.
    async fn boot(&self, sandbox: &SandboxSpec, record: &mut VmRecord) -> Result<(), BootError> {
        let deadline = Instant::now() + self.config.boot_timeout;
        let dir = record.dir.clone();
        let netns = sandbox
            .netns
            .clone()
            .ok_or("a VM pod needs a network namespace")?;
        record.netns = Some(netns.clone());
        record.cgroups = vm::make_cgroups(&cgroup_relative(&sandbox.cgroups_path));
        record
            .save()
            .map_err(|e| format!("save the VM record: {e}"))?;

        let ns = netns.clone();
        let (nic, tap) = tokio::task::spawn_blocking(move || net::plumb(&ns))
            .await
            .map_err(|e| format!("network: {e}"))??;
        record.nic = Some(nic.clone());
        record
            .save()
            .map_err(|e| format!("save the VM record: {e}"))?;

        let hybrid = dir.join("a.sock");
        let vhost = dir.join("v.sock");
        let fs = dir.join("f.sock");
        // The kernel's vhost-vsock where the host has it, else a userspace backend
        // speaking hybrid vsock.
        let transport = if Path::new("/dev/vhost-vsock").exists() {
            Transport::Native {
                cid: guest_cid(&record.id),
            }
        } else {
            Transport::Hybrid {
                path: hybrid.clone(),
            }
        };
        let mut vsock = None;
        if let Transport::Hybrid { .. } = transport {
            let backend = vm::spawn(
                "vsock",
                &self.config.vsock_backend,
                &[
                    "--vm".to_owned(),
                    format!(
                        "guest-cid=3,socket={},uds-path={}",
                        vhost.display(),
                        hybrid.display()
                    ),
                ],
                &dir,
                &record.cgroups,
                None,
            )?;
            record.helpers.push(backend.clone());
            vsock = Some(backend);
        }
        record.transport = Some(transport.clone());
        record
            .save()
            .map_err(|e| format!("save the VM record: {e}"))?;
        let virtiofsd = vm::spawn(
            "virtiofsd",
            &self.config.virtiofsd,
            &virtiofsd_args(self.legacy_virtiofsd, &fs, &dir.join("shared")),
            &dir,
            &record.cgroups,
            None,
        )?;
        record.helpers.push(virtiofsd.clone());
        record
            .save()
            .map_err(|e| format!("save the VM record: {e}"))?;
        if let Some(vsock) = &vsock {
            vm::wait_for_socket(&vhost, vsock, deadline).await?;
        }
        vm::wait_for_socket(&fs, &virtiofsd, deadline).await?;

        let args = self.qemu_args(&dir, &nic, &transport, record.memory_mib, record.vcpus);
        let qemu = vm::spawn(
            "qemu",
            &self.config.vmm,
            &args,
            &dir,
            &record.cgroups,
            Some(&tap),
        )?;
        drop(tap);
        record.helpers.push(qemu.clone());
        record
            .save()
            .map_err(|e| format!("save the VM record: {e}"))?;

        let qemu_fd = vm::pidfd(&qemu).ok_or("QEMU exited at once")?;
        let qemu_started = Instant::now();
        let left = deadline.saturating_duration_since(Instant::now());
        let channel = tokio::select! {
            c = transport.channel(agent_proto::AGENT_PORT, left) => c.map_err(|e| BootError {
                message: format!(
                    "the guest's agent did not answer within the boot timeout ({:?}): {e}; guest console: {:?}",
                    self.config.boot_timeout,
                    vm::tail(&dir.join("console.log"), 5)
                ),
                timed_out: true,
            })?,
            _ = crate::pidfd::wait(&qemu_fd) => return Err(BootError::from(format!(
                "the VM stopped while booting (QEMU: {:?}; guest console: {:?})",
                vm::tail(&dir.join("qemu.log"), 3),
                vm::tail(&dir.join("console.log"), 5)
            ))),
        };
        let mut client = agent_client(channel.clone());
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let hello = tokio::time::timeout(left, client.hello(agent_proto::HelloRequest {}))
            .await
            .map_err(|_| BootError {
                message: "the guest's agent did not say hello within the boot timeout".to_owned(),
                timed_out: true,
            })?
            .map_err(|s| format!("the guest's agent: {}", s.message()))?
            .into_inner();
        record.kernel_release = hello.kernel_release;
        record.boot_ms = qemu_started.elapsed().as_millis() as u64;
        record.guest_uptime_ms = hello.uptime_ms;
        record.guest_init_ms = hello.init_ms;
        let (secs, nanos) = crilog::now();
        let setup = agent_proto::SetupSandboxRequest {
            sysctls: sandbox.sysctls.clone().into_iter().collect(),
            hostname: sandbox.hostname.clone(),
            time_unix_nanos: secs * 1_000_000_000 + i64::from(nanos),
            interfaces: vec![agent_proto::Interface {
                mac: nic.mac.clone(),
                addresses: nic.addresses.clone(),
                mtu: nic.mtu,
            }],
            routes: nic
                .routes
                .iter()
                .map(|(destination, gateway)| agent_proto::Route {
                    destination: destination.clone(),
                    gateway: gateway.clone(),
                })
                .collect(),
        };
        tokio::time::timeout(CALL_DEADLINE, client.setup_sandbox(setup))
            .await
            .map_err(|_| "the guest's agent did not set up the pod in time".to_owned())?
            .map_err(|s| format!("setting up the guest: {}", s.message()))?;
        record
            .save()
            .map_err(|e| format!("save the VM record: {e}"))?;
        lock(&self.vms).insert(
            record.id.clone(),
            Arc::new(Vm {
                record: record.clone(),
                qemu: Some(qemu_fd),
                channel: tokio::sync::Mutex::new(Some(channel)),
            }),
        );
        Ok(())
    }

    /// The VM's memory (MiB) and vCPUs for a pod with `resources`: the configured base
    /// (the guest's kernel, agent and page cache) plus the pod's limits, as Kata sizes
    /// its VMs. The overhead is the host's cost of the VM, not the guest's. A pod whose
    /// VM could not fit in this host's memory is refused; vCPUs beyond the host's CPUs
    /// would only contend, so they are capped (the CPU limits still apply in the guest).
    fn vm_size(&self, resources: &crate::PodResources) -> Result<(u32, u32), HandlerError> {
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        size_for(
            self.config.memory_mib,
            self.config.vcpus,
            resources,
            host_memory_mib(),
            host_cpus,
        )
        .map_err(|what| HandlerError::Exhausted { what })
    }

    fn qemu_args(
        &self,
        dir: &Path,
        nic: &net::PodNic,
        transport: &Transport,
        memory_mib: u32,
        vcpus: u32,
    ) -> Vec<String> {
        let c = &self.config;
        let memory_mib = if memory_mib == 0 {
            c.memory_mib
        } else {
            memory_mib
        };
        let vcpus = if vcpus == 0 { c.vcpus } else { vcpus };
        let microvm = c.machine.starts_with("microvm");
        let bus = if microvm { "device" } else { "pci" };
        let accel = self.accelerator();
        let mut cmdline = "console=ttyS0 quiet panic=-1 rdinit=/init".to_owned();
        let mut args: Vec<String> = Vec::new();
        let mut push = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
        match accel {
            Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            _ => {
                push(&["-accel", "tcg,tb-size=32"]);
                if microvm && let Some(khz) = vm::tsc_khz() {
                    cmdline.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
                }
            }
        }
        let machine = if microvm {
            format!("{},x-option-roms=off,rtc=on,memory-backend=mem0", c.machine)
        } else {
            format!("{},memory-backend=mem0", c.machine)
        };
        let mem = format!("{memory_mib}M");
        push(&[
            "-name",
            &format!(
                "crisp-vm-{}",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            "-machine",
            &machine,
            "-smp",
            &vcpus.to_string(),
            "-m",
            &mem,
            "-object",
            &format!("memory-backend-memfd,id=mem0,size={mem},share=on"),
            "-kernel",
            &c.kernel.to_string_lossy(),
            "-initrd",
            &c.initrd.to_string_lossy(),
            "-append",
            &cmdline,
            "-chardev",
            &format!("socket,id=fs,path={}", dir.join("f.sock").display()),
            "-device",
            &format!("vhost-user-fs-{bus},chardev=fs,tag=crisp"),
            "-netdev",
            "tap,id=net0,fd=3,vhost=off",
            "-device",
            &format!("virtio-net-{bus},netdev=net0,mac={}", nic.mac),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            &format!("file:{}", dir.join("console.log").display()),
        ]);
        match transport {
            Transport::Hybrid { .. } => push(&[
                "-chardev",
                &format!("socket,id=vsock,path={}", dir.join("v.sock").display()),
                "-device",
                &format!("vhost-user-vsock-{bus},chardev=vsock"),
            ]),
            Transport::Native { cid } => {
                push(&["-device", &format!("vhost-vsock-{bus},guest-cid={cid}")])
            }
        }
        if microvm {
            push(&["-global", "virtio-mmio.force-legacy=false"]);
        }
        args
    }

    /// What the agent knows of container `c`.
    async fn agent_status(
        &self,
        c: &ContainerRef<'_>,
    ) -> Result<agent_proto::ContainerStatusResponse, HandlerError> {
        let id = c.id.to_owned();
        self.call(
            c.sandbox_id,
            "state",
            c.id,
            CALL_DEADLINE,
            |mut a| async move { a.container_status(agent_proto::ContainerId { id }).await },
        )
        .await
    }

    fn shared(&self, sandbox: &str) -> PathBuf {
        self.dir_of(sandbox).join("shared")
    }
}

/// A client of the agent that takes ExecSync's largest answers (16 MiB per stream).
fn agent_client(channel: Channel) -> AgentClient<Channel> {
    AgentClient::new(channel).max_decoding_message_size(40 << 20)
}

/// A guest CID for native vsock, from the sandbox ID (unique host-wide in practice: QEMU
/// refuses a CID in use, which fails the pod rather than reaching another guest).
fn guest_cid(id: &str) -> u32 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    // CIDs 0-2 are reserved; stay below 2^31.
    3 + (hash % 0x7fff_fff0) as u32
}

/// Why a VM did not come up.
#[derive(Debug)]
struct BootError {
    message: String,
    /// It ran out of its boot timeout.
    timed_out: bool,
}

impl From<String> for BootError {
    fn from(message: String) -> Self {
        Self {
            message,
            timed_out: false,
        }
    }
}

impl From<&str> for BootError {
    fn from(message: &str) -> Self {
        Self::from(message.to_owned())
    }
}

/// The cgroupfs path of a pod's cgroup, from a cgroupfs path or a systemd
/// `slice:prefix:name`.
fn cgroup_relative(path: &str) -> String {
    let parts: Vec<&str> = path.split(':').collect();
    match parts.as_slice() {
        [slice, prefix, name] => format!("{slice}/{prefix}-{name}.scope"),
        _ => path.to_owned(),
    }
}

fn process_of(process: Option<&Process>) -> agent_proto::Process {
    let Some(p) = process else {
        return agent_proto::Process::default();
    };
    let mask = |set: Option<&std::collections::HashSet<oci_spec::runtime::Capability>>| {
        set.into_iter()
            .flatten()
            .filter_map(|c| crate::capability_number(&c.to_string()))
            .fold(0u64, |m, n| m | (1u64 << n))
    };
    // Without capabilities in the spec the process is unconfined, as under runc.
    let security = p.capabilities().as_ref().map(|c| agent_proto::Security {
        bounding: mask(c.bounding().as_ref()),
        effective: mask(c.effective().as_ref()),
        permitted: mask(c.permitted().as_ref()),
        inheritable: mask(c.inheritable().as_ref()),
        ambient: c
            .ambient()
            .as_ref()
            .into_iter()
            .flatten()
            .filter_map(|c| crate::capability_number(&c.to_string()))
            .collect(),
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
    });
    agent_proto::Process {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().to_string_lossy().into_owned(),
        uid: p.user().uid(),
        gid: p.user().gid(),
        additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        security,
    }
}

/// The highest `log.<n>` under a container's share (the log the agent writes now).
fn log_generation(dir: &Path) -> Option<u32> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("log.")?.parse().ok())
        .max()
}

fn unmount(path: &Path) {
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

#[async_trait::async_trait]
impl RuntimeHandler for MicroVm {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> &'static str {
        "microvm"
    }

    fn features(&self) -> Features {
        Features::default()
    }

    fn host_facts(&self) -> HostFacts {
        // Containers run as root of their guest: nothing of the host's limits applies.
        HostFacts {
            bounding_set: u64::MAX,
            min_oom_score_adj: -1000,
        }
    }

    fn host_checks(&self) -> Vec<HostCheck> {
        let mut checks = Vec::new();
        let mut need = |subject: &'static str, path: &Path, fix: &str| {
            let found = crate::resolve_binary(path).is_some() || path.is_file();
            checks.push(HostCheck {
                level: if found {
                    CheckLevel::Ok
                } else {
                    CheckLevel::Fail
                },
                subject,
                message: if found {
                    format!("{}", path.display())
                } else {
                    format!("{} is missing: {fix}", path.display())
                },
            });
        };
        need("microvm vmm", &self.config.vmm, "install qemu-system-x86");
        need(
            "microvm vsock backend",
            &self.config.vsock_backend,
            "cargo install vhost-device-vsock",
        );
        need(
            "microvm virtiofsd",
            &self.config.virtiofsd,
            "install qemu-system-common (7.2), or cargo install virtiofsd",
        );
        need(
            "microvm kernel",
            &self.config.kernel,
            &self.config.image_command,
        );
        need(
            "microvm initrd",
            &self.config.initrd,
            &self.config.image_command,
        );
        let accel = self.accelerator();
        checks.push(HostCheck {
            level: if accel == Accelerator::Kvm {
                CheckLevel::Ok
            } else {
                CheckLevel::Warn
            },
            subject: "microvm accelerator",
            message: match accel {
                Accelerator::Kvm => "KVM".to_owned(),
                _ => "TCG (software emulation): no usable KVM here; guests boot in seconds, not milliseconds".to_owned(),
            },
        });
        checks
    }

    fn helper_processes(&self) -> usize {
        lock(&self.vms)
            .values()
            .map(|vm| {
                vm.record
                    .helpers
                    .iter()
                    .filter(|h| vm::pidfd(h).is_some())
                    .count()
            })
            .sum()
    }

    async fn start_sandbox(&self, sandbox: &SandboxSpec) -> Result<StartedSandbox, HandlerError> {
        if sandbox.netns.is_none() {
            return Err(self.unsupported(
                "host-network pods (hostNetwork: true): a VM pod has its own kernel and network stack; run the pod with an OCI runtime class",
            ));
        }
        if sandbox.host_ipc || sandbox.host_pid {
            return Err(self.unsupported(
                "pods sharing the host's IPC or PID namespace (hostIPC, hostPID): a VM pod has its own kernel; run the pod with an OCI runtime class",
            ));
        }
        if sandbox.userns.is_some() {
            return Err(self.unsupported("user namespaces (the VM is the pod's boundary)"));
        }
        for (what, path) in [
            ("kernel", &self.config.kernel),
            ("initrd", &self.config.initrd),
        ] {
            if !path.is_file() {
                return Err(HandlerError::Precondition {
                    handler: self.config.name.clone(),
                    message: format!(
                        "the guest {what} {} is missing: build the guest image with `{}`",
                        path.display(),
                        self.config.image_command
                    ),
                });
            }
        }
        let (memory_mib, vcpus) = self.vm_size(&sandbox.resources)?;
        let dir = self.dir_of(&sandbox.id);
        // The pod's directory first: a VM whose pod directory is missing is an orphan to
        // any crispd starting meanwhile (`crispd check` too).
        for d in [sandbox.state_dir.clone(), dir.join("shared")] {
            std::fs::create_dir_all(&d).map_err(|source| HandlerError::Io {
                path: d.clone(),
                source,
            })?;
        }
        let record = VmRecord {
            id: sandbox.id.clone(),
            dir: dir.clone(),
            pod_dir: sandbox.state_dir.clone(),
            memory_mib,
            vcpus,
            ..VmRecord::default()
        };
        record.save().map_err(|source| HandlerError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(StartedSandbox {
            state: SandboxState {
                version: STATE_VERSION,
                data: serde_json::to_value(&record).unwrap_or_default(),
            },
            namespace_holder: 0,
        })
    }

    async fn finish_sandbox(
        &self,
        sandbox: &SandboxSpec,
        _state: &SandboxState,
    ) -> Result<SandboxState, HandlerError> {
        let dir = self.dir_of(&sandbox.id);
        let mut record = VmRecord::load(&dir).unwrap_or_else(|| VmRecord {
            id: sandbox.id.clone(),
            dir: dir.clone(),
            pod_dir: sandbox.state_dir.clone(),
            ..VmRecord::default()
        });
        let started = Instant::now();
        match self.boot(sandbox, &mut record).await {
            Ok(()) => {
                tracing::info!(id = %sandbox.id, elapsed = ?started.elapsed(), kernel = %record.kernel_release, "VM booted");
                Ok(SandboxState {
                    version: STATE_VERSION,
                    data: serde_json::to_value(&record).unwrap_or_default(),
                })
            }
            Err(e) => {
                let _ = teardown(&record).await;
                lock(&self.vms).remove(&sandbox.id);
                Err(self.vm_error(&sandbox.id, e.message, e.timed_out))
            }
        }
    }

    async fn stop_sandbox(
        &self,
        sandbox: &SandboxSpec,
        state: &SandboxState,
    ) -> Result<(), HandlerError> {
        lock(&self.vms).remove(&sandbox.id);
        // The directory's record is the newest (it follows every helper started).
        let record = VmRecord::load(&self.dir_of(&sandbox.id))
            .or_else(|| serde_json::from_value(state.data.clone()).ok())
            .filter(|r: &VmRecord| r.id == sandbox.id);
        match record {
            Some(r) => teardown(&r)
                .await
                .map_err(|m| self.vm_error(&sandbox.id, m, false)),
            None => Ok(()),
        }
    }

    async fn recover_sandbox(
        &self,
        sandbox: &SandboxSpec,
        _state: &SandboxState,
    ) -> Result<bool, HandlerError> {
        match self.vm(&sandbox.id) {
            Ok(vm) => Ok(vm.alive()),
            Err(_) => Ok(false),
        }
    }

    async fn wait_sandbox(&self, sandbox: &SandboxSpec, _state: &SandboxState) -> Option<String> {
        let Ok(vm) = self.vm(&sandbox.id) else {
            return Some("the pod has no VM on this host".to_owned());
        };
        vm.died().await;
        // The guest is gone: the daemons that served it have nothing left to do. The rest
        // (share, qdisc, cgroup, logs) stays for StopPodSandbox, which ends it all.
        for helper in vm.record.helpers.iter().filter(|h| h.name != "qemu") {
            vm::kill(helper).await;
        }
        Some(self.death_note(&vm.record))
    }

    async fn create_container(&self, c: &ContainerSpec<'_>) -> Result<u32, HandlerError> {
        let shared = self.shared(c.sandbox_id);
        let cdir = shared.join(c.id);
        let io = |e: String| HandlerError::Runtime {
            handler: self.config.name.clone(),
            operation: "create".to_owned(),
            id: c.id.to_owned(),
            message: e,
        };
        let result = async {
            let root = c
                .spec
                .root()
                .as_ref()
                .map(|r| r.path().clone())
                .unwrap_or_else(|| PathBuf::from("rootfs"));
            let root = if root.is_absolute() {
                root
            } else {
                c.bundle.join(root)
            };
            share(&root, &cdir.join("rootfs"), true, false).map_err(io)?;
            let mut mounts = Vec::new();
            for (i, m) in c.spec.mounts().iter().flatten().enumerate() {
                let options = m.options().clone().unwrap_or_default();
                let typ = m.typ().clone().unwrap_or_default();
                let is_bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
                let destination = m.destination().to_string_lossy().into_owned();
                if is_bind {
                    let source = m.source().clone().unwrap_or_default();
                    let name = format!("m{i}");
                    let recursive = options.iter().any(|o| o == "rbind");
                    let read_only = options.iter().any(|o| o == "ro");
                    share(&source, &cdir.join(&name), recursive, read_only).map_err(io)?;
                    mounts.push(agent_proto::Mount {
                        destination,
                        r#type: "bind".to_owned(),
                        source: format!("{}/{name}", c.id),
                        options,
                    });
                } else {
                    mounts.push(agent_proto::Mount {
                        destination,
                        r#type: typ,
                        source: m
                            .source()
                            .as_ref()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        options,
                    });
                }
            }
            let mut log_path = String::new();
            if !c.log_path.as_os_str().is_empty() {
                if let Some(parent) = c.log_path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(c.log_path)
                    .map_err(|e| io(format!("{}: {e}", c.log_path.display())))?;
                share(c.log_path, &cdir.join("log.0"), false, false).map_err(io)?;
                std::fs::write(
                    cdir.with_extension("log-path"),
                    c.log_path.as_os_str().as_encoded_bytes(),
                )
                .map_err(|e| io(e.to_string()))?;
                log_path = format!("{}/log.0", c.id);
            }
            let (pid_mode, pid_target) =
                pid_mode(c.spec).map_err(|message| HandlerError::Precondition {
                    handler: self.config.name.clone(),
                    message,
                })?;
            let linux = c.spec.linux().as_ref();
            let (seccomp_filter, seccomp_flags) = match linux.and_then(|l| l.seccomp().as_ref()) {
                Some(profile) => {
                    let program = crate::seccomp::compile(profile).map_err(|e| {
                        HandlerError::Precondition {
                            handler: self.config.name.clone(),
                            message: format!(
                                "the container's seccomp profile cannot be applied in the VM: {e}"
                            ),
                        }
                    })?;
                    (
                        crate::seccomp::to_bytes(&program),
                        crate::seccomp::flags(profile),
                    )
                }
                None => (Vec::new(), 0),
            };
            let request = agent_proto::CreateContainerRequest {
                id: c.id.to_owned(),
                rootfs: format!("{}/rootfs", c.id),
                process: Some(process_of(c.spec.process().as_ref())),
                mounts,
                log_path,
                hostname: c.spec.hostname().clone().unwrap_or_default(),
                readonly_rootfs: c
                    .spec
                    .root()
                    .as_ref()
                    .and_then(|r| r.readonly())
                    .unwrap_or(false),
                masked_paths: linux
                    .and_then(|l| l.masked_paths().clone())
                    .unwrap_or_default(),
                readonly_paths: linux
                    .and_then(|l| l.readonly_paths().clone())
                    .unwrap_or_default(),
                sysctls: linux
                    .and_then(|l| l.sysctl().clone())
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                seccomp_filter,
                seccomp_flags,
                stdin: c.stdin,
                stdin_once: c.stdin_once,
                tty: c
                    .spec
                    .process()
                    .as_ref()
                    .and_then(|p| p.terminal())
                    .unwrap_or(false),
                pid_mode: pid_mode.into(),
                pid_target,
                resources: linux.and_then(|l| l.resources().as_ref()).map(resources_of),
            };
            self.call(
                c.sandbox_id,
                "create",
                c.id,
                CALL_DEADLINE,
                |mut a| async move { a.create_container(request).await },
            )
            .await
        }
        .await;
        match result {
            Ok(_) => Ok(0),
            Err(e) => {
                let _ = vm::remove_dir(&cdir);
                let _ = std::fs::remove_file(cdir.with_extension("log-path"));
                Err(e)
            }
        }
    }

    async fn start_container(&self, c: &ContainerRef<'_>) -> Result<(), HandlerError> {
        let id = c.id.to_owned();
        self.call(
            c.sandbox_id,
            "start",
            c.id,
            CALL_DEADLINE,
            |mut a| async move { a.start_container(agent_proto::ContainerId { id }).await },
        )
        .await
        .map(|_| ())
    }

    async fn kill_container(
        &self,
        c: &ContainerRef<'_>,
        signal: i32,
        all: bool,
    ) -> Result<(), HandlerError> {
        let id = c.id.to_owned();
        let result = self
            .call(
                c.sandbox_id,
                "kill",
                c.id,
                CALL_DEADLINE,
                |mut a| async move {
                    a.kill_container(agent_proto::KillRequest { id, signal, all })
                        .await
                },
            )
            .await;
        match result {
            Ok(_) | Err(HandlerError::NotFound { .. }) => Ok(()),
            // A VM that is gone has killed everything in it.
            Err(HandlerError::Vm { .. }) if !self.vm(c.sandbox_id).is_ok_and(|v| v.alive()) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_container(
        &self,
        c: &ContainerRef<'_>,
        _force: bool,
    ) -> Result<(), HandlerError> {
        let id = c.id.to_owned();
        let alive = self.vm(c.sandbox_id).is_ok_and(|v| v.alive());
        if alive {
            let result = self
                .call(c.sandbox_id, "delete", c.id, CALL_DEADLINE, |mut a| async move {
                    a.delete_container(agent_proto::ContainerId { id }).await
                })
                .await;
            match result {
                Ok(_) | Err(HandlerError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let cdir = self.shared(c.sandbox_id).join(c.id);
        let _ = std::fs::remove_file(cdir.with_extension("log-path"));
        vm::remove_dir(&cdir).map_err(|m| HandlerError::Runtime {
            handler: self.config.name.clone(),
            operation: "delete".to_owned(),
            id: c.id.to_owned(),
            message: m,
        })
    }

    async fn container_state(
        &self,
        c: &ContainerRef<'_>,
    ) -> Result<Option<RuntimeState>, HandlerError> {
        let status = self.agent_status(c).await;
        match status {
            Ok(s) => Ok(Some(RuntimeState {
                status: match s.state() {
                    State::Created => "created",
                    State::Running => "running",
                    State::Exited | State::Unknown => "stopped",
                }
                .to_owned(),
                pid: s.pid,
            })),
            Err(HandlerError::NotFound { .. }) => Ok(None),
            Err(HandlerError::Vm { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn release_unknown_sandbox(&self, id: &str, _pid_pin: &Path) {
        let Some(record) = VmRecord::load(&self.dir_of(id)).filter(|r| r.id == id) else {
            return;
        };
        lock(&self.vms).remove(id);
        block_on(async move {
            if let Err(e) = teardown(&record).await {
                tracing::warn!(id = %record.id, error = %e, "ending the VM of an unknown sandbox");
            }
        });
    }

    fn pid_namespace(&self, c: &ContainerRef<'_>) -> Option<PathBuf> {
        // Not a path on the host: the container's namespace is in the guest, and
        // [`pid_mode`] reads this back when a container of the pod names it.
        Some(PathBuf::from(format!("{TARGET_PID_NAMESPACE}{}", c.id)))
    }

    async fn recover_container(&self, c: &ContainerRef<'_>) -> Result<Recovered, HandlerError> {
        let lost = |message: &str| Recovered::Lost {
            message: message.to_owned(),
        };
        if !self.vm(c.sandbox_id).is_ok_and(|v| v.alive()) {
            return Ok(lost(
                "the pod's VM is gone, and with it the container (node restart, or QEMU was killed)",
            ));
        }
        let status = self.agent_status(c).await;
        match status {
            Ok(s) => Ok(match (s.state(), s.exit) {
                (State::Exited, Some(e)) => Recovered::Exited(ExitStatus {
                    code: e.exit_code,
                    finished_at: e.finished_at_unix_nanos,
                    oom_killed: e.oom_killed,
                }),
                (State::Exited | State::Unknown, _) => lost("the agent lost the container"),
                _ => Recovered::Running,
            }),
            Err(HandlerError::NotFound { .. }) => Ok(lost("the pod's VM does not know it")),
            Err(e) => Err(e),
        }
    }

    async fn wait_container(&self, c: &ContainerRef<'_>) -> Result<ExitStatus, HandlerError> {
        let id = c.id.to_owned();
        // No deadline: a container may run for months. The wait ends with the VM.
        let exit = self
            .call(
                c.sandbox_id,
                "wait",
                c.id,
                Duration::MAX,
                |mut a| async move { a.wait_container(agent_proto::ContainerId { id }).await },
            )
            .await?;
        Ok(ExitStatus {
            code: exit.exit_code,
            finished_at: exit.finished_at_unix_nanos,
            oom_killed: exit.oom_killed,
        })
    }

    async fn exec_sync(
        &self,
        c: &ContainerRef<'_>,
        process: &Process,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, HandlerError> {
        let request = agent_proto::ExecSyncRequest {
            id: c.id.to_owned(),
            process: Some(process_of(Some(process))),
            timeout_ms: timeout.map(|t| t.as_millis().max(1) as u64).unwrap_or(0),
        };
        let deadline = timeout.map_or(Duration::MAX, |t| t + CALL_DEADLINE);
        let out = self
            .call(c.sandbox_id, "exec", c.id, deadline, |mut a| async move {
                a.exec_sync(request).await
            })
            .await?;
        if out.timed_out {
            return Err(HandlerError::Timeout {
                id: c.id.to_owned(),
                after: timeout.unwrap_or_default(),
            });
        }
        Ok(ExecOutput {
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn exec_streaming(
        &self,
        c: &ContainerRef<'_>,
        process: &Process,
        stdin: bool,
    ) -> Result<ExecSession, HandlerError> {
        let tty = process.terminal().unwrap_or(false);
        let start = agent_proto::ExecInput {
            input: Some(agent_proto::exec_input::Input::Start(
                agent_proto::ExecStart {
                    id: c.id.to_owned(),
                    process: Some(process_of(Some(process))),
                    tty,
                    stdin,
                },
            )),
        };
        let (input, requests) = stream::input(start);
        let outbound = self
            .call(
                c.sandbox_id,
                "exec",
                c.id,
                CALL_DEADLINE,
                |mut a| async move { a.exec(requests).await },
            )
            .await?;
        let (handler, id) = (self.config.name.clone(), c.id.to_owned());
        let failed = move |message: String| HandlerError::Agent {
            handler: handler.clone(),
            operation: "exec".to_owned(),
            id: id.clone(),
            code: tonic::Code::Unavailable,
            message,
        };
        Ok(stream::exec_session(outbound, input, tty, stdin, failed))
    }

    async fn attach(
        &self,
        c: &ContainerRef<'_>,
    ) -> Result<(AttachReader, AttachWriter), HandlerError> {
        let first = agent_proto::AttachInput {
            input: Some(agent_proto::attach_input::Input::Id(c.id.to_owned())),
        };
        let (input, requests) = stream::input(first);
        let outbound = self
            .call(
                c.sandbox_id,
                "attach",
                c.id,
                CALL_DEADLINE,
                |mut a| async move { a.attach(requests).await },
            )
            .await?;
        Ok(stream::attachment(outbound, input))
    }

    async fn port_forward(
        &self,
        sandbox: &SandboxSpec,
        _netns: Option<&Path>,
        port: u16,
    ) -> Result<crate::PortStream, HandlerError> {
        let first = agent_proto::PortData {
            port: u32::from(port),
            ..agent_proto::PortData::default()
        };
        let (input, requests) = stream::input(first);
        let outbound = self
            .call(
                &sandbox.id,
                "port-forward",
                &sandbox.id,
                CALL_DEADLINE,
                |mut a| async move { a.port_forward(requests).await },
            )
            .await?;
        Ok(stream::port_stream(outbound, input))
    }

    async fn update_container(
        &self,
        c: &ContainerRef<'_>,
        update: &ResourceUpdate,
    ) -> Result<(), HandlerError> {
        let request = agent_proto::UpdateContainerRequest {
            id: c.id.to_owned(),
            resources: Some(agent_proto::Resources {
                memory_limit: update.memory,
                memory_swap: update.memory_swap,
                cpu_quota: update.cpu_quota,
                cpu_period: update.cpu_period,
                cpu_shares: update.cpu_shares,
                pids_limit: None,
                // As at create: the node's cpusets are not the guest's.
                cpuset_cpus: None,
                cpuset_mems: None,
            }),
        };
        self.call(
            c.sandbox_id,
            "update",
            c.id,
            CALL_DEADLINE,
            |mut a| async move { a.update_container(request).await },
        )
        .await
        .map(|_| ())
    }

    async fn reopen_log(&self, c: &ContainerRef<'_>) -> Result<(), HandlerError> {
        let cdir = self.shared(c.sandbox_id).join(c.id);
        let io = |m: String| HandlerError::Runtime {
            handler: self.config.name.clone(),
            operation: "reopen-log".to_owned(),
            id: c.id.to_owned(),
            message: m,
        };
        let Ok(log_path) = std::fs::read(cdir.with_extension("log-path")) else {
            return Ok(());
        };
        let log_path = PathBuf::from(String::from_utf8_lossy(&log_path).into_owned());
        let old = log_generation(&cdir).unwrap_or(0);
        let next = old + 1;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io(format!("{}: {e}", log_path.display())))?;
        // A new name each time: the guest may have the old one's entry cached.
        let name = format!("log.{next}");
        share(&log_path, &cdir.join(&name), false, false).map_err(io)?;
        let request = agent_proto::ReopenLogRequest {
            id: c.id.to_owned(),
            log_path: format!("{}/{name}", c.id),
        };
        self.call(
            c.sandbox_id,
            "reopen-log",
            c.id,
            CALL_DEADLINE,
            |mut a| async move { a.reopen_log(request).await },
        )
        .await?;
        let stale = cdir.join(format!("log.{old}"));
        unmount(&stale);
        let _ = std::fs::remove_file(&stale);
        Ok(())
    }

    async fn sandbox_stats(&self, sandbox_id: &str) -> Option<ContainerStats> {
        // The VM's cgroup on the host holds QEMU and every helper.
        let vm = self.vm(sandbox_id).ok()?;
        let pid = vm.record.helper("qemu").map(|h| h.pid).unwrap_or(0);
        // Without a cgroup of its own, QEMU's would be crispd's, shared with every VM.
        if pid <= 0 || !vm.alive() || vm.record.cgroups.is_empty() {
            return None;
        }
        tokio::task::spawn_blocking(move || crate::stats::cgroup_stats(pid as u32, false).ok())
            .await
            .ok()
            .flatten()
    }

    async fn container_stats(
        &self,
        c: &ContainerRef<'_>,
        detail: bool,
    ) -> Result<ContainerStats, HandlerError> {
        // The container's cgroup in the guest: what its processes use there.
        let id = c.id.to_owned();
        let s = self
            .call(
                c.sandbox_id,
                "stats",
                c.id,
                CALL_DEADLINE,
                |mut a| async move {
                    a.container_stats(agent_proto::ContainerStatsRequest { id, detail })
                        .await
                },
            )
            .await?;
        // Stamped with the host's clock, which the stats cache ages samples by: the
        // guest's is set once at boot and drifts.
        let (secs, nanos) = crilog::now();
        Ok(ContainerStats {
            timestamp: secs * 1_000_000_000 + i64::from(nanos),
            cpu_usage_ns: s.cpu_usage_usec.saturating_mul(1000),
            memory_usage: s.memory_current,
            working_set: s.memory_current.saturating_sub(s.inactive_file),
            rss: s.anon,
            page_faults: s.page_faults,
            major_page_faults: s.major_page_faults,
            swap: s.swap,
            pids: s.pids,
            detail: detail.then(|| std::sync::Arc::new(crate::stats::read_sent(&s.cgroup_files))),
            sandbox_wide: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_is_sized_by_the_pods_limits_and_refused_when_it_cannot_fit() {
        let pod = |memory_limit: u64, cpu_millis: u64| crate::PodResources {
            memory_limit,
            cpu_millis,
            overhead_memory: 64 << 20,
            overhead_cpu_millis: 250,
        };
        // No limits: the configured size.
        assert_eq!(size_for(256, 1, &pod(0, 0), 24_000, 2), Ok((256, 1)));
        // 100 MiB and 500 m: the base plus the limits, rounded up.
        assert_eq!(
            size_for(256, 1, &pod(100 << 20, 500), 24_000, 2),
            Ok((356, 2))
        );
        // More CPUs than the host has: capped.
        assert_eq!(size_for(256, 1, &pod(0, 8000), 24_000, 2), Ok((256, 2)));
        // More memory than the host has: refused, saying how much.
        let refused = size_for(256, 1, &pod(30 << 30, 0), 24_000, 2).expect_err("too big");
        assert!(
            refused.contains("30976 MiB") && refused.contains("24000 MiB"),
            "{refused}"
        );
    }

    #[test]
    fn each_virtiofsd_gets_the_options_it_understands() {
        let (socket, share) = (Path::new("/vm/f.sock"), Path::new("/vm/shared"));
        let legacy = virtiofsd_args(true, socket, share);
        assert!(
            legacy.contains(&"source=/vm/shared".to_owned()),
            "{legacy:?}"
        );
        assert!(legacy.contains(&"sandbox=chroot".to_owned()), "{legacy:?}");
        assert!(!legacy.iter().any(|a| a.starts_with("--shared-dir")));
        let rust = virtiofsd_args(false, socket, share);
        assert!(
            rust.contains(&"--shared-dir=/vm/shared".to_owned()),
            "{rust:?}"
        );
        assert!(rust.contains(&"--sandbox=chroot".to_owned()), "{rust:?}");
        assert!(!rust.iter().any(|a| a == "-o"));
        for args in [&legacy, &rust] {
            assert!(args.contains(&"--socket-path=/vm/f.sock".to_owned()));
            assert!(args.contains(&"--thread-pool-size=0".to_owned()));
        }
    }

    #[test]
    fn qemus_own_virtiofsd_is_told_from_the_rust_one() {
        let legacy = Path::new("/usr/lib/qemu/virtiofsd");
        if legacy.exists() {
            assert!(is_legacy_virtiofsd(legacy));
        }
        // Not a virtiofsd at all: the flags of the maintained one.
        assert!(!is_legacy_virtiofsd(Path::new("/bin/true")));
    }
}

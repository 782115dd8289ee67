//! `crisp-agent`: PID 1 of every microVM pod's guest. It brings the guest up (file
//! systems, the kernel modules the initramfs carries, the shared virtio-fs directory),
//! then serves `crisp.agent.v1` over vsock to crisp's microVM handler on the host: it
//! sets up the pod's network and runs the pod's containers, each in its own mount, UTS
//! and cgroup namespaces, its cgroup and the PID namespace its PID mode asks for (the
//! guest's IPC namespace is the pod's), with its output written in kubelet's log format
//! straight to the container's log file on the host (through virtio-fs, so logs flow
//! while crispd is down).
//!
//! Outside a VM (`--unix <socket> --shared <dir>`) it serves on a unix socket instead,
//! without cgroups. Run as `modprobe` it loads a module the kernel asked for; run with
//! `--pause` it is the PID 1 of a pod's shared PID namespace.

mod cgroup;
mod container;
mod init;
mod mounts;
mod reaper;
mod service;
mod stream;

use std::path::PathBuf;

use agent_proto::agent_server::AgentServer;

/// How long bringing the guest up took, ms (0 outside a VM).
pub static INIT_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Where the host's shared directory (virtio-fs tag `crisp`) is mounted in the guest.
pub const SHARED: &str = "/run/crisp/shared";

/// Time since the guest's kernel started, ms.
pub fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args
        .first()
        .is_some_and(|a| a.rsplit('/').next() == Some("modprobe"))
    {
        // The kernel asking for a module (the agent is the guest's /sbin/modprobe).
        std::process::exit(init::modprobe(&args));
    }
    if std::env::args().nth(1).as_deref() == Some("--pause") {
        // PID 1 of a pod's shared PID namespace, started by the agent.
        container::pause();
    }
    let pid1 = std::process::id() == 1;
    if !pid1 {
        // Outside a VM: the containers' processes, whose parents exit right after
        // starting them in their PID namespaces, must still be ours to reap.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let mut unix: Option<PathBuf> = None;
    let mut shared = PathBuf::from(SHARED);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--unix" => unix = args.next().map(PathBuf::from),
            "--shared" => shared = args.next().map(PathBuf::from).unwrap_or(shared),
            _ => {}
        }
    }
    if pid1 {
        let began = std::time::Instant::now();
        init::bring_up();
        let _ = INIT_MS.set(began.elapsed().as_millis() as u64);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let code = match runtime {
        Ok(rt) => rt.block_on(serve(unix, shared, pid1)),
        Err(e) => {
            eprintln!("crisp-agent: runtime: {e}");
            1
        }
    };
    if pid1 {
        // PID 1 must never exit: power off instead, which ends the VM.
        init::power_off();
    }
    std::process::exit(code);
}

async fn serve(unix: Option<PathBuf>, shared: PathBuf, pid1: bool) -> i32 {
    let reaper = match reaper::Reaper::start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crisp-agent: SIGCHLD: {e}");
            return 1;
        }
    };
    // In a VM the containers' cgroups are the guest's; outside one there are none.
    let cgroups = cgroup::Cgroups::new(pid1.then(|| PathBuf::from("/sys/fs/cgroup")));
    let service = service::AgentService::new(shared, reaper, cgroups);
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(agent_proto::STREAM_WINDOW))
        .initial_connection_window_size(Some(agent_proto::CONNECTION_WINDOW))
        .add_service(AgentServer::new(service));
    let served = match unix {
        Some(path) => {
            let _ = std::fs::remove_file(&path);
            match tokio::net::UnixListener::bind(&path) {
                Ok(l) => {
                    router
                        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l))
                        .await
                }
                Err(e) => {
                    eprintln!("crisp-agent: listen on {}: {e}", path.display());
                    return 1;
                }
            }
        }
        None => {
            let addr =
                tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, agent_proto::AGENT_PORT);
            match tokio_vsock::VsockListener::bind(addr) {
                Ok(l) => {
                    // One line on the console (each byte costs an emulated exit): a boot
                    // that times out then says whether the guest got this far.
                    eprintln!(
                        "crisp-agent: listening on vsock port {} ({} ms after boot)",
                        addr.port(),
                        uptime_ms()
                    );
                    router.serve_with_incoming(l.incoming()).await
                }
                Err(e) => {
                    eprintln!("crisp-agent: listen on vsock port {}: {e}", addr.port());
                    return 1;
                }
            }
        }
    };
    match served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("crisp-agent: serve: {e}");
            1
        }
    }
}

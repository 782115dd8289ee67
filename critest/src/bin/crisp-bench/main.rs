//! Benchmarks crisp against containerd's CRI plugin (Debian's `containerd`, its own
//! socket, root and config) in one run, and prints tables of ratios.
//!
//! - `crisp-bench pull [--rounds N] [--layers N] [--layer-mib N]`: the same multi-layer
//!   image pulled from a local registry, fresh daemons and stores each round: median
//!   time and peak RSS (VmHWM).
//! - `crisp-bench pods [--count N]`: RunPodSandbox, StopPodSandbox, RemovePodSandbox
//!   latencies (sequential medians), the same with 8 clients at once (wall time per pod),
//!   daemon RSS idle and with 10 pods, and the RSS of the per-pod processes (containerd:
//!   shim + pause; crisp: none unless the pod shares a PID namespace). Same CNI conflist
//!   (bridge + host-local + portmap + loopback) for both.
//! - `crisp-bench containers [--count N]`: CreateContainer+StartContainer, ExecSync and
//!   StopContainer+RemoveContainer latency (medians) in one pod, ListContainerStats,
//!   ListContainers and ListPodSandbox latency with all N running, and the RSS each
//!   container adds in helper processes (crisp-monitor vs containerd's shim).
//!
//! - `crisp-bench microvm [--runs N] [--boots N]`: VM pods (crisp's microvm handler)
//!   beside runc pods (crisp's and containerd's) in one run: RunPodSandbox, container
//!   start and first output, ExecSync, stop+remove, host memory per pod (PSS), five pods
//!   of each kind started at once, the boot's split, host memory of QEMU and each helper,
//!   and N consecutive boots with none hung.
//!
//! - `crisp-bench density [--pods N] [--seconds S]`: N kubelet-style pods (default 110,
//!   a node's default maximum) of one `sleep` container each: the time to start them
//!   all, ListContainers / ListPodSandbox / stats latencies with all running, daemon and
//!   helper memory, and CPU idle and under kubelet's relist (S seconds each, default 60).
//!
//! Needs root, `crispd` and `crisp-monitor` (PATH or $CRISPD's directory), `containerd`,
//! `docker-registry` and the CNI plugins.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cri_proto::v1 as cri;
use critest::fixture::{self, ImageBuilder, LayerBuilder, Registry};

pub(crate) type Error = Box<dyn std::error::Error>;

/// crisp against containerd's CRI plugin, same machine, same run: ratios.
#[derive(Debug, clap::Parser)]
#[command(name = "crisp-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// One multi-layer image pulled from a local registry, fresh daemons each round:
    /// median time and peak daemon RSS.
    Pull {
        /// Rounds (each with fresh daemons and stores).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Layers of random data on top of busybox.
        #[arg(long, default_value_t = 6)]
        layers: u32,
        /// Size of each of those layers, MiB.
        #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..=4096))]
        layer_mib: u32,
    },
    /// RunPodSandbox, StopPodSandbox, RemovePodSandbox latencies, concurrent pod churn,
    /// daemon and per-pod memory.
    Pods {
        /// Pods created sequentially.
        #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
    },
    /// VM pods (the microvm handler) beside runc pods (crisp's and containerd's):
    /// RunPodSandbox, container start, ExecSync, stop+remove, host memory per pod, five
    /// pods at once, and consecutive boots.
    Microvm {
        /// Measured runs (pod + container each).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: u32,
        /// Consecutive boots checked for hangs.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1000))]
        boots: u32,
    },
    /// A burst of concurrent connections, and whether the daemon's memory comes back.
    Burst {
        /// Connections opened at once.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100000))]
        connections: u32,
        /// Seconds to wait before the last RSS reading.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
        settle: u64,
    },
    /// A node's worth of kubelet-style pods: start time, relist latencies, memory and
    /// CPU idle and under kubelet's relist.
    Density {
        /// Pods, one `sleep` container each.
        #[arg(long, default_value_t = 110, value_parser = clap::value_parser!(u32).range(1..=1000))]
        pods: u32,
        /// Seconds of each CPU measurement (idle, then kubelet's relist).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        seconds: u64,
    },
    /// crisp's StopPodSandbox and CreateContainer+StartContainer against what they
    /// cannot avoid: the CNI DEL chain and `runc create` + `runc start` by themselves.
    Floors {
        /// Rounds (a pod and a container each, then the floors).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        rounds: u32,
    },
    /// Container create+start, ExecSync, stop+remove, List* and stats latencies, and
    /// per-container helper memory.
    Containers {
        /// Containers in the pod.
        #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
    },
}

/// Incompressible bytes, fast.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A daemon under test.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
}

impl Daemon {
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn wait_socket(socket: &Path, child: &mut Child) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("daemon exited early: {status}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{} never answered", socket.display()).into())
}

/// A helper binary crisp ships with crispd: next to $CRISPD, else from PATH.
pub(crate) fn sibling(name: &str) -> PathBuf {
    std::env::var_os("CRISPD")
        .map(PathBuf::from)
        .and_then(|d| d.parent().map(|p| p.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn start_crispd(dir: &Path) -> Result<Daemon, Error> {
    start_crispd_with(dir, "")
}

pub(crate) fn start_crispd_with(dir: &Path, extra: &str) -> Result<Daemon, Error> {
    let bin = std::env::var("CRISPD").unwrap_or_else(|_| "crispd".to_owned());
    std::fs::create_dir_all(dir)?;
    let socket = dir.join("crisp.sock");
    let config = dir.join("crisp.toml");
    std::fs::write(
        &config,
        format!(
            "root = \"{0}/root\"\nstate = \"{0}/state\"\nlisten = \"{1}\"\nlog_dir = \"{0}/log\"\nlog_level = \"warn\"\n{extra}\n[nri]\nsocket_path = \"{0}/nri/nri.sock\"\n",
            dir.display(),
            socket.display()
        ),
    )?;
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    wait_socket(&socket, &mut child)?;
    Ok(Daemon { child, socket })
}

fn start_containerd(dir: &Path, registry: &str) -> Result<Daemon, Error> {
    start_containerd_with(dir, registry, "")
}

pub(crate) fn start_containerd_with(
    dir: &Path,
    registry: &str,
    extra: &str,
) -> Result<Daemon, Error> {
    std::fs::create_dir_all(dir)?;
    let socket = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 2
root = "{0}/root"
state = "{0}/state"
[grpc]
  address = "{1}"
[ttrpc]
  address = "{1}.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."{2}"]
  endpoint = ["http://{2}"]
{3}
"#,
            dir.display(),
            socket.display(),
            registry,
            extra
        ),
    )?;
    let mut child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_socket(&socket, &mut child)?;
    Ok(Daemon { child, socket })
}

async fn timed_pull(socket: &Path, image: &str) -> Result<Duration, Error> {
    let mut clients = critest::Clients::connect(socket).await?;
    // The CRI plugin may need a moment after its socket appears.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match clients
            .image
            .list_images(cri::ListImagesRequest::default())
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let started = Instant::now();
    clients
        .image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    Ok(started.elapsed())
}

/// Clients of `daemon`, once it answers Version (at most 20 s).
pub(crate) async fn serving(daemon: &Daemon) -> Result<critest::Clients, Error> {
    let mut clients = critest::Clients::connect(&daemon.socket).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while clients
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err("daemon never answered Version".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(clients)
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let (rounds, layers, layer_mib) = match <Cli as clap::Parser>::parse().command {
        Bench::Pods { count } => return pods::run(count as usize).await,
        Bench::Containers { count } => return containers::run(count as usize).await,
        Bench::Floors { rounds } => return floors::run(rounds as usize).await,
        Bench::Density { pods, seconds } => return density::run(pods as usize, seconds).await,
        Bench::Burst {
            connections,
            settle,
        } => return burst::run(connections as usize, settle).await,
        Bench::Microvm { runs, boots } => return microvm::run(runs as usize, boots as usize).await,
        Bench::Pull {
            rounds,
            layers,
            layer_mib,
        } => (rounds as usize, layers as usize, layer_mib as usize),
    };
    let work = tempdir()?;
    let registry = Registry::start(&work.join("registry"), None)?;
    let mut builder = ImageBuilder::new().layer(fixture::busybox_layer()?);
    for i in 0..layers {
        builder = builder.layer(
            LayerBuilder::new()
                .file(
                    &format!("data/{i}.bin"),
                    &noise(layer_mib << 20, i as u64 + 1),
                    0o644,
                )
                .finish(),
        );
    }
    let image = builder.build();
    let total: usize = image.layers.iter().map(Vec::len).sum();
    fixture::push(&registry, "bench/big", "v1", &image)?;
    let name = format!("{}/bench/big:v1", registry.addr);

    let mut crisp_times = Vec::new();
    let mut containerd_times = Vec::new();
    let (mut crisp_rss, mut containerd_rss) = (0u64, 0u64);
    for round in 0..rounds {
        let dir = work.join(format!("crisp-{round}"));
        let daemon = start_crispd(&dir)?;
        crisp_times.push(timed_pull(&daemon.socket, &name).await?.as_secs_f64());
        crisp_rss = crisp_rss.max(daemon.peak_rss_kib());
        drop(daemon);
        let _ = std::fs::remove_dir_all(&dir);

        let dir = work.join(format!("containerd-{round}"));
        let daemon = start_containerd(&dir, &registry.addr)?;
        containerd_times.push(timed_pull(&daemon.socket, &name).await?.as_secs_f64());
        containerd_rss = containerd_rss.max(daemon.peak_rss_kib());
        drop(daemon);
        unmount_under(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let crisp = median(&mut crisp_times);
    let containerd = median(&mut containerd_times);
    println!("# crisp-bench pull");
    println!(
        "machine: {} cores; image: {} layers, {:.0} MiB compressed; registry: docker-registry on loopback; {} rounds, fresh daemons and stores each round",
        std::thread::available_parallelism().map_or(0, usize::from),
        image.layers.len(),
        total as f64 / 1048576.0,
        rounds
    );
    println!("| metric | crisp | containerd | crisp/containerd |");
    println!("|---|---|---|---|");
    println!(
        "| pull time, median (s) | {crisp:.2} | {containerd:.2} | {:.2} |",
        crisp / containerd
    );
    println!(
        "| daemon peak RSS (MiB) | {:.1} | {:.1} | {:.2} |",
        crisp_rss as f64 / 1024.0,
        containerd_rss as f64 / 1024.0,
        crisp_rss as f64 / containerd_rss.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

pub(crate) fn tempdir() -> Result<PathBuf, Error> {
    let dir = std::env::temp_dir().join(format!("crisp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// containerd's snapshotter may leave mounts; detach them before removing its root.
pub(crate) fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = dir.display().to_string();
    for line in mounts.lines().rev() {
        if let Some(target) = line.split_whitespace().nth(1)
            && target.starts_with(&prefix)
        {
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
}

mod burst;
mod containers;
mod density;
mod floors;
mod microvm;
mod pods;

/// RSS of a process in KiB (0 if gone).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Every process whose ancestry does not include `daemon` but whose command line names
/// one of `markers` (per-pod helpers that outlive their parent).
pub(crate) fn helper_rss(markers: &[&str]) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        if markers.iter().any(|m| text.contains(m)) {
            total += rss_kib(pid);
        }
    }
    total
}

/// The containerd CRI plugin settings both benchmarks use: the fixture's pause image,
/// the oom_score_adj clamp this host needs, and the benchmark's CNI directory.
pub(crate) fn containerd_cri_config(pause_ref: &str, cni_conf_dir: &Path) -> String {
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{pause_ref}\"\n  restrict_oom_score_adj = true\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{}\"\n",
        cni_conf_dir.display()
    )
}

/// Prints a benchmark table's title, method line and header.
pub(crate) fn print_table(title: &str, method: &str) {
    println!("# crisp-bench {title}");
    println!(
        "machine: {} cores; {method}",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!("| metric | crisp | containerd | crisp/containerd |");
    println!("|---|---|---|---|");
}

/// A container named `name` of `image` running `command`.
pub(crate) fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command: command.iter().map(|&c| c.to_owned()).collect(),
        ..Default::default()
    }
}

/// One row: both figures and their ratio.
pub(crate) fn print_row(name: &str, crisp: f64, containerd: f64, unit: &str) {
    println!(
        "| {name} ({unit}) | {crisp:.1} | {containerd:.1} | {:.2} |",
        crisp / containerd.max(f64::MIN_POSITIVE)
    );
}

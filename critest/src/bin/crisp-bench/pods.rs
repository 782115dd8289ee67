//! `crisp-bench pods`: sandbox lifecycle latency and per-pod memory, crisp vs containerd.

use std::path::Path;
use std::time::{Duration, Instant};

use cri_proto::v1 as cri;
use critest::fixture::{self, ImageBuilder, Registry};

use crate::{
    Daemon, Error, helper_rss, median, rss_kib, start_containerd_with, tempdir, unmount_under,
};

const PAUSE: &str = "pause:bench";

pub(crate) fn conflist(dir: &Path, bridge: &str) -> Result<std::path::PathBuf, Error> {
    let conf = dir.join("net.d");
    std::fs::create_dir_all(&conf)?;
    std::fs::write(
        conf.join("10-bench.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"bench","plugins":[
  {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,
    "ipam":{{"type":"host-local","dataDir":"{}","routes":[{{"dst":"0.0.0.0/0"}}],"ranges":[[{{"subnet":"10.213.0.0/16"}}]]}}}},
  {{"type":"portmap","capabilities":{{"portMappings":true}}}},
  {{"type":"loopback"}}]}}"#,
            dir.join("ipam").display()
        ),
    )?;
    Ok(conf)
}

/// crisp started in `dir` with its pods on a bridge of their own (`bridge`).
pub(crate) fn start_crispd_on_bridge(dir: &Path, bridge: &str) -> Result<crate::Daemon, Error> {
    start_crispd_on_bridge_with(dir, bridge, "")
}

/// [`start_crispd_on_bridge`] with more configuration (whole tables).
pub(crate) fn start_crispd_on_bridge_with(
    dir: &Path,
    bridge: &str,
    extra: &str,
) -> Result<crate::Daemon, Error> {
    let conf = conflist(dir, bridge)?;
    crate::start_crispd_with(
        dir,
        &format!("[cni]\nconf_dir = \"{}\"\n{extra}", conf.display()),
    )
}

pub(crate) fn pod(i: usize) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("bench-{i}"),
            uid: format!("uid-{i}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("bench-{i}"),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                // What kubelet sends for a pod without shareProcessNamespace.
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod.into(),
                    pid: cri::NamespaceMode::Container.into(),
                    ipc: cri::NamespaceMode::Pod.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Figures {
    run: f64,
    stop: f64,
    remove: f64,
    parallel_per_pod: f64,
    parallel_32_per_pod: f64,
    idle_rss: u64,
    loaded_rss: u64,
    per_pod_rss: u64,
}

async fn measure(
    daemon: &Daemon,
    count: usize,
    markers: &[&str],
    pause: Option<&str>,
) -> Result<Figures, Error> {
    let mut clients = crate::serving(daemon).await?;
    if let Some(image) = pause {
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
    }
    // Warm-up: the first pod pays for plugin and page-cache misses on both sides.
    let rt = &mut clients.runtime;
    let warm = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod(999_999)),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: warm.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: warm,
    })
    .await?;
    let idle_rss = rss_kib(daemon.child.id());

    let (mut run, mut stop, mut remove) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..count {
        let t = Instant::now();
        let id = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod(i)),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        run.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        stop.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
        remove.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // 8, then 32 clients at once, each running its share of pods through their whole life.
    let parallel_per_pod = parallel(&clients, 8, count, 10_000).await?;
    let parallel_32_per_pod = parallel(&clients, 32, count.max(32), 20_000).await?;

    // Memory with 10 pods up.
    let before = helper_rss(markers);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            rt_clone(&clients)
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(pod(50_000 + i)),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner()
                .pod_sandbox_id,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded_rss = rss_kib(daemon.child.id());
    let per_pod_rss = helper_rss(markers).saturating_sub(before) / 10;
    for id in ids {
        let mut rt = rt_clone(&clients);
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
    }
    Ok(Figures {
        run: median(&mut run),
        stop: median(&mut stop),
        remove: median(&mut remove),
        parallel_per_pod,
        parallel_32_per_pod,
        idle_rss,
        loaded_rss,
        per_pod_rss,
    })
}

/// `workers` clients at once, each creating, stopping and removing its share of `count`
/// pods; the wall time per pod, ms.
async fn parallel(
    clients: &critest::Clients,
    workers: usize,
    count: usize,
    base: usize,
) -> Result<f64, Error> {
    let started = Instant::now();
    let share = count / workers;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let mut rt = clients.runtime.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..share {
                let i = base + worker * 100 + j;
                let id = rt
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(pod(i)),
                        runtime_handler: String::new(),
                    })
                    .await?
                    .into_inner()
                    .pod_sandbox_id;
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await?;
                rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / (share * workers).max(1) as f64)
}

fn rt_clone(
    clients: &critest::Clients,
) -> cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
    clients.runtime.clone()
}

pub async fn run(count: usize) -> Result<(), Error> {
    let work = tempdir()?;
    let registry = Registry::start(&work.join("registry"), None)?;
    let pause = ImageBuilder::new()
        .layer(fixture::busybox_layer()?)
        .entrypoint(&["/bin/sleep", "2147483647"])
        .build();
    fixture::push(&registry, "pause", "bench", &pause)?;
    let pause_ref = format!("{}/{PAUSE}", registry.addr);

    let crisp_dir = work.join("crisp");
    let crisp = start_crispd_on_bridge(&crisp_dir, "crbench0")?;
    let c = measure(&crisp, count, &["crisp-monitor"], None).await?;
    drop(crisp);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crbench0"])
        .status();

    let ctd_dir = work.join("containerd");
    let conf = conflist(&ctd_dir, "crbench1")?;
    let extra = crate::containerd_cri_config(&pause_ref, &conf);
    let ctd = start_containerd_with(&ctd_dir, &registry.addr, &extra)?;
    let d = measure(
        &ctd,
        count,
        &["containerd-shim", "2147483647"],
        Some(&pause_ref),
    )
    .await?;
    drop(ctd);
    unmount_under(&ctd_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crbench1"])
        .status();
    let _ = std::fs::remove_dir_all(&work);

    crate::print_table(
        "pods",
        &format!(
            "{count} pods sequentially (medians), then {count} with 8 and with 32 clients at once; CNI bridge+host-local+portmap+loopback; runc; pods with PID mode CONTAINER as kubelet sends"
        ),
    );
    let row = crate::print_row;
    row("RunPodSandbox, median", c.run, d.run, "ms");
    row("StopPodSandbox, median", c.stop, d.stop, "ms");
    row("RemovePodSandbox, median", c.remove, d.remove, "ms");
    row(
        "create+stop+remove, 8 clients, wall per pod",
        c.parallel_per_pod,
        d.parallel_per_pod,
        "ms",
    );
    row(
        "create+stop+remove, 32 clients, wall per pod",
        c.parallel_32_per_pod,
        d.parallel_32_per_pod,
        "ms",
    );
    row(
        "daemon RSS idle",
        c.idle_rss as f64 / 1024.0,
        d.idle_rss as f64 / 1024.0,
        "MiB",
    );
    row(
        "daemon RSS with 10 pods",
        c.loaded_rss as f64 / 1024.0,
        d.loaded_rss as f64 / 1024.0,
        "MiB",
    );
    row(
        "per-pod processes RSS",
        c.per_pod_rss as f64 / 1024.0,
        d.per_pod_rss as f64 / 1024.0,
        "MiB",
    );
    Ok(())
}

//! `crisp-bench containers`: container create+start, ExecSync and stop+remove latency in
//! one pod, crisp vs containerd, plus the RSS of the per-container processes.

use std::time::{Duration, Instant};

use cri_proto::v1 as cri;
use critest::fixture::{self, ImageBuilder, Registry};

use crate::{Daemon, Error, helper_rss, median, start_containerd_with, tempdir, unmount_under};

struct Figures {
    create_start: f64,
    exec: f64,
    stop_remove: f64,
    per_container_rss: u64,
    list_stats: f64,
    list_containers: f64,
    list_containers_8: f64,
    list_containers_32: f64,
    list_pods: f64,
}

/// Median latency of ListContainers calls made by `clients` clients at once, 10 each, ms.
async fn concurrent_lists(
    rt: &cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    clients: usize,
) -> Result<f64, Error> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            for _ in 0..10 {
                let t = Instant::now();
                rt.list_containers(cri::ListContainersRequest::default())
                    .await?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, tonic::Status>(times)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(median(&mut all))
}

/// Median latency of `rounds` calls of `call`, ms.
async fn timed<F, Fut>(rounds: usize, mut call: F) -> Result<f64, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, tonic::Status>>,
{
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        call().await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(&mut times))
}

async fn measure(
    daemon: &Daemon,
    image: &str,
    count: usize,
    helper: &str,
    pause: Option<&str>,
) -> Result<Figures, Error> {
    let mut clients = crate::serving(daemon).await?;
    let images: Vec<&str> = std::iter::once(image).chain(pause).collect();
    pull_all(&mut clients, &images).await?;
    let pod_config = crate::pods::pod(0);
    let rt = &mut clients.runtime;
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let config = |i: usize| crate::container_config(&format!("c{i}"), image, &["sleep", "1000"]);
    let (mut create_start, mut exec, mut stop_remove) = (Vec::new(), Vec::new(), Vec::new());
    let before = helper_rss(&[helper]);
    let mut kept = Vec::new();
    for i in 0..count {
        let t = Instant::now();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config(i)),
                sandbox_config: Some(pod_config.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        create_start.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let out = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await?
            .into_inner();
        exec.push(t.elapsed().as_secs_f64() * 1000.0);
        if out.exit_code != 0 {
            return Err(format!("exec exited {}", out.exit_code).into());
        }
        kept.push(id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_container_rss = helper_rss(&[helper]).saturating_sub(before) / count.max(1) as u64;
    // containerd samples stats in the background: let a round pass first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let listing = rt.clone();
    let list_stats = timed(20, || {
        let mut rt = listing.clone();
        async move {
            let n = rt
                .list_container_stats(cri::ListContainerStatsRequest::default())
                .await?
                .into_inner()
                .stats
                .len();
            Ok(n)
        }
    })
    .await?;
    let list_containers = timed(20, || {
        let mut rt = listing.clone();
        async move {
            let n = rt
                .list_containers(cri::ListContainersRequest::default())
                .await?
                .into_inner()
                .containers
                .len();
            Ok(n)
        }
    })
    .await?;
    let list_containers_8 = concurrent_lists(&listing, 8).await?;
    let list_containers_32 = concurrent_lists(&listing, 32).await?;
    let list_pods = timed(20, || {
        let mut rt = listing.clone();
        async move {
            let n = rt
                .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items
                .len();
            Ok(n)
        }
    })
    .await?;
    for id in kept {
        let t = Instant::now();
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await?;
        rt.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await?;
        stop_remove.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await?;
    Ok(Figures {
        create_start: median(&mut create_start),
        exec: median(&mut exec),
        stop_remove: median(&mut stop_remove),
        per_container_rss,
        list_stats,
        list_containers,
        list_containers_8,
        list_containers_32,
        list_pods,
    })
}

/// Pushes the busybox image the container benchmarks run and a pause image for
/// containerd; their references.
pub(crate) fn push_busybox_and_pause(registry: &Registry) -> Result<(String, String), Error> {
    let busybox = ImageBuilder::new()
        .layer(fixture::busybox_layer()?)
        .cmd(&["sh"])
        .build();
    fixture::push(registry, "bench/busybox", "1", &busybox)?;
    let pause = ImageBuilder::new()
        .layer(fixture::busybox_layer()?)
        .entrypoint(&["/bin/sleep", "2147483647"])
        .build();
    fixture::push(registry, "pause", "bench", &pause)?;
    Ok((
        format!("{}/bench/busybox:1", registry.addr),
        format!("{}/pause:bench", registry.addr),
    ))
}

/// Pulls `images` through `clients`.
pub(crate) async fn pull_all(clients: &mut critest::Clients, images: &[&str]) -> Result<(), Error> {
    for image in images {
        clients
            .image
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: (*image).to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

pub async fn run(count: usize) -> Result<(), Error> {
    let work = tempdir()?;
    let registry = Registry::start(&work.join("registry"), None)?;
    let (image, pause_ref) = push_busybox_and_pause(&registry)?;

    let crisp_dir = work.join("crisp");
    let crisp = crate::pods::start_crispd_on_bridge(&crisp_dir, "crbench2")?;
    let c = measure(&crisp, &image, count, "crisp-monitor", None).await?;
    drop(crisp);
    unmount_under(&crisp_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crbench2"])
        .status();

    let ctd_dir = work.join("containerd");
    let conf = crate::pods::conflist(&ctd_dir, "crbench3")?;
    let extra = crate::containerd_cri_config(&pause_ref, &conf);
    let ctd = start_containerd_with(&ctd_dir, &registry.addr, &extra)?;
    let d = measure(&ctd, &image, count, "containerd-shim", Some(&pause_ref)).await?;
    drop(ctd);
    unmount_under(&ctd_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crbench3"])
        .status();
    let _ = std::fs::remove_dir_all(&work);

    crate::print_table(
        "containers",
        &format!("{count} busybox containers (`sleep 1000`) in one pod, medians; runc"),
    );
    let row = crate::print_row;
    row(
        "CreateContainer+StartContainer",
        c.create_start,
        d.create_start,
        "ms",
    );
    row("ExecSync `true`", c.exec, d.exec, "ms");
    row(
        "StopContainer+RemoveContainer",
        c.stop_remove,
        d.stop_remove,
        "ms",
    );
    row(
        &format!("ListContainerStats, {count} running"),
        c.list_stats,
        d.list_stats,
        "ms",
    );
    row(
        &format!("ListContainers, {count} running"),
        c.list_containers,
        d.list_containers,
        "ms",
    );
    row(
        &format!("ListContainers, {count} running, 8 clients at once (median call)"),
        c.list_containers_8,
        d.list_containers_8,
        "ms",
    );
    row(
        &format!("ListContainers, {count} running, 32 clients at once (median call)"),
        c.list_containers_32,
        d.list_containers_32,
        "ms",
    );
    row("ListPodSandbox", c.list_pods, d.list_pods, "ms");
    row(
        "per-container helper RSS (crisp-monitor / shim growth)",
        c.per_container_rss as f64 / 1024.0,
        d.per_container_rss as f64 / 1024.0,
        "MiB",
    );
    Ok(())
}

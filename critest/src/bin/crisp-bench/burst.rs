//! A burst of concurrent connections: each opens its own connection and makes a few
//! calls at once with the others; the daemon's RSS before, right after, and some time
//! after (whether the memory comes back).

use std::time::{Duration, Instant};

use cri_proto::v1 as cri;

use crate::{Daemon, Error, rss_kib, start_containerd, start_crispd, tempdir};

/// RSS (KiB) idle, just after the burst, and `settle` later; the burst's duration.
#[derive(Debug)]
struct Burst {
    idle: u64,
    after: u64,
    settled: u64,
    took: Duration,
    failed: usize,
}

async fn burst(daemon: &Daemon, connections: usize, settle: Duration) -> Result<Burst, Error> {
    let mut clients = crate::serving(daemon).await?;
    clients
        .runtime
        .version(cri::VersionRequest::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = daemon.child.id();
    let idle = rss_kib(pid);
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let socket = daemon.socket.clone();
        calls.spawn(async move {
            let Ok(mut c) = critest::Clients::connect(&socket).await else {
                return false;
            };
            let a = c
                .runtime
                .version(cri::VersionRequest::default())
                .await
                .is_ok();
            let b = c
                .runtime
                .list_containers(cri::ListContainersRequest::default())
                .await
                .is_ok();
            let d = c
                .image
                .list_images(cri::ListImagesRequest::default())
                .await
                .is_ok();
            a && b && d
        });
    }
    let mut failed = 0;
    while let Some(done) = calls.join_next().await {
        if !matches!(done, Ok(true)) {
            failed += 1;
        }
    }
    let took = started.elapsed();
    let after = rss_kib(pid);
    tokio::time::sleep(settle).await;
    let settled = rss_kib(pid);
    Ok(Burst {
        idle,
        after,
        settled,
        took,
        failed,
    })
}

pub async fn run(connections: usize, settle_secs: u64) -> Result<(), Error> {
    let work = tempdir()?;
    let settle = Duration::from_secs(settle_secs);
    let crisp = start_crispd(&work.join("crisp"))?;
    let c = burst(&crisp, connections, settle).await;
    drop(crisp);
    eprintln!("burst, crisp: {c:?}");
    let registry = critest::fixture::Registry::start(&work.join("registry"), None)?;
    let ctd = start_containerd(&work.join("containerd"), &registry.addr)?;
    let d = burst(&ctd, connections, settle).await;
    drop(ctd);
    eprintln!("burst, containerd: {d:?}");
    crate::unmount_under(&work);
    let _ = std::fs::remove_dir_all(&work);
    let (c, d) = (c?, d?);
    crate::print_table(
        "burst",
        &format!(
            "{connections} connections at once, each Version + ListContainers + ListImages; RSS {settle_secs} s later"
        ),
    );
    let row = crate::print_row;
    let mib = |k: u64| k as f64 / 1024.0;
    row("daemon RSS idle", mib(c.idle), mib(d.idle), "MiB");
    row("daemon RSS right after", mib(c.after), mib(d.after), "MiB");
    row(
        &format!("daemon RSS {settle_secs} s after"),
        mib(c.settled),
        mib(d.settled),
        "MiB",
    );
    row(
        "after / idle",
        c.settled as f64 / c.idle.max(1) as f64,
        d.settled as f64 / d.idle.max(1) as f64,
        "x",
    );
    row(
        "burst duration",
        c.took.as_secs_f64() * 1000.0,
        d.took.as_secs_f64() * 1000.0,
        "ms",
    );
    row(
        "connections that failed",
        c.failed as f64,
        d.failed as f64,
        "count",
    );
    Ok(())
}

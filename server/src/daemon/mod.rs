//! The daemon's life: configuration, logging, the state lock, the socket, serving, signals.

mod deadline;
mod lock;
mod memory;
mod notify;
mod reload;
mod socket;

use std::process::ExitCode;
use std::sync::Arc;

use cri_proto::v1::image_service_server::ImageServiceServer;
use cri_proto::v1::runtime_service_server::RuntimeServiceServer;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use crate::cli::Cli;
use crate::cri::{ImageService, RuntimeService};
use crate::logging;
use crate::state::Daemon;

pub use lock::{LockError, lock_state_dir};

/// How long in-flight CRI calls may run on after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs crispd until SIGTERM or SIGINT.
pub fn run(cli: &Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let loaded = cli.load_config()?;
    let config = loaded.config;
    let levels = logging::init(config.log_level, config.log_format)?;
    for source in &loaded.sources {
        tracing::info!(file = %source.display(), "configuration read");
    }
    let _lock = lock_state_dir(&config.state)?;
    for dir in [&config.root, &config.log_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    memory::limit_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crispd")
        .build()?;
    runtime.block_on(serve(cli, config, levels))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    cli: &Cli,
    config: conf::Config,
    levels: logging::LevelHandle,
) -> Result<(), Box<dyn std::error::Error>> {
    // Handlers first: a SIGTERM that arrives once the socket answers must stop us
    // gracefully, not kill us with the default action.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let images = image::Images::open(crate::options::image_options(&config)).await?;
    let handlers = Arc::new(crate::handlers::Handlers::build(&config));
    let containers =
        crate::container::load(&config.root).map_err(|e| format!("cannot load containers: {e}"))?;
    // Containers whose create a crash interrupted go first: their cgroups sit in their
    // pods', which the pod restore may remove.
    let (bundles, layers) =
        crate::container::release_unknown(&config.state, &handlers, images.store(), &containers)
            .await;
    if bundles + layers > 0 {
        tracing::warn!(bundles, layers, "removed what interrupted creates left");
    }
    let pods = crate::pod::restore(&config, &handlers).await?;
    // Every listener is set up before the CRI socket answers: a bad streaming or metrics
    // setting stops crispd before it binds the socket kubelet waits for.
    let streaming = config.streaming.clone();
    let stream_listener = tokio::net::TcpListener::bind(&streaming.address)
        .await
        .map_err(|e| {
            format!(
                "streaming.address {}: cannot listen: {e}",
                streaming.address
            )
        })?;
    let mut local = stream_listener.local_addr()?;
    if local.ip().is_unspecified() {
        local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let tls = match (&streaming.tls_cert, &streaming.tls_key) {
        (Some(cert), Some(key)) => Some(crate::streaming::tls_acceptor(cert, key)?),
        (None, None) => None,
        _ => return Err("streaming: tls_cert and tls_key go together".into()),
    };
    let metrics_listener = match config.metrics.address.as_str() {
        "" => None,
        address => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| format!("metrics.address {address}: cannot listen: {e}"))?,
        ),
    };
    let socket_path = config.listen.clone();
    let listen = config.listen.clone();
    let daemon = Arc::new(Daemon::new(config, images, pods, containers, handlers));
    // What became of the containers while crispd was away, before anyone can ask.
    crate::container::recover(&daemon).await;
    for pod in daemon.pods.all() {
        crate::pod::watch(Arc::clone(&daemon), pod.snapshot().id.clone());
    }
    // Pre-installed NRI plugins see the node as it is before the first CRI call.
    crate::nri::start(&daemon).await;
    let listener = socket::bind(&listen)?;
    tokio::spawn(crate::events::Events::run(Arc::clone(&daemon)));
    tokio::spawn(memory::trim_after_activity(Arc::clone(&daemon)));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let _ = daemon.streaming.set(crate::streaming::Streaming::new(
        format!("{scheme}://{local}"),
        streaming.token_timeout,
    ));
    tracing::info!(address = %local, tls = tls.is_some(), "streaming server listening");
    tokio::spawn(crate::streaming::serve(
        Arc::clone(&daemon),
        stream_listener,
        tls,
    ));
    if let Some(listener) = metrics_listener {
        tracing::info!(address = %listener.local_addr()?, "serving Prometheus metrics on /metrics");
        tokio::spawn(crate::metrics::serve(Arc::clone(&daemon), listener));
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<&'static str>();

    let reload_daemon = Arc::clone(&daemon);
    let source = cli.config_source();
    let level_override = cli.log_level;
    let signals = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigterm.recv() => { let _ = stop_tx.send("SIGTERM"); break; }
                _ = sigint.recv() => { let _ = stop_tx.send("SIGINT"); break; }
                _ = sighup.recv() => {
                    notify::notify("RELOADING=1");
                    reload::reload(&reload_daemon, &source, level_override, &levels);
                    notify::notify("READY=1");
                }
            }
        }
    });

    let stopping = Arc::new(tokio::sync::Notify::new());
    let stopping_tx = Arc::clone(&stopping);
    let shutdown = async move {
        let why = stop_rx.await.unwrap_or("signal task ended");
        tracing::info!(signal = why, "shutting down; containers keep running");
        notify::notify("STOPPING=1");
        stopping_tx.notify_one();
    };

    tracing::info!(
        socket = %socket_path.display(),
        version = env!("CARGO_PKG_VERSION"),
        "crispd serving CRI v1"
    );
    notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));

    let server = tonic::transport::Server::builder()
        .layer(crate::metrics::RpcMetricsLayer {
            daemon: Arc::clone(&daemon),
        })
        .layer(deadline::DeadlineLayer)
        .add_service(RuntimeServiceServer::new(RuntimeService::new(Arc::clone(
            &daemon,
        ))))
        .add_service(ImageServiceServer::new(ImageService::new(Arc::clone(
            &daemon,
        ))))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    // Graceful shutdown waits for clients to hang up, and kubelet never does on its own:
    // give in-flight calls a grace period, then close what is left.
    let result = tokio::select! {
        result = server => result,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "clients still connected after the grace period; closing their connections");
            Ok(())
        }
    };
    signals.abort();
    crate::nri::stop(&daemon).await;
    if let Err(e) = std::fs::remove_file(&socket_path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(socket = %socket_path.display(), error = %e, "cannot remove socket");
    }
    result?;
    tracing::info!("crispd stopped");
    Ok(())
}

//! The daemon's shared state, handed to every service.

use std::sync::{Arc, RwLock};

use conf::Config;

/// What every CRI handler reads. Cheap to clone handles out of: the configuration is an
/// `Arc` swapped whole on reload, so a request sees one consistent configuration.
pub struct Daemon {
    config: RwLock<Arc<Config>>,
    /// The images on this node.
    pub images: image::Images,
    /// The pod sandboxes.
    pub pods: crate::pod::Pods,
    /// The containers.
    pub containers: crate::container::Containers,
    /// Container lifecycle events.
    pub events: Arc<crate::events::Events>,
    /// Resource usage, sampled when a stats call asks.
    pub stats: crate::stats::StatsCache,
    /// crisp's own metrics.
    pub metrics: crate::metrics::Metrics,
    /// The Exec/Attach/PortForward server, once it listens.
    pub streaming: std::sync::OnceLock<crate::streaming::Streaming>,
    /// The runtime handlers, built once at startup.
    pub handlers: Arc<crate::handlers::Handlers>,
    /// ListContainers's entries, encoded.
    pub list_cache: crate::container::ListCache,
    /// NRI plugins, once NRI has started (never, when it is off).
    pub nri: std::sync::OnceLock<Arc<nri::Nri>>,
}

impl Daemon {
    /// State for a daemon running with `config`.
    pub fn new(
        config: Config,
        images: image::Images,
        pods: crate::pod::Pods,
        containers: crate::container::Containers,
        handlers: Arc<crate::handlers::Handlers>,
    ) -> Self {
        Self {
            config: RwLock::new(Arc::new(config)),
            images,
            pods,
            containers,
            events: Arc::new(crate::events::Events::new()),
            stats: crate::stats::StatsCache::default(),
            metrics: crate::metrics::Metrics::default(),
            streaming: std::sync::OnceLock::new(),
            handlers,
            list_cache: crate::container::ListCache::default(),
            nri: std::sync::OnceLock::new(),
        }
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(guard) => Arc::clone(&guard),
            // A writer panicked mid-swap; the Arc it left is still whole.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the configuration (SIGHUP reload) and hands the live parts on.
    pub fn set_config(&self, config: Config) {
        self.images
            .set_registry(crate::options::registry_options(&config));
        let new = Arc::new(config);
        match self.config.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

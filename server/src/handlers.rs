//! The runtime handlers, built from configuration when crispd starts (their
//! `[runtimes.*]` tables need a restart to change), and looked up by name per call. A
//! handler whose binary was missing is looked for again when it is asked for, so a
//! runtime installed after crispd started is used without a restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::errors::LifecycleError;
use conf::{Config, HandlerType};
use runtime_handlers::RuntimeHandler;

/// Why a configured handler cannot run here.
#[derive(Debug, Clone)]
enum Unusable {
    /// A kind this crisp cannot drive yet.
    Unsupported(String),
    /// Its binary is missing.
    Missing(String),
}

type Slot = Result<Arc<dyn RuntimeHandler>, Unusable>;

/// A configured handler by name, looked up: the handler, or why it cannot run.
pub type Lookup = (String, Result<Arc<dyn RuntimeHandler>, LifecycleError>);

/// Every configured handler, usable or not.
pub struct Handlers {
    by_name: RwLock<BTreeMap<String, Slot>>,
    /// The configuration they were built from, to look for a missing binary again.
    config: Option<Arc<Config>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.map().keys()).finish()
    }
}

/// Builds handler `name` of `config`.
fn build_one(config: &Config, name: &str) -> Slot {
    let Some(h) = config.runtimes.get(name) else {
        return Err(Unusable::Missing(format!(
            "runtime handler `{name}` is not configured"
        )));
    };
    if h.kind != HandlerType::Oci {
        return Err(Unusable::Unsupported(format!(
            "runtime handler `{name}` is of type microvm, which this crisp cannot run yet"
        )));
    }
    match crate::host::runtime_binary(config, name) {
        Ok(binary) => Ok(Arc::new(runtime_handlers::OciRuntime {
            name: name.to_owned(),
            binary,
            root: config.runtime_root(name),
            runtime_args: h.runtime_args.clone(),
            monitor: runtime_handlers::helper_binary(runtime_handlers::MONITOR),
            enter: runtime_handlers::helper_binary(runtime_handlers::ENTER),
            runtime_exec: h.runtime_exec,
        }) as Arc<dyn RuntimeHandler>),
        Err(message) => Err(Unusable::Missing(message)),
    }
}

impl Handlers {
    /// Builds each `[runtimes.<name>]` handler.
    pub fn build(config: &Config) -> Self {
        let by_name = config
            .runtimes
            .keys()
            .map(|name| (name.clone(), build_one(config, name)))
            .collect();
        Self {
            by_name: RwLock::new(by_name),
            config: Some(Arc::new(config.clone())),
        }
    }

    /// A set of handlers made elsewhere (tests drive the lifecycle with a fake).
    pub fn from_handlers(handlers: Vec<Arc<dyn RuntimeHandler>>) -> Self {
        let by_name = handlers
            .into_iter()
            .map(|h| (h.name().to_owned(), Ok(h)))
            .collect();
        Self {
            by_name: RwLock::new(by_name),
            config: None,
        }
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Slot>> {
        match self.by_name.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The handler of that name, or the error a call naming it answers.
    pub fn get(&self, name: &str) -> Result<Arc<dyn RuntimeHandler>, LifecycleError> {
        let slot = self.map().get(name).cloned();
        match slot {
            Some(Ok(handler)) => Ok(handler),
            Some(Err(Unusable::Unsupported(message))) => Err(LifecycleError::unsupported(message)),
            Some(Err(Unusable::Missing(message))) => {
                // Installed since? Look again.
                if let Some(config) = &self.config
                    && let Ok(handler) = build_one(config, name)
                {
                    tracing::info!(handler = name, "runtime handler's binary found");
                    let mut map = match self.by_name.write() {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                    map.insert(name.to_owned(), Ok(Arc::clone(&handler)));
                    return Ok(handler);
                }
                Err(LifecycleError::precondition(message))
            }
            None => Err(LifecycleError::precondition(format!(
                "runtime handler `{name}` is no longer configured"
            ))),
        }
    }

    /// Every configured handler by name, each looked up once: the handler, or why it
    /// cannot run (a missing binary is looked for again).
    pub fn all(&self) -> Vec<Lookup> {
        let names: Vec<String> = self.map().keys().cloned().collect();
        names
            .into_iter()
            .map(|name| {
                let handler = self.get(&name);
                (name, handler)
            })
            .collect()
    }

    /// The handlers that can run now, by name.
    pub fn usable(&self) -> Vec<(String, Arc<dyn RuntimeHandler>)> {
        self.all()
            .into_iter()
            .filter_map(|(name, h)| h.ok().map(|h| (name, h)))
            .collect()
    }

    /// Helper processes the handlers keep on this host. The OCI handlers share one kind
    /// of monitor, so each kind counts once.
    pub fn helper_processes(&self) -> usize {
        let mut kinds = std::collections::BTreeSet::new();
        self.usable()
            .into_iter()
            .filter(|(_, h)| kinds.insert(h.kind()))
            .map(|(_, h)| h.helper_processes())
            .sum()
    }

    /// Ends what the handlers left of sandbox `id`, which crisp has no record of, given
    /// where its PID namespace is pinned.
    pub fn release_unknown_sandbox(&self, id: &str, pid_pin: &Path) {
        for (_, handler) in self.usable() {
            handler.release_unknown_sandbox(id, pid_pin);
        }
    }
}

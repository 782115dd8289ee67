//! The runtime handlers, built once from configuration when crispd starts (their
//! `[runtimes.*]` tables need a restart to change), and looked up by name per call.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

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

/// Every configured handler, usable or not.
pub struct Handlers {
    by_name: BTreeMap<String, Result<Arc<dyn RuntimeHandler>, Unusable>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl Handlers {
    /// Builds each `[runtimes.<name>]` handler.
    pub fn build(config: &Config) -> Self {
        let by_name = config
            .runtimes
            .iter()
            .map(|(name, h)| {
                let handler = if h.kind != HandlerType::Oci {
                    Err(Unusable::Unsupported(format!(
                        "runtime handler `{name}` is of type microvm, which this crisp cannot run yet"
                    )))
                } else {
                    match crate::host::runtime_binary(config, name) {
                        Ok(binary) => Ok(Arc::new(runtime_handlers::OciRuntime {
                            name: name.clone(),
                            binary,
                            root: config.runtime_root(name),
                            runtime_args: h.runtime_args.clone(),
                            monitor: runtime_handlers::helper_binary(
                                runtime_handlers::MONITOR,
                            ),
                            enter: runtime_handlers::helper_binary(runtime_handlers::ENTER),
                            runtime_exec: h.runtime_exec,
                        }) as Arc<dyn RuntimeHandler>),
                        Err(message) => Err(Unusable::Missing(message)),
                    }
                };
                (name.clone(), handler)
            })
            .collect();
        Self { by_name }
    }

    /// A set of handlers made elsewhere (tests drive the lifecycle with a fake).
    pub fn from_handlers(handlers: Vec<Arc<dyn RuntimeHandler>>) -> Self {
        let by_name = handlers
            .into_iter()
            .map(|h| (h.name().to_owned(), Ok(h)))
            .collect();
        Self { by_name }
    }

    /// The handler of that name, or the error a call naming it answers.
    pub fn get(&self, name: &str) -> Result<Arc<dyn RuntimeHandler>, LifecycleError> {
        match self.by_name.get(name) {
            Some(Ok(handler)) => Ok(Arc::clone(handler)),
            Some(Err(Unusable::Unsupported(message))) => Err(LifecycleError::unsupported(message)),
            Some(Err(Unusable::Missing(message))) => Err(LifecycleError::precondition(format!(
                "{message} (it is looked up when crispd starts)"
            ))),
            None => Err(LifecycleError::precondition(format!(
                "runtime handler `{name}` is no longer configured"
            ))),
        }
    }

    /// The names of the handlers that can run, with the handler.
    pub fn usable(&self) -> impl Iterator<Item = (&str, &Arc<dyn RuntimeHandler>)> {
        self.by_name
            .iter()
            .filter_map(|(name, h)| h.as_ref().ok().map(|h| (name.as_str(), h)))
    }

    /// Helper processes the handlers keep on this host. The OCI handlers share one kind
    /// of monitor, so each kind counts once.
    pub fn helper_processes(&self) -> usize {
        let mut kinds = std::collections::BTreeSet::new();
        self.usable()
            .filter(|(_, h)| kinds.insert(h.kind()))
            .map(|(_, h)| h.helper_processes())
            .sum()
    }

    /// Ends what the handlers left of a sandbox crisp has no record of, given where its
    /// PID namespace is pinned.
    pub fn release_unknown_sandbox(&self, pid_pin: &Path) {
        for (_, handler) in self.usable() {
            handler.release_unknown_sandbox(pid_pin);
        }
    }

    /// Each configured handler: `Ok` with its binary's handler, or why it cannot run.
    pub fn report(&self) -> impl Iterator<Item = (&str, Result<(), String>)> {
        self.by_name.iter().map(|(name, h)| {
            let state = match h {
                Ok(_) => Ok(()),
                Err(Unusable::Unsupported(m) | Unusable::Missing(m)) => Err(m.clone()),
            };
            (name.as_str(), state)
        })
    }
}

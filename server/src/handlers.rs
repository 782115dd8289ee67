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
    if h.kind == HandlerType::Microvm {
        return build_microvm(config, name, h);
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

/// Builds microVM handler `name`: QEMU and both helpers must be installed (the guest
/// image is checked per pod, so a pod says how to build it).
fn build_microvm(config: &Config, name: &str, h: &conf::RuntimeHandlerConfig) -> Slot {
    let find = |path: &Path, what: &str, fix: &str| {
        runtime_handlers::resolve_binary(path).ok_or_else(|| {
            Unusable::Missing(format!(
                "runtime handler `{name}`: {what} `{}` not found or not executable ({fix})",
                path.display()
            ))
        })
    };
    let vmm = find(&h.path, "the VMM", "install qemu-system-x86")?;
    let vsock_backend = find(
        h.vsock_backend
            .as_deref()
            .unwrap_or(Path::new("vhost-device-vsock")),
        "the vsock backend",
        "sh scripts/install-deps.sh installs vhost-device-vsock",
    )?;
    let virtiofsd = find(
        h.virtiofsd
            .as_deref()
            .unwrap_or(Path::new("/usr/lib/qemu/virtiofsd")),
        "the virtio-fs daemon",
        "install qemu-system-common (7.2), or cargo install virtiofsd and name it",
    )?;
    let image = Path::new(conf::GUEST_IMAGE_DIR);
    Ok(Arc::new(runtime_handlers::MicroVm::new(
        runtime_handlers::MicroVmConfig {
            name: name.to_owned(),
            vmm,
            vsock_backend,
            virtiofsd,
            kernel: h.kernel.clone().unwrap_or_else(|| image.join("vmlinuz")),
            initrd: h.initrd.clone().unwrap_or_else(|| image.join("initrd.img")),
            accelerator: match h.accelerator {
                conf::Accelerator::Kvm => runtime_handlers::Accelerator::Kvm,
                conf::Accelerator::Tcg => runtime_handlers::Accelerator::Tcg,
                conf::Accelerator::Auto => runtime_handlers::Accelerator::Auto,
            },
            machine: h.machine.clone().unwrap_or_else(|| "microvm".to_owned()),
            vcpus: if h.vcpus == 0 { 1 } else { h.vcpus },
            memory_mib: if h.memory_mib == 0 { 256 } else { h.memory_mib },
            boot_timeout: h.boot_timeout.unwrap_or(std::time::Duration::from_secs(30)),
            root: config.runtime_root(name),
            image_command: conf::GUEST_IMAGE_COMMAND.to_owned(),
        },
    )) as Arc<dyn RuntimeHandler>)
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

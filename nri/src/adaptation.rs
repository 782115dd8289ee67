//! The runtime's side of NRI: plugins connect (or are started from the plugin directory),
//! register, are configured and synchronized, and then get the lifecycle events they
//! subscribed to, in the order of their indexes, one event at a time.
//!
//! What a plugin's failure does, as containerd/nri has it: an error answer fails the
//! event (and so the CRI call that caused it); a plugin that does not answer in time, or
//! whose connection ends, is dropped, logged, and the event goes on without it.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::api::{self, Event};
use crate::peer::{CallError, Handler, Peer, Reply};
use crate::ttrpc::{Status, code};
use crate::{EventError, merge};

/// The runtime's ttRPC service name.
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// The plugins' ttRPC service name.
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// The NRI API level crisp implements (containerd/nri's release of the same messages).
pub const NRI_VERSION: &str = "v0.12.2";
/// Every event a plugin may subscribe to: bits 0..=13 (events 1..=14).
pub const VALID_EVENTS: i32 = (1 << (Event::Last as i32 - 1)) - 1;

/// A future the host hands back.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What NRI needs from the runtime that hosts it.
pub trait Host: Send + Sync + 'static {
    /// Every pod and container, for a plugin's Synchronize.
    fn snapshot(&self) -> BoxFuture<'_, (Vec<api::PodSandbox>, Vec<api::Container>)>;
    /// Applies resource updates plugins asked for; returns those that failed.
    fn update(
        &self,
        updates: Vec<api::ContainerUpdate>,
    ) -> BoxFuture<'_, Vec<api::ContainerUpdate>>;
    /// Stops the containers plugins asked to evict.
    fn evict(&self, evictions: Vec<api::ContainerEviction>) -> BoxFuture<'_, ()>;
}

/// How NRI runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where external plugins connect; `None` takes only pre-installed plugins.
    pub socket_path: Option<PathBuf>,
    /// Pre-installed plugins, started at startup: executables named `NN-name`.
    pub plugin_path: PathBuf,
    /// Their configuration: `NN-name.conf` or `name.conf`.
    pub plugin_config_path: PathBuf,
    /// How long a new plugin has to register.
    pub registration_timeout: Duration,
    /// How long a plugin has to answer a call.
    pub request_timeout: Duration,
    /// The runtime's name, as plugins are told.
    pub runtime_name: String,
    /// Its version.
    pub runtime_version: String,
}

/// A registered plugin.
struct Plugin {
    name: String,
    idx: String,
    events: i32,
    peer: Peer,
    /// The plugin has no dedicated call for some events (an NRI before 0.12): those go
    /// as StateChange.
    state_change: AtomicBool,
    /// Started by crisp from the plugin directory: kept so that it is killed when the
    /// plugin is dropped.
    _child: Option<tokio::process::Child>,
}

impl Plugin {
    fn label(&self) -> String {
        format!("{}-{}", self.idx, self.name)
    }

    fn subscribed(&self, event: Event) -> bool {
        self.events & (1 << (event as i32 - 1)) != 0
    }
}

/// The NRI side of the runtime.
pub struct Nri {
    config: Config,
    host: Arc<dyn Host>,
    plugins: tokio::sync::Mutex<Vec<Arc<Plugin>>>,
    /// Held (shared) by the runtime across the calls that add pods and containers, and
    /// (exclusive) while a new plugin synchronizes: what the plugin does not find in its
    /// snapshot reaches it as an event.
    sync: Arc<RwLock<()>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The socket this runtime bound (and so may remove).
    bound: Mutex<Option<PathBuf>>,
}

impl Drop for Nri {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What a started plugin is, before it registers.
struct Launched {
    name: String,
    idx: String,
    config: String,
    /// Set once started.
    child: Option<tokio::process::Child>,
}

impl Nri {
    /// NRI with no plugins yet; [`Nri::start`] brings them.
    pub fn new(config: Config, host: Arc<dyn Host>) -> Arc<Self> {
        Arc::new(Self {
            config,
            host,
            plugins: tokio::sync::Mutex::new(Vec::new()),
            sync: Arc::new(RwLock::new(())),
            tasks: Mutex::new(Vec::new()),
            bound: Mutex::new(None),
        })
    }

    /// Starts the pre-installed plugins (waiting for each to register, be configured and
    /// synchronized), then listens for external ones. A plugin that fails is logged and
    /// left out; a socket that cannot be served is an error (pre-installed plugins run on).
    pub async fn start(self: &Arc<Self>) -> Result<(), String> {
        for launched in discover(&self.config)? {
            let label = format!("{}-{}", launched.idx, launched.name);
            match self.launch(launched).await {
                Ok(()) => tracing::info!(plugin = %label, "NRI plugin started"),
                Err(e) => tracing::error!(plugin = %label, error = %e, "NRI plugin not started"),
            }
        }
        let Some(path) = self.config.socket_path.clone() else {
            return Ok(());
        };
        let listener = listen(&path)?;
        *lock(&self.bound) = Some(path.clone());
        tracing::info!(socket = %path.display(), "NRI plugins may connect");
        let nri = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::error!(error = %e, "accepting an NRI plugin");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(nri) = nri.upgrade() else { return };
                tokio::spawn(async move {
                    if let Err(e) = nri.admit(stream, None).await {
                        tracing::warn!(error = %e, "NRI plugin refused");
                    }
                });
            }
        });
        lock(&self.tasks).push(task);
        Ok(())
    }

    /// The registered plugins, as `NN-name`, in the order they get events.
    pub async fn plugins(&self) -> Vec<String> {
        self.plugins
            .lock()
            .await
            .iter()
            .map(|p| p.label())
            .collect()
    }

    /// Held across a call that adds a pod or a container, from before its NRI event
    /// until it is listed: a plugin that joins meanwhile synchronizes after it.
    pub async fn block_sync(&self) -> OwnedRwLockReadGuard<()> {
        Arc::clone(&self.sync).read_owned().await
    }

    /// Ends every plugin connection (crisp is stopping); started plugins are killed,
    /// and the socket goes if this runtime bound it.
    pub async fn shutdown(&self) {
        let plugins: Vec<Arc<Plugin>> = self.plugins.lock().await.drain(..).collect();
        for plugin in plugins {
            plugin.peer.close().await;
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        if let Some(path) = lock(&self.bound).take() {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn launch(self: &Arc<Self>, mut launched: Launched) -> Result<(), String> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let path = self
            .config
            .plugin_path
            .join(format!("{}-{}", launched.idx, launched.name));
        let mut command = tokio::process::Command::new(&path);
        command
            .env_clear()
            .env("NRI_PLUGIN_NAME", &launched.name)
            .env("NRI_PLUGIN_IDX", &launched.idx)
            .env("NRI_PLUGIN_SOCKET", "3")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let fd = theirs.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls: dup2 puts the
        // plugin's end on fd 3 (dup2 clears close-on-exec on the copy).
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        launched.child = Some(
            command
                .spawn()
                .map_err(|e| format!("starting {}: {e}", path.display()))?,
        );
        drop(theirs);
        ours.set_nonblocking(true)
            .map_err(|e| format!("socketpair: {e}"))?;
        let stream = UnixStream::from_std(ours).map_err(|e| format!("socketpair: {e}"))?;
        self.admit(stream, Some(launched)).await
    }

    /// Takes a plugin in: registration, configuration, synchronization, then the list.
    async fn admit(
        self: &Arc<Self>,
        stream: UnixStream,
        launched: Option<Launched>,
    ) -> Result<(), String> {
        let (registered_tx, registered) = tokio::sync::oneshot::channel();
        let registered_tx = Arc::new(Mutex::new(Some(registered_tx)));
        let host = Arc::clone(&self.host);
        let external = launched.is_none();
        let handler: Handler = Arc::new(move |method: String, payload: Vec<u8>| {
            let registered_tx = Arc::clone(&registered_tx);
            let host = Arc::clone(&host);
            Box::pin(async move {
                runtime_call(&method, &payload, external, &registered_tx, host.as_ref()).await
            })
        });
        let peer = Peer::start(
            stream,
            crate::mux::PLUGIN_SERVICE,
            crate::mux::RUNTIME_SERVICE,
            RUNTIME_SERVICE,
            handler,
        );
        let timeout = self.config.registration_timeout;
        let request = match tokio::time::timeout(timeout, registered).await {
            Ok(Ok(request)) => request,
            Ok(Err(_)) => return Err("the plugin left before registering".into()),
            Err(_) => return Err(format!("the plugin did not register within {timeout:?}")),
        };
        let (name, idx, config, child) = match launched {
            Some(l) => (l.name, l.idx, l.config, l.child),
            None => (request.plugin_name, request.plugin_idx, String::new(), None),
        };
        let label = format!("{idx}-{name}");
        let configure = api::ConfigureRequest {
            config,
            runtime_name: self.config.runtime_name.clone(),
            runtime_version: self.config.runtime_version.clone(),
            registration_timeout: millis(self.config.registration_timeout),
            request_timeout: millis(self.config.request_timeout),
            nri_version: NRI_VERSION.to_owned(),
        };
        let reply = peer
            .call(
                PLUGIN_SERVICE,
                "Configure",
                configure.encode_to_vec(),
                self.config.request_timeout,
            )
            .await
            .map_err(|e| format!("plugin {label}: Configure: {e}"))?;
        let events = api::ConfigureResponse::decode(reply.as_slice())
            .map_err(|e| format!("plugin {label}: Configure's answer: {e}"))?
            .events;
        let validate = 1 << (Event::ValidateContainerAdjustment as i32 - 1);
        let events = match events {
            // Everything crisp sends.
            0 => VALID_EVENTS & !validate,
            e if e & !VALID_EVENTS != 0 => {
                return Err(format!(
                    "plugin {label} subscribed to unknown events ({e:#x})"
                ));
            }
            // A validator would believe it enforces a policy that crisp never asks it
            // about: refused, not silently bypassed.
            e if e & validate != 0 => {
                return Err(format!(
                    "plugin {label} validates container adjustments, which crisp does not support"
                ));
            }
            e => e,
        };
        let plugin = Arc::new(Plugin {
            name,
            idx,
            events,
            peer,
            state_change: AtomicBool::new(false),
            _child: child,
        });
        // No pod or container is added while the plugin takes its snapshot in, and no
        // event is sent until it is listed: what happens after the snapshot reaches it
        // as an event.
        let _exclusive = self.sync.write().await;
        let mut plugins = self.plugins.lock().await;
        let (pods, containers) = self.host.snapshot().await;
        let (n_pods, n_containers) = (pods.len(), containers.len());
        let sync = api::SynchronizeRequest {
            pods,
            containers,
            more: false,
        };
        let reply = plugin
            .peer
            .call(
                PLUGIN_SERVICE,
                "Synchronize",
                sync.encode_to_vec(),
                self.config.request_timeout,
            )
            .await
            .map_err(|e| format!("plugin {label}: Synchronize: {e}"))?;
        let reply = api::SynchronizeResponse::decode(reply.as_slice())
            .map_err(|e| format!("plugin {label}: Synchronize's answer: {e}"))?;
        plugins.push(Arc::clone(&plugin));
        // By index; equal indexes in the order they came.
        plugins.sort_by(|a, b| a.idx.cmp(&b.idx));
        drop(plugins);
        self.other_containers(reply.update, Vec::new());
        tracing::info!(plugin = %label, events = format!("{events:#x}"), pods = n_pods, containers = n_containers, "NRI plugin registered");
        // Dropped from the list at the next event once its connection ends; a started
        // plugin's process is reaped then.
        let watched = Arc::downgrade(&plugin);
        drop(plugin);
        tokio::spawn(async move {
            let Some(plugin) = watched.upgrade() else {
                return;
            };
            let closed = plugin.peer.closed();
            closed.await;
            tracing::info!(plugin = %plugin.label(), "NRI plugin disconnected");
        });
        Ok(())
    }

    /// Calls one plugin for `event`: its dedicated method, or StateChange for a plugin
    /// without it.
    async fn call(
        &self,
        plugin: &Plugin,
        event: Event,
        method: &str,
        request: Vec<u8>,
        pod: &api::PodSandbox,
        container: Option<&api::Container>,
    ) -> Result<Vec<u8>, CallError> {
        let timeout = self.config.request_timeout;
        let fallback = matches!(
            event,
            Event::RunPodSandbox
                | Event::PostUpdatePodSandbox
                | Event::StopPodSandbox
                | Event::RemovePodSandbox
                | Event::PostCreateContainer
                | Event::StartContainer
                | Event::PostStartContainer
                | Event::PostUpdateContainer
                | Event::RemoveContainer
        );
        if !(fallback && plugin.state_change.load(Ordering::Relaxed)) {
            match plugin
                .peer
                .call(PLUGIN_SERVICE, method, request, timeout)
                .await
            {
                Err(e) if fallback && e.is_unimplemented() => {
                    plugin.state_change.store(true, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        let change = api::StateChangeEvent {
            event: event as i32,
            pod: Some(pod.clone()),
            container: container.cloned(),
        };
        plugin
            .peer
            .call(
                PLUGIN_SERVICE,
                "StateChange",
                change.encode_to_vec(),
                timeout,
            )
            .await
            .map(|_| Vec::new())
    }

    /// What a failed call means: `None` drops the plugin and goes on; an error fails the
    /// event.
    async fn failed(
        &self,
        plugin: &Plugin,
        method: &'static str,
        e: CallError,
    ) -> Option<EventError> {
        match e {
            CallError::Status { message, .. } => Some(EventError::Plugin {
                plugin: plugin.label(),
                event: method,
                message,
            }),
            e => {
                tracing::error!(plugin = %plugin.label(), event = method, error = %e, "NRI plugin dropped");
                plugin.peer.close().await;
                None
            }
        }
    }

    /// Sends `event` to every subscribed plugin in order; their answers, by plugin.
    async fn deliver(
        &self,
        event: Event,
        method: &'static str,
        request: Vec<u8>,
        pod: &api::PodSandbox,
        container: Option<&api::Container>,
    ) -> Result<Vec<(String, Vec<u8>)>, EventError> {
        let mut plugins = self.plugins.lock().await;
        plugins.retain(|p| !p.peer.is_closed());
        let mut answers = Vec::new();
        for plugin in plugins.iter() {
            if !plugin.subscribed(event) {
                continue;
            }
            match self
                .call(plugin, event, method, request.clone(), pod, container)
                .await
            {
                Ok(answer) => answers.push((plugin.label(), answer)),
                Err(e) => {
                    if let Some(error) = self.failed(plugin, method, e).await {
                        return Err(error);
                    }
                }
            }
        }
        plugins.retain(|p| !p.peer.is_closed());
        Ok(answers)
    }

    /// Whether any plugin is subscribed to `event` (callers skip building requests).
    pub async fn wants(&self, event: Event) -> bool {
        self.plugins
            .lock()
            .await
            .iter()
            .any(|p| p.subscribed(event) && !p.peer.is_closed())
    }

    async fn pod_event(&self, event: Event, pod: &api::PodSandbox) -> Result<(), EventError> {
        let request = api::PodSandboxRequest {
            pod: Some(pod.clone()),
        }
        .encode_to_vec();
        self.deliver(event, method(event), request, pod, None)
            .await
            .map(drop)
    }

    async fn container_event(
        &self,
        event: Event,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<Vec<(String, Vec<u8>)>, EventError> {
        let request = api::ContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        }
        .encode_to_vec();
        self.deliver(event, method(event), request, pod, Some(container))
            .await
    }

    /// A pod's sandbox is up; an error refuses the pod.
    pub async fn run_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), EventError> {
        self.pod_event(Event::RunPodSandbox, pod).await
    }

    /// A pod's resources changed.
    pub async fn update_pod_sandbox(
        &self,
        pod: &api::PodSandbox,
        overhead: Option<api::LinuxResources>,
        resources: Option<api::LinuxResources>,
    ) -> Result<(), EventError> {
        let request = api::UpdatePodSandboxRequest {
            pod: Some(pod.clone()),
            overhead_linux_resources: overhead,
            linux_resources: resources,
        }
        .encode_to_vec();
        self.deliver(
            Event::UpdatePodSandbox,
            "UpdatePodSandbox",
            request,
            pod,
            None,
        )
        .await
        .map(drop)
    }

    /// A pod's resources were changed.
    pub async fn post_update_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), EventError> {
        self.pod_event(Event::PostUpdatePodSandbox, pod).await
    }

    /// A pod's containers are stopped and it is about to lose its network.
    pub async fn stop_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), EventError> {
        self.pod_event(Event::StopPodSandbox, pod).await
    }

    /// A pod is gone.
    pub async fn remove_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), EventError> {
        self.pod_event(Event::RemovePodSandbox, pod).await
    }

    /// A container is about to be created: each subscribed plugin in turn sees it as the
    /// plugins before it adjusted it, and may adjust it further. The merged adjustment
    /// (`None` when no plugin adjusted anything); an error, or two plugins claiming the
    /// same setting, refuses the container. Updates and evictions of other containers
    /// are carried out here.
    pub async fn create_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<Option<api::ContainerAdjustment>, EventError> {
        let mut plugins = self.plugins.lock().await;
        plugins.retain(|p| !p.peer.is_closed());
        let mut merged = merge::Merged::new(container.clone());
        let mut updates = Vec::new();
        let mut evictions = Vec::new();
        for plugin in plugins.iter() {
            if !plugin.subscribed(Event::CreateContainer) {
                continue;
            }
            let request = api::ContainerRequest {
                pod: Some(pod.clone()),
                container: Some(merged.container().clone()),
            }
            .encode_to_vec();
            let answer = match self
                .call(
                    plugin,
                    Event::CreateContainer,
                    "CreateContainer",
                    request,
                    pod,
                    None,
                )
                .await
            {
                Ok(answer) => answer,
                Err(e) => match self.failed(plugin, "CreateContainer", e).await {
                    Some(error) => return Err(error),
                    None => continue,
                },
            };
            let answer = api::CreateContainerResponse::decode(answer.as_slice()).map_err(|e| {
                EventError::Invalid {
                    plugin: plugin.label(),
                    message: format!("its CreateContainer answer does not decode: {e}"),
                }
            })?;
            if let Some(adjust) = answer.adjust {
                merged.apply(&plugin.label(), adjust)?;
            }
            for update in answer.update {
                if update.container_id == container.id {
                    return Err(EventError::Invalid {
                        plugin: plugin.label(),
                        message: format!(
                            "it asked for an update of container {} while it is being created",
                            container.id
                        ),
                    });
                }
                updates.push(update);
            }
            evictions.extend(answer.evict);
        }
        plugins.retain(|p| !p.peer.is_closed());
        drop(plugins);
        self.other_containers(updates, evictions);
        Ok(merged.finish())
    }

    /// Carries out updates and evictions of other containers that plugins asked for
    /// in an event's answer, in a task of its own: the caller may hold the lock of the
    /// container the event is about, and the containers updated may be waiting on an
    /// event of their own.
    fn other_containers(
        &self,
        updates: Vec<api::ContainerUpdate>,
        evictions: Vec<api::ContainerEviction>,
    ) {
        if updates.is_empty() && evictions.is_empty() {
            return;
        }
        let host = Arc::clone(&self.host);
        tokio::spawn(async move {
            if !updates.is_empty() {
                for failed in host.update(updates).await {
                    tracing::warn!(container = %failed.container_id, "an update an NRI plugin asked for failed");
                }
            }
            if !evictions.is_empty() {
                host.evict(evictions).await;
            }
        });
    }

    /// A container's resources are about to change to `resources`; the resources to
    /// apply instead when plugins changed them. Updates of other containers are carried
    /// out here.
    pub async fn update_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
        resources: &api::LinuxResources,
    ) -> Result<Option<api::LinuxResources>, EventError> {
        let request = api::UpdateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
            linux_resources: Some(resources.clone()),
        }
        .encode_to_vec();
        let answers = self
            .deliver(
                Event::UpdateContainer,
                "UpdateContainer",
                request,
                pod,
                Some(container),
            )
            .await?;
        let mut own: Option<api::LinuxResources> = None;
        let mut others = Vec::new();
        let mut evictions = Vec::new();
        for (plugin, answer) in answers {
            let answer = api::UpdateContainerResponse::decode(answer.as_slice()).map_err(|e| {
                EventError::Invalid {
                    plugin: plugin.clone(),
                    message: format!("its UpdateContainer answer does not decode: {e}"),
                }
            })?;
            for update in answer.update {
                if update.container_id == container.id {
                    // What the plugin sets, over what was asked (and what earlier
                    // plugins set).
                    if let Some(changed) = update.linux.and_then(|l| l.resources) {
                        let base = own.take().unwrap_or_else(|| resources.clone());
                        own = Some(overlay(base, changed));
                    }
                } else {
                    others.push(update);
                }
            }
            evictions.extend(answer.evict);
        }
        self.other_containers(others, evictions);
        Ok(own)
    }

    /// A container stopped (asked to, or on its own). Updates plugins ask for are
    /// carried out.
    pub async fn stop_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<(), EventError> {
        let answers = self
            .container_event(Event::StopContainer, pod, container)
            .await?;
        let mut updates = Vec::new();
        for (_, answer) in answers {
            if let Ok(answer) = api::StopContainerResponse::decode(answer.as_slice()) {
                // The stopped container itself has nothing left to update.
                updates.extend(
                    answer
                        .update
                        .into_iter()
                        .filter(|u| u.container_id != container.id),
                );
            }
        }
        self.other_containers(updates, Vec::new());
        Ok(())
    }

    /// A container event whose answers carry nothing: PostCreateContainer,
    /// StartContainer (an error keeps the container from starting),
    /// PostStartContainer, PostUpdateContainer and RemoveContainer.
    pub async fn container_notice(
        &self,
        event: Event,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<(), EventError> {
        self.container_event(event, pod, container).await.map(drop)
    }
}

/// `base` with the settings `changed` has replaced.
fn overlay(mut base: api::LinuxResources, changed: api::LinuxResources) -> api::LinuxResources {
    if let Some(m) = changed.memory {
        let b = base.memory.get_or_insert_with(Default::default);
        b.limit = m.limit.or(b.limit);
        b.reservation = m.reservation.or(b.reservation);
        b.swap = m.swap.or(b.swap);
        b.kernel = m.kernel.or(b.kernel);
        b.kernel_tcp = m.kernel_tcp.or(b.kernel_tcp);
        b.swappiness = m.swappiness.or(b.swappiness);
        b.disable_oom_killer = m.disable_oom_killer.or(b.disable_oom_killer);
        b.use_hierarchy = m.use_hierarchy.or(b.use_hierarchy);
    }
    if let Some(c) = changed.cpu {
        let b = base.cpu.get_or_insert_with(Default::default);
        b.shares = c.shares.or(b.shares);
        b.quota = c.quota.or(b.quota);
        b.period = c.period.or(b.period);
        b.realtime_runtime = c.realtime_runtime.or(b.realtime_runtime);
        b.realtime_period = c.realtime_period.or(b.realtime_period);
        if !c.cpus.is_empty() {
            b.cpus = c.cpus;
        }
        if !c.mems.is_empty() {
            b.mems = c.mems;
        }
    }
    if changed.pids.is_some() {
        base.pids = changed.pids;
    }
    if !changed.hugepage_limits.is_empty() {
        base.hugepage_limits = changed.hugepage_limits;
    }
    base.unified.extend(changed.unified);
    base
}

/// The plugin's method for `event`.
fn method(event: Event) -> &'static str {
    match event {
        Event::RunPodSandbox => "RunPodSandbox",
        Event::StopPodSandbox => "StopPodSandbox",
        Event::RemovePodSandbox => "RemovePodSandbox",
        Event::CreateContainer => "CreateContainer",
        Event::PostCreateContainer => "PostCreateContainer",
        Event::StartContainer => "StartContainer",
        Event::PostStartContainer => "PostStartContainer",
        Event::UpdateContainer => "UpdateContainer",
        Event::PostUpdateContainer => "PostUpdateContainer",
        Event::StopContainer => "StopContainer",
        Event::RemoveContainer => "RemoveContainer",
        Event::UpdatePodSandbox => "UpdatePodSandbox",
        Event::PostUpdatePodSandbox => "PostUpdatePodSandbox",
        Event::ValidateContainerAdjustment => "ValidateContainerAdjustment",
        Event::Unknown | Event::Last => "StateChange",
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Serves one call of the runtime's service.
async fn runtime_call(
    method: &str,
    payload: &[u8],
    external: bool,
    registered: &Mutex<Option<tokio::sync::oneshot::Sender<api::RegisterPluginRequest>>>,
    host: &dyn Host,
) -> Reply {
    let bad = |message: String| Status {
        code: code::INVALID_ARGUMENT,
        message,
    };
    match method {
        "RegisterPlugin" => {
            let request = api::RegisterPluginRequest::decode(payload)
                .map_err(|e| bad(format!("RegisterPlugin: {e}")))?;
            if external {
                check_name(&request.plugin_name).map_err(bad)?;
                check_index(&request.plugin_idx).map_err(bad)?;
            }
            let Some(tx) = lock(registered).take() else {
                return Err(bad("the plugin is already registered".into()));
            };
            let _ = tx.send(request);
            Ok(api::Empty {}.encode_to_vec())
        }
        "UpdateContainers" => {
            let request = api::UpdateContainersRequest::decode(payload)
                .map_err(|e| bad(format!("UpdateContainers: {e}")))?;
            let failed = if request.update.is_empty() {
                Vec::new()
            } else {
                host.update(request.update).await
            };
            if !request.evict.is_empty() {
                host.evict(request.evict).await;
            }
            Ok(api::UpdateContainersResponse { failed }.encode_to_vec())
        }
        other => Err(Status {
            code: code::UNIMPLEMENTED,
            message: format!("method {other}"),
        }),
    }
}

/// A plugin name: not empty, letters, digits and `-_.+`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the plugin name is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.+".contains(*c)))
    {
        return Err(format!(
            "the plugin name {name:?} has an invalid character {c:?}"
        ));
    }
    Ok(())
}

/// A plugin index: exactly two decimal digits.
fn check_index(idx: &str) -> Result<(), String> {
    if idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("the plugin index {idx:?} is not two digits"))
    }
}

/// The pre-installed plugins: executables in the plugin directory named `NN-name`.
fn discover(config: &Config) -> Result<Vec<Launched>, String> {
    let entries = match std::fs::read_dir(&config.plugin_path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", config.plugin_path.display())),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        use std::os::unix::fs::PermissionsExt;
        if meta.is_dir() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some((idx, name)) = file
            .split_once('-')
            .filter(|(i, n)| check_index(i).is_ok() && check_name(n).is_ok())
        else {
            tracing::error!(file = %entry.path().display(), "NRI plugin skipped: its name is not NN-name");
            continue;
        };
        let config_text = [format!("{file}.conf"), format!("{name}.conf")]
            .iter()
            .find_map(|f| std::fs::read_to_string(config.plugin_config_path.join(f)).ok())
            .unwrap_or_default();
        found.push((idx.to_owned(), name.to_owned(), config_text));
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|(idx, name, config)| Launched {
            name,
            idx,
            config,
            child: None,
        })
        .collect())
}

/// Listens on `path`: its directory made private, a stale socket replaced. A socket
/// another runtime still answers on is left alone.
fn listen(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("making {}: {e}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{} is served by another process (another runtime's NRI?); set nri.socket_path elsewhere or stop it",
            path.display()
        ));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("removing the stale {}: {e}", path.display()));
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("listening on {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("restricting {}: {e}", path.display()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugins_update_changes_only_what_it_sets() {
        let asked = api::LinuxResources {
            memory: Some(api::LinuxMemory {
                limit: Some(api::OptionalInt64 { value: 256 << 20 }),
                ..Default::default()
            }),
            cpu: Some(api::LinuxCpu {
                quota: Some(api::OptionalInt64 { value: 50_000 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pinned = api::LinuxResources {
            cpu: Some(api::LinuxCpu {
                cpus: "0-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let merged = overlay(asked, pinned);
        let cpu = merged.cpu.unwrap_or_default();
        assert_eq!(cpu.cpus, "0-1");
        assert_eq!(cpu.quota.map(|q| q.value), Some(50_000));
        assert_eq!(
            merged.memory.and_then(|m| m.limit).map(|l| l.value),
            Some(256 << 20)
        );
    }
}

//! The image service: pull, find, list, remove, on top of the storage root.
//!
//! Concurrency: every pull holds the GC lock shared, and removal (which garbage-collects)
//! holds it exclusively, so collection never deletes the unreferenced content of a pull
//! in progress. Blobs and snapshots are additionally locked by digest or chain ID, so two
//! pulls that share a layer fetch and unpack it once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use storage::{ImageRecord, Store, Usage};

use crate::blocking::blocking;
use crate::error::ImageError;
use crate::reference::{Reference, parse};
use crate::registry::{Credentials, RegistryOptions};

/// How the image service is set up; `server` builds it from configuration.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// The storage root (content, snapshots, metadata).
    pub root: PathBuf,
    /// Mirrors, insecure registries, credentials.
    pub registry: RegistryOptions,
    /// A download that receives nothing for this long fails.
    pub progress_timeout: Duration,
    /// A pull that takes longer than this fails.
    pub pull_timeout: Duration,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// Bounds on what images expand to.
    pub limits: UnpackedLimits,
}

/// Bounds on the uncompressed size of layers and images (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackedLimits {
    /// Uncompressed bytes per layer.
    pub layer_bytes: u64,
    /// Uncompressed bytes per image, all layers together.
    pub image_bytes: u64,
    /// Uncompressed bytes per compressed byte of a layer.
    pub expansion_ratio: u64,
}

impl UnpackedLimits {
    /// The limits for the next layer of an image whose layers so far expanded to
    /// `used` bytes; `None` when the image is already over its limit.
    pub(crate) fn next_layer(&self, used: u64) -> Option<storage::UnpackLimits> {
        let mut max_bytes = self.layer_bytes;
        if self.image_bytes > 0 {
            let left = self.image_bytes.checked_sub(used).filter(|l| *l > 0)?;
            max_bytes = if max_bytes == 0 {
                left
            } else {
                max_bytes.min(left)
            };
        }
        Some(storage::UnpackLimits {
            max_bytes,
            max_ratio: self.expansion_ratio,
            ratio_floor: storage::RATIO_FLOOR,
        })
    }
}

/// Images on this node.
pub struct Images {
    pub(crate) store: Arc<Store>,
    pub(crate) registry: RwLock<RegistryOptions>,
    pub(crate) progress_timeout: Duration,
    pub(crate) pull_timeout: Duration,
    pub(crate) max_concurrent_downloads: usize,
    pub(crate) limits: UnpackedLimits,
    pub(crate) gc_lock: tokio::sync::RwLock<()>,
    key_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    inflight: Arc<crate::scope::InFlight>,
}

impl Images {
    /// Opens the store (cleaning what a crash left) and readies the service.
    pub async fn open(options: ImageOptions) -> Result<Self, ImageError> {
        let root = options.root.clone();
        let store = blocking(move || Store::open(root).map_err(ImageError::from)).await?;
        Ok(Self {
            store: Arc::new(store),
            registry: RwLock::new(options.registry),
            progress_timeout: options.progress_timeout,
            pull_timeout: options.pull_timeout,
            max_concurrent_downloads: options.max_concurrent_downloads.max(1),
            limits: options.limits,
            gc_lock: tokio::sync::RwLock::new(()),
            key_locks: Mutex::new(HashMap::new()),
            inflight: Arc::default(),
        })
    }

    /// Replaces the registry settings (SIGHUP); pulls already running keep theirs.
    pub fn set_registry(&self, registry: RegistryOptions) {
        match self.registry.write() {
            Ok(mut guard) => *guard = registry,
            Err(poisoned) => *poisoned.into_inner() = registry,
        }
    }

    pub(crate) fn registry(&self) -> RegistryOptions {
        match self.registry.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A lock for one blob digest or chain ID.
    pub(crate) fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.key_locks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Forget locks nobody holds or waits on, so the map stays small.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(locks.entry(key.to_owned()).or_default())
    }

    /// Pulls `reference` and returns the stored image.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<Credentials>,
    ) -> Result<ImageRecord, ImageError> {
        let reference = parse(reference)?;
        let _shared = self.gc_lock.read().await;
        // Dropped midway (the caller hung up), the scope cleans up by itself.
        let scope = crate::scope::PullScope::new(Arc::clone(&self.inflight), self.store());
        let result = match tokio::time::timeout(
            self.pull_timeout,
            self.pull_any_endpoint(&reference, credentials, &scope),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(ImageError::Deadline {
                reference: reference.to_string(),
                after: self.pull_timeout,
            }),
        };
        match result {
            Ok(record) => {
                scope.succeeded();
                Ok(record)
            }
            Err(e) => {
                // What the failed pull wrote goes before the answer: a pull that ran out
                // of space leaves the space free for the next.
                let (blobs, snapshots) =
                    blocking(move || Ok(scope.failed())).await.unwrap_or((0, 0));
                if blobs + snapshots > 0 {
                    tracing::info!(image = %reference, blobs, snapshots, "removed what the failed pull stored");
                }
                Err(e)
            }
        }
    }

    /// Every image.
    pub async fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let store = Arc::clone(&self.store);
        blocking(move || store.meta.images().map_err(ImageError::from)).await
    }

    /// The image an ID (`sha256:<hex>` or bare hex), a name, or a `name@digest` points at.
    pub async fn find(&self, spec: &str) -> Result<Option<ImageRecord>, ImageError> {
        let store = Arc::clone(&self.store);
        let spec = spec.to_owned();
        blocking(move || find_image(&store, &spec)).await
    }

    /// The image config blob (JSON) of a stored image.
    pub async fn config(&self, image: &ImageRecord) -> Result<Vec<u8>, ImageError> {
        let digest = image
            .id
            .parse()
            .map_err(|e: storage::ContentError| ImageError::Store(e.into()))?;
        let store = Arc::clone(&self.store);
        blocking(move || store.content.read(&digest).map_err(ImageError::from)).await
    }

    /// Removes what `spec` names. A tag or digest name untags; the image goes when no
    /// tag is left. An image ID removes the image with all its names. Unknown: no error.
    /// Returns whether anything was removed.
    pub async fn remove(&self, spec: &str) -> Result<bool, ImageError> {
        let _exclusive = self.gc_lock.write().await;
        let store = Arc::clone(&self.store);
        let spec = spec.to_owned();
        blocking(move || {
            let Some(image) = find_image(&store, &spec)? else {
                return Ok(false);
            };
            let by_name = name_for(&spec).filter(|n| image.names.contains(n));
            match by_name {
                Some(name) => {
                    if let Some(left) = store.meta.remove_name(&name)?
                        && !left.names.iter().any(|n| !n.contains('@'))
                    {
                        // Only digest names left: nothing tags it any more.
                        store.meta.remove_image(&left.id)?;
                    }
                }
                None => store.meta.remove_image(&image.id)?,
            }
            let report = store.gc()?;
            tracing::info!(image = %image.id, spec, blobs = report.blobs, snapshots = report.snapshots, "image removed");
            Ok(true)
        })
        .await
    }

    /// Space used by the image store.
    pub async fn usage(&self) -> Result<Usage, ImageError> {
        let store = Arc::clone(&self.store);
        blocking(move || store.usage().map_err(ImageError::from)).await
    }

    /// The store, for the snapshots containers mount.
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    /// The storage root's path (the image filesystem ImageFsInfo reports).
    pub fn root(&self) -> PathBuf {
        self.store.root().to_path_buf()
    }
}

/// The stored name a reference string stands for (`name:tag` or `name@digest`).
fn name_for(spec: &str) -> Option<String> {
    let reference: Reference = spec.parse().ok()?;
    match (reference.digest(), reference.tagged_name()) {
        (Some(digest), None) => Some(reference.digested_name(digest)),
        (Some(digest), Some(_)) => Some(reference.digested_name(digest)),
        (None, tagged) => tagged,
    }
}

/// The image an ID, name or `name@digest` points at, in `store`. As containerd does, a
/// spec that names no stored image is then tried as a unique ID prefix (`crictl images`
/// prints 13 hex digits); a prefix two images share is [`ImageError::AmbiguousId`].
pub fn find_image(store: &Store, spec: &str) -> Result<Option<ImageRecord>, ImageError> {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let short = spec.strip_prefix("sha256:").unwrap_or(spec);
    if hex(short) && short.len() == 64 {
        return Ok(store.meta.image(&format!("sha256:{short}"))?);
    }
    if let Some(name) = name_for(spec)
        && let Some(image) = store.meta.image_by_name(&name)?
    {
        return Ok(Some(image));
    }
    if !hex(short) || short.len() > 64 {
        return Ok(None);
    }
    // Digests are stored in lower case; a prefix typed in upper case is the same digest.
    let prefix = format!("sha256:{}", short.to_ascii_lowercase());
    let ids = store.meta.image_ids_with_prefix(&prefix, 64)?;
    match ids.as_slice() {
        [] => Ok(None),
        [id] => Ok(store.meta.image(id)?),
        more => Err(ImageError::AmbiguousId {
            prefix: short.to_owned(),
            count: more.len(),
        }),
    }
}

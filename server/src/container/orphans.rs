//! Containers that crispd started to make but never recorded.
//!
//! CreateContainer writes its intent (`<bundle>/intent.json`: the pod, the handler, how
//! many image volumes) before its first side effect, and the container's record only
//! once the runtime has it. A crash in between leaves a bundle no record names: at
//! startup, before crispd serves, each one is ended through its handler (its monitor,
//! the runtime's container, its cgroup), and its mounts, bundle and writable layers
//! go. After a node restart the bundles (on tmpfs) are gone, but writable layers under
//! the storage root are not: those no record names go too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ContainerRecord, Containers};

/// What a create in progress has made, as far as cleaning it up needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// The pod the container was made in.
    pub pod_id: String,
    /// The handler asked to run it.
    pub handler: String,
    /// How many image volumes it mounts.
    pub image_volumes: usize,
}

const INTENT: &str = "intent.json";

/// Makes the bundle directory and writes the intent into it. The state dir is a tmpfs
/// (what it names does not outlive a reboot either), so no fsync is needed: the write
/// only has to outlive crispd.
pub fn write_intent(record: &ContainerRecord) -> std::io::Result<()> {
    let intent = Intent {
        pod_id: record.pod_id.clone(),
        handler: record.handler.clone(),
        image_volumes: record.image_volumes,
    };
    std::fs::create_dir_all(&record.bundle)?;
    let bytes = serde_json::to_vec(&intent).map_err(std::io::Error::other)?;
    std::fs::write(record.bundle.join(INTENT), bytes)
}

fn read_intent(bundle: &Path) -> Option<Intent> {
    let bytes = std::fs::read(bundle.join(INTENT)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Ends and removes every container under `<state>/containers` and every writable layer
/// that `containers` has no record of. Returns how many bundles and layers went.
pub async fn release_unknown(
    state: &Path,
    handlers: &crate::handlers::Handlers,
    store: std::sync::Arc<storage::Store>,
    containers: &Containers,
) -> (usize, usize) {
    let known: HashSet<String> = containers
        .all()
        .iter()
        .map(|c| c.snapshot().id.clone())
        .collect();
    let dir = state.join("containers");
    let bundles: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(id, path)| !known.contains(id) && path.is_dir())
                .collect()
        })
        .unwrap_or_default();
    let mut bundles_released = 0;
    for (id, bundle) in bundles {
        let intent = read_intent(&bundle);
        let (pod_id, handler_name, image_volumes) = match &intent {
            Some(i) => (i.pod_id.clone(), i.handler.clone(), i.image_volumes),
            None => (String::new(), String::new(), count_volumes(&bundle)),
        };
        let reference = runtime_handlers::ContainerRef {
            id: &id,
            sandbox_id: &pod_id,
            bundle: &bundle,
            pid: 0,
            cgroup_path: "",
        };
        if intent.is_some() {
            match handlers.get(&handler_name) {
                Ok(handler) => handler.release_unknown_container(&reference).await,
                Err(e) => {
                    tracing::warn!(id = %id, handler = %handler_name, error = %e, "cannot ask the handler to end an unrecorded container");
                }
            }
        } else {
            // No intent (a bundle made before intents were written): whichever handler
            // may have it is asked.
            for (_, handler) in handlers.usable() {
                handler.release_unknown_container(&reference).await;
            }
        }
        let store = std::sync::Arc::clone(&store);
        let (owned_id, owned_bundle) = (id.clone(), bundle.clone());
        let released = crate::pod::blocking(move || {
            super::release_container_filesystems(
                &owned_id,
                &owned_bundle,
                image_volumes,
                &store.snapshots,
            )
            .map_err(crate::errors::LifecycleError::internal)
        })
        .await;
        match released {
            Ok(()) => {
                bundles_released += 1;
                tracing::warn!(id = %id, pod = %pod_id, "removed a container whose create never completed");
            }
            Err(e) => {
                tracing::error!(id = %id, error = %e, "cannot remove a container whose create never completed")
            }
        }
    }
    // Writable layers no record names (a reboot took their bundles): `<id>` and
    // `<id>-vol<n>`.
    let layers: Vec<String> = store
        .snapshots
        .writable_ids()
        .into_iter()
        .filter(|layer| {
            let owner = layer
                .split_once("-vol")
                .map_or(layer.as_str(), |(id, _)| id);
            !known.contains(owner)
        })
        .collect();
    let store_for_layers = std::sync::Arc::clone(&store);
    let layers_removed = crate::pod::blocking(move || {
        let mut removed = 0;
        for layer in layers {
            match store_for_layers.snapshots.discard_writable(&layer) {
                Ok(()) => {
                    removed += 1;
                    tracing::warn!(layer = %layer, "removed a writable layer no container owns");
                }
                Err(e) => tracing::error!(layer = %layer, error = %e, "cannot remove an unowned writable layer"),
            }
        }
        Ok(removed)
    })
    .await
    .unwrap_or(0);
    (bundles_released, layers_removed)
}

fn count_volumes(bundle: &Path) -> usize {
    std::fs::read_dir(bundle.join("volumes")).map_or(0, |d| d.flatten().count())
}

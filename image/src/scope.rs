//! What a pull in progress has touched, so a failed pull takes back what it wrote.
//!
//! Each pull registers every blob digest and chain ID it is about to use, before it
//! checks whether the store has it. When the pull fails (or its caller gives up on it),
//! every one of those that no image references and no other pull in progress has
//! registered is deleted: the next pull gets the space back at once, not after the next
//! image removal. Registration and deletion share one lock, so a pull that starts using a
//! blob either sees it kept or finds it gone and downloads it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use storage::Store;

/// The keys (blob digests, chain IDs) pulls in progress use, with how many pulls use each.
#[derive(Default)]
pub(crate) struct InFlight {
    counts: Mutex<HashMap<String, usize>>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        match self.counts.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// One pull's registrations; dropped without [`PullScope::succeeded`], it deletes its
/// unreferenced content.
pub(crate) struct PullScope {
    inflight: Arc<InFlight>,
    store: Arc<Store>,
    blobs: Mutex<Vec<String>>,
    chains: Mutex<Vec<String>>,
    done: bool,
}

impl PullScope {
    pub(crate) fn new(inflight: Arc<InFlight>, store: Arc<Store>) -> Self {
        Self {
            inflight,
            store,
            blobs: Mutex::new(Vec::new()),
            chains: Mutex::new(Vec::new()),
            done: false,
        }
    }

    fn touch(&self, list: &Mutex<Vec<String>>, key: &str) {
        let mut mine = match list.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if mine.iter().any(|k| k == key) {
            return;
        }
        mine.push(key.to_owned());
        *self.inflight.lock().entry(key.to_owned()).or_default() += 1;
    }

    /// This pull uses blob `digest` (call before looking whether it is stored).
    pub(crate) fn blob(&self, digest: &str) {
        self.touch(&self.blobs, digest);
    }

    /// This pull uses snapshot `chain` (call before looking whether it is committed).
    pub(crate) fn chain(&self, chain: &str) {
        self.touch(&self.chains, chain);
    }

    /// The pull registered its image: what it used stays.
    pub(crate) fn succeeded(mut self) {
        let (blobs, chains) = self.take();
        release(&self.inflight, &self.store, blobs, chains, false);
    }

    /// The pull failed: deletes what it used that nothing else needs. Blocking
    /// (filesystem removals); returns the blobs and snapshots deleted.
    pub(crate) fn failed(mut self) -> (usize, usize) {
        let (blobs, chains) = self.take();
        release(&self.inflight, &self.store, blobs, chains, true)
    }

    /// The keys registered, leaving none (so that dropping `self` then does nothing).
    fn take(&mut self) -> (Vec<String>, Vec<String>) {
        self.done = true;
        let take = |list: &Mutex<Vec<String>>| match list.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        (take(&self.blobs), take(&self.chains))
    }
}

/// Unregisters `blobs` and `chains`; with `discard`, deletes those that no other pull
/// uses and no image references.
fn release(
    inflight: &InFlight,
    store: &Store,
    blobs: Vec<String>,
    chains: Vec<String>,
    discard: bool,
) -> (usize, usize) {
    let mut counts = inflight.lock();
    let mut last = |key: &String| {
        let alone = match counts.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                counts.remove(key);
                true
            }
        };
        discard && alone
    };
    let blobs: Vec<String> = blobs.into_iter().filter(|k| last(k)).collect();
    let chains: Vec<String> = chains.into_iter().filter(|k| last(k)).collect();
    if blobs.is_empty() && chains.is_empty() {
        return (0, 0);
    }
    // Still under the lock: a pull that registers one of these now waits, and then finds
    // it gone.
    let images = match store.meta.images() {
        Ok(images) => images,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the images; a failed pull's content stays until the next removal");
            return (0, 0);
        }
    };
    let mut deleted = (0, 0);
    for blob in blobs {
        if images.iter().any(|i| i.blobs.contains(&blob)) {
            continue;
        }
        let Ok(digest) = blob.parse::<storage::Digest>() else {
            continue;
        };
        if store.has_blob(&digest) {
            match store.content.delete(&digest) {
                Ok(()) => deleted.0 += 1,
                Err(e) => tracing::warn!(blob, error = %e, "cannot delete a failed pull's blob"),
            }
        }
    }
    for chain in chains {
        if images.iter().any(|i| i.chain_ids.contains(&chain)) {
            continue;
        }
        if matches!(store.snapshots.committed(&chain), Ok(Some(_))) {
            match store.snapshots.remove(&chain) {
                Ok(()) => deleted.1 += 1,
                Err(e) => {
                    tracing::warn!(chain, error = %e, "cannot delete a failed pull's snapshot")
                }
            }
        }
    }
    drop(counts);
    deleted
}

impl Drop for PullScope {
    /// A pull dropped midway (its caller hung up, or its deadline passed): the same
    /// cleanup as a failure, off the async threads.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (blobs, chains) = self.take();
        let (inflight, store) = (Arc::clone(&self.inflight), Arc::clone(&self.store));
        let cleanup = move || {
            release(&inflight, &store, blobs, chains, true);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(cleanup);
            }
            Err(_) => cleanup(),
        }
    }
}

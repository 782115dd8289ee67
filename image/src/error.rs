//! What can go wrong with images.

use std::time::Duration;

use storage::{Digest, StoreError, UnpackError};

use crate::reference::ReferenceError;

/// A pull, lookup or removal that failed, with what a person needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The registry has no such image (or tag).
    #[error("image {reference} not found on {registry}")]
    NotFound {
        /// The reference pulled.
        reference: String,
        /// The registry or mirror asked last.
        registry: String,
    },
    /// The registry refused our credentials (or wants some).
    #[error("registry {registry} refused access to {reference}: {message}")]
    Unauthorized {
        /// The reference pulled.
        reference: String,
        /// The registry.
        registry: String,
        /// What it said.
        message: String,
    },
    /// The registry could not be reached or answered with a server error.
    #[error("registry {registry} is unavailable for {reference}: {message}")]
    Unavailable {
        /// The reference pulled.
        reference: String,
        /// The registry.
        registry: String,
        /// What went wrong.
        message: String,
    },
    /// A schema 1 manifest.
    #[error(
        "image {reference} has a Docker schema 1 manifest, which crisp does not pull; push it again with a current client (schema 2 or OCI)"
    )]
    Schema1 {
        /// The reference.
        reference: String,
    },
    /// An index without an entry for this node.
    #[error("image {reference} has no {wanted} variant (it offers: {offered})")]
    NoMatchingPlatform {
        /// The reference.
        reference: String,
        /// This node's platform.
        wanted: String,
        /// What the index lists.
        offered: String,
    },
    /// A manifest, index or config that is malformed.
    #[error("invalid manifest: {reason}")]
    BadManifest {
        /// What is wrong.
        reason: String,
    },
    /// Content that does not hash to its digest.
    #[error(
        "{what} of {reference} is corrupt: expected {expected}, got {actual}; nothing was stored"
    )]
    DigestMismatch {
        /// Which content (manifest, config, layer).
        what: String,
        /// The reference pulled.
        reference: String,
        /// The digest announced.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A blob of another length than its descriptor announced (the registry's data is
    /// wrong, not the registry down).
    #[error(
        "{what} {blob} of {reference} is corrupt: {expected} bytes announced, {actual} received; nothing was stored"
    )]
    WrongSize {
        /// Which content (config, layer).
        what: String,
        /// The reference pulled.
        reference: String,
        /// The blob's digest.
        blob: Digest,
        /// The announced size.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// A layer that tries to escape its directory or cannot be unpacked.
    #[error("layer {layer} of {reference} was refused: {source}")]
    BadLayer {
        /// The layer's digest.
        layer: Digest,
        /// The reference pulled.
        reference: String,
        /// What was wrong with it.
        #[source]
        source: UnpackError,
    },
    /// No answer or no bytes arrived for too long (connection, headers or body).
    #[error("pull of {reference} made no progress for {after:?} ({waiting}); aborted")]
    Stalled {
        /// The reference.
        reference: String,
        /// What it was waiting for (the manifest, a blob's headers or bytes).
        waiting: String,
        /// The configured progress timeout.
        after: Duration,
    },
    /// The whole pull took too long.
    #[error("pull of {reference} did not finish within {after:?}; aborted")]
    Deadline {
        /// The reference.
        reference: String,
        /// The configured pull timeout.
        after: Duration,
    },
    /// A short image ID that more than one stored image starts with.
    #[error(
        "image ID prefix {prefix} is ambiguous: {count} images start with it; give more digits or the full ID"
    )]
    AmbiguousId {
        /// The prefix given.
        prefix: String,
        /// How many images start with it (counting stops at 64).
        count: usize,
    },
    /// The local store failed.
    #[error("image store: {0}")]
    Store(#[from] StoreError),
    /// A blocking task failed to complete (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ImageError {
    /// Whether the store's filesystem ran out of space (or quota) on the way: the node's
    /// problem, not the image's.
    pub fn is_out_of_space(&self) -> bool {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = current {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            {
                return true;
            }
            current = e.source();
        }
        // The metadata database's errors carry its words only. (A registry's own words
        // are not ours: its full disk is its outage.)
        let text = self.to_string();
        matches!(self, Self::Store(_))
            && (text.contains("No space left on device") || text.contains("Disk quota exceeded"))
    }
}

impl From<storage::ContentError> for ImageError {
    fn from(e: storage::ContentError) -> Self {
        Self::Store(StoreError::Content(e))
    }
}

impl From<storage::MetadataError> for ImageError {
    fn from(e: storage::MetadataError) -> Self {
        Self::Store(StoreError::Metadata(e))
    }
}

impl From<storage::SnapshotError> for ImageError {
    fn from(e: storage::SnapshotError) -> Self {
        Self::Store(StoreError::Snapshot(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_is_found_in_the_store_and_not_in_a_registry_s_words() {
        let full = ImageError::Store(StoreError::Content(storage::ContentError::Io {
            path: "/var/lib/crisp/content/ingest/x".into(),
            source: std::io::Error::from_raw_os_error(libc_enospc()),
        }));
        assert!(full.is_out_of_space());
        let theirs = ImageError::Unavailable {
            reference: "r".into(),
            registry: "registry.example".into(),
            message: "500: No space left on device".into(),
        };
        assert!(!theirs.is_out_of_space());
    }

    /// ENOSPC on Linux.
    fn libc_enospc() -> i32 {
        28
    }
}

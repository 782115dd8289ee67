//! What can go wrong with snapshots.

use std::path::PathBuf;

use crate::digest::Digest;

/// A content-store problem, naming the digest or path concerned.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// No committed blob has this digest.
    #[error("blob {digest} not found in the content store")]
    NotFound {
        /// The digest asked for.
        digest: Digest,
    },
    /// The bytes do not hash to the digest they were announced under.
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The announced digest.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The bytes are not as long as announced.
    #[error("blob {digest} has {actual} bytes, but {expected} were announced")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The announced size.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// A string that should be a digest is not one.
    #[error("invalid digest `{input}`: {reason}")]
    InvalidDigest {
        /// What was given (truncated).
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// Reading or writing the store failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A snapshotter problem, naming the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The metadata store failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// A directory or file could not be created or removed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A mount or unmount failed.
    #[error("mounting {kind} at {}: {source}", target.display())]
    Mount {
        /// Filesystem type.
        kind: &'static str,
        /// Mount point.
        target: PathBuf,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

/// A layer that cannot be applied, naming the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry would land outside the layer directory.
    #[error("layer entry `{entry}` refused: {reason}")]
    Escape {
        /// The entry's path as written in the layer.
        entry: String,
        /// How it would escape.
        reason: String,
    },
    /// An entry is malformed or of a kind crisp does not unpack.
    #[error("layer entry `{entry}` is invalid: {reason}")]
    Invalid {
        /// The entry.
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// The layer stream is not a readable (compressed) tar.
    #[error("layer is not a readable tar archive: {source}")]
    Read {
        /// The decoder's or tar reader's error.
        #[source]
        source: std::io::Error,
    },
    /// The layer expands past the configured limits.
    #[error("layer refused: {reason}")]
    TooLarge {
        /// Which limit, and by how much.
        reason: String,
    },
    /// Writing into the snapshot failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file written.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A metadata-store problem.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The database failed.
    #[error("metadata database: {0}")]
    Db(String),
    /// A record cannot be decoded.
    #[error("metadata record `{key}` is unreadable: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A problem with the storage root as a whole.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The content store failed.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// The snapshotter failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The metadata store failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// Walking the root failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

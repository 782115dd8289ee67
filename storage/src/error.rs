//! What can go wrong with snapshots.

use std::path::PathBuf;

/// A snapshotter problem, naming the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
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

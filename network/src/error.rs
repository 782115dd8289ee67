//! What can go wrong with CNI.

use std::path::PathBuf;

/// A CNI problem, naming the file or plugin concerned.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration directory holds no usable network configuration.
    #[error("no valid CNI network configuration in {}{}", dir.display(), describe_rejected(rejected))]
    NotFound {
        /// The directory scanned.
        dir: PathBuf,
        /// Files looked at and why each was not usable.
        rejected: Vec<(PathBuf, String)>,
    },
    /// The configuration directory could not be read.
    #[error("cannot read CNI configuration directory {}: {source}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn describe_rejected(rejected: &[(PathBuf, String)]) -> String {
    if rejected.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = rejected
        .iter()
        .map(|(path, why)| format!("{}: {why}", path.display()))
        .collect();
    format!(" ({})", parts.join("; "))
}

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
    /// A plugin failed (its own message, as it reported it).
    #[error("CNI plugin {plugin} failed on {command}: {message}")]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: String,
        /// What it said.
        message: String,
    },
    /// A plugin binary could not be run.
    #[error("cannot run CNI plugin {}: {source}", plugin.display())]
    Exec {
        /// The binary.
        plugin: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Tearing down a pod's network failed in one or more plugins.
    #[error("CNI teardown of {container_id} failed: {}", failures.join("; "))]
    Teardown {
        /// The sandbox.
        container_id: String,
        /// Every plugin failure, in order.
        failures: Vec<String>,
    },
    /// The attachment journal could not be written or read.
    #[error("CNI journal {}: {source}", path.display())]
    Journal {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A bandwidth annotation is not a valid rate.
    #[error("{annotation}: {message}")]
    Bandwidth {
        /// The annotation.
        annotation: String,
        /// What is wrong with its value.
        message: String,
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

/// A namespace that could not be created or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Creating or pinning failed.
    #[error("cannot create namespace at {}: {source}", path.display())]
    Create {
        /// The pin path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading inside a namespace failed.
    #[error("cannot read inside namespace {}: {source}", path.display())]
    Read {
        /// The pin path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Unpinning failed.
    #[error("cannot remove namespace at {}: {source}", path.display())]
    Remove {
        /// The pin path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

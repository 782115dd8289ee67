//! Images: references, the registry client, and pull orchestration (download, verify,
//! hand layers to `storage` for unpacking).
//!
//! Owns: turning a reference such as `busybox` into `docker.io/library/busybox:latest`,
//! talking to registries, and deciding what to fetch. Does not own: bytes at rest
//! (`storage`) or CRI messages (`server`).
//!
//! Invariants: nothing fetched is used before its digest has been verified.
//!
//! Trusts: no registry and no manifest; every byte is checked against a digest.

mod blocking;
mod error;
mod images;
mod install;
mod layout;
mod manifest;
mod pull;
mod reference;
mod registry;
mod scope;

pub use error::ImageError;
pub use images::{ImageOptions, Images, UnpackedLimits, find_image};
pub use layout::{export_layout, import_layout};
pub use reference::{DEFAULT_REGISTRY, DEFAULT_TAG, Reference, ReferenceError, parse};
pub use registry::{Credentials, RegistryOptions, is_loopback};
pub use storage::{ImageRecord, Usage};

/// The parsers of manifests, indexes and image configs, for the fuzz targets in `fuzz/`
/// (which build with `--cfg fuzzing`); pulls reach them through [`Images`].
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use crate::manifest::{
        Descriptor, Fetched, LayoutIndex, chain_ids, parse_config, parse_manifest, select_platform,
    };
}

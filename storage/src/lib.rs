//! Storage for images and container filesystems: the content store (blobs by digest), the
//! overlayfs snapshotter (one committed snapshot per layer, one writable snapshot per
//! container) and the metadata store. Only this crate sees the embedded database.
//!
//! Owns: bytes on disk under the configured root, and the mounts it makes.
//! Does not own: registries, references or CRI semantics (`image` and `server` do).
//!
//! Invariants: a blob is visible under its digest only once its content has been verified.
//!
//! Trusts: nothing in a layer; everything extracted is confined to its snapshot.

mod content;
mod digest;
mod error;
mod metadata;
mod mount;
mod overlay_probe;
mod rootfs;
mod snapshot;
mod store;
mod unpack;

pub use content::{BlobWriter, ContentStore};
pub use digest::{Digest, Hasher};
pub use error::{ContentError, MetadataError, SnapshotError, StoreError, UnpackError};
pub use metadata::{ImageRecord, MetadataStore, SnapshotRecord};
pub use mount::{CloneOptions, clone_tree, unmount_all_in};
pub use overlay_probe::probe_overlay;
pub use rootfs::IdMapping;
pub use snapshot::Snapshotter;
pub use store::{Filesystem, GcReport, Store, Usage};
pub use unpack::{RATIO_FLOOR, UnpackLimits, UnpackStats, apply_layer, apply_layer_within};

//! The steps that turn stored blobs into a usable image, shared by registry pulls and
//! OCI-layout imports: unpacking one layer as a snapshot (checking its diff ID), and
//! registering the image record without losing names it already had.

use storage::{Digest, ImageRecord, Store};

use crate::error::ImageError;

/// Applies the stored layer blob as the committed snapshot for `chain` on `parent`,
/// unless that snapshot exists, within `limits`. `name` is the image, for error
/// messages. Returns the snapshot's size (bytes of file content).
pub fn unpack_layer(
    store: &Store,
    layer: &Digest,
    diff_id: &Digest,
    chain: &str,
    parent: Option<&str>,
    name: &str,
    limits: storage::UnpackLimits,
) -> Result<u64, ImageError> {
    let file = store.content.open_blob(layer)?;
    let started = std::time::Instant::now();
    let outcome = store.snapshots.commit_new(chain, parent, |dir| {
        let stats = storage::apply_layer_within(file, dir, limits).map_err(|source| {
            ImageError::BadLayer {
                layer: layer.clone(),
                reference: name.to_owned(),
                source,
            }
        })?;
        if stats.diff_id != *diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer {layer}"),
                reference: name.to_owned(),
                expected: diff_id.clone(),
                actual: stats.diff_id,
            });
        }
        Ok(stats.bytes)
    })?;
    let record = outcome?;
    tracing::debug!(layer = %layer, snapshot = record.id, elapsed = ?started.elapsed(), "unpacked");
    Ok(record.size)
}

/// Stores the image, keeping the names and blobs it already had under other references.
pub fn register(store: &Store, mut record: ImageRecord) -> Result<ImageRecord, ImageError> {
    if let Some(old) = store.meta.image(&record.id)? {
        for name in old.names {
            if !record.names.contains(&name) {
                record.names.push(name);
            }
        }
        for blob in old.blobs {
            if !record.blobs.contains(&blob) {
                record.blobs.push(blob);
            }
        }
    }
    store.meta.put_image(&record)?;
    Ok(record)
}

/// Now, in seconds since the epoch (an image's pull time).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

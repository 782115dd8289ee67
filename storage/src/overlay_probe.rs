//! Whether overlayfs can be mounted where the snapshotter will keep its layers.

use std::path::Path;

use crate::error::SnapshotError;
use crate::mount::{mount_overlay, unmount};

/// Mounts and unmounts a throwaway overlay in a fresh directory under `scratch_parent`
/// (which must be on the filesystem that will hold snapshots), leaving nothing behind.
pub fn probe_overlay(scratch_parent: &Path) -> Result<(), SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Io { path, source }
    };
    std::fs::create_dir_all(scratch_parent).map_err(io(scratch_parent))?;
    let dir = scratch_parent.join(format!(".overlay-probe-{}", std::process::id()));
    let (lower, upper, work, merged) = (
        dir.join("lower"),
        dir.join("upper"),
        dir.join("work"),
        dir.join("merged"),
    );
    let result = (|| {
        for d in [&lower, &upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount_overlay(&merged, &options).map_err(|source| SnapshotError::Mount {
            kind: "overlay",
            target: merged.clone(),
            source,
        })?;
        unmount(&merged).map_err(|source| SnapshotError::Mount {
            kind: "overlay",
            target: merged.clone(),
            source,
        })
    })();
    let cleanup = std::fs::remove_dir_all(&dir).map_err(io(&dir));
    result.and(cleanup)
}

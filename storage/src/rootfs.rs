//! Container root filesystems: a writable upper layer per container over an image's
//! committed snapshots, mounted with overlayfs.
//!
//! Layout: `<root>/containers/<id>/{upper,work}` holds what the container writes (so it
//! survives reboots, as kubelet expects of a container's writable layer); the merged
//! view is mounted at a path the caller chooses (under the state dir).

use std::path::{Path, PathBuf};

use crate::error::SnapshotError;
use crate::mount::{CloneOptions, OVERLAY_MAX_LAYERS, clone_tree, mount_overlay_layers, unmount};
use crate::snapshot::Snapshotter;

/// How a rootfs for a container in a user namespace is shown: the image's layers
/// through the namespace's ID mapping, so that its root owns what the image's root owns.
#[derive(Debug, Clone, Copy)]
pub struct IdMapping<'a> {
    /// The user namespace (a `/proc/<pid>/ns/user` or a pinned copy of one).
    pub userns: &'a Path,
    /// The host user ID that the namespace's root is.
    pub root_uid: u32,
    /// The host group ID that the namespace's root group is.
    pub root_gid: u32,
}

impl Snapshotter {
    fn writable_dir(&self, id: &str) -> PathBuf {
        self.root()
            .parent()
            .unwrap_or_else(|| self.root())
            .join("containers")
            .join(id)
    }

    /// Creates the writable layer of container `id` over the image whose layer chain is
    /// `chain_ids` (bottom first) and mounts the merged rootfs at `target`.
    ///
    /// With `idmap`, the layers are seen through an ID-mapped copy of the snapshot tree
    /// (the files on disk stay as they are, shared with every other container) and the
    /// writable layer belongs to the namespace's root; what the container writes is
    /// stored with host IDs.
    pub fn mount_rootfs(
        &self,
        id: &str,
        chain_ids: &[String],
        target: &Path,
        idmap: Option<&IdMapping<'_>>,
    ) -> Result<(), SnapshotError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SnapshotError::Io { path, source }
        };
        if chain_ids.len() > OVERLAY_MAX_LAYERS {
            return Err(SnapshotError::Mount {
                kind: "overlay",
                target: target.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "the image has {} layers; overlayfs stacks at most {OVERLAY_MAX_LAYERS}",
                        chain_ids.len()
                    ),
                ),
            });
        }
        let mut lowers = Vec::with_capacity(chain_ids.len());
        for chain in chain_ids.iter().rev() {
            let record = self.committed(chain)?.ok_or_else(|| SnapshotError::Io {
                path: self.root().join(chain),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("image layer {chain} is not unpacked"),
                ),
            })?;
            lowers.push(self.fs_dir(&record).display().to_string());
        }
        let dir = self.writable_dir(id);
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for d in [&upper, &work, &target.to_path_buf()] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        // The ID-mapped view of the layers; the overlay keeps what it needs of it, so it
        // is detached again once the overlay is mounted.
        let mapped = dir.join("layers-idmapped");
        if let Some(map) = idmap {
            let options = CloneOptions {
                recursive: false,
                read_only: true,
                idmap: Some(map.userns),
            };
            clone_tree(self.root(), &mapped, &options).map_err(|source| SnapshotError::Mount {
                kind: "id-mapped layers",
                target: mapped.clone(),
                source,
            })?;
            if let Err(e) =
                std::os::unix::fs::lchown(&upper, Some(map.root_uid), Some(map.root_gid))
            {
                let _ = unmount(&mapped);
                let _ = std::fs::remove_dir(&mapped);
                return Err(io(&upper)(e));
            }
            lowers = lowers
                .iter()
                .map(|l| match Path::new(l).strip_prefix(self.root()) {
                    Ok(rel) => mapped.join(rel).display().to_string(),
                    Err(_) => l.clone(),
                })
                .collect();
        }
        // overlayfs needs at least two layers when there is no upper; with an upper, one
        // lower suffices. An image with no layers gets an empty lower.
        if lowers.is_empty() {
            let empty = dir.join("empty");
            std::fs::create_dir_all(&empty).map_err(io(&empty))?;
            lowers.push(empty.display().to_string());
        }
        let mounted = mount_overlay_layers(target, &lowers, &upper, &work).map_err(|source| {
            SnapshotError::Mount {
                kind: "overlay",
                target: target.to_owned(),
                source,
            }
        });
        if idmap.is_some() {
            let _ = unmount(&mapped);
            let _ = std::fs::remove_dir(&mapped);
        }
        mounted
    }

    /// Unmounts a container's rootfs (if mounted) and, with `discard`, deletes its
    /// writable layer. Missing pieces are not errors.
    pub fn release_rootfs(
        &self,
        id: &str,
        target: &Path,
        discard: bool,
    ) -> Result<(), SnapshotError> {
        if target.exists() {
            match unmount(target) {
                Ok(()) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL)
                        || e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => {
                    return Err(SnapshotError::Mount {
                        kind: "overlay",
                        target: target.to_owned(),
                        source,
                    });
                }
            }
            let _ = std::fs::remove_dir(target);
        }
        if discard {
            self.discard_writable(id)?;
        }
        Ok(())
    }

    /// The IDs that have a writable layer here (containers' and image volumes'), for
    /// removing those no record names.
    pub fn writable_ids(&self) -> Vec<String> {
        let dir = self.writable_dir("");
        std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deletes the writable layer of `id` (its rootfs must be unmounted). A missing one is
    /// not an error.
    pub fn discard_writable(&self, id: &str) -> Result<(), SnapshotError> {
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return Ok(());
        }
        let dir = self.writable_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SnapshotError::Io { path: dir, source }),
        }
    }

    /// Bytes (allocated blocks) and inodes in a container's writable layer, and the
    /// directory they were counted in.
    pub fn writable_usage(&self, id: &str) -> (u64, u64, PathBuf) {
        use std::os::unix::fs::MetadataExt;
        let upper = self.writable_dir(id).join("upper");
        let mut stack = vec![upper.clone()];
        let (mut bytes, mut inodes) = (0, 0);
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                inodes += 1;
                bytes += meta.blocks() * 512;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        (bytes, inodes, upper)
    }
}

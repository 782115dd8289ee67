//! The overlayfs snapshotter: one committed, read-only snapshot per layer, keyed by the
//! layer's chain ID and shared by every image that has that chain; container snapshots
//! (writable upper layers) are stacked on them with overlayfs.
//!
//! A snapshot is built in `snapshots/<id>.tmp` and renamed to `snapshots/<id>` before
//! its record is stored, so a crash leaves at worst a directory without a record, which
//! [`crate::Store::open`] removes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::SnapshotError;
use crate::metadata::{MetadataStore, SnapshotRecord};

/// Committed snapshots on disk.
#[derive(Debug)]
pub struct Snapshotter {
    root: PathBuf,
    meta: Arc<MetadataStore>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Snapshotter {
    /// The snapshotter rooted at `root` (created if needed).
    pub fn open(root: PathBuf, meta: Arc<MetadataStore>) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(Self { root, meta })
    }

    /// The directory holding the snapshots.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The committed snapshot for `chain_id`, if there is one.
    pub fn committed(&self, chain_id: &str) -> Result<Option<SnapshotRecord>, SnapshotError> {
        Ok(self.meta.snapshot(chain_id)?)
    }

    /// The filesystem directory of a snapshot (an overlay lowerdir).
    pub fn fs_dir(&self, record: &SnapshotRecord) -> PathBuf {
        self.root.join(record.id.to_string()).join("fs")
    }

    /// Builds the committed snapshot for `chain_id` on `parent` by running `apply` on an
    /// empty directory (it returns the bytes written). On failure nothing is left behind.
    pub fn commit_new<E>(
        &self,
        chain_id: &str,
        parent: Option<&str>,
        apply: impl FnOnce(&Path) -> Result<u64, E>,
    ) -> Result<Result<SnapshotRecord, E>, SnapshotError> {
        if let Some(existing) = self.committed(chain_id)? {
            return Ok(Ok(existing));
        }
        let id = self.meta.generate_id()?;
        let tmp = self.root.join(format!("{id}.tmp"));
        let fs = tmp.join("fs");
        std::fs::create_dir_all(&fs).map_err(io(&fs))?;
        let size = match apply(&fs) {
            Ok(size) => size,
            Err(e) => {
                std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
                return Ok(Err(e));
            }
        };
        let done = self.root.join(id.to_string());
        if let Err(e) = std::fs::rename(&tmp, &done) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io(&done)(e));
        }
        let record = SnapshotRecord {
            id,
            parent: parent.map(str::to_owned),
            size,
        };
        self.meta.put_snapshot(chain_id, &record)?;
        Ok(Ok(record))
    }

    /// Removes a committed snapshot's record and files.
    pub fn remove(&self, chain_id: &str) -> Result<(), SnapshotError> {
        if let Some(record) = self.committed(chain_id)? {
            self.meta.remove_snapshot(chain_id)?;
            let dir = self.root.join(record.id.to_string());
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&dir)(e)),
            }
        }
        Ok(())
    }

    /// Removes directories that no record names (crash leftovers, interrupted builds).
    pub fn remove_orphans(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let known: std::collections::HashSet<String> = self
            .meta
            .snapshots()?
            .into_iter()
            .map(|(_, r)| r.id.to_string())
            .collect();
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let entry = entry.map_err(io(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }
}

//! The storage root as one thing: content store, snapshotter and metadata, with garbage
//! collection across them and the usage figures ImageFsInfo reports.
//!
//! Layout under the root: `content/` (blobs), `snapshots/` (committed layers),
//! `metadata/` (sled).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::StoreError;
use crate::metadata::MetadataStore;
use crate::snapshot::Snapshotter;

/// Everything under the storage root.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Blobs by digest.
    pub content: ContentStore,
    /// Committed layer snapshots.
    pub snapshots: Snapshotter,
    /// Images, names and snapshot records.
    pub meta: Arc<MetadataStore>,
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs deleted.
    pub blobs: usize,
    /// Snapshots deleted (records and orphan directories).
    pub snapshots: usize,
}

/// Space used on the storage filesystem.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of all files (allocated blocks).
    pub bytes: u64,
    /// Inodes (files, directories, links) in use.
    pub inodes: u64,
}

/// The filesystem the store lives on, as cAdvisor reports a container's filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filesystem {
    /// Its device number, major.
    pub major: u32,
    /// Its device number, minor.
    pub minor: u32,
    /// Size, bytes.
    pub capacity: u64,
    /// Inodes in all.
    pub inodes_total: u64,
    /// Inodes free.
    pub inodes_free: u64,
}

impl Store {
    /// The filesystem holding the store (statfs of the root).
    pub fn filesystem(&self) -> Result<Filesystem, StoreError> {
        use std::os::unix::fs::MetadataExt as _;
        let io = |source| StoreError::Io {
            path: self.root.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.root).map_err(io)?;
        let c_path = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes())
            .map_err(|e| io(std::io::Error::other(e)))?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a NUL-terminated path and a buffer of the right type for the kernel to fill.
        if unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: statvfs returned 0, so it filled the buffer.
        let st = unsafe { st.assume_init() };
        let dev = meta.dev();
        Ok(Filesystem {
            major: libc::major(dev),
            minor: libc::minor(dev),
            capacity: st.f_blocks.saturating_mul(st.f_frsize),
            inodes_total: st.f_files,
            inodes_free: st.f_ffree,
        })
    }

    /// Opens the store at `root`, creating it if needed, and removes what a crash left
    /// half-made (ingests, snapshot directories without records, unreferenced content).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let meta = Arc::new(MetadataStore::open(&root.join("metadata"))?);
        let store = Self {
            content: ContentStore::open(root.join("content"))?,
            snapshots: Snapshotter::open(root.join("snapshots"), Arc::clone(&meta))?,
            meta,
            root,
        };
        store.gc()?;
        Ok(store)
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes every blob and snapshot no image references. The caller must keep pulls
    /// from running meanwhile: their content is not referenced until they finish.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let images = self.meta.images()?;
        let blobs: HashSet<&str> = images
            .iter()
            .flat_map(|i| i.blobs.iter().map(String::as_str))
            .collect();
        let chains: HashSet<&str> = images
            .iter()
            .flat_map(|i| i.chain_ids.iter().map(String::as_str))
            .collect();
        let mut report = GcReport::default();
        for digest in self.content.list()? {
            if !blobs.contains(digest.to_string().as_str()) {
                self.content.delete(&digest)?;
                report.blobs += 1;
            }
        }
        for (chain_id, _) in self.meta.snapshots()? {
            if !chains.contains(chain_id.as_str()) {
                self.snapshots.remove(&chain_id)?;
                report.snapshots += 1;
            }
        }
        report.snapshots += self.snapshots.remove_orphans()?.len();
        Ok(report)
    }

    /// Whether a blob is present.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.content.contains(digest)
    }

    /// Bytes and inodes used under the root (walks the tree: call it off hot paths).
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let mut usage = Usage::default();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Removed while we walked: not ours to count any more.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StoreError::Io { path: dir, source }),
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                usage.inodes += 1;
                usage.bytes += meta.blocks() * 512;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::ImageRecord;

    #[test]
    fn gc_keeps_what_images_use_and_removes_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let kept = store.content.write_all(b"kept", None).expect("blob");
        let dropped = store.content.write_all(b"dropped", None).expect("blob");
        let make = |_: &Path| Ok::<u64, std::io::Error>(0);
        store
            .snapshots
            .commit_new("sha256:keep", None, make)
            .expect("snap")
            .expect("ok");
        store
            .snapshots
            .commit_new("sha256:drop", None, make)
            .expect("snap")
            .expect("ok");
        std::fs::create_dir_all(store.snapshots.root().join("999.tmp/fs")).expect("orphan");
        store
            .meta
            .put_image(&ImageRecord {
                id: "sha256:img".into(),
                names: vec!["x:1".into()],
                manifest_digest: String::new(),
                blobs: vec![kept.to_string()],
                chain_ids: vec!["sha256:keep".into()],
                size: 0,
                pulled_at: 0,
                user: String::new(),
            })
            .expect("image");
        let report = store.gc().expect("gc");
        assert_eq!(
            report,
            GcReport {
                blobs: 1,
                snapshots: 2
            }
        );
        assert!(store.has_blob(&kept) && !store.has_blob(&dropped));
        assert!(
            store
                .snapshots
                .committed("sha256:keep")
                .expect("get")
                .is_some()
        );
        assert!(
            store
                .snapshots
                .committed("sha256:drop")
                .expect("get")
                .is_none()
        );
        let dirs = std::fs::read_dir(store.snapshots.root())
            .expect("dir")
            .count();
        assert_eq!(dirs, 1);
        assert!(store.usage().expect("usage").inodes > 0);
    }

    #[test]
    fn a_failed_snapshot_build_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let result = store
            .snapshots
            .commit_new("sha256:bad", None, |fs: &Path| {
                std::fs::write(fs.join("partial"), b"x")?;
                Err::<u64, _>(std::io::Error::other("hostile layer"))
            })
            .expect("snapshotter ok");
        assert!(result.is_err());
        assert_eq!(
            std::fs::read_dir(store.snapshots.root())
                .expect("dir")
                .count(),
            0
        );
        assert!(
            store
                .snapshots
                .committed("sha256:bad")
                .expect("get")
                .is_none()
        );
    }
}

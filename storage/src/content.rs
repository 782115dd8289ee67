//! The content store: immutable blobs (manifests, configs, compressed layers) by digest.
//!
//! Layout under the store's root: `blobs/sha256/<hex>` for committed blobs and
//! `ingest/<unique>` for blobs being written. A blob reaches `blobs/` only by rename
//! after its size and digest were verified and its bytes fsynced, so a crash at any
//! moment leaves either no blob or a correct one, never one that lies about its digest.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digest, Hasher};
use crate::error::ContentError;

/// Blobs by digest, on disk.
#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
    next_ingest: AtomicU64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ContentStore {
    /// Opens (creating if needed) the store at `root`, discarding ingests a crash left.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ContentError> {
        let root = root.into();
        let blobs = root.join("blobs").join(Digest::ALGORITHM);
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let ingest = root.join("ingest");
        if ingest.exists() {
            std::fs::remove_dir_all(&ingest).map_err(io(&ingest))?;
        }
        std::fs::create_dir_all(&ingest).map_err(io(&ingest))?;
        Ok(Self {
            root,
            next_ingest: AtomicU64::new(0),
        })
    }

    /// Where a committed blob lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(Digest::ALGORITHM)
            .join(digest.hex())
    }

    /// Whether the blob is committed.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The committed blob's size.
    pub fn size(&self, digest: &Digest) -> Result<u64, ContentError> {
        let path = self.blob_path(digest);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ContentError::NotFound {
                digest: digest.clone(),
            }),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Opens a committed blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ContentError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ContentError::NotFound {
                digest: digest.clone(),
            },
            _ => io(&path)(e),
        })
    }

    /// Reads a whole committed blob (manifests and configs; not for layers).
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let mut bytes = Vec::new();
        let path = self.blob_path(digest);
        self.open_blob(digest)?
            .read_to_end(&mut bytes)
            .map_err(io(&path))?;
        Ok(bytes)
    }

    /// Writes a small blob in one go, verifying it against `expected` if given.
    pub fn write_all(
        &self,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<Digest, ContentError> {
        let digest = expected.cloned().unwrap_or_else(|| Digest::of(bytes));
        if self.contains(&digest) {
            return Ok(digest);
        }
        let mut writer = self.writer(&digest, Some(bytes.len() as u64))?;
        writer.write_all(bytes).map_err(io(&writer.path))?;
        writer.commit()?;
        Ok(digest)
    }

    /// Starts writing a blob that must turn out to have `expected` digest (and size, if
    /// known). Nothing is visible until [`BlobWriter::commit`]; dropping the writer
    /// discards what was written.
    pub fn writer(&self, expected: &Digest, size: Option<u64>) -> Result<BlobWriter, ContentError> {
        let n = self.next_ingest.fetch_add(1, Ordering::Relaxed);
        let path =
            self.root
                .join("ingest")
                .join(format!("{}-{}-{n}", expected.hex(), std::process::id()));
        let file = File::create(&path).map_err(io(&path))?;
        Ok(BlobWriter {
            file: Some(file),
            path,
            target: self.blob_path(expected),
            expected: expected.clone(),
            expected_size: size,
            written: 0,
            hasher: Some(Hasher::default()),
        })
    }

    /// Removes a committed blob; removing an absent blob is not an error.
    pub fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.blob_path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every committed blob (names that are not digests are ignored).
    pub fn list(&self) -> Result<Vec<Digest>, ContentError> {
        let dir = self.root.join("blobs").join(Digest::ALGORITHM);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            if let Some(name) = entry.file_name().to_str()
                && let Ok(digest) = format!("{}:{name}", Digest::ALGORITHM).parse()
            {
                out.push(digest);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A blob being written; verified and published by [`BlobWriter::commit`].
pub struct BlobWriter {
    file: Option<File>,
    path: PathBuf,
    target: PathBuf,
    expected: Digest,
    expected_size: Option<u64>,
    written: u64,
    hasher: Option<Hasher>,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies size and digest, makes the bytes durable, and publishes the blob.
    pub fn commit(mut self) -> Result<Digest, ContentError> {
        let mut file = self.file.take().ok_or_else(|| ContentError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("blob writer already finished"),
        })?;
        file.flush().map_err(io(&self.path))?;
        if let Some(size) = self.expected_size
            && size != self.written
        {
            return Err(ContentError::SizeMismatch {
                digest: self.expected.clone(),
                expected: size,
                actual: self.written,
            });
        }
        let actual = self.hasher.take().unwrap_or_default().finish();
        if actual != self.expected {
            return Err(ContentError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        file.sync_all().map_err(io(&self.path))?;
        drop(file);
        std::fs::rename(&self.path, &self.target).map_err(io(&self.target))?;
        if let Some(dir) = self.target.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(self.expected.clone())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("blob writer already finished"))?;
        let n = file.write(buf)?;
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&buf[..n]);
        }
        self.written += n as u64;
        if let Some(size) = self.expected_size
            && self.written > size
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "blob {} is larger than its declared {size} bytes",
                    self.expected
                ),
            ));
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Uncommitted or failed ingests leave nothing behind; after a commit the
        // ingest path was renamed away and this finds nothing.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_blob_is_published_and_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let digest = Digest::of(b"layer bytes");
        let mut w = store.writer(&digest, Some(11)).expect("writer");
        w.write_all(b"layer ").expect("write");
        w.write_all(b"bytes").expect("write");
        assert!(!store.contains(&digest), "invisible before commit");
        assert_eq!(w.commit().expect("commit"), digest);
        assert_eq!(store.read(&digest).expect("read"), b"layer bytes");
        assert_eq!(store.size(&digest).expect("size"), 11);
        assert_eq!(store.list().expect("list"), [digest]);
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
    }

    #[test]
    fn a_wrong_digest_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let claimed = Digest::of(b"what the manifest says");
        let mut w = store.writer(&claimed, None).expect("writer");
        w.write_all(b"what the registry sent").expect("write");
        match w.commit() {
            Err(ContentError::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, claimed);
                assert_eq!(actual, Digest::of(b"what the registry sent"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!store.contains(&claimed));
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
    }

    #[test]
    fn sizes_are_enforced_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let digest = Digest::of(b"abc");
        let mut w = store.writer(&digest, Some(2)).expect("writer");
        assert!(w.write_all(b"abc").is_err(), "more than declared");
        drop(w);
        let mut w = store.writer(&digest, Some(4)).expect("writer");
        w.write_all(b"abc").expect("write");
        assert!(matches!(w.commit(), Err(ContentError::SizeMismatch { .. })));
        assert!(!store.contains(&digest));
    }

    #[test]
    fn dropped_writers_and_crashed_ingests_are_cleaned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let mut w = store.writer(&Digest::of(b"x"), None).expect("writer");
        w.write_all(b"x").expect("write");
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
        // A leftover from a crash is discarded on the next open.
        std::fs::write(dir.path().join("ingest/leftover"), b"partial").expect("write");
        drop(store);
        let _store = ContentStore::open(dir.path()).expect("reopen");
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
    }

    #[test]
    fn delete_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let digest = store.write_all(b"config", None).expect("write");
        store.delete(&digest).expect("delete");
        store.delete(&digest).expect("delete again");
        assert!(matches!(
            store.read(&digest),
            Err(ContentError::NotFound { .. })
        ));
    }
}

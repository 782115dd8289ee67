//! The metadata store: images, their names, and committed snapshots, in sled.
//!
//! Every change that spans keys (an image and its names) is one sled transaction, so a
//! crash leaves the old state or the new one. Records are JSON with a format version.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::error::MetadataError;

/// The on-disk format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// An image as stored: what the pull learned, by config digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image ID: the config blob's digest (`sha256:...`).
    pub id: String,
    /// Names pointing at this image: `registry/repo:tag` and `registry/repo@digest` forms.
    pub names: Vec<String>,
    /// The manifest the image was pulled as.
    pub manifest_digest: String,
    /// Every blob the image needs: manifest (and index), config, compressed layers.
    pub blobs: Vec<String>,
    /// Chain IDs of its layers, bottom first; the last one is the image's rootfs.
    pub chain_ids: Vec<String>,
    /// Compressed size of config and layers, as ListImages reports it.
    pub size: u64,
    /// Unix seconds of the pull.
    pub pulled_at: i64,
    /// The image config's `User` (`uid`, `name`, `uid:gid`, ...), empty if unset.
    #[serde(default)]
    pub user: String,
}

/// A committed (read-only) snapshot: one layer applied on its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Short numeric id, the directory name under `snapshots/` (keeps lowerdir lists short).
    pub id: u64,
    /// Chain ID of the parent snapshot.
    pub parent: Option<String>,
    /// Bytes of file content the layer wrote.
    pub size: u64,
}

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    v: u32,
    #[serde(flatten)]
    record: T,
}

fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, MetadataError> {
    serde_json::to_vec(&Versioned {
        v: FORMAT_VERSION,
        record,
    })
    .map_err(|e| MetadataError::Corrupt {
        key: String::new(),
        reason: e.to_string(),
    })
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T, MetadataError> {
    let corrupt = |reason: String| MetadataError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let versioned: Versioned<T> =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if versioned.v != FORMAT_VERSION {
        return Err(corrupt(format!(
            "record format {} is not the supported {FORMAT_VERSION}",
            versioned.v
        )));
    }
    Ok(versioned.record)
}

/// The embedded database. Only this crate sees sled.
pub struct MetadataStore {
    db: sled::Db,
    images: sled::Tree,
    names: sled::Tree,
    snapshots: sled::Tree,
}

impl std::fmt::Debug for MetadataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataStore").finish_non_exhaustive()
    }
}

fn db_err(e: sled::Error) -> MetadataError {
    MetadataError::Db(e.to_string())
}

fn tx_err(e: TransactionError<MetadataError>) -> MetadataError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => db_err(e),
    }
}

impl MetadataStore {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, MetadataError> {
        // A database closed a moment ago in this process can still be locked by sled's
        // background flusher: wait for it briefly rather than fail.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .mode(sled::Mode::LowSpace)
                .open()
            {
                // sled reports the lock as an error of kind Other, with the OS error in
                // its message.
                Err(sled::Error::Io(e))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock"))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.map_err(db_err)?,
            }
        };
        let version_key = b"format_version";
        match db.get(version_key).map_err(db_err)? {
            Some(v) if v.as_ref() != FORMAT_VERSION.to_be_bytes() => {
                return Err(MetadataError::Corrupt {
                    key: "format_version".to_owned(),
                    reason: "the metadata was written by an incompatible crisp".to_owned(),
                });
            }
            Some(_) => {}
            None => {
                db.insert(version_key, &FORMAT_VERSION.to_be_bytes())
                    .map_err(db_err)?;
            }
        }
        Ok(Self {
            images: db.open_tree("images").map_err(db_err)?,
            names: db.open_tree("names").map_err(db_err)?,
            snapshots: db.open_tree("snapshots").map_err(db_err)?,
            db,
        })
    }

    /// Makes every change so far durable.
    pub fn flush(&self) -> Result<(), MetadataError> {
        self.db.flush().map(|_| ()).map_err(db_err)
    }

    /// A fresh id, never handed out before.
    pub fn generate_id(&self) -> Result<u64, MetadataError> {
        self.db.generate_id().map_err(db_err)
    }

    /// Stores an image and points its names at it. A name that pointed at another image
    /// moves (that image loses it), as `docker tag` and containerd do.
    pub fn put_image(&self, record: &ImageRecord) -> Result<(), MetadataError> {
        let encoded = encode(record)?;
        (&self.images, &self.names)
            .transaction(|(images, names)| {
                for name in &record.names {
                    if let Some(old) = names.get(name.as_bytes())?
                        && old.as_ref() != record.id.as_bytes()
                        && let Some(bytes) = images.get(&old)?
                    {
                        let mut other: ImageRecord =
                            decode(&old, &bytes).map_err(ConflictableTransactionError::Abort)?;
                        other.names.retain(|n| n != name);
                        let bytes = encode(&other).map_err(ConflictableTransactionError::Abort)?;
                        images.insert(&old, bytes)?;
                    }
                    names.insert(name.as_bytes(), record.id.as_bytes())?;
                }
                images.insert(record.id.as_bytes(), encoded.clone())?;
                Ok(())
            })
            .map_err(tx_err)?;
        self.flush()
    }

    /// The image with this ID.
    pub fn image(&self, id: &str) -> Result<Option<ImageRecord>, MetadataError> {
        match self.images.get(id.as_bytes()).map_err(db_err)? {
            Some(bytes) => decode(id.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The image a name points at.
    pub fn image_by_name(&self, name: &str) -> Result<Option<ImageRecord>, MetadataError> {
        match self.names.get(name.as_bytes()).map_err(db_err)? {
            Some(id) => self.image(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// The IDs of the images whose ID starts with `prefix` (`sha256:` and some hex), at
    /// most `limit` of them.
    pub fn image_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, MetadataError> {
        self.images
            .scan_prefix(prefix.as_bytes())
            .keys()
            .take(limit)
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k).into_owned())
                    .map_err(db_err)
            })
            .collect()
    }

    /// Every image.
    pub fn images(&self) -> Result<Vec<ImageRecord>, MetadataError> {
        self.images
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(db_err)?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Removes one name; the image goes too when it was its last name. Returns the image
    /// as it is afterwards (`None` if removed or unknown).
    pub fn remove_name(&self, name: &str) -> Result<Option<ImageRecord>, MetadataError> {
        let result = (&self.images, &self.names)
            .transaction(|(images, names)| {
                let Some(id) = names.remove(name.as_bytes())? else {
                    return Ok(None);
                };
                let Some(bytes) = images.get(&id)? else {
                    return Ok(None);
                };
                let mut record: ImageRecord =
                    decode(&id, &bytes).map_err(ConflictableTransactionError::Abort)?;
                record.names.retain(|n| n != name);
                if record.names.is_empty() {
                    images.remove(&id)?;
                    return Ok(None);
                }
                let bytes = encode(&record).map_err(ConflictableTransactionError::Abort)?;
                images.insert(&id, bytes)?;
                Ok(Some(record))
            })
            .map_err(tx_err)?;
        self.flush()?;
        Ok(result)
    }

    /// Removes an image and all its names. Removing an unknown image is not an error.
    pub fn remove_image(&self, id: &str) -> Result<(), MetadataError> {
        (&self.images, &self.names)
            .transaction(|(images, names)| {
                if let Some(bytes) = images.remove(id.as_bytes())? {
                    let record: ImageRecord = decode(id.as_bytes(), &bytes)
                        .map_err(ConflictableTransactionError::Abort)?;
                    for name in &record.names {
                        if names.get(name.as_bytes())?.as_deref() == Some(id.as_bytes()) {
                            names.remove(name.as_bytes())?;
                        }
                    }
                }
                Ok(())
            })
            .map_err(tx_err)?;
        self.flush()
    }

    /// Records a committed snapshot.
    pub fn put_snapshot(
        &self,
        chain_id: &str,
        record: &SnapshotRecord,
    ) -> Result<(), MetadataError> {
        self.snapshots
            .insert(chain_id.as_bytes(), encode(record)?)
            .map_err(db_err)?;
        self.flush()
    }

    /// The committed snapshot for a chain ID.
    pub fn snapshot(&self, chain_id: &str) -> Result<Option<SnapshotRecord>, MetadataError> {
        match self.snapshots.get(chain_id.as_bytes()).map_err(db_err)? {
            Some(bytes) => decode(chain_id.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Every committed snapshot, by chain ID.
    pub fn snapshots(&self) -> Result<Vec<(String, SnapshotRecord)>, MetadataError> {
        self.snapshots
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(db_err)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?))
            })
            .collect()
    }

    /// Forgets a snapshot.
    pub fn remove_snapshot(&self, chain_id: &str) -> Result<(), MetadataError> {
        self.snapshots.remove(chain_id.as_bytes()).map_err(db_err)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, names: &[&str]) -> ImageRecord {
        ImageRecord {
            id: id.to_owned(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            manifest_digest: format!("m-{id}"),
            blobs: vec![],
            chain_ids: vec![],
            size: 1,
            pulled_at: 0,
            user: String::new(),
        }
    }

    #[test]
    fn names_move_between_images_and_removal_untags_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetadataStore::open(dir.path()).expect("open");
        store
            .put_image(&image("a", &["x:1", "x:latest"]))
            .expect("put a");
        store.put_image(&image("b", &["x:latest"])).expect("put b");
        assert_eq!(
            store.image_by_name("x:latest").expect("get").map(|i| i.id),
            Some("b".into())
        );
        assert_eq!(store.image("a").expect("get").expect("a").names, ["x:1"]);

        let after = store.remove_name("x:1").expect("untag");
        assert_eq!(after, None, "last name gone: image gone");
        assert_eq!(store.image("a").expect("get"), None);
        store.remove_image("b").expect("remove");
        store.remove_image("b").expect("remove twice");
        assert!(store.images().expect("list").is_empty());
        assert_eq!(store.image_by_name("x:latest").expect("get"), None);
    }

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = MetadataStore::open(dir.path()).expect("open");
            store.put_image(&image("a", &["x:1"])).expect("put");
            store
                .put_snapshot(
                    "sha256:c",
                    &SnapshotRecord {
                        id: 7,
                        parent: None,
                        size: 3,
                    },
                )
                .expect("snapshot");
        }
        let store = MetadataStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.image("a").expect("get").map(|i| i.names),
            Some(vec!["x:1".into()])
        );
        assert_eq!(
            store.snapshot("sha256:c").expect("get").map(|s| s.id),
            Some(7)
        );
    }
}

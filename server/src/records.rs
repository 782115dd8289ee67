//! The registry behind pods and containers: records kept in memory behind per-record
//! locks and on disk as one JSON file each, written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A record kind: how to name it and which format version it carries.
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The ID (file name and map key).
    fn id(&self) -> &str;
    /// The record's format version.
    fn version(&self) -> u32;
    /// The version this code writes and reads.
    const VERSION: u32;
}

/// One entry; operations on it take its lock. Readers that only report (List*, status,
/// events) take the last saved copy instead, so a long StopContainer never stalls them.
pub struct Entry<T> {
    /// The record, changed under the lock and saved before the lock is released.
    pub record: tokio::sync::Mutex<T>,
    saved: std::sync::RwLock<Arc<T>>,
}

impl<T> Entry<T> {
    /// The record as last saved (or inserted).
    pub fn snapshot(&self) -> Arc<T> {
        match self.saved.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    fn set_snapshot(&self, record: T) {
        let new = Arc::new(record);
        match self.saved.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
    }
}

/// Records by ID, mirrored in `dir`.
pub struct Records<T> {
    dir: PathBuf,
    by_id: std::sync::RwLock<HashMap<String, Arc<Entry<T>>>>,
    /// Locks by name (a pod's or a container's name key), held while a record of that
    /// name is made, so two creations of one name cannot both pass the uniqueness check.
    names: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<T: Record + Clone> Records<T> {
    /// Opens `dir`, returning the records found there (not yet inserted: callers check
    /// them against the host first). Unreadable files are reported and skipped.
    pub fn open(dir: &Path) -> std::io::Result<(Self, Vec<T>)> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                // The temp file of an interrupted write.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match std::fs::read(&path).map(|b| serde_json::from_slice::<T>(&b)) {
                Ok(Ok(record)) if record.version() == T::VERSION => found.push(record),
                Ok(Ok(record)) => {
                    tracing::error!(file = %path.display(), version = record.version(), "record of an unknown format; ignored");
                }
                Ok(Err(e)) => {
                    tracing::error!(file = %path.display(), error = %e, "unreadable record; ignored")
                }
                Err(e) => tracing::error!(file = %path.display(), error = %e, "cannot read record"),
            }
        }
        let records = Self {
            dir: dir.to_owned(),
            by_id: std::sync::RwLock::new(HashMap::new()),
            names: std::sync::Mutex::new(HashMap::new()),
        };
        Ok((records, found))
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Entry<T>>>> {
        match self.by_id.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Entry<T>>>> {
        match self.by_id.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Adds a record to the live set.
    pub fn insert(&self, record: T) -> Arc<Entry<T>> {
        let id = record.id().to_owned();
        let entry = Arc::new(Entry {
            saved: std::sync::RwLock::new(Arc::new(record.clone())),
            record: tokio::sync::Mutex::new(record),
        });
        self.map_mut().insert(id, Arc::clone(&entry));
        entry
    }

    /// The record with this ID, or the only one whose ID starts with it (crictl and
    /// operators use truncated IDs).
    pub fn get(&self, id: &str) -> Option<Arc<Entry<T>>> {
        if id.is_empty() {
            return None;
        }
        let map = self.map();
        if let Some(entry) = map.get(id) {
            return Some(Arc::clone(entry));
        }
        let mut matches = map.iter().filter(|(k, _)| k.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some((_, entry)), None) => Some(Arc::clone(entry)),
            _ => None,
        }
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Every live record.
    pub fn all(&self) -> Vec<Arc<Entry<T>>> {
        self.map().values().cloned().collect()
    }

    /// The last saved copy of every record `keep` accepts, without taking any record's
    /// lock: lookups by name or by pod never wait behind a slow operation elsewhere.
    pub fn snapshots_where(&self, keep: impl Fn(&T) -> bool) -> Vec<(Arc<Entry<T>>, Arc<T>)> {
        self.map()
            .values()
            .filter_map(|entry| {
                let snapshot = entry.snapshot();
                keep(&snapshot).then(|| (Arc::clone(entry), snapshot))
            })
            .collect()
    }

    /// The lock for one name key.
    pub fn name_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut names = match self.names.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        names.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(names.entry(key.to_owned()).or_default())
    }

    /// Forgets a record and deletes its file, off the async threads.
    pub async fn discard(&self, id: &str) -> std::io::Result<()> {
        self.map_mut().remove(id);
        let (dir, id) = (self.dir.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || remove_file(&dir, &id))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Writes a record durably: temp file, fsync, rename, fsync of the directory. For
    /// sync contexts (startup); async code calls [`Records::persist`].
    pub fn save(&self, record: &T) -> std::io::Result<()> {
        write_file(&self.dir, record, Durability::PowerLoss)?;
        if let Some(entry) = self.map().get(record.id()) {
            entry.set_snapshot(record.clone());
        }
        Ok(())
    }

    /// As [`Records::save`], with the write and its fsyncs off the async threads. Call it
    /// after changing the record under its lock. The write and the saved copy readers see
    /// are finished by a task of their own, so a caller that is dropped midway (a client
    /// deadline) still leaves record and copy alike; the copy follows the record even when
    /// the write fails (readers see the truth; the next write or a restart's recovery
    /// repairs the disk).
    pub async fn persist(&self, record: &T) -> std::io::Result<()> {
        self.persist_as(record, Durability::PowerLoss).await
    }

    /// As [`Records::persist`], for a change that a power loss may undo: the new file is
    /// flushed before it replaces the old (so a power loss leaves the one or the other,
    /// never an empty file, whatever the filesystem), but the rename is not: after a
    /// power loss the previous record may be back. For what a reboot makes moot anyway,
    /// such as a start (after a reboot every container has exited, started or not), it
    /// saves the directory's flush.
    pub async fn persist_until_reboot(&self, record: &T) -> std::io::Result<()> {
        self.persist_as(record, Durability::Crash).await
    }

    async fn persist_as(&self, record: &T, durability: Durability) -> std::io::Result<()> {
        let dir = self.dir.clone();
        let copy = record.clone();
        let entry = self.map().get(record.id()).cloned();
        tokio::spawn(async move {
            let written = {
                let copy = copy.clone();
                tokio::task::spawn_blocking(move || write_file(&dir, &copy, durability))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
            };
            if let Some(entry) = entry {
                entry.set_snapshot(copy);
            }
            written
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// What a record write survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// crispd's end (kill -9); after a power loss, the previous record or this one.
    Crash,
    /// A power loss too: the directory is flushed after the rename.
    PowerLoss,
}

/// Writes `record` into `dir`, replacing its file atomically.
fn write_file<T: Record>(dir: &Path, record: &T, durability: Durability) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    // A write that outlived its caller may still run: each write has its own temp file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{}.{n}.tmp", record.id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    // Flushed before the rename in either case: some filesystems (XFS, ext4 without
    // auto_da_alloc) may otherwise commit the rename before the data.
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(format!("{}.json", record.id())))?;
    if durability == Durability::PowerLoss {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Deletes the file of record `id` in `dir`; a missing one is fine.
fn remove_file(dir: &Path, id: &str) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(format!("{id}.json"))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Labels and annotations as the CRI messages carry them.
pub fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Note {
        v: u32,
        id: String,
        text: String,
    }

    impl Record for Note {
        fn id(&self) -> &str {
            &self.id
        }
        fn version(&self) -> u32 {
            self.v
        }
        const VERSION: u32 = 1;
    }

    fn note(id: &str, text: &str) -> Note {
        Note {
            v: 1,
            id: id.to_owned(),
            text: text.to_owned(),
        }
    }

    #[tokio::test]
    async fn writes_of_either_durability_replace_the_file_and_are_read_back() {
        let dir = std::env::temp_dir().join(format!("crisp-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (records, found) = Records::<Note>::open(&dir).expect("open");
        assert!(found.is_empty());
        records.insert(note("a", "created"));
        records.insert(note("b", "created"));
        records
            .persist(&note("a", "durable"))
            .await
            .expect("persist");
        records
            .persist_until_reboot(&note("b", "until reboot"))
            .await
            .expect("persist until reboot");
        records
            .persist_until_reboot(&note("a", "then until reboot"))
            .await
            .expect("persist over a durable write");
        // What readers see follows the writes.
        let b = records.get("b").expect("b is listed").snapshot();
        assert_eq!(b.text, "until reboot");
        // The next start reads the last write of each, and no temp file is left.
        let (_, mut found) = Records::<Note>::open(&dir).expect("reopen");
        found.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(
            found,
            vec![note("a", "then until reboot"), note("b", "until reboot")]
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

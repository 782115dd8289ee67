//! The attachment journal: an intent written before a pod's CNI ADD and removed after its
//! DEL succeeded. Whatever crisp forgets in between (a crash after ADD and before the pod
//! record was saved, a lost record), the journal still names the attachment, so startup
//! can DEL it and the node leaks no IP, veth or iptables rule.
//!
//! One JSON file per sandbox, `<dir>/<container id>.json`, written to a temp file, synced
//! and renamed into place.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni_exec::Attachment;
use crate::error::CniError;

const VERSION: u32 = 1;

/// An attachment that may exist: what DEL needs to release it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// Format version.
    pub v: u32,
    /// The network configuration list ADD ran with.
    pub network: Value,
    /// The attachment (sandbox ID, netns, ifname, args, ports, bandwidth).
    pub attachment: Attachment,
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CniError + '_ {
    move |source| CniError::Journal {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// A journal kept in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Records that `attachment` is about to be made on `network`.
    pub fn begin(&self, network: &Value, attachment: &Attachment) -> Result<(), CniError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let intent = Intent {
            v: VERSION,
            network: network.clone(),
            attachment: attachment.clone(),
        };
        let path = self.path(&attachment.container_id);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(&intent).map_err(|e| io(&tmp)(std::io::Error::other(e)))?;
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Forgets the attachment of sandbox `id` (it was released, or never made).
    pub fn end(&self, id: &str) -> Result<(), CniError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Every recorded intent. Unreadable files are reported and skipped (a torn temp file
    /// is never renamed into place, so these are not ours to act on).
    pub fn intents(&self) -> Vec<Intent> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut intents = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Intent>(&b).ok())
                .filter(|i| i.v == VERSION)
            {
                Some(intent) => intents.push(intent),
                None => {
                    tracing::warn!(path = %path.display(), "unreadable CNI journal entry; skipping")
                }
            }
        }
        intents
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(id: &str) -> Attachment {
        Attachment {
            container_id: id.to_owned(),
            netns: PathBuf::from("/run/x/ns/net"),
            ifname: "eth0".to_owned(),
            args: vec![("K8S_POD_NAME".to_owned(), "p".to_owned())],
            port_mappings: Vec::new(),
            bandwidth: None,
            ip_ranges: Vec::new(),
        }
    }

    #[test]
    fn intents_round_trip_and_end_forgets_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path().join("j"));
        assert!(journal.intents().is_empty());
        let net = serde_json::json!({"name": "n", "plugins": []});
        journal.begin(&net, &attachment("a")).expect("begin a");
        journal.begin(&net, &attachment("b")).expect("begin b");
        std::fs::write(dir.path().join("j/c.tmp"), b"{").expect("torn");
        std::fs::write(dir.path().join("j/d.json"), b"not json").expect("junk");
        let mut ids: Vec<String> = journal
            .intents()
            .into_iter()
            .map(|i| i.attachment.container_id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        assert!(!dir.path().join("j/c.tmp").exists());
        journal.end("a").expect("end");
        journal.end("a").expect("end twice");
        assert_eq!(journal.intents().len(), 1);
    }
}

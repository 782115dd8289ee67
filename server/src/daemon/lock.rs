//! One crispd per state directory: an exclusive lock on `<state>/crispd.lock`, held for
//! the daemon's whole life and released by the kernel if it dies.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live daemon holds it.
    #[error(
        "another crispd{} is already running with state directory {}; stop it first or choose another `state` in the configuration",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir.display()
    )]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The pid recorded by the holder, if readable.
        holder: Option<u32>,
    },
    /// The lock file could not be created or written.
    #[error("cannot lock state directory {}: {source}", dir.display())]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Takes the lock on `state_dir`, creating the directory if needed.
pub fn lock_state_dir(state_dir: &Path) -> Result<StateLock, LockError> {
    let io = |source| LockError::Io {
        dir: state_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(state_dir.join("crispd.lock"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(LockError::Held {
                dir: state_dir.to_owned(),
                holder,
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(StateLock { _file: file })
}

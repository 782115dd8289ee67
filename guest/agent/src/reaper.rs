//! Reaps every child (as PID 1, every orphan of the guest too) and hands each exit
//! status to whoever waits for that pid. Nothing else in the agent may call `wait`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// How a process ended: its exit code, 128 + the signal for a death by signal.
pub type Status = i32;

/// Who waits for which pid. The agent runs on one thread and registers a child right
/// after spawning it, with no await in between, so the reaper (a task on that thread)
/// cannot reap a child before it is registered: exits of unregistered pids are orphans'
/// and are dropped (keeping them would hand a stale status to a later child that reuses
/// the pid).
#[derive(Default)]
struct Table {
    waiting: HashMap<i32, watch::Sender<Option<Status>>>,
}

/// The reaper; cheap to clone.
#[derive(Clone)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

fn decode(status: i32) -> Status {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

impl Reaper {
    /// Starts reaping on SIGCHLD.
    pub fn start() -> std::io::Result<Self> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Self {
            table: Arc::new(Mutex::new(Table::default())),
        };
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn reap_all(&self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes only the status integer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if let Some(tx) = self.lock().waiting.remove(&pid) {
                let _ = tx.send(Some(decode(status)));
            }
        }
    }

    /// A watch that holds the exit status of child `pid` once it has ended. Call it right
    /// after spawning, with no await in between.
    pub fn watch(&self, pid: i32) -> watch::Receiver<Option<Status>> {
        let (tx, rx) = watch::channel(None);
        self.lock().waiting.insert(pid, tx);
        rx
    }

    /// Waits for `rx` to hold a status.
    pub async fn wait(mut rx: watch::Receiver<Option<Status>>) -> Status {
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                return 255;
            }
        }
    }
}

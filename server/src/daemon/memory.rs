//! Giving memory back after a burst.
//!
//! glibc's allocator keeps what a burst of connections freed in its arenas (one per
//! thread that allocated, up to 8 per core) instead of returning it to the kernel, so
//! crispd's RSS stayed at its peak long after the burst. Two settings bring it back:
//! fewer arenas (less memory stranded in each), and `malloc_trim` after a period with
//! calls in it, which returns the free pages of every arena.

use std::sync::Arc;
use std::time::Duration;

use crate::state::Daemon;

/// Arenas glibc may make: the tokio workers and the blocking pool share them.
const ARENAS: i32 = 2;

/// How often, at most, freed memory is handed back (only after periods with calls).
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Caps glibc's arenas. Call before the runtime's threads start.
pub fn limit_arenas() {
    // SAFETY: mallopt takes two integers; M_ARENA_MAX only bounds future arenas.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) };
}

/// Every [`TRIM_EVERY`], if any call finished since the last look, returns the
/// allocator's free pages to the kernel (off the async threads).
pub async fn trim_after_activity(daemon: Arc<Daemon>) {
    let mut seen = daemon.metrics.calls();
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        let now = daemon.metrics.calls();
        if now == seen {
            continue;
        }
        seen = now;
        let _ = tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim takes an integer and only releases free memory.
            unsafe { libc::malloc_trim(0) };
        })
        .await;
    }
}

//! Container lifecycle events for kubelet's evented PLEG (`GetContainerEvents`).
//!
//! Lifecycle code records a bare event (container, pod, type, time) while it holds the
//! container's lock, so events of one container are recorded in the order they happened.
//! One task turns them, in that order, into full events (the pod's status and the statuses
//! of all its containers, from saved snapshots, never waiting on a lock) and broadcasts
//! them. Each subscriber has a bounded queue: one that falls behind loses its stream with
//! an error (and resubscribes, relisting as kubelet does) instead of slowing the runtime.
//!
//! CONTAINER_STOPPED is recorded exactly once per container, by whichever notices the exit
//! first: the watcher that waits on every container from its creation, or a Stop/Remove
//! that saw it exit.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cri_proto::v1 as cri;
use tokio::sync::{broadcast, mpsc};

use crate::state::Daemon;

/// Events a subscriber may fall behind by before its stream ends.
const SUBSCRIBER_QUEUE: usize = 4096;

#[derive(Debug)]
struct Recorded {
    container_id: String,
    pod_id: String,
    kind: cri::ContainerEventType,
    at: i64,
}

/// The event hub.
pub struct Events {
    recorded: mpsc::UnboundedSender<Recorded>,
    pending: Mutex<Option<mpsc::UnboundedReceiver<Recorded>>>,
    out: broadcast::Sender<cri::ContainerEventResponse>,
    stopped: Mutex<HashSet<String>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// A hub with no subscribers; [`Events::run`] starts delivering.
    pub fn new() -> Self {
        let (recorded, pending) = mpsc::unbounded_channel();
        let (out, _) = broadcast::channel(SUBSCRIBER_QUEUE);
        Self {
            recorded,
            pending: Mutex::new(Some(pending)),
            out,
            stopped: Mutex::new(HashSet::new()),
        }
    }

    fn stopped_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        match self.stopped.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records an event. Call with the container's lock held.
    pub fn record(&self, kind: cri::ContainerEventType, container_id: &str, pod_id: &str) {
        if kind == cri::ContainerEventType::ContainerStoppedEvent
            && !self.stopped_set().insert(container_id.to_owned())
        {
            return;
        }
        if kind == cri::ContainerEventType::ContainerDeletedEvent {
            self.stopped_set().remove(container_id);
        }
        let _ = self.recorded.send(Recorded {
            container_id: container_id.to_owned(),
            pod_id: pod_id.to_owned(),
            kind,
            at: crate::pod::now_ns(),
        });
    }

    /// Notes a container that had already exited when crispd started: its STOPPED event
    /// belongs to the daemon that was down, and is not sent again.
    pub fn already_stopped(&self, container_id: &str) {
        self.stopped_set().insert(container_id.to_owned());
    }

    /// A new subscriber's queue.
    pub fn subscribe(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.out.subscribe()
    }

    /// Delivers recorded events until the daemon ends. Called once.
    pub async fn run(daemon: Arc<Daemon>) {
        let pending = match daemon.events.pending.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        let Some(mut pending) = pending else {
            return;
        };
        while let Some(event) = pending.recv().await {
            if daemon.events.out.receiver_count() == 0 {
                continue;
            }
            let full = complete(&daemon, event).await;
            let _ = daemon.events.out.send(full);
        }
    }
}

/// The event with the pod's status and its containers' statuses as they are now.
async fn complete(daemon: &Daemon, event: Recorded) -> cri::ContainerEventResponse {
    let pod_sandbox_status = crate::pod::status(daemon, &event.pod_id, false)
        .await
        .ok()
        .and_then(|r| r.status);
    let mut containers_statuses = Vec::new();
    for c in daemon.containers.all() {
        let snapshot = c.snapshot();
        if snapshot.pod_id == event.pod_id
            && let Ok(r) = crate::container::status(daemon, &snapshot.id, false).await
        {
            containers_statuses.extend(r.status);
        }
    }
    cri::ContainerEventResponse {
        container_id: event.container_id,
        container_event_type: event.kind.into(),
        created_at: event.at,
        pod_sandbox_status,
        containers_statuses,
    }
}

//! What can go wrong driving a runtime.

use std::path::PathBuf;
use std::time::Duration;

/// A runtime-handler failure, naming the container.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The runtime has no such container.
    #[error("container {id} not found at the runtime")]
    NotFound {
        /// The container.
        id: String,
    },
    /// The runtime refused or failed an operation (its own message).
    #[error("{handler} {operation} {id} failed: {message}")]
    Runtime {
        /// The handler name.
        handler: String,
        /// create, start, kill, delete, ...
        operation: String,
        /// The container.
        id: String,
        /// What the runtime said.
        message: String,
    },
    /// The monitor misbehaved.
    #[error("monitor of {id}: {message}")]
    Monitor {
        /// The container.
        id: String,
        /// What went wrong.
        message: String,
    },
    /// A binary could not be started.
    #[error("cannot run {}: {source}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An exec ran past its timeout.
    #[error("exec in {id} timed out after {after:?}")]
    Timeout {
        /// The container.
        id: String,
        /// The timeout.
        after: Duration,
    },
    /// The handler cannot do what the pod asks.
    #[error("runtime handler {handler} does not support {what}")]
    Unsupported {
        /// The handler name.
        handler: String,
        /// What it cannot do.
        what: String,
    },
    /// Bundle files could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// What the pod needs is missing here (a guest image not built).
    #[error("runtime handler {handler}: {message}")]
    Precondition {
        /// The handler name.
        handler: String,
        /// What is missing and how to make it.
        message: String,
    },
    /// A pod's guest agent refused or failed a call, with the status code it chose.
    #[error("{handler} {operation} {id} failed in the VM: {message}")]
    Agent {
        /// The handler name.
        handler: String,
        /// create, start, kill, delete, ...
        operation: String,
        /// The container.
        id: String,
        /// The status code of the call (InvalidArgument, FailedPrecondition, ... as the
        /// agent chose; Unavailable or Cancelled when the connection failed).
        code: tonic::Code,
        /// What the agent said.
        message: String,
    },
    /// The host has too little of something for the request (a pod's VM that would not
    /// fit in its memory).
    #[error("not enough {what}")]
    Exhausted {
        /// What is short, with the figures.
        what: String,
    },
    /// A pod's VM failed to boot, stopped, or its agent did not answer.
    #[error("{handler} VM of pod {id}: {message}")]
    Vm {
        /// The handler name.
        handler: String,
        /// The sandbox.
        id: String,
        /// What happened.
        message: String,
        /// It ran out of time (boot timeout, a call's deadline).
        timed_out: bool,
    },
}

//! crispd, the composition root of crisp: the CRI gRPC services on a unix socket, the
//! daemon's life cycle (lock, socket, signals, readiness), and the operator commands.
//!
//! Owns: CRI types and their translation to and from the domain crates, the one place
//! where domain errors become gRPC statuses, and the daemon's shared state.
//! Does not own: storage, networking, images or runtimes; it drives the crates that do.
//!
//! Invariants: one crispd per state directory (a lock on it); the socket exists only
//! while a daemon serves it; shutting down never touches running containers.
//!
//! Trusts: its configuration once `conf` has validated it; nothing from CRI clients.

pub mod check;
pub mod cli;
pub mod commands;
pub mod container;
pub mod cri;
pub mod daemon;
pub mod errors;
pub mod events;
pub mod handlers;
pub mod host;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod nri;
pub mod options;
pub mod pod;
pub mod records;
pub mod state;
pub mod stats;
pub mod streaming;

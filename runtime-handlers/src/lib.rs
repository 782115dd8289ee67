//! Runtime handlers: what runs a pod's containers. The `oci` handler drives an OCI runtime
//! (runc, crun, runsc) through its command line; the `microvm` handler boots a VM per pod
//! and talks to an agent inside it.
//!
//! Owns: the runtime binaries, bundles and per-container monitors. Does not own: which
//! handler a pod gets (`server` decides from configuration) or CRI types.
//!
//! Invariants: a handler never leaves a runtime-side container behind a failed create.
//!
//! Trusts: the configured runtime binaries; nothing a container prints.

pub mod attach;
mod binary;
mod caps;
mod console;
mod error;
mod exec;
pub mod fake;
mod handler;
mod host_check;
mod microvm;
mod netns;
mod oci;
mod pidfd;
mod quirks;
pub mod sealed;
pub mod seccomp;
pub mod start_socket;
mod stats;
mod syscalls_x86_64;

pub use binary::{ENTER, MONITOR, helper_binary, resolve_binary};
pub use caps::{CAPABILITIES, DEFAULT_CAPABILITIES, HostFacts, capability_number, last_capability};
pub use console::receive_console;
pub use error::HandlerError;
pub use exec::{ExecSession, Terminal, cloexec_pipe};
pub use handler::{
    ContainerRef, ContainerSpec, Duplex, Features, IdRange, PodResources, PortStream, Recovered,
    RuntimeHandler, SandboxSpec, SandboxState, StartedSandbox, UserNamespace,
};
pub use host_check::{CheckLevel, HostCheck};
pub use microvm::{Accelerator, MicroVm, MicroVmConfig};
pub use oci::{ExecOutput, ExitStatus, MAX_EXEC_OUTPUT, OciRuntime, ResourceUpdate, RuntimeState};
pub use stats::{
    BlockDevice, ContainerStats, HugePages, Limits, Pressure, StatsDetail, cgroup_directories,
    cgroup_hierarchies, cgroup_stats, device_name, remove_empty_cgroup,
};

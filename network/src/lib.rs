//! Pod networking: CNI configuration discovery and plugin invocation, and the network
//! namespaces pods live in.
//!
//! Owns: reading CNI network configuration lists (per the CNI spec), finding plugin
//! binaries, and (with the pods work) running ADD/CHECK/DEL and managing pod netns.
//! Does not own: which pods exist or when they are networked; `server` decides.
//!
//! Invariants: a [`NetworkConfig`] returned here parsed as a CNI conflist, names a network
//! and at least one plugin, and every plugin binary it names exists in a plugin directory.
//!
//! Trusts: nothing in the CNI directory; every file is validated before use.

mod cni_config;
mod cni_exec;
mod counters;
mod error;
mod journal;
mod netns;

pub use cni_config::{NetworkConfig, PluginSearch, find_network_config};
pub use cni_exec::{
    Attached, Attachment, Bandwidth, PortMapping, add, bandwidth_from_annotations, del, gc,
    result_ips,
};
pub use counters::{InterfaceCounters, interface_counters};
pub use error::{CniError, NetnsError};
pub use journal::{Intent, Journal};
pub use netns::{
    NamespaceKind, adopt_namespace, create_namespace, is_pinned, pin_path, pin_process_namespace,
    remove_namespace, set_sysctl, sysctl_namespace,
};

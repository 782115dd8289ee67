//! The CRI v1 wire contract (`runtime.v1`), as Rust types.
//!
//! Owns: the messages, enums, clients and server traits generated from
//! `proto/api.proto`, which is wire-identical to k8s.io/cri-api v0.36.
//! Does not own: any behaviour. Only this crate, `server` and `critest` see CRI types;
//! domain crates never do.
//!
//! Generated code is not committed: `build.rs` produces it on every build.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `runtime.v1`: the package every CRI client speaks.
pub mod v1 {
    tonic::include_proto!("runtime.v1");
    pub use crate::list::ListContainersResponse;
}

pub mod list;

/// The CRI API version crisp reports in `VersionResponse.runtime_api_version`.
pub const CRI_API_VERSION: &str = "v1";

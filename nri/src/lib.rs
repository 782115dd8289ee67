//! The runtime side of NRI, the Node Resource Interface (containerd/nri), through which
//! plugins watch and adjust pods and containers.
//!
//! Wire first: [`mux`] splits a plugin's connection into the two streams NRI runs on it,
//! and [`ttrpc`] frames the unary calls on each stream, with prost for the protobuf
//! messages. containerd's `ttrpc` crate was not taken: its code generator targets
//! rust-protobuf 3 (beside the prost crisp's gRPC uses, a second protobuf runtime and
//! message types), its prost back end is tied to prost 0.8 and a `protoc` binary, and NRI
//! needs only unary calls, which take a few hundred lines here. `docs/nri-protocol.md`
//! has the protocol as read from containerd/nri, containerd/ttrpc and cri-tools.

pub mod mux;
pub mod ttrpc;

/// The big-endian u32 at `at` in `buf` (which holds at least `at + 4` bytes).
fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// What can go wrong on a plugin's connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame or message over the protocol's size limit.
    #[error("a message of {size} bytes is over NRI's limit of {limit}")]
    TooLarge {
        /// Its size, bytes.
        size: usize,
        /// The limit, bytes.
        limit: usize,
    },
}

//! The protocol between crisp's microVM handler (on the host) and `crisp-agent` (PID 1 in
//! each guest), generated with tonic and prost from `proto/agent.proto`. It runs as gRPC
//! over one vsock connection per pod; see that file for what each call promises.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("crisp.agent.v1");

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// The HTTP/2 flow-control window of each call, both ways. The calls share one
/// connection, whose window is far larger: a streaming call whose far end stops reading
/// (an exec whose process never reads its stdin) holds at most this much of it, and the
/// pod's other calls go on.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// The HTTP/2 flow-control window of the connection, both ways.
pub const CONNECTION_WINDOW: u32 = 64 << 20;

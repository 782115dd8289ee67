//! The protocol between crisp's microVM handler (on the host) and `crisp-agent` (PID 1 in
//! each guest), generated with tonic and prost from `proto/agent.proto`. It runs as gRPC
//! over one vsock connection per pod; see that file for what each call promises.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("crisp.agent.v1");

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

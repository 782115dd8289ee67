//! Compiles `proto/agent.proto` without a system `protoc`: protox parses the file in
//! pure Rust into a descriptor set, and tonic-prost-build generates messages,
//! clients and server traits from it into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

//! Compiles `proto/api.proto` without a system `protoc`: protox parses the file in
//! pure Rust into a descriptor set, and tonic-prost-build generates messages,
//! clients and server traits from it into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // Written by hand (src/list.rs): it can also carry containers already encoded.
        .extern_path(
            ".runtime.v1.ListContainersResponse",
            "crate::list::ListContainersResponse",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

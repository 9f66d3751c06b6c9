//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed) and generates the
//! tonic server and client code plus the encoded descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use protox::prost::Message;

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &["graph/print/v1/print_job_service.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("print_job_service_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

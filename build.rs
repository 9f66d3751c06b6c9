//! Compiles the protos with protox (pure Rust, so no system `protoc` is needed): generates the
//! tonic server and client for `proto/`, and writes the encoded descriptor set that server
//! reflection serves, which also holds `google.rpc`'s error details so that reflection clients
//! such as grpcurl can decode the details of an error status.

use std::{env, fs, path::PathBuf};

use protox::prost::Message;

const SERVICE_PROTO: &str = "graph/print/v1/print_job_service.proto";
const ERROR_DETAILS_PROTO: &str = "google/rpc/error_details.proto";
const INCLUDES: &[&str] = &["proto", "third_party/googleapis"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for include in INCLUDES {
        println!("cargo:rerun-if-changed={include}");
    }

    let reflected = protox::compile([SERVICE_PROTO, ERROR_DETAILS_PROTO], INCLUDES)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("print_job_service_descriptor.bin"),
        reflected.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(protox::compile([SERVICE_PROTO], INCLUDES)?)?;
    Ok(())
}

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
    println!("cargo:rustc-env=PRINTJOB_GATEWAY_GIT_HASH={}", git_hash());
    symbol_order()?;

    let reflected = protox::compile([SERVICE_PROTO, ERROR_DETAILS_PROTO], INCLUDES)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("print_job_service_descriptor.bin"),
        reflected.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::proto::SmallMessageCodec")
        .compile_fds(protox::compile([SERVICE_PROTO], INCLUDES)?)?;
    Ok(())
}

/// Links the binary's functions in the order of `link/symbol-order.txt` (written by
/// `bench/profile.sh --symbol-order`): what start-up runs sits together, then what a call runs,
/// so that a gateway waiting for its first call has a few hundred KiB of its text resident rather
/// than pages spread over all of it (BENCHMARKS.md, idle memory). Only for the target where rustc
/// links with lld by default (x86_64 Linux with glibc); lld ignores the names the binary does not
/// have. The file holds the names of both `cargo build --release` and the image's static build
/// (`deploy/build-static.sh`), whose symbols carry other hashes. Elsewhere the linker's own layout
/// stands.
fn symbol_order() -> Result<(), env::VarError> {
    const ORDER: &str = "link/symbol-order.txt";
    println!("cargo:rerun-if-changed={ORDER}");
    if env::var("TARGET")? == "x86_64-unknown-linux-gnu" {
        let dir = env::var("CARGO_MANIFEST_DIR")?;
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={dir}/{ORDER}");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    Ok(())
}

/// The commit being built, for the `build_info` metric: `PRINTJOB_GATEWAY_GIT_HASH` when the
/// build sets it (an image build without `.git`), else `git rev-parse`, else `unknown`.
fn git_hash() -> String {
    println!("cargo:rerun-if-env-changed=PRINTJOB_GATEWAY_GIT_HASH");
    if let Ok(hash) = env::var("PRINTJOB_GATEWAY_GIT_HASH") {
        return hash;
    }
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|hash| hash.trim().to_owned())
        .filter(|hash| !hash.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

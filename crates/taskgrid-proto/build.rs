//! Generates the worker protocol from `proto/` with a vendored `protoc`, so
//! the build needs nothing outside crates.io.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/taskgrid/worker/v1/worker.proto";
    println!("cargo:rerun-if-changed={proto}");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // no `connect` helper on the client: it would need tonic's transport
        .build_transport(false)
        .compile_with_config(config, &[proto], &["proto"])?;
    Ok(())
}

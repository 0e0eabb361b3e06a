//! Compiles every `.proto` under `proto/` with `protox` (a pure-Rust protobuf compiler), so
//! building Fleet never needs a `protoc` binary on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/gcs.proto",
        "proto/runtime.proto",
        "proto/etcd_kv.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

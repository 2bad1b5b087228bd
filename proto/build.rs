//! Compiles the .proto files with protox (pure Rust: no system `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=strata");
    let fds = protox::compile(["strata/v1/strata.proto"], ["."])?;
    // `bytes` fields as `bytes::Bytes`: record keys and values move without copies.
    tonic_prost_build::configure().codec_path("crate::codec::StrataCodec").bytes(".").compile_fds(fds)?;
    Ok(())
}

//! `strata-proto`: Strata's gRPC contract (`strata/v1/strata.proto`) and its generated tonic and
//! prost code, compiled without a system `protoc`.

pub mod codec;

/// Package `strata.v1`.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

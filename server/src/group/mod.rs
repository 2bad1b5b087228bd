//! Consumer groups (issue #4, in progress): the partition assignors and the sans-IO coordinator.
//! Still to come: the async task driving the coordinator, persistence of groups and committed
//! offsets through the metadata Raft group, and the HTTP/gRPC membership endpoints.

pub mod assignor;
pub mod coordinator;
pub mod service;

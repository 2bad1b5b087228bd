//! The Raft network. A single node needs none: every RPC reports the target unreachable.

use std::future::Future;

use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};

use super::types::*;

// ---------------------------------------------------------------------------------------------
// Network (single node: every RPC fails as Unreachable)
// ---------------------------------------------------------------------------------------------
//
// A real (gRPC) network implements `RaftNetworkV2<C>` per target node:
//   - `append_entries` (AppendEntriesRequest -> AppendEntriesResponse), optionally `stream_append`
//   - `vote` and `pre_vote` (VoteRequest -> VoteResponse)
//   - `full_snapshot` (send meta + SnapshotData (Vec<u8>) in chunks; receiver calls
//     `Raft::install_full_snapshot`), honoring the `cancel` future
//   - optionally `transfer_leader`, `backoff`
// and maps transport failures to `RPCError::Unreachable` (back off) / `RPCError::Network`
// (retry) / `RPCError::Timeout` (use `RPCOption::hard_ttl()`). The server side forwards the
// decoded requests to `Raft::append_entries`, `Raft::vote`, `Raft::pre_vote`,
// `Raft::install_full_snapshot`. All message types are serde-serializable with feature "serde".

pub struct NoNetwork;

pub struct UnreachableConn {
    target: u64,
}

impl UnreachableConn {
    fn err(&self) -> Unreachable<C> {
        Unreachable::from_string(format!("single-node metadata store: no network to node {}", self.target))
    }
}

impl RaftNetworkFactory<C> for NoNetwork {
    type Network = UnreachableConn;

    async fn new_client(&mut self, target: u64, _node: &Node) -> Self::Network {
        UnreachableConn { target }
    }
}

impl RaftNetworkV2<C> for UnreachableConn {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(self.err()))
    }

    async fn vote(&mut self, _rpc: VoteRequest<C>, _option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(self.err()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        Err(StreamingError::Unreachable(self.err()))
    }
}

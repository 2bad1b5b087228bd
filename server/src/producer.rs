//! Idempotent producer sessions on the server side: allocating producer ids through Raft, the
//! `producer` field of a produce request, and the session an `Idempotency-Key` implies.
//!
//! Deduplication itself is the partition log's (`strata_storage::producer_state`): a batch
//! carries `(id, epoch, sequence)` and a retry of one of a producer's last five batches gets the
//! first append's offsets. Here a session's `sequence` numbers *requests*: every partition a
//! request touches gets a batch with that base sequence, so sequences must increase from request
//! to request, and a partition may see gaps.

use strata_storage::ProducerInfo;

use crate::error::{ApiError, ErrorCode};
use crate::metadata::{Command, CommandResult, Metadata};

/// Producer ids below this are allocated through Raft; ids at or above it (up to `i64::MAX`) are
/// derived from `Idempotency-Key`s, so the two never collide.
pub const MAX_ALLOCATED_ID: i64 = 1 << 62;

/// An idempotent producer session and the sequence number of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProducerSession {
    /// From `POST /v1/producers`.
    pub id: i64,
    /// A higher epoch fences the session's earlier epochs (0 to start).
    pub epoch: i16,
    /// This request's sequence number: above the session's previous request's; a retry repeats it.
    pub sequence: i32,
}

impl ProducerSession {
    /// Checks the fields a client sent.
    ///
    /// # Errors
    /// `invalid_request` naming the field.
    pub fn validate(self) -> Result<Self, ApiError> {
        if !(0..MAX_ALLOCATED_ID).contains(&self.id) {
            return Err(ApiError::invalid(format!(
                "producer.id must be an id from POST /v1/producers (0..{MAX_ALLOCATED_ID}), got {}",
                self.id
            )));
        }
        if self.epoch < 0 || self.sequence < 0 {
            return Err(ApiError::invalid("producer.epoch and producer.sequence must not be negative"));
        }
        Ok(self)
    }

    /// The session of an `Idempotency-Key` request: an id derived from the topic, the key and the
    /// request's fingerprint, sequence 0. After a crash that lost the key's entry (but not the
    /// records), a retry lands on the same partitions with the same session, and the logs
    /// answer with the first attempt's offsets instead of appending again.
    pub fn for_idempotency_key(topic: &str, key: &str, fingerprint: u32) -> Self {
        let mut h = crc32c::crc32c(topic.as_bytes());
        let mut hash = u64::from(h);
        h = crc32c::crc32c_append(h, b"\0");
        h = crc32c::crc32c_append(h, key.as_bytes());
        hash = (hash << 32) | u64::from(crc32c::crc32c_append(h, &fingerprint.to_le_bytes()));
        let id = MAX_ALLOCATED_ID | (hash as i64 & (MAX_ALLOCATED_ID - 1));
        Self { id, epoch: 0, sequence: 0 }
    }

    pub fn info(self) -> ProducerInfo {
        ProducerInfo { id: self.id, epoch: self.epoch, base_sequence: self.sequence }
    }

    /// Where this request's keyless records go: a function of the session and sequence, so a
    /// retry goes where the first attempt went (sticky batching would not).
    pub fn keyless_partition(self, partitions: u32) -> u32 {
        let mut bytes = [0u8; 14];
        bytes[..8].copy_from_slice(&self.id.to_le_bytes());
        bytes[8..10].copy_from_slice(&self.epoch.to_le_bytes());
        bytes[10..].copy_from_slice(&self.sequence.to_le_bytes());
        crate::partitioner::partition_for_key(&bytes, partitions.max(1))
    }
}

/// Allocates a new producer id through the metadata Raft group.
///
/// # Errors
/// `unavailable` without a Raft leader; `internal` if the id space is used up.
pub async fn allocate(metadata: &Metadata) -> Result<i64, ApiError> {
    match metadata.write(Command::AllocateProducerId).await? {
        CommandResult::ProducerId(id) => Ok(id),
        CommandResult::ProducerIdsExhausted => {
            Err(ApiError::new(ErrorCode::Internal, "every producer id has been allocated"))
        }
        other => {
            Err(ApiError::new(ErrorCode::Internal, format!("unexpected result allocating a producer id: {other}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_stay_out_of_the_allocated_range_and_differ() {
        let a = ProducerSession::for_idempotency_key("t", "k1", 7);
        let b = ProducerSession::for_idempotency_key("t", "k2", 7);
        let c = ProducerSession::for_idempotency_key("t", "k1", 8);
        for s in [a, b, c] {
            assert!(s.id >= MAX_ALLOCATED_ID);
            assert!(s.validate().is_err(), "clients cannot send derived ids");
        }
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a, ProducerSession::for_idempotency_key("t", "k1", 7));
        assert_eq!(a.keyless_partition(12), a.keyless_partition(12));
    }
}

//! `strata topic verify`: every local segment's CRCs and every tiered object against its
//! manifest entry (size, CRC32C, decoding, record count, offset range), damage reported by
//! location and offset range without stopping at the first.

use serde::Serialize;

use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Damage {
    pub partition: u32,
    /// `segment <base offset>` for a local segment, or the object's key.
    pub location: String,
    /// The offsets affected: `[first_offset, end_offset)`.
    pub first_offset: u64,
    pub end_offset: u64,
    pub problem: String,
}

/// What a verification checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub segments_checked: u64,
    pub objects_checked: u64,
    /// Empty when everything checked out.
    pub damage: Vec<Damage>,
}

/// Verifies every partition of `topic`, both tiers.
///
/// # Errors
/// `topic_not_found`; `unavailable` when the object store does not answer.
pub async fn verify_topic(broker: &Broker, topic: &str) -> Result<Verification, ApiError> {
    let meta = broker.metadata().topic(topic).ok_or_else(|| ApiError::topic_not_found(topic))?;
    let mut out = Verification::default();
    for partition in 0..meta.partitions {
        if let Some(log) = broker.log(topic, partition) {
            let l = log.clone();
            let (segments, damage) =
                tokio::task::spawn_blocking(move || (l.sealed_segments().len() as u64 + 1, l.verify()))
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("verify task failed: {e}")))?;
            out.segments_checked += segments;
            out.damage.extend(damage.into_iter().map(|d| {
                let (first, last) = d.offsets.unwrap_or((d.segment_base_offset, d.segment_base_offset));
                Damage {
                    partition,
                    location: format!("segment {}", d.segment_base_offset),
                    first_offset: first,
                    end_offset: last + 1,
                    problem: format!("at byte {}: {}", d.position, d.description),
                }
            }));
        }
        for object in broker.metadata().tier_objects(topic, partition) {
            out.objects_checked += 1;
            let range = (object.meta.base_offset, object.meta.end_offset);
            let problem = match broker.cold().store.get(&object.key).await {
                Ok(bytes) => super::verify_object(&object, &bytes).err(),
                Err(super::store::StoreError::NotFound { .. }) => Some("missing from the object store".to_string()),
                Err(e) => {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        format!("object store {} is not answering: {e}", broker.cold().store.describe),
                    ));
                }
            };
            if let Some(problem) = problem {
                out.damage.push(Damage {
                    partition,
                    location: object.key.clone(),
                    first_offset: range.0,
                    end_offset: range.1,
                    problem,
                });
            }
        }
    }
    Ok(out)
}

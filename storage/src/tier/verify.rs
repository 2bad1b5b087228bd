//! Checking a tiered object against its manifest entry.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, TimestampMillisecondType, UInt32Type};
use bytes::Bytes;
use parquet::arrow::ProjectionMask;

use super::TierObjectMeta;
use super::read::{ObjectReader, guard};

/// Checks an object against its manifest entry: size, CRC32C, that every column of every row
/// group decodes, the record count, the dense offset range `base_offset..end_offset`, the
/// timestamp range, and that the footer agrees with the manifest.
///
/// # Errors
/// A human-readable description of the first problem found.
pub fn verify_parquet(object: &Bytes, meta: &TierObjectMeta) -> Result<(), String> {
    guard(|| Ok(check(object, meta))).unwrap_or_else(|e| Err(e.to_string()))
}

fn check(object: &Bytes, meta: &TierObjectMeta) -> Result<(), String> {
    if object.len() as u64 != meta.size_bytes {
        return Err(format!("size is {} bytes, the manifest says {}", object.len(), meta.size_bytes));
    }
    let crc = crc32c::crc32c(object);
    if crc != meta.crc32c {
        return Err(format!("crc32c is {crc:#010x}, the manifest says {:#010x}", meta.crc32c));
    }
    let reader = ObjectReader::open(object, true).map_err(|e| format!("footer: {e}"))?;
    let footer = &reader.footer;
    if (footer.base_offset, footer.end_offset, footer.records) != (meta.base_offset, meta.end_offset, meta.records) {
        return Err(format!(
            "footer describes offsets {}..{} ({} records), the manifest {}..{} ({} records)",
            footer.base_offset, footer.end_offset, footer.records, meta.base_offset, meta.end_offset, meta.records
        ));
    }
    let mut expected = meta.base_offset;
    let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
    for rg in 0..reader.num_row_groups() {
        let (stats_min, stats_max) = reader.offset_range(rg).map_err(|e| format!("row group {rg}: {e}"))?;
        if stats_min != expected {
            return Err(format!("row group {rg} starts at offset {stats_min}, expected {expected}"));
        }
        let batches =
            reader.decode(rg, ProjectionMask::all(), None, 8192).map_err(|e| format!("row group {rg}: {e}"))?;
        for batch in batches {
            let batch = batch.map_err(|e| format!("row group {rg} does not decode: {e}"))?;
            let col = |name: &str| batch.column_by_name(name).ok_or_else(|| format!("column `{name}` is missing"));
            let offsets = col("offset")?.as_primitive_opt::<Int64Type>().ok_or("column `offset` has a wrong type")?;
            let timestamps = col("timestamp")?
                .as_primitive_opt::<TimestampMillisecondType>()
                .ok_or("column `timestamp` has a wrong type")?;
            let partitions =
                col("partition")?.as_primitive_opt::<UInt32Type>().ok_or("column `partition` has a wrong type")?;
            if offsets.null_count() > 0 || timestamps.null_count() > 0 {
                return Err(format!("row group {rg} has null offsets or timestamps"));
            }
            for (i, &offset) in offsets.values().iter().enumerate() {
                if u64::try_from(offset).ok() != Some(expected) {
                    return Err(format!("row group {rg}: offset {offset} where {expected} was expected"));
                }
                if partitions.value(i) != footer.partition {
                    return Err(format!(
                        "offset {offset}: partition {} in a partition {} object",
                        partitions.value(i),
                        footer.partition
                    ));
                }
                min_ts = min_ts.min(timestamps.value(i));
                max_ts = max_ts.max(timestamps.value(i));
                expected += 1;
            }
        }
        if expected != stats_max + 1 {
            return Err(format!("row group {rg} ends before offset {expected}, its statistics say {}", stats_max + 1));
        }
    }
    if expected != meta.end_offset {
        return Err(format!("records end before offset {expected}, the manifest says {}", meta.end_offset));
    }
    if (min_ts, max_ts) != (meta.min_timestamp, meta.max_timestamp) {
        return Err(format!(
            "timestamps span {min_ts}..={max_ts}, the manifest says {}..={}",
            meta.min_timestamp, meta.max_timestamp
        ));
    }
    Ok(())
}

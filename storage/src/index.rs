//! Sparse offset and time indexes of one segment, and their file (`<base>.index`).
//!
//! The active segment keeps its index in memory (rebuilt by the recovery scan); sealing writes it
//! once, with a footer that records what the index describes (log length, last batch position and
//! CRC). A footer that does not match its log — a crash mid-write, a compaction that swapped the
//! log, a damaged file — makes the index invalid, and it is rebuilt from the log on first use.

use std::path::Path;

/// Magic at the end of every index file.
pub const INDEX_MAGIC: &[u8; 8] = b"STRATIDX";
pub const INDEX_VERSION: u16 = 2;
/// Version 1 had no minimum timestamp; such files are still read (minimum unknown).
const FOOTER_LEN_V1: usize = 68;
const FOOTER_LEN: usize = 76;
const OFFSET_ENTRY_LEN: usize = 8;
const TIME_ENTRY_LEN: usize = 16;

/// What a segment's index knows about it, in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    /// `(offset - base, byte position)` of batch starts, sparse and increasing.
    pub offsets: Vec<(u32, u32)>,
    /// `(max timestamp so far, byte position)`, recorded each time the maximum grows (sparse).
    pub times: Vec<(i64, u32)>,
    /// One past the last offset of the last batch (`base` when the segment is empty).
    pub next_offset: u64,
    /// Largest record timestamp in the segment, `i64::MIN` when empty.
    pub max_timestamp: i64,
    /// A lower bound of the segment's record timestamps: the smallest one when every batch's
    /// records were seen (appends), `i64::MIN` when some were not (a batch indexed by the recovery
    /// scan, an index from before version 2), `i64::MAX` when empty.
    pub min_timestamp: i64,
    /// Length of the log file the index describes.
    pub log_len: u64,
    /// Position and CRC of the last batch (to check the index still matches its log).
    pub last_batch: Option<(u64, u32)>,
    bytes_since_offset_entry: u32,
    bytes_since_time_entry: u32,
}

/// Facts about one batch appended to a segment.
#[derive(Debug, Clone, Copy)]
pub struct IndexedBatch {
    pub base_offset: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    /// The batch's smallest record timestamp, `i64::MIN` when not known (the batch's records were
    /// not decoded).
    pub min_timestamp: i64,
    pub position: u64,
    pub len: u64,
    pub crc: u32,
}

impl SegmentIndex {
    pub fn empty(base_offset: u64, log_len: u64) -> Self {
        Self {
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            min_timestamp: i64::MAX,
            log_len,
            ..Default::default()
        }
    }

    /// Records a batch appended at the end of the segment.
    pub fn on_append(&mut self, base: u64, batch: &IndexedBatch, interval: u32) {
        let rel = (batch.base_offset - base) as u32;
        let pos = batch.position as u32;
        if self.offsets.is_empty() || self.bytes_since_offset_entry >= interval {
            self.offsets.push((rel, pos));
            self.bytes_since_offset_entry = 0;
        }
        if batch.max_timestamp > self.max_timestamp {
            if self.times.is_empty() || self.bytes_since_time_entry >= interval {
                self.times.push((batch.max_timestamp, pos));
                self.bytes_since_time_entry = 0;
            } else if let Some(last) = self.times.last_mut() {
                // Within the interval: raise the last entry rather than add one. Its position
                // still starts a scan early enough, since the maximum only grows.
                last.0 = batch.max_timestamp;
            }
            self.max_timestamp = batch.max_timestamp;
        }
        self.min_timestamp = self.min_timestamp.min(batch.min_timestamp);
        self.bytes_since_offset_entry = self.bytes_since_offset_entry.saturating_add(batch.len as u32);
        self.bytes_since_time_entry = self.bytes_since_time_entry.saturating_add(batch.len as u32);
        self.next_offset = batch.next_offset;
        self.log_len = batch.position + batch.len;
        self.last_batch = Some((batch.position, batch.crc));
    }

    /// Byte position to start scanning from to find `offset`: the last indexed batch start at or
    /// below it, or `None` to scan from the first batch.
    pub fn position_for_offset(&self, base: u64, offset: u64) -> Option<u64> {
        let rel = offset.saturating_sub(base).min(u64::from(u32::MAX)) as u32;
        let i = self.offsets.partition_point(|&(o, _)| o <= rel);
        i.checked_sub(1).map(|i| u64::from(self.offsets[i].1))
    }

    /// Byte position to start scanning from to find the first record with a timestamp at or
    /// after `ts`: every batch before it has only older records. `None` means scan from the start.
    pub fn position_for_timestamp(&self, ts: i64) -> Option<u64> {
        // Entries whose max is below `ts` prove all earlier batches are too old; the last such
        // entry's position is safe (its batch may contain nothing newer, so it is re-checked).
        let i = self.times.partition_point(|&(t, _)| t < ts);
        i.checked_sub(1).map(|i| u64::from(self.times[i].1))
    }

    /// Serialises the index into its file format (see FORMAT.md).
    pub fn encode(&self, base_offset: u64) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_LEN + self.times.len() * TIME_ENTRY_LEN + FOOTER_LEN);
        for &(rel, pos) in &self.offsets {
            out.extend_from_slice(&rel.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
        }
        for &(ts, pos) in &self.times {
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        let (last_pos, last_crc) = self.last_batch.unwrap_or((u64::MAX, 0));
        out.extend_from_slice(&self.min_timestamp.to_le_bytes());
        out.extend_from_slice(&base_offset.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp.to_le_bytes());
        out.extend_from_slice(&self.log_len.to_le_bytes());
        out.extend_from_slice(&last_pos.to_le_bytes());
        out.extend_from_slice(&last_crc.to_le_bytes());
        out.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.times.len() as u32).to_le_bytes());
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(INDEX_MAGIC);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses an index file. `None` when it is not a complete, intact index of `base_offset`:
    /// the caller then rebuilds it from the log.
    pub fn decode(buf: &[u8], base_offset: u64) -> Option<Self> {
        // Version and magic sit at the same distance from the end in every version.
        if buf.len() < FOOTER_LEN_V1 {
            return None;
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let tail = &buf[buf.len() - 16..];
        if &tail[4..12] != INDEX_MAGIC {
            return None;
        }
        let (footer_len, min_timestamp) = match u16::from_le_bytes([tail[0], tail[1]]) {
            1 => (FOOTER_LEN_V1, None),
            INDEX_VERSION if buf.len() >= FOOTER_LEN => (FOOTER_LEN, Some(())),
            _ => return None,
        };
        let footer = &buf[buf.len() - footer_len..];
        let min_timestamp = match min_timestamp {
            Some(()) => i64::from_le_bytes(footer[..8].try_into().ok()?),
            None => i64::MIN,
        };
        // The fields common to both versions.
        let f = &footer[footer_len - FOOTER_LEN_V1..];
        let u64_at = |at: usize| f.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        let u32_at = |at: usize| f.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        if u64_at(0)? != base_offset {
            return None;
        }
        let (n_off, n_time) = (u32_at(44)? as usize, u32_at(48)? as usize);
        if buf.len() != n_off * OFFSET_ENTRY_LEN + n_time * TIME_ENTRY_LEN + footer_len {
            return None;
        }
        let last_pos = u64_at(32)?;
        let mut index = SegmentIndex {
            next_offset: u64_at(8)?,
            max_timestamp: u64_at(16)? as i64,
            min_timestamp,
            log_len: u64_at(24)?,
            last_batch: (last_pos != u64::MAX).then(|| (last_pos, u32_at(40).unwrap_or(0))),
            ..Default::default()
        };
        let mut at = 0;
        for _ in 0..n_off {
            let rel = u32::from_le_bytes(buf[at..at + 4].try_into().ok()?);
            let pos = u32::from_le_bytes(buf[at + 4..at + 8].try_into().ok()?);
            index.offsets.push((rel, pos));
            at += OFFSET_ENTRY_LEN;
        }
        for _ in 0..n_time {
            let ts = i64::from_le_bytes(buf[at..at + 8].try_into().ok()?);
            let pos = u32::from_le_bytes(buf[at + 8..at + 12].try_into().ok()?);
            index.times.push((ts, pos));
            at += TIME_ENTRY_LEN;
        }
        Some(index)
    }

    /// Reads and parses an index file; `None` if missing or invalid.
    pub fn load(path: &Path, base_offset: u64) -> Option<Self> {
        let buf = std::fs::read(path).ok()?;
        Self::decode(&buf, base_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: u64, n: u64, ts: i64, pos: u64, len: u64) -> IndexedBatch {
        IndexedBatch {
            base_offset: base,
            next_offset: base + n,
            max_timestamp: ts,
            min_timestamp: ts - 3,
            position: pos,
            len,
            crc: 7,
        }
    }

    #[test]
    fn encode_decode_round_trip_and_damage_is_detected() {
        let mut idx = SegmentIndex::empty(100, 32);
        let mut pos = 32;
        for i in 0..50u64 {
            idx.on_append(100, &batch(100 + i * 10, 10, i as i64 * 5, pos, 1000), 4096);
            pos += 1000;
        }
        let encoded = idx.encode(100);
        let decoded = SegmentIndex::decode(&encoded, 100).unwrap();
        assert_eq!(decoded.offsets, idx.offsets);
        assert_eq!(decoded.times, idx.times);
        assert_eq!(decoded.next_offset, 600);
        assert_eq!(decoded.log_len, pos);
        assert_eq!(decoded.last_batch, Some((pos - 1000, 7)));
        assert_eq!((decoded.min_timestamp, decoded.max_timestamp), (-3, 245));
        assert!(SegmentIndex::decode(&encoded, 101).is_none(), "wrong base offset");
        for at in [0, encoded.len() / 2, encoded.len() - 1] {
            let mut damaged = encoded.clone();
            damaged[at] ^= 0x10;
            assert!(SegmentIndex::decode(&damaged, 100).is_none(), "flip at {at} undetected");
        }
        assert!(SegmentIndex::decode(&encoded[..encoded.len() - 3], 100).is_none());
    }

    #[test]
    fn lookups_never_start_past_the_target() {
        let mut idx = SegmentIndex::empty(0, 32);
        let mut pos = 32;
        for i in 0..100u64 {
            idx.on_append(0, &batch(i * 10, 10, 1000 + i as i64, pos, 3000), 4096);
            pos += 3000;
        }
        for target in [0u64, 5, 10, 555, 999] {
            let start = idx.position_for_offset(0, target).unwrap_or(32);
            assert!(start <= 32 + (target / 10) * 3000, "offset {target} starts at {start}");
        }
        for ts in [0i64, 1000, 1050, 1099, 5000] {
            let start = idx.position_for_timestamp(ts).unwrap_or(32);
            let first_batch_with_ts = 32 + (ts - 1000).clamp(0, 99) as u64 * 3000;
            assert!(start <= first_batch_with_ts, "ts {ts} starts at {start}");
        }
    }

    #[test]
    fn version_1_files_are_read_with_the_minimum_unknown() {
        let mut idx = SegmentIndex::empty(0, 32);
        idx.on_append(0, &batch(0, 10, 500, 32, 1000), 4096);
        let v2 = idx.encode(0);
        // Version 1: the same without the leading minimum-timestamp field of the footer.
        let footer_at = v2.len() - FOOTER_LEN;
        let mut v1 = [&v2[..footer_at], &v2[footer_at + 8..v2.len() - 4]].concat();
        let version_at = v1.len() - 12;
        v1[version_at..version_at + 2].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let decoded = SegmentIndex::decode(&v1, 0).unwrap();
        assert_eq!(decoded.min_timestamp, i64::MIN, "unknown, so never prunes");
        assert_eq!((decoded.max_timestamp, decoded.next_offset, decoded.offsets.len()), (500, 10, 1));
        assert_eq!(SegmentIndex::decode(&v2, 0).unwrap().min_timestamp, 497);
    }
}

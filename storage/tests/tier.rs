//! Tiering: sealed segments to Parquet and back, the Log methods tiering relies on
//! (`sealed_segments`, `enforce_local_retention`, `verify`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use common::{batch, read_all};
use proptest::prelude::*;
use strata_storage::tier::{self, TierError};
use strata_storage::{
    BatchBuilder, Compression, Durability, Fsync, Header, Log, LogConfig, ManualClock, ProducerInfo, Record,
    StorageOptions, TierObjectMeta, parquet_offset_for_timestamp, read_parquet, segment_to_parquet, verify_parquet,
};

/// Skips fsyncs: the property test rolls hundreds of tiny segments.
#[derive(Debug)]
struct NoFsync;

impl Fsync for NoFsync {
    fn sync_data(&self, _file: &File) -> std::io::Result<()> {
        Ok(())
    }
}

fn tiny_segments() -> LogConfig {
    LogConfig { segment_bytes: 1024, index_interval_bytes: 256, durability: Durability::Never, ..LogConfig::default() }
}

fn open_fast(dir: &std::path::Path) -> Log {
    let options = StorageOptions { fsync: Arc::new(NoFsync), ..Default::default() };
    Log::open_with_options(dir, tiny_segments(), options).unwrap()
}

/// The records `[base, end)` as the log returns them.
fn log_records(log: &Log, base: u64, end: u64) -> Vec<Record> {
    read_all(log, base).into_iter().filter(|r| r.offset < end).collect()
}

/// What `read_parquet` must return: records from `from` on, at most `max_records`, stopping
/// before a record that would take key + value bytes past `max_bytes` (but at least one), and
/// after the one that reaches it.
fn expected_page(records: &[Record], from: u64, max_records: usize, max_bytes: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let mut used = 0usize;
    for r in records.iter().filter(|r| r.offset >= from) {
        let size = r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len);
        if out.len() == max_records || (!out.is_empty() && used + size > max_bytes) {
            break;
        }
        out.push(r.clone());
        used += size;
        if used >= max_bytes {
            break;
        }
    }
    out
}

/// (timestamp, key, value, headers)
type ArbRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);
/// (codec, producer, records)
type ArbBatch = (Compression, Option<(i64, i16, i32)>, Vec<ArbRecord>);

fn arb_record() -> impl Strategy<Value = ArbRecord> {
    (
        prop_oneof![4 => 1_699_000_000_000i64..1_701_000_000_000, 1 => -5_000_000i64..5_000_000, 1 => any::<i64>()],
        proptest::option::weighted(0.8, proptest::collection::vec(any::<u8>(), 0..24)),
        proptest::option::weighted(0.9, proptest::collection::vec(any::<u8>(), 0..300)),
        // Few distinct names, so duplicates are common; empty names and values too.
        proptest::collection::vec(("[ab]{0,2}|trace-é", proptest::collection::vec(any::<u8>(), 0..12)), 0..4),
    )
}

fn arb_batch() -> impl Strategy<Value = ArbBatch> {
    (
        prop_oneof![Just(Compression::None), Just(Compression::Lz4), Just(Compression::Zstd)],
        proptest::option::of((0i64..1 << 40, 0i16..100, prop_oneof![0i32..1000, Just(i32::MAX - 3)])),
        proptest::collection::vec(arb_record(), 1..25),
    )
}

fn encode(b: &ArbBatch) -> Vec<u8> {
    let (codec, producer, records) = b;
    let mut builder = BatchBuilder::new(*codec);
    if let Some((id, epoch, seq)) = producer {
        builder = builder.producer(ProducerInfo { id: *id, epoch: *epoch, base_sequence: *seq });
    }
    for (ts, k, v, hs) in records {
        let headers: Vec<Header> =
            hs.iter().map(|(n, v)| Header { name: n.clone(), value: Bytes::from(v.clone()) }).collect();
        builder.push(*ts, k.as_deref(), v.as_deref(), &headers);
    }
    builder.build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn sealed_segments_round_trip_through_parquet(
        batches in proptest::collection::vec(arb_batch(), 2..40),
        picks in proptest::collection::vec((any::<prop::sample::Index>(), 1usize..50, 0usize..3000), 4),
        flip in any::<prop::sample::Index>(),
        flip_bit in 0u8..8,
        ts_probes in proptest::collection::vec(any::<prop::sample::Index>(), 3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = open_fast(dir.path());
        for b in &batches {
            log.append(encode(b)).unwrap().wait().unwrap();
        }
        let sealed = log.sealed_segments();
        prop_assert_eq!(sealed.len() + 1, log.segments().len());
        for seg in &sealed {
            let (object, meta) = segment_to_parquet(&log, 7, seg.base_offset).unwrap();
            let expected = log_records(&log, seg.base_offset, seg.end_offset);
            prop_assert_eq!(expected.len() as u64, seg.end_offset - seg.base_offset);
            prop_assert_eq!(&meta, &TierObjectMeta {
                base_offset: seg.base_offset,
                end_offset: seg.end_offset,
                min_timestamp: expected.iter().map(|r| r.timestamp).min().unwrap(),
                max_timestamp: expected.iter().map(|r| r.timestamp).max().unwrap(),
                records: expected.len() as u64,
                size_bytes: object.len() as u64,
                crc32c: crc32c::crc32c(&object),
            });
            prop_assert_eq!(seg.max_timestamp, meta.max_timestamp);
            prop_assert_eq!(verify_parquet(&object, &meta), Ok(()));

            // Whole object, then pages from offsets inside it.
            prop_assert_eq!(&read_parquet(&object, seg.base_offset, usize::MAX, usize::MAX).unwrap(), &expected);
            prop_assert_eq!(&read_parquet(&object, 0, usize::MAX, usize::MAX).unwrap(), &expected);
            prop_assert!(read_parquet(&object, seg.end_offset, 10, 1000).unwrap().is_empty());
            for (at, max_records, max_bytes) in &picks {
                let from = expected[at.index(expected.len())].offset;
                let got = read_parquet(&object, from, *max_records, *max_bytes).unwrap();
                prop_assert_eq!(got, expected_page(&expected, from, *max_records, *max_bytes));
            }

            // Timestamp lookup matches a brute-force scan.
            let mut probes: Vec<i64> = ts_probes.iter().map(|i| expected[i.index(expected.len())].timestamp).collect();
            probes.extend([i64::MIN, i64::MAX, meta.max_timestamp, meta.min_timestamp.saturating_sub(1)]);
            for ts in probes {
                let brute = expected.iter().find(|r| r.timestamp >= ts).map(|r| r.offset);
                prop_assert_eq!(parquet_offset_for_timestamp(&object, ts).unwrap(), brute, "ts {}", ts);
            }

            // A flipped bit anywhere: verify reports it; read_parquet errors or (for bytes of the
            // footer it does not need) returns exactly the right records — never others, never a panic.
            let mut damaged = object.to_vec();
            let at = flip.index(damaged.len());
            damaged[at] ^= 1 << flip_bit;
            let damaged = Bytes::from(damaged);
            prop_assert!(verify_parquet(&damaged, &meta).is_err());
            if let Ok(records) = read_parquet(&damaged, seg.base_offset, usize::MAX, usize::MAX) {
                prop_assert_eq!(&records, &expected, "flip at {} of {}", at, object.len());
            }
            let _ = parquet_offset_for_timestamp(&damaged, meta.min_timestamp);
        }
    }
}

/// A log of 40 batches of 4 records (timestamps `1000 + tag`) in 1 KiB segments.
fn filled(dir: &std::path::Path, options: StorageOptions, config: LogConfig) -> Log {
    let log = Log::open_with_options(dir, config, options).unwrap();
    for tag in 0..40u64 {
        log.append(batch(tag, 4, 1000 + tag as i64)).unwrap().wait().unwrap();
    }
    log
}

fn small() -> LogConfig {
    LogConfig { segment_bytes: 1024, index_interval_bytes: 256, durability: Durability::Never, ..LogConfig::default() }
}

#[test]
fn the_active_segment_and_unknown_bases_do_not_tier() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), StorageOptions::default(), small());
    let active = log.segments().last().unwrap().base_offset;
    assert!(
        matches!(segment_to_parquet(&log, 0, active), Err(TierError::NotSealed { base_offset }) if base_offset == active)
    );
    assert!(matches!(segment_to_parquet(&log, 0, 1), Err(TierError::NotSealed { base_offset: 1 })));
}

#[test]
fn objects_carry_producer_fields_and_footer_metadata_readable_by_any_parquet_reader() {
    use arrow::array::{Array, AsArray, RecordBatch};
    use arrow::datatypes::{Int16Type, Int32Type, Int64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    let mut b = BatchBuilder::new(Compression::Zstd).producer(ProducerInfo { id: 42, epoch: 3, base_sequence: 10 });
    for i in 0..3 {
        b.push(i, Some(b"k"), Some(b"v"), &[Header { name: "h".into(), value: Bytes::from_static(b"\x00\xff") }]);
    }
    log.append(b.build().unwrap()).unwrap().wait().unwrap();
    let mut plain = BatchBuilder::new(Compression::None);
    plain.push(5, None, None, &[]);
    log.append(plain.build().unwrap()).unwrap().wait().unwrap();
    log.append(batch(0, 60, 9)).unwrap().wait().unwrap(); // rolls
    let (object, meta) = segment_to_parquet(&log, 3, 0).unwrap();
    assert_eq!((meta.base_offset, meta.end_offset, meta.records), (0, 4, 4));

    let reader = ParquetRecordBatchReaderBuilder::try_new(object.clone()).unwrap();
    let kv: Vec<(String, String)> = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    for (k, v) in
        [("strata.format", "1"), ("strata.partition", "3"), ("strata.base_offset", "0"), ("strata.end_offset", "4")]
    {
        assert!(kv.contains(&(k.to_string(), v.to_string())), "{k}={v} missing from {kv:?}");
    }
    assert_eq!(reader.schema().fields(), tier::arrow_schema().fields());
    let batches: Vec<RecordBatch> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
    let b = &batches[0];
    let i64s = |name: &str| b.column_by_name(name).unwrap().as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(i64s("producer_id"), [42, 42, 42, -1]);
    assert_eq!(
        b.column_by_name("producer_epoch").unwrap().as_primitive::<Int16Type>().values().to_vec(),
        [3, 3, 3, -1]
    );
    assert_eq!(b.column_by_name("sequence").unwrap().as_primitive::<Int32Type>().values().to_vec(), [10, 11, 12, -1]);
    assert_eq!(i64s("offset"), [0, 1, 2, 3]);
    let values = b.column_by_name("value").unwrap().as_binary::<i32>();
    assert!(values.is_null(3), "a tombstone is a null value");
    let records = read_parquet(&object, 0, 100, 1 << 20).unwrap();
    assert_eq!(records[0].headers, vec![Header { name: "h".into(), value: Bytes::from_static(b"\x00\xff") }]);
    assert_eq!(records[3].key, None);
}

#[test]
fn large_segments_make_several_row_groups_and_reads_skip_to_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 64 << 20, durability: Durability::Never, ..LogConfig::default() };
    let log = Log::open(dir.path(), config).unwrap();
    for tag in 0..200u64 {
        let mut b = BatchBuilder::new(Compression::Lz4);
        for i in 0..250u64 {
            let value = format!("{{\"tag\":{tag},\"i\":{i},\"pad\":\"{}\"}}", "x".repeat((i % 50) as usize));
            b.push((tag * 250 + i) as i64, Some(format!("k{i}").as_bytes()), Some(value.as_bytes()), &[]);
        }
        log.append(b.build().unwrap()).unwrap().wait().unwrap();
    }
    log.append(batch(0, 1, 0)).unwrap().wait().unwrap();
    log.set_config(LogConfig { segment_bytes: 1024, ..log.config() }).unwrap();
    log.append(batch(1, 1, 0)).unwrap().wait().unwrap(); // rolls: the big segment is sealed
    let seg = log.sealed_segments()[0].clone();
    let (object, meta) = segment_to_parquet(&log, 0, seg.base_offset).unwrap();
    let row_groups = parquet::file::reader::FileReader::metadata(
        &parquet::file::serialized_reader::SerializedFileReader::new(object.clone()).unwrap(),
    )
    .num_row_groups();
    assert!(row_groups >= 3, "{} records should make several row groups, got {row_groups}", meta.records);
    let expected = log_records(&log, seg.base_offset, seg.end_offset);
    for from in [0u64, 16_383, 16_384, 40_000, 49_998] {
        let got = read_parquet(&object, from, 3, usize::MAX).unwrap();
        assert_eq!(got, expected[from as usize..from as usize + 3], "from {from}");
    }
    assert_eq!(
        read_parquet(&object, 30_000, 10_000, 64 * 1024).unwrap(),
        expected_page(&expected, 30_000, 10_000, 64 * 1024)
    );
    assert_eq!(parquet_offset_for_timestamp(&object, 33_333).unwrap(), Some(33_333));
    assert_eq!(verify_parquet(&object, &meta), Ok(()));

    // A flipped byte inside row-group data is always an error for reads of that row group.
    for at in [100usize, object.len() / 3, object.len() / 2] {
        let mut damaged = object.to_vec();
        damaged[at] ^= 0x01;
        let damaged = Bytes::from(damaged);
        assert!(read_parquet(&damaged, 0, usize::MAX, usize::MAX).is_err(), "flip at {at} undetected");
        assert!(verify_parquet(&damaged, &meta).unwrap_err().contains("crc32c"));
    }
}

#[test]
fn sealed_segments_describe_each_sealed_segment_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), StorageOptions::default(), small());
    let sealed = log.sealed_segments();
    let all = log.segments();
    assert!(sealed.len() >= 4);
    assert_eq!(sealed.len() + 1, all.len());
    for (i, s) in sealed.iter().enumerate() {
        assert_eq!(s.base_offset, all[i].base_offset);
        assert_eq!(s.end_offset, all[i + 1].base_offset);
        assert_eq!(s.size_bytes, all[i].size_bytes);
        let newest = log_records(&log, s.base_offset, s.end_offset).iter().map(|r| r.timestamp).max().unwrap();
        assert_eq!(s.max_timestamp, newest);
    }
}

#[test]
fn local_retention_deletes_only_tiered_segments_past_a_limit_and_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = StorageOptions { clock: clock.clone(), ..Default::default() };
    let log = filled(dir.path(), options, small());
    let sealed = log.sealed_segments();
    assert!(sealed.len() >= 6);
    let total = log.size_bytes();

    // Nothing tiered: nothing goes, whatever the limits.
    let outcome = log.enforce_local_retention(0, Some(0), Some(0), Some(0)).unwrap();
    assert_eq!(outcome.deleted_segments, 0);
    let outcome = log.enforce_local_retention(sealed[0].end_offset - 1, Some(0), Some(0), Some(0)).unwrap();
    assert_eq!(outcome.deleted_segments, 0, "a partly tiered segment stays");
    // Tiered but within every limit: stays.
    let outcome = log.enforce_local_retention(sealed[2].end_offset, Some(1 << 40), Some(total), None).unwrap();
    assert_eq!(outcome.deleted_segments, 0);

    // Over the size limit: the two tiered segments go, the untiered third stays despite the size.
    let outcome = log.enforce_local_retention(sealed[1].end_offset, None, Some(0), None).unwrap();
    assert_eq!(outcome.deleted_segments, 2);
    assert_eq!(outcome.deleted_bytes, sealed[0].size_bytes + sealed[1].size_bytes);
    assert_eq!(log.log_start_offset(), sealed[2].base_offset);
    assert_eq!(outcome.log_start_offset, sealed[2].base_offset);

    // Size limit with room: deletes oldest tiered segments only until the log fits.
    let size = log.size_bytes();
    let limit = size - sealed[2].size_bytes;
    let outcome = log.enforce_local_retention(sealed[4].end_offset, None, Some(limit), None).unwrap();
    assert_eq!(outcome.deleted_segments, 1);
    assert!(log.size_bytes() <= limit);

    // Age: records are ~1_000_000 ms old. local_retention_ms or retention_ms both expire them.
    let outcome = log.enforce_local_retention(sealed[3].end_offset, Some(2_000_000), None, Some(10)).unwrap();
    assert_eq!(outcome.deleted_segments, 1, "retention_ms applies to tiered segments");
    let outcome = log.enforce_local_retention(sealed[4].end_offset, Some(10), None, None).unwrap();
    assert_eq!(outcome.deleted_segments, 1);
    assert_eq!(log.log_start_offset(), sealed[5].base_offset);

    // Everything tiered, no limits left to respect: all sealed segments go, the active one stays.
    let outcome = log.enforce_local_retention(u64::MAX, None, Some(0), None).unwrap();
    assert_eq!(outcome.deleted_segments, sealed.len() - 5);
    assert_eq!(log.segments().len(), 1);
    assert!(!log.segments()[0].sealed);
    let active_base = log.segments()[0].base_offset;
    assert_eq!(read_all(&log, active_base).len() as u64, 160 - active_base);
    // The ordinary retention still works on the shared code path.
    assert_eq!(log.enforce_retention().unwrap().deleted_segments, 0);
}

fn flip_byte(path: &std::path::Path, at: u64) {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
}

#[test]
fn verify_reports_every_damaged_batch_with_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), StorageOptions::default(), small());
    assert_eq!(log.verify(), vec![]);
    let segments = log.segments();
    let (second, fourth, active) = (&segments[1], &segments[3], segments.last().unwrap());
    let path = |base: u64| dir.path().join(format!("{base:020}.log"));
    // Inside a record (CRC-covered) of two sealed segments and of the active one.
    flip_byte(&path(second.base_offset), 100); // in the first batch's records
    flip_byte(&path(fourth.base_offset), fourth.size_bytes - 3);
    flip_byte(&path(active.base_offset), active.size_bytes - 3);
    let damage = log.verify();
    let bases: Vec<u64> = damage.iter().map(|d| d.segment_base_offset).collect();
    assert_eq!(bases, vec![second.base_offset, fourth.base_offset, active.base_offset], "{damage:#?}");
    for d in &damage {
        assert!(d.description.contains("checksum"), "{d:?}");
        let (first, last) = d.offsets.unwrap();
        assert!(first >= d.segment_base_offset && last >= first);
        assert!(d.position >= 32);
    }
    // A damaged segment header is reported too, and the batches after it are still checked.
    flip_byte(&path(segments[0].base_offset), 3);
    let damage = log.verify();
    assert_eq!(damage.len(), 4);
    assert_eq!((damage[0].segment_base_offset, damage[0].position), (segments[0].base_offset, 0));
}

#[test]
fn local_retention_keeps_what_a_reader_pinned_until_the_pin_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), StorageOptions::default(), small());
    let sealed = log.sealed_segments();
    assert!(sealed.len() >= 4);

    // A reader pins an offset inside the third segment: everything is tiered and over the size
    // limit, but only the two segments wholly before the pin may go.
    let inside = sealed[2].base_offset + 1;
    let pin = log.pin_local(inside).unwrap();
    let second = log.pin_local(inside).unwrap();
    let outcome = log.enforce_local_retention(u64::MAX, None, Some(0), None).unwrap();
    assert_eq!(outcome.deleted_segments, 2);
    assert_eq!(log.log_start_offset(), sealed[2].base_offset);
    // The pinned records read as before.
    let read = log.read(inside, 1 << 20).unwrap();
    assert!(!read.batches.is_empty());

    // An offset no longer on local disk cannot be pinned: the reader must go to object storage.
    assert!(log.pin_local(sealed[1].base_offset).is_none());

    // The segments go once both holders let go.
    drop(pin);
    let outcome = log.enforce_local_retention(u64::MAX, None, Some(0), None).unwrap();
    assert_eq!(outcome.deleted_segments, 0, "the second holder still pins it");
    drop(second);
    let outcome = log.enforce_local_retention(u64::MAX, None, Some(0), None).unwrap();
    assert_eq!(outcome.deleted_segments, sealed.len() - 2);
    assert_eq!(log.segments().len(), 1);
}

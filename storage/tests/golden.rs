//! The batch format's golden vector (see `storage/FORMAT.md`): these exact bytes must keep
//! decoding to these exact records, and the builder must keep producing them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use bytes::Bytes;
use strata_storage::{Batch, BatchBuilder, Compression, Header, ProducerInfo};

const GOLDEN_HEX: &str = "\
2a00000000000000 4d000000 01 5bd4e059 0000 01000000 02000000
0068e5cf8b010000 0568e5cf8b010000 0700000000000000 0100 03000000 00000000
14 00 00 00 02 61 0a 68656c6c6f 01 05 7472616365 01 31
06 00 0a 01 01 01 00";

fn golden() -> Vec<u8> {
    let hex: String = GOLDEN_HEX.chars().filter(char::is_ascii_hexdigit).collect();
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

fn build() -> Vec<u8> {
    let producer = ProducerInfo { id: 7, epoch: 1, base_sequence: 3 };
    let mut b = BatchBuilder::new(Compression::None).producer(producer);
    b.push(1_700_000_000_000, Some(b"a"), Some(b"hello"), &[Header { name: "trace".into(), value: "1".into() }]);
    b.push(1_700_000_000_005, None, None, &[]);
    let mut out = b.build().unwrap();
    out[..8].copy_from_slice(&42u64.to_le_bytes());
    out
}

#[test]
fn golden_vector_decodes() {
    let batch = Batch::parse(Bytes::from(golden())).expect("golden batch parses");
    let h = batch.header();
    assert_eq!(h.base_offset, 42);
    assert_eq!(h.record_count, 2);
    assert_eq!(h.last_offset_delta, 1);
    assert_eq!(h.first_timestamp, 1_700_000_000_000);
    assert_eq!(h.max_timestamp, 1_700_000_000_005);
    assert_eq!(h.producer, ProducerInfo { id: 7, epoch: 1, base_sequence: 3 });
    assert_eq!(h.compression, Compression::None);
    assert!(!h.transactional && !h.control);
    let records = batch.records().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].offset, 42);
    assert_eq!(records[0].key.as_deref(), Some(&b"a"[..]));
    assert_eq!(records[0].value.as_deref(), Some(&b"hello"[..]));
    assert_eq!(records[0].headers, vec![Header { name: "trace".into(), value: "1".into() }]);
    assert_eq!((records[1].offset, records[1].timestamp), (43, 1_700_000_000_005));
    assert_eq!((records[1].key.as_ref(), records[1].value.as_ref()), (None, None));
}

#[test]
fn builder_still_produces_the_golden_bytes() {
    let built = build();
    let hex: Vec<String> = built.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(built, golden(), "encoding changed: {}", hex.concat());
}

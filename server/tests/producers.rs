//! Idempotent producers over HTTP and gRPC, and `Idempotency-Key` retries after a crash that
//! lost the key but not the records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Server, create_topic, fetch_all, get, post_json, post_raw};
use serde_json::{Value, json};
use strata_client::proto;

/// Sequences are checked per partition (a session's keyless requests spread over partitions by
/// sequence), so these records name partition 1.
fn produce_as(url: &str, topic: &str, producer: Value, values: &[i64]) -> (u16, Value) {
    let records: Vec<Value> = values.iter().map(|v| json!({"value": v, "partition": 1})).collect();
    let r = post_json(&format!("{url}/v1/topics/{topic}/records"), &json!({"records": records, "producer": producer}));
    (r.status, r.json())
}

fn high_watermarks(url: &str, topic: &str) -> Vec<u64> {
    let described = get(&format!("{url}/v1/topics/{topic}")).json();
    described["partitions"].as_array().unwrap().iter().map(|p| p["high_watermark"].as_u64().unwrap()).collect()
}

#[test]
fn http_retries_of_a_producer_session_are_stored_once_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "orders", 3, json!({}));
    let created = post_json(&format!("{}/v1/producers", s.url), &json!({}));
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_i64().unwrap();
    let other = post_json(&format!("{}/v1/producers", s.url), &json!({})).json()["id"].as_i64().unwrap();
    assert_ne!(id, other, "every session gets its own id");

    let session = |epoch: i64, sequence: i64| json!({"id": id, "epoch": epoch, "sequence": sequence});
    let (status, first) = produce_as(&s.url, "orders", session(0, 0), &[1, 2, 3]);
    assert_eq!(status, 200, "{first}");
    let (_, again) = produce_as(&s.url, "orders", session(0, 0), &[1, 2, 3]);
    assert_eq!(again, first, "a retry gets the first attempt's offsets");
    let (_, second) = produce_as(&s.url, "orders", session(0, 1), &[4, 5]);
    assert_ne!(second, first);
    let (_, third) = produce_as(&s.url, "orders", session(0, 7), &[6]);
    let hw = high_watermarks(&s.url, "orders");
    assert_eq!(hw, vec![0, 6, 0]);

    // Sequences must increase: an old one that is no retry is refused, and so is a retry with
    // other records.
    let (status, problem) = produce_as(&s.url, "orders", session(0, 5), &[9]);
    assert_eq!((status, problem["code"].as_str().unwrap()), (409, "out_of_order_sequence"), "{problem}");
    let (status, problem) = produce_as(&s.url, "orders", session(0, 1), &[4, 5, 6]);
    assert_eq!((status, problem["code"].as_str().unwrap()), (409, "out_of_order_sequence"), "{problem}");
    let (status, problem) = produce_as(&s.url, "orders", json!({"id": -3, "epoch": 0, "sequence": 0}), &[1]);
    assert_eq!((status, problem["code"].as_str().unwrap()), (400, "invalid_request"), "{problem}");
    let (status, _) = produce_as(&s.url, "orders", json!({"id": id, "epoch": 0}), &[1]);
    assert_eq!(status, 400, "a session without a sequence is malformed");
    assert_eq!(high_watermarks(&s.url, "orders"), hw, "refused requests appended nothing");

    assert_eq!(s.terminate().code(), Some(0));
    let s = Server::start(dir.path());
    for (sequence, values, response) in [(0, &[1, 2, 3][..], &first), (1, &[4, 5], &second), (7, &[6], &third)] {
        let (_, retried) = produce_as(&s.url, "orders", session(0, sequence), values);
        assert_eq!(&retried, response, "sequence {sequence} after the restart");
    }
    assert_eq!(high_watermarks(&s.url, "orders"), hw);
    let after = post_json(&format!("{}/v1/producers", s.url), &json!({})).json()["id"].as_i64().unwrap();
    assert!(after > other, "ids are not reused after a restart");

    // A new epoch fences the old one.
    let (status, _) = produce_as(&s.url, "orders", session(1, 0), &[10]);
    assert_eq!(status, 200);
    let (status, problem) = produce_as(&s.url, "orders", session(0, 8), &[11]);
    assert_eq!((status, problem["code"].as_str().unwrap()), (409, "producer_fenced"), "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sessions_dedupe_retries_and_the_client_numbers_its_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "clicks", 2, json!({}));
    let mut raw = proto::producer_client::ProducerClient::connect(s.url.clone()).await.unwrap();
    let session = raw.init_producer(proto::InitProducerRequest {}).await.unwrap().into_inner();
    let request = |sequence: i32, epoch: i32| proto::ProduceRequest {
        batches: Vec::new(),
        topic: "clicks".into(),
        records: (0..4)
            .map(|i| proto::Record {
                value: Some(format!("v{sequence}-{i}").into()),
                partition: Some(0),
                ..Default::default()
            })
            .collect(),
        acks: proto::Acks::Leader as i32,
        request_id: 0,
        producer: Some(proto::ProducerSession { id: session.id, epoch, sequence }),
        expected_offset: None,
    };
    let first = raw.produce(request(3, 0)).await.unwrap().into_inner();
    let retry = raw.produce(request(3, 0)).await.unwrap().into_inner();
    assert_eq!(retry.offsets, first.offsets);
    let fenced = raw.produce(request(9, -1)).await.unwrap_err();
    assert_eq!(fenced.code(), tonic::Code::InvalidArgument, "{fenced}");
    let old = raw.produce(request(2, 0)).await.unwrap_err();
    assert_eq!(old.code(), tonic::Code::FailedPrecondition, "{old}");
    assert!(old.message().contains("out_of_order_sequence"), "{old}");
    assert_eq!(high_watermarks(&s.url, "clicks").iter().sum::<u64>(), 4);

    // The Rust client's producer is idempotent by default: its requests carry a session.
    let client = strata_client::Client::connect(&s.url).await.unwrap();
    let producer = client.producer(strata_client::ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..100 {
        let record = strata_client::Record::new(Some(format!("k{i}")), format!("v{i}"));
        deliveries.push(producer.send("clicks", record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.wait().await.unwrap();
    }
    assert_eq!(high_watermarks(&s.url, "clicks").iter().sum::<u64>(), 104);
}

#[test]
fn an_idempotency_key_retry_after_a_crash_that_lost_the_key_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(dir.path(), &[("STRATA_IDEMPOTENCY_CRASH_AT", "stored")]);
    create_topic(&s.url, "webhooks", 4, json!({}));
    let url = format!("{}/v1/topics/webhooks/records", s.url);
    let body = br#"{"records":[{"value":{"event":"paid"}},{"value":{"event":"shipped"}},{"key":"o-1","value":1}]}"#;
    let headers = [("content-type", "application/json"), ("idempotency-key", "delivery-42")];
    // The records become durable, then the process aborts before the key's entry is written: the
    // sender sees the connection fail and retries.
    let lost = common::try_post_with_headers(&url, &headers, body);
    assert!(lost.is_err(), "the crash hook aborts before answering");
    assert!(!s.wait_exit(Duration::from_secs(20)).success());

    let s = Server::start(dir.path());
    let stored: usize = (0..4).map(|p| fetch_all(&s.url, "webhooks", p).len()).sum();
    assert_eq!(stored, 3, "the first attempt's records are durable");
    let retried = post_raw(&format!("{}/v1/topics/webhooks/records", s.url), &headers, body);
    assert_eq!(retried.status, 200, "{}", String::from_utf8_lossy(&retried.body));
    let offsets = retried.json()["offsets"].clone();
    let total: usize = (0..4).map(|p| fetch_all(&s.url, "webhooks", p).len()).sum();
    assert_eq!(total, 3, "the retry appended nothing");
    for o in offsets.as_array().unwrap() {
        let partition = o["partition"].as_u64().unwrap() as u32;
        let records = fetch_all(&s.url, "webhooks", partition);
        assert!(records.iter().any(|r| r["offset"] == o["offset"]), "offset {o} names a stored record");
    }
    // The key is remembered now, as after any first attempt.
    let again = post_raw(&format!("{}/v1/topics/webhooks/records", s.url), &headers, body);
    assert_eq!(again.json()["offsets"], offsets);
    let other = post_raw(&format!("{}/v1/topics/webhooks/records", s.url), &headers, br#"{"records":[{"value":2}]}"#);
    assert_eq!(other.status, 422);
}

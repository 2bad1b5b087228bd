//! Random bytes and random JSON thrown at the HTTP produce parser (and a few other routes) of a
//! real server: every answer is a 2xx or a 4xx problem+json, never a 500, and the server lives.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use common::{Server, create_topic, post_raw};
use proptest::prelude::*;
use serde_json::{Value, json};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        Just(json!("AAEC")),
        Just(json!(-1)),
        Just(json!(4_294_967_296_u64)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let keys = prop_oneof![
            Just("records".to_string()),
            Just("key".to_string()),
            Just("value".to_string()),
            Just("key_b64".to_string()),
            Just("value_b64".to_string()),
            Just("headers".to_string()),
            Just("partition".to_string()),
            Just("timestamp".to_string()),
            Just("acks".to_string()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(keys, inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn check(reply: &common::Reply) -> Result<(), TestCaseError> {
    prop_assert!(reply.status < 500, "server error {}: {}", reply.status, String::from_utf8_lossy(&reply.body));
    if reply.status >= 400 {
        prop_assert_eq!(reply.content_type.as_str(), "application/problem+json");
        let body = reply.json();
        prop_assert!(body["code"].is_string());
    }
    Ok(())
}

#[test]
fn random_input_never_gets_a_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "fuzz", 2, json!({"max_record_bytes": 4096}));
    let records = format!("{}/v1/topics/fuzz/records", s.url);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 300, ..ProptestConfig::default() });
    runner
        .run(&arb_json(), |v| {
            check(&post_raw(&records, &[("content-type", "application/json")], &serde_json::to_vec(&v).unwrap()))?;
            // The same value wrapped as a records list exercises the record parser deeper.
            let wrapped = json!({"records": [v]});
            check(&post_raw(&records, &[("content-type", "application/json")], &serde_json::to_vec(&wrapped).unwrap()))
        })
        .unwrap();
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |bytes| {
            check(&post_raw(&records, &[("content-type", "application/json")], &bytes))?;
            check(&post_raw(&records, &[("content-type", "application/octet-stream")], &bytes))?;
            check(&post_raw(&format!("{}/v1/topics", s.url), &[("content-type", "application/json")], &bytes))
        })
        .unwrap();
    runner
        .run(&"[ -~]{0,40}", |q| {
            let url =
                format!("{}/v1/topics/fuzz/partitions/0/records?{}", s.url, q.replace(' ', "%20").replace('#', "%23"));
            check(&common::get(&url))
        })
        .unwrap();
    assert_eq!(common::get(&format!("{}/healthz", s.url)).status, 200);
}

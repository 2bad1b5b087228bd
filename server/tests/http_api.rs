//! The HTTP API against a real `strata serve` process: topics, produce (JSON and webhook),
//! fetch, long-poll, idempotency keys across a restart, and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_topic, fetch, fetch_all, get, post_json, post_raw, produce};
use serde_json::json;

#[test]
fn topics_produce_and_fetch_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let created = create_topic(&s.url, "orders", 3, json!({"retention_ms": 3_600_000, "flush": "always"}));
    assert_eq!(created["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(created["config"]["retention_ms"], 3_600_000);

    let r = produce(
        &s.url,
        "orders",
        json!({"records": [
            {"key": "user-1", "value": {"total": 42}, "headers": {"trace": "abc"}},
            {"key": "user-1", "value": "second"},
            {"partition": 2, "value_b64": "AAEC", "timestamp": 1_700_000_000_000_i64},
        ]}),
    );
    let offsets = r["offsets"].as_array().unwrap();
    assert_eq!(offsets.len(), 3);
    // Same key, same partition (murmur2), consecutive offsets.
    assert_eq!(offsets[0]["partition"], offsets[1]["partition"]);
    assert_eq!(offsets[1]["offset"].as_u64().unwrap(), offsets[0]["offset"].as_u64().unwrap() + 1);
    assert_eq!(offsets[2]["partition"], 2);

    let p = offsets[0]["partition"].as_u64().unwrap() as u32;
    let page = fetch(&s.url, "orders", p, "offset=earliest");
    let first = &page["records"][0];
    assert_eq!(first["key"], "user-1");
    assert_eq!(first["value"], json!({"total": 42}));
    assert_eq!(first["headers"]["trace"], "abc");
    assert_eq!(page["records"][1]["value"], "second");
    assert_eq!(page["high_watermark"], 2);
    let raw = fetch(&s.url, "orders", 2, "offset=0");
    let rec = raw["records"].as_array().unwrap().iter().find(|r| r["timestamp"] == 1_700_000_000_000_i64).unwrap();
    assert_eq!(rec["value_b64"], "AAEC");
    let fields = rec.as_object().unwrap();
    assert!(fields["key"].is_null() && !fields.contains_key("key_b64"), "no key: `key` is null: {rec}");
    assert!(!fields.contains_key("value"), "a value in `value_b64` has no `value`: {rec}");

    // The webhook door: any non-JSON body is one record's value.
    let hook = post_raw(
        &format!("{}/v1/topics/orders/records?key=hook-1&partition=1", s.url),
        &[("content-type", "application/x-www-form-urlencoded"), ("x-strata-header-source", "stripe")],
        b"a=1&b=2",
    );
    assert_eq!(hook.status, 200, "{}", String::from_utf8_lossy(&hook.body));
    let hook_offset = hook.json()["offsets"][0]["offset"].as_u64().unwrap();
    let got = fetch(&s.url, "orders", 1, &format!("offset={hook_offset}&encoding=base64"));
    let rec = &got["records"][0];
    assert_eq!(rec["value_b64"], "YT0xJmI9Mg==");
    assert_eq!(rec["key_b64"], "aG9vay0x");
    assert_eq!(rec["headers"]["source"], "stripe");

    // Timestamps, latest.
    let latest = fetch(&s.url, "orders", p, "offset=latest");
    assert_eq!(latest["records"].as_array().unwrap().len(), 0);
    assert_eq!(latest["next_offset"], latest["high_watermark"]);
    let by_time = fetch(&s.url, "orders", 2, "timestamp=1700000000000");
    assert_eq!(by_time["records"][0]["timestamp"], 1_700_000_000_000_i64);

    // Describe, list, alter, grow, delete.
    let d = get(&format!("{}/v1/topics/orders", s.url)).json();
    assert_eq!(d["partitions"][p as usize]["high_watermark"], latest["high_watermark"]);
    assert_eq!(get(&format!("{}/v1/topics", s.url)).json()["topics"].as_array().unwrap().len(), 1);
    let patch = common::request(
        "PATCH",
        &format!("{}/v1/topics/orders", s.url),
        &json!({"config": {"cleanup_policy": "compact"}}),
    );
    assert_eq!(patch.status, 200, "{}", String::from_utf8_lossy(&patch.body));
    assert_eq!(patch.json()["config"]["cleanup_policy"], "compact");
    let grown = post_json(&format!("{}/v1/topics/orders/partitions", s.url), &json!({"count": 5}));
    assert_eq!(grown.json()["partitions"].as_array().unwrap().len(), 5);
    let shrink = post_json(&format!("{}/v1/topics/orders/partitions", s.url), &json!({"count": 2}));
    assert_eq!((shrink.status, shrink.json()["code"].as_str().unwrap()), (400, "invalid_topic"));
    assert_eq!(common::request("DELETE", &format!("{}/v1/topics/orders", s.url), &json!(null)).status, 204);
    assert_eq!(get(&format!("{}/v1/topics/orders", s.url)).status, 404);
}

#[test]
fn bad_input_gets_problem_json_with_a_stable_code() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "t", 2, json!({"max_record_bytes": 1000}));
    let records = format!("{}/v1/topics/t/records", s.url);
    let cases: Vec<(common::Reply, u16, &str)> = vec![
        (post_raw(&records, &[("content-type", "application/json")], b"{not json"), 400, "invalid_request"),
        (post_json(&records, &json!({"records": [{"value_b64": "!!!"}]})), 400, "invalid_record"),
        (post_json(&records, &json!({"records": []})), 400, "invalid_record"),
        (post_json(&records, &json!({"records": [{"value": 1, "value_b64": "AA=="}]})), 400, "invalid_record"),
        (post_json(&records, &json!({"records": [{"value": "x".repeat(2000)}]})), 413, "record_too_large"),
        (post_json(&records, &json!({"records": [{"value": 1, "partition": 7}]})), 404, "partition_not_found"),
        (post_json(&records, &json!({"records": [{"value": 1}], "acks": "most"})), 400, "invalid_request"),
        (
            post_json(&format!("{}/v1/topics/nope/records", s.url), &json!({"records": [{"value": 1}]})),
            404,
            "topic_not_found",
        ),
        (get(&format!("{}/v1/topics/t/partitions/0/records?offset=-1", s.url)), 400, "invalid_request"),
        (get(&format!("{}/v1/topics/t/partitions/0/records?offset=abc", s.url)), 400, "invalid_request"),
        (get(&format!("{}/v1/topics/t/partitions/0/records?offset=5", s.url)), 416, "offset_out_of_range"),
        (get(&format!("{}/v1/topics/t/partitions/x/records", s.url)), 400, "invalid_request"),
        (get(&format!("{}/v1/topics/t/partitions/9/records", s.url)), 404, "partition_not_found"),
        (
            post_json(&format!("{}/v1/topics", s.url), &json!({"name": "t", "partitions": 1})),
            409,
            "topic_already_exists",
        ),
        (post_json(&format!("{}/v1/topics", s.url), &json!({"name": "x", "partitions": 0})), 400, "invalid_topic"),
        (
            post_json(&format!("{}/v1/topics", s.url), &json!({"name": "x", "config": {"flush": "sometimes"}})),
            400,
            "invalid_config",
        ),
        (
            post_json(&format!("{}/v1/topics", s.url), &json!({"name": "x", "config": {"segment_bytes": 10}})),
            400,
            "invalid_config",
        ),
        (
            post_json(&format!("{}/v1/topics", s.url), &json!({"name": "x", "replication_factor": 3})),
            400,
            "invalid_config",
        ),
        (get(&format!("{}/v2/whatever", s.url)), 404, "not_found"),
        (common::request("PUT", &format!("{}/v1/topics", s.url), &json!({})), 405, "method_not_allowed"),
        (common::request("DELETE", &records, &json!(null)), 405, "method_not_allowed"),
    ];
    for (i, (reply, status, code)) in cases.iter().enumerate() {
        assert_eq!(reply.status, *status, "case {i}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.content_type, "application/problem+json", "case {i}");
        let body = reply.json();
        assert_eq!(body["code"], *code, "case {i}: {body}");
        assert_eq!(body["status"], *status);
        assert!(!body["detail"].as_str().unwrap().is_empty());
    }
    // Nothing was appended by any of the refused requests.
    assert_eq!(fetch(&s.url, "t", 0, "offset=0")["high_watermark"], 0);
    assert_eq!(fetch(&s.url, "t", 1, "offset=0")["high_watermark"], 0);
}

#[test]
fn long_poll_returns_as_soon_as_a_record_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "events", 1, json!({}));
    let url = s.url.clone();
    let waiter = std::thread::spawn(move || {
        let start = Instant::now();
        let page = fetch(&url, "events", 0, "offset=0&wait_ms=30000");
        (start.elapsed(), page)
    });
    std::thread::sleep(Duration::from_millis(300));
    produce(&s.url, "events", json!({"records": [{"value": "ping"}]}));
    let (waited, page) = waiter.join().unwrap();
    assert_eq!(page["records"][0]["value"], "ping");
    // Far below the 30 s wait: it returned because the record arrived, not because time ran out.
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
    // With nothing to read, it returns empty at the end of the wait.
    let empty = fetch(&s.url, "events", 0, "offset=1&wait_ms=200");
    assert_eq!(empty["records"].as_array().unwrap().len(), 0);
}

#[test]
fn restart_keeps_topics_data_and_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "payments", 2, json!({}));
    let url = format!("{}/v1/topics/payments/records", s.url);
    let body = br#"{"records":[{"key":"p-1","value":{"amount":10}}]}"#;
    let headers = [("content-type", "application/json"), ("idempotency-key", "retry-me")];
    let first = post_raw(&url, &headers, body);
    assert_eq!(first.status, 200);
    let again = post_raw(&url, &headers, body);
    assert_eq!(again.json(), first.json(), "a retry returns the first response");
    let other = post_raw(&url, &headers, br#"{"records":[{"value":2}]}"#);
    assert_eq!(
        (other.status, other.json()["code"].as_str().unwrap().to_string()),
        (422, "idempotency_key_reused".to_string())
    );
    for i in 0..20 {
        produce(&s.url, "payments", json!({"records": [{"key": format!("k{i}"), "value": i}]}));
    }
    let before: Vec<_> = (0..2).map(|p| fetch_all(&s.url, "payments", p)).collect();
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success(), "a second server on the same data directory is refused");
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(s.terminate().code(), Some(0), "SIGTERM exits cleanly");

    let s = Server::start(dir.path());
    let after: Vec<_> = (0..2).map(|p| fetch_all(&s.url, "payments", p)).collect();
    assert_eq!(after, before);
    assert_eq!(get(&format!("{}/v1/topics/payments", s.url)).json()["partitions"].as_array().unwrap().len(), 2);
    let retried = post_raw(&format!("{}/v1/topics/payments/records", s.url), &headers, body);
    assert_eq!(retried.json(), first.json(), "the key is remembered across the restart");
    let total: usize = (0..2).map(|p| fetch_all(&s.url, "payments", p).len()).sum();
    assert_eq!(total, 21, "the retried request appended nothing");
}

#[test]
fn fifty_concurrent_producers_to_one_partition_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "hot", 1, json!({}));
    let threads: Vec<_> = (0..50)
        .map(|t| {
            let url = s.url.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let r = produce(&url, "hot", json!({"records": [{"value": format!("{t}-{i}")}]}));
                        r["offsets"][0]["offset"].as_u64().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    acked.sort_unstable();
    assert_eq!(acked, (0..500).collect::<Vec<_>>(), "every offset handed out once, densely");
    let records = fetch_all(&s.url, "hot", 0);
    assert_eq!(records.len(), 500);
    let mut values: Vec<String> = records.iter().map(|r| r["value"].as_str().unwrap().to_string()).collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), 500, "no duplicate, no loss");
}

#[test]
fn expected_offset_appends_only_at_that_offset() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "ledger", 2, json!({}));
    let url = format!("{}/v1/topics/ledger/records", s.url);
    let ok = post_json(
        &url,
        &json!({"records": [{"value": 1, "partition": 1}, {"value": 2, "partition": 1}], "expected_offset": 0}),
    );
    assert_eq!(ok.status, 200);
    let stale = post_json(&url, &json!({"records": [{"value": 3, "partition": 1}], "expected_offset": 1}));
    assert_eq!((stale.status, stale.json()["code"].as_str().unwrap()), (412, "offset_mismatch"));
    let next = post_json(&url, &json!({"records": [{"value": 3, "partition": 1}], "expected_offset": 2}));
    assert_eq!(next.json()["offsets"][0]["offset"], 2);
    let no_partition = post_json(&url, &json!({"records": [{"value": 3}], "expected_offset": 3}));
    assert_eq!(no_partition.status, 400);
    assert_eq!(fetch(&s.url, "ledger", 1, "offset=0")["high_watermark"], 3);
}

#[test]
fn operations_endpoints_answer() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "m", 1, json!({}));
    produce(&s.url, "m", json!({"records": [{"value": 1}]}));
    assert_eq!(get(&format!("{}/healthz", s.url)).status, 200);
    assert_eq!(get(&format!("{}/readyz", s.url)).status, 200);
    let metrics = String::from_utf8(get(&format!("{}/metrics", s.url)).body).unwrap();
    assert!(metrics.contains("strata_partition_high_watermark{topic=\"m\",partition=\"0\"} 1"), "{metrics}");
    assert!(metrics.contains("strata_request_duration_seconds_bucket"));
    let body_bytes = r#"{"records":[{"value":1}]}"#.len();
    assert!(
        metrics
            .contains(&format!("strata_request_bytes_total{{api=\"POST /v1/topics/{{topic}}/records\"}} {body_bytes}")),
        "{metrics}"
    );
    let openapi = get(&format!("{}/openapi.json", s.url)).json();
    assert!(openapi["paths"]["/v1/topics/{topic}/records"]["post"].is_object());
    assert!(openapi["paths"]["/v1/topics/{topic}/partitions/{partition}/records"]["get"].is_object());
    // Every route of the JSON API is in the document (the registry has its own, Confluent's).
    for (path, method) in [
        ("/v1/topics/{topic}/partitions/{partition}/batches", "get"),
        ("/v1/producers", "post"),
        ("/v1/sql", "post"),
        ("/v1/groups", "get"),
        ("/v1/groups/{group}", "delete"),
        ("/v1/groups/{group}/members", "post"),
        ("/v1/groups/{group}/members/{member}/heartbeat", "post"),
        ("/v1/groups/{group}/members/{member}/records", "get"),
        ("/v1/groups/{group}/members/{member}/stream", "get"),
        ("/v1/groups/{group}/offsets", "post"),
        ("/v1/groups/{group}/offsets/reset", "post"),
    ] {
        assert!(openapi["paths"][path][method].is_object(), "{method} {path} missing from /openapi.json");
    }
}

#[test]
fn the_server_raises_its_open_files_limit_to_the_hard_limit() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    // A shell lowers the soft limit first, as a login shell with the usual default of 1024 would.
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" serve --listen 127.0.0.1:0 --data-dir \"$1\""])
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg(dir.path())
        .env("STRATA_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let fields: Vec<&str> =
        limits.lines().find(|l| l.starts_with("Max open files")).unwrap().split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap().trim().parse().unwrap();
    let ceiling = if hard == "unlimited" { nr_open } else { hard.parse::<u64>().unwrap().min(nr_open) };
    assert_eq!(soft.parse::<u64>().unwrap(), ceiling, "{limits}");
}

/// The HTTP/2 settings the server announces (`server/src/serve.rs`), read off the wire as a
/// client sees them: the windows and frame size that keep a pipelined producer from stalling on
/// flow control, and extended CONNECT (RFC 8441).
#[test]
fn the_server_announces_its_http2_windows_and_frame_size() {
    use std::io::{Read, Write};
    use strata_server::serve::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};

    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let mut tcp = std::net::TcpStream::connect(s.url.trim_start_matches("http://")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The client preface and an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();

    let (mut settings, mut connection_increment) = (None::<Vec<(u16, u32)>>, None::<u32>);
    while settings.is_none() || connection_increment.is_none() {
        let mut header = [0u8; 9];
        tcp.read_exact(&mut header).unwrap();
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).unwrap();
        match kind {
            // SETTINGS, not the acknowledgement of ours.
            0x4 if flags & 0x1 == 0 => {
                let pairs = payload
                    .chunks_exact(6)
                    .map(|p| (u16::from_be_bytes([p[0], p[1]]), u32::from_be_bytes([p[2], p[3], p[4], p[5]])))
                    .collect();
                settings = Some(pairs);
            }
            // WINDOW_UPDATE of the connection (stream 0).
            0x8 if stream == 0 => {
                connection_increment = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff);
            }
            _ => {}
        }
    }
    let settings = settings.unwrap();
    let value = |id: u16| settings.iter().find(|(k, _)| *k == id).map(|(_, v)| *v);
    assert_eq!(value(0x4), Some(STREAM_WINDOW), "SETTINGS_INITIAL_WINDOW_SIZE in {settings:?}");
    assert_eq!(value(0x5), Some(MAX_FRAME), "SETTINGS_MAX_FRAME_SIZE in {settings:?}");
    assert_eq!(value(0x8), Some(1), "SETTINGS_ENABLE_CONNECT_PROTOCOL in {settings:?}");
    // The connection window starts at 65,535 bytes (RFC 9113) and is raised by this much.
    assert_eq!(connection_increment, Some(CONNECTION_WINDOW - 65_535));
}

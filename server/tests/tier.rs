//! Tiered storage against real `strata serve` processes: sealed segments become Parquet objects
//! (local filesystem store, and moto's S3 server), reads span both tiers with the same records,
//! crashes at each tiering step lose and double nothing, outages are survived, retention spans
//! the tiers, and `strata topic verify` finds damaged objects.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::s3::Moto;
use common::{Server, create_topic, fetch, fetch_all, get, post_json, produce};
use serde_json::{Value, json};

const TIERED: [(&str, &str); 1] = [("STRATA_TIER_INTERVAL_MS", "200")];

/// `n` records of ~1 KiB: binary values, keys, headers and client timestamps `base_ts + n s`.
fn records(from: u64, n: u64, base_ts: i64) -> Value {
    let records: Vec<Value> = (from..from + n)
        .map(|i| {
            let value: Vec<u8> = (0..1000 + (i % 97) as usize).map(|j| (i as usize * 31 + j * 7) as u8).collect();
            json!({
                "key": format!("k{}", i % 7),
                "value_b64": B64.encode(value),
                "headers": {"seq": format!("{i}"), "kind": "test"},
                "timestamp": base_ts + i as i64 * 1000,
            })
        })
        .collect();
    json!({ "records": records })
}

fn partition_status(url: &str, topic: &str) -> Value {
    get(&format!("{url}/v1/topics/{topic}")).json()["partitions"][0].clone()
}

/// Waits until `check` holds for the partition's status (tiering runs every 200 ms).
fn wait_for(url: &str, topic: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = partition_status(url, topic);
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tiered_and_trimmed(s: &Value) -> bool {
    let tiered = s["tiered_end_offset"].as_u64().unwrap();
    tiered >= 900 && s["local_start_offset"].as_u64().unwrap() == tiered
}

fn strata(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_strata")).args(args).env("STRATA_SERVER", url).output().unwrap()
}

#[test]
fn tiered_segments_read_back_the_same_across_tiers_restarts_and_damage() {
    let dir = tempfile::tempdir().unwrap();
    // The raw batch stream below sends what is still local with `sendfile`.
    let s = Server::start_with_env(dir.path(), &[TIERED[0], ("STRATA_ZERO_COPY", "always")]);
    create_topic(&s.url, "audit", 1, json!({"tiering": true, "segment_bytes": 65536, "local_retention_bytes": 0}));
    let base_ts = common::now_ms() - 3_600_000;
    for chunk in 0..10 {
        produce(&s.url, "audit", records(chunk * 100, 100, base_ts));
    }
    let hot = fetch_all(&s.url, "audit", 0);
    assert_eq!(hot.len(), 1000);
    let status = wait_for(&s.url, "audit", "tiering and local retention", tiered_and_trimmed);
    assert_eq!(status["log_start_offset"], 0, "the cold tier starts at 0: {status}");

    // The same records from offset 0, now mostly from Parquet objects.
    let both = fetch_all(&s.url, "audit", 0);
    assert_eq!(both, hot, "every field of every record survives the trip through Parquet");
    // By timestamp and from earliest, across tiers.
    let at = fetch(&s.url, "audit", 0, &format!("timestamp={}&max_records=1", base_ts + 123_000));
    assert_eq!(at["records"][0]["offset"], 123);
    let earliest = fetch(&s.url, "audit", 0, "offset=earliest&max_records=1");
    assert_eq!(earliest["records"][0]["offset"], 0);
    // gRPC raw-batch fetch of cold data: the records come re-encoded as a batch.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let raw = runtime.block_on(async {
        let client = strata_client::Client::connect(&s.url).await.unwrap();
        client.fetch_batches("audit", 0, 5, 1 << 20, Duration::ZERO).await.unwrap()
    });
    let raw_offsets: Vec<u64> = raw.records.iter().map(|r| r.offset).collect();
    assert_eq!(raw_offsets.first(), Some(&5));
    assert!(raw_offsets.windows(2).all(|w| w[1] == w[0] + 1), "dense from the requested offset");
    let expected = B64.decode(hot[5]["value_b64"].as_str().unwrap()).unwrap();
    assert_eq!(raw.records[0].value.as_deref(), Some(&expected[..]));
    // The raw batch stream crosses from cold to hot in one response: every offset once, in order.
    let streamed = runtime.block_on(async {
        let client = strata_client::Client::connect(&s.url).await.unwrap();
        let mut reader =
            client.read_batches("audit", 0, strata_client::Start::Offset(5), 64 << 20, Duration::ZERO).await.unwrap();
        assert!(reader.is_zero_copy());
        let mut records = Vec::new();
        while let Some(batch) = reader.next_batch().await.unwrap() {
            records.extend(batch.records().unwrap().into_iter().filter(|r| r.offset >= 5));
        }
        assert_eq!(reader.next_offset(), 1000);
        records
    });
    assert_eq!(streamed.iter().map(|r| r.offset).collect::<Vec<_>>(), (5..1000).collect::<Vec<_>>());
    assert_eq!(streamed[0].value.as_deref(), Some(&expected[..]));
    // A consumer group reads everything from the earliest offset.
    let m = post_json(
        &format!("{}/v1/groups/replay/members", s.url),
        &json!({"topics": ["audit"], "auto_offset_reset": "earliest"}),
    )
    .json();
    let id = m["member_id"].as_str().unwrap();
    let mut offsets = Vec::new();
    while offsets.len() < 1000 {
        let page = get(&format!("{}/v1/groups/replay/members/{id}/records?max_records=500&wait_ms=1000", s.url)).json();
        let recs = page["records"].as_array().unwrap();
        assert!(!recs.is_empty(), "the group stopped at {} records", offsets.len());
        offsets.extend(recs.iter().map(|r| r["offset"].as_u64().unwrap()));
    }
    assert_eq!(offsets, (0..1000).collect::<Vec<_>>(), "no gap or duplicate crossing from cold to hot");
    // The CLI replays from an RFC 3339 time across tiers.
    let when = humantime_rfc3339(base_ts + 500_000);
    let out = strata(&s.url, &["consume", "audit", "--from", &when, "--max", "1", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["offset"], 500);

    // Objects are plain Parquet files in the local store.
    let objects_dir = dir.path().join("objects/topics/audit/0");
    let mut objects: Vec<_> = std::fs::read_dir(&objects_dir).unwrap().map(|e| e.unwrap().path()).collect();
    objects.sort();
    assert!(objects.len() >= 5, "{objects:?}");
    assert!(objects.iter().all(|p| p.extension().is_some_and(|e| e == "parquet")));

    // A restart keeps the manifest: the cold tier still reads. (No object cache from here on,
    // so the damage below is seen by reads too.)
    assert_eq!(s.terminate().code(), Some(0));
    let s = Server::start_with_env(dir.path(), &[TIERED[0], ("STRATA_TIER_CACHE_BYTES", "0")]);
    assert_eq!(fetch_all(&s.url, "audit", 0), hot);
    let clean = strata(&s.url, &["topic", "verify", "audit"]);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stdout));

    // Damage one object: verify names it and its offsets; reads of it fail naming it; the rest reads.
    let victim = &objects[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(victim, &bytes).unwrap();
    let key = victim.strip_prefix(dir.path().join("objects")).unwrap().to_string_lossy().to_string();
    let report = strata(&s.url, &["topic", "verify", "audit"]);
    assert!(!report.status.success());
    let text = String::from_utf8_lossy(&report.stdout).to_string();
    assert!(text.contains("DAMAGED") && text.contains(&key), "{text}");
    let (start, end) = parse_range(&key);
    let broken = get(&format!("{}/v1/topics/audit/partitions/0/records?offset={start}", s.url));
    assert_eq!(broken.status, 500);
    let problem = broken.json();
    assert_eq!(problem["code"], "data_corrupt");
    assert!(problem["detail"].as_str().unwrap().contains(&key), "{problem}");
    let before = fetch(&s.url, "audit", 0, &format!("offset={}&max_records=1", start - 1));
    assert_eq!(before["records"][0]["offset"], start - 1);
    let after = fetch(&s.url, "audit", 0, &format!("offset={end}&max_records=1"));
    assert_eq!(after["records"][0]["offset"], end);
    // SQL checks each object against the manifest before scanning it: the damaged one fails the
    // query naming it (rather than returning wrong rows), and queries that prune it away still run.
    let sql = |q: String| post_json(&format!("{}/v1/sql", s.url), &json!({ "sql": q }));
    let failed = sql("SELECT count(*) FROM audit".into());
    assert_eq!(failed.status, 500, "{}", String::from_utf8_lossy(&failed.body));
    let problem = failed.json();
    assert_eq!(problem["code"], "data_corrupt");
    assert!(problem["detail"].as_str().unwrap().contains(&key), "{problem}");
    let pruned = sql(format!("SELECT count(*) FROM audit WHERE \"offset\" >= {end}"));
    assert_eq!(pruned.status, 200, "{}", String::from_utf8_lossy(&pruned.body));
    assert_eq!(pruned.json()["rows"][0][0], hot.len() as u64 - end);
}

/// `topics/audit/0/<base>-<end>.parquet` → (base, end).
fn parse_range(key: &str) -> (u64, u64) {
    let name = key.rsplit('/').next().unwrap().trim_end_matches(".parquet");
    let (base, end) = name.split_once('-').unwrap();
    (base.parse().unwrap(), end.parse().unwrap())
}

fn humantime_rfc3339(ms: i64) -> String {
    let secs = ms / 1000;
    let time = std::time::UNIX_EPOCH + Duration::from_secs(secs as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[test]
fn a_crash_at_each_tiering_step_loses_and_doubles_nothing() {
    for step in ["converted", "uploaded", "committed"] {
        let dir = tempfile::tempdir().unwrap();
        let crashing = [("STRATA_TIER_INTERVAL_MS", "200"), ("STRATA_TIER_CRASH_AT", step)];
        let s = Server::start_with_env(dir.path(), &crashing);
        create_topic(&s.url, "t", 1, json!({"tiering": true, "segment_bytes": 65536, "local_retention_bytes": 0}));
        let base_ts = common::now_ms();
        // The first sealed segment triggers the crash; later produces may fail as it dies.
        for chunk in 0..10u64 {
            let body = serde_json::to_vec(&records(chunk * 100, 100, base_ts)).unwrap();
            match common::try_post(&format!("{}/v1/topics/t/records", s.url), &body) {
                Ok(r) if r.status == 200 => {}
                // The server aborted (or is aborting) at the crash point.
                _ => break,
            }
        }
        let status = s.wait_exit(Duration::from_secs(30));
        assert!(!status.success(), "{step}: the crash hook aborts");

        let s = Server::start_with_env(dir.path(), &TIERED);
        let produced = partition_status(&s.url, "t")["high_watermark"].as_u64().unwrap();
        assert!(produced >= 100, "{step}: {produced}");
        wait_for(&s.url, "t", "tiering after the crash", |st| {
            let tiered = st["tiered_end_offset"].as_u64().unwrap();
            tiered + 100 >= produced && st["local_start_offset"].as_u64().unwrap() == tiered
        });
        let all = fetch_all(&s.url, "t", 0);
        let offsets: Vec<u64> = all.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, (0..produced).collect::<Vec<_>>(), "{step}: dense, each record once");
        for r in &all {
            let i = r["offset"].as_u64().unwrap();
            assert_eq!(r["headers"]["seq"], format!("{i}"), "{step}: record {i} is the one produced");
        }
        // Only objects the manifest names remain in the store (an uncommitted upload is swept).
        let verify = get(&format!("{}/v1/topics/t/verify", s.url)).json();
        assert_eq!(verify["damage"].as_array().unwrap().len(), 0, "{step}: {verify}");
        let on_disk = std::fs::read_dir(dir.path().join("objects/topics/t/0")).unwrap().count() as u64;
        assert_eq!(on_disk, verify["objects_checked"].as_u64().unwrap(), "{step}: no orphaned object");
    }
}

#[test]
fn s3_outage_buffers_locally_then_catches_up() {
    let moto = Moto::start("strata-tier");
    let dir = tempfile::tempdir().unwrap();
    let mut env = moto.server_env();
    env.push(("STRATA_TIER_MAX_UNTIERED_BYTES", "600000".into()));
    // No cache: every cold read goes to the store.
    env.push(("STRATA_TIER_CACHE_BYTES", "0".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with_env(dir.path(), &env);
    create_topic(&s.url, "events", 1, json!({"tiering": true, "segment_bytes": 65536, "local_retention_bytes": 0}));
    let base_ts = common::now_ms();
    for chunk in 0..4 {
        produce(&s.url, "events", records(chunk * 100, 100, base_ts));
    }
    let tiered = wait_for(&s.url, "events", "tiering to S3", |st| st["tiered_end_offset"].as_u64().unwrap() >= 300);
    let keys = moto.keys("topics/events/0/");
    assert!(!keys.is_empty() && keys.iter().all(|k| k.ends_with(".parquet")), "{keys:?}");
    assert_eq!(fetch_all(&s.url, "events", 0).len(), 400);

    // The store stops answering: produce goes on (buffered locally) up to the bound, then 503.
    moto.pause();
    let mut refused = None;
    for chunk in 4..40 {
        let r = post_json(&format!("{}/v1/topics/events/records", s.url), &records(chunk * 100, 100, base_ts));
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = refused.expect("produce is refused once the untiered backlog passes the bound");
    assert!(refused.retry_after.is_some(), "503 carries Retry-After");
    assert!(String::from_utf8_lossy(&refused.body).contains("tier_max_untiered_bytes"));
    // Cold-only data is unavailable (503), not an error; the lag shows in /metrics.
    let cold = get(&format!("{}/v1/topics/events/partitions/0/records?offset=0", s.url));
    assert_eq!(cold.status, 503, "a cold read during the outage");
    assert!(cold.retry_after.is_some());
    let metrics = String::from_utf8(get(&format!("{}/metrics", s.url)).body).unwrap();
    let lag_line = metrics.lines().find(|l| l.starts_with("strata_tier_lag_bytes{")).unwrap().to_string();
    let lag: u64 = lag_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(lag > 0, "{lag_line}");

    // The store comes back: tiering catches up, produce and cold reads work again.
    moto.resume();
    let produced = partition_status(&s.url, "events")["high_watermark"].as_u64().unwrap();
    wait_for(&s.url, "events", "catching up", |st| {
        st["tiered_end_offset"].as_u64().unwrap() > tiered["tiered_end_offset"].as_u64().unwrap()
            && st["local_start_offset"] == st["tiered_end_offset"]
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post_json(&format!("{}/v1/topics/events/records", s.url), &records(produced, 10, base_ts));
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "produce still refused: {}", String::from_utf8_lossy(&r.body));
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = fetch_all(&s.url, "events", 0);
    let offsets: Vec<u64> = all.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (0..produced + 10).collect::<Vec<_>>());
    // Every object in the store is in the manifest (tiering may still be adding the last one).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let verify = get(&format!("{}/v1/topics/events/verify", s.url)).json();
        assert_eq!(verify["damage"].as_array().unwrap().len(), 0, "{verify}");
        let keys = moto.keys("topics/events/0/");
        if keys.len() as u64 == verify["objects_checked"].as_u64().unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "objects in the store but not in the manifest: {keys:?} vs {verify}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn retention_deletes_expired_objects_across_tiers() {
    let moto = Moto::start("strata-retention");
    let dir = tempfile::tempdir().unwrap();
    let env = moto.server_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with_env(dir.path(), &env);
    // One day of retention; the first 500 records are two days old.
    create_topic(
        &s.url,
        "logs",
        1,
        json!({"tiering": true, "segment_bytes": 65536, "local_retention_bytes": 0, "retention_ms": 86_400_000}),
    );
    let old = common::now_ms() - 2 * 86_400_000;
    for chunk in 0..5 {
        produce(&s.url, "logs", records(chunk * 100, 100, old));
    }
    let fresh = common::now_ms() - 500_000;
    for chunk in 5..10 {
        produce(&s.url, "logs", records(chunk * 100, 100, fresh - 500_000));
    }
    // Expired objects go from the manifest and the store; the log now starts past them.
    let status = wait_for(&s.url, "logs", "retention in the cold tier", |st| {
        st["log_start_offset"].as_u64().unwrap() >= 400 && st["tiered_end_offset"].as_u64().unwrap() >= 900
    });
    let start = status["log_start_offset"].as_u64().unwrap();
    assert!(start <= 500, "nothing younger than the retention is deleted: {status}");
    let gone = get(&format!("{}/v1/topics/logs/partitions/0/records?offset=0", s.url));
    assert_eq!(gone.status, 416, "{}", String::from_utf8_lossy(&gone.body));
    let all = fetch_all_from(&s.url, "logs", start);
    assert_eq!(all.first().unwrap()["offset"], start);
    assert_eq!(all.last().unwrap()["offset"], 999);
    for key in moto.keys("topics/logs/0/") {
        let (_, end) = parse_range(&key);
        assert!(end > start, "{key} should have been deleted (log starts at {start})");
    }
}

fn fetch_all_from(url: &str, topic: &str, mut offset: u64) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let page = fetch(url, topic, 0, &format!("offset={offset}&max_records=1000"));
        let records = page["records"].as_array().unwrap().clone();
        if records.is_empty() {
            return out;
        }
        offset = page["next_offset"].as_u64().unwrap();
        out.extend(records);
    }
}

#[test]
fn an_unreachable_store_stops_start_up_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("STRATA_OBJECT_STORE", "s3")
        .env("STRATA_S3_BUCKET", "nowhere")
        .env("STRATA_S3_ENDPOINT", format!("http://127.0.0.1:{closed}"))
        .env("STRATA_S3_PATH_STYLE", "true")
        .env("STRATA_S3_ACCESS_KEY_ID", "x")
        .env("STRATA_S3_SECRET_ACCESS_KEY", "y")
        .env("STRATA_OBJECT_STORE_TIMEOUT_MS", "500")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s3://nowhere") && err.contains("probe"), "{err}");
    // A bucket that does not exist on a live endpoint is named too.
    let moto = Moto::start("exists");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .envs(
            moto.server_env().into_iter().map(|(k, v)| (k, if k == "STRATA_S3_BUCKET" { "missing".into() } else { v })),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s3://missing") && err.to_lowercase().contains("bucket"), "{err}");
}

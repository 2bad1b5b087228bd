//! Pushdown tested by counting, not timing: a narrow timestamp range over 100 segments opens only
//! the segments (hot tier) and Parquet objects and row groups (cold tier) that overlap it, as
//! `EXPLAIN ANALYZE` reports; offset and partition filters are exact (no filter above the scan),
//! and every answer matches a full scan filtered the slow way.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_topic, get, post_json, produce};
use serde_json::{Value, json};

const SEGMENTS: i64 = 100;
const PER_SEGMENT: i64 = 30;
/// Each produce request's records are one minute apart from the previous request's.
const MINUTE: i64 = 60_000;

fn rows(url: &str, query: &str) -> Vec<Vec<Value>> {
    let r = post_json(&format!("{url}/v1/sql"), &json!({ "sql": query }));
    assert_eq!(r.status, 200, "{query}: {}", String::from_utf8_lossy(&r.body));
    r.json()["rows"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().clone()).collect()
}

fn count(url: &str, query: &str) -> u64 {
    rows(url, query)[0][0].as_u64().unwrap()
}

/// The physical plan `EXPLAIN ANALYZE` prints, with its metrics.
fn explain(url: &str, query: &str) -> String {
    rows(url, &format!("EXPLAIN ANALYZE {query}"))
        .iter()
        .map(|r| r.last().and_then(Value::as_str).unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sum of every `name=N` in a plan (a metric summed over the operators that report it).
fn metric(plan: &str, name: &str) -> u64 {
    let pattern = format!("{name}=");
    plan.match_indices(&pattern)
        .map(|(at, _)| {
            let digits: String = plan[at + pattern.len()..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().unwrap_or_else(|_| panic!("{name} is not a number in:\n{plan}"))
        })
        .sum()
}

/// Fills a one-partition topic with 100 segments (one produce request each, a segment holding one
/// request's batch), request `i` timestamped from `base + i` minutes.
fn fill(url: &str, topic: &str, base: i64) {
    let pad = "p".repeat(1300);
    for i in 0..SEGMENTS {
        let records: Vec<Value> = (0..PER_SEGMENT)
            .map(|j| json!({"partition": 0, "timestamp": base + i * MINUTE + j, "value": {"i": i, "j": j, "pad": pad}}))
            .collect();
        produce(url, topic, json!({ "records": records }));
    }
}

#[test]
fn narrow_ranges_open_only_what_overlaps_and_filters_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(dir.path(), &[("STRATA_TIER_INTERVAL_MS", "100")]);
    // Within the default retention (older records would be expired rather than tiered).
    let base = common::now_ms() - 3 * 3_600_000;
    // ~40 KiB per request against 64 KiB segments: every request rolls a new segment.
    create_topic(&s.url, "hot", 1, json!({"segment_bytes": 65536}));
    create_topic(&s.url, "cold", 1, json!({"segment_bytes": 65536, "tiering": true, "local_retention_bytes": 0}));
    fill(&s.url, "hot", base);
    fill(&s.url, "cold", base);
    // Tiering takes every sealed segment (all but the active one) to object storage.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = get(&format!("{}/v1/topics/cold", s.url)).json()["partitions"][0].clone();
        if p["tiered_end_offset"].as_i64().unwrap() >= (SEGMENTS - 1) * PER_SEGMENT
            && p["local_start_offset"] == p["tiered_end_offset"]
        {
            break;
        }
        assert!(Instant::now() < deadline, "tiering did not happen: {p}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let segments = get(&format!("{}/v1/topics/hot", s.url)).json()["partitions"][0]["segments"].clone();
    if let Some(n) = segments.as_u64() {
        assert!(n >= SEGMENTS as u64, "{n} segments");
    }

    // Two minutes out of a hundred: requests 50 and 51.
    let (from, to) = (base + 50 * MINUTE, base + 52 * MINUTE - 1);
    let range = format!("timestamp BETWEEN to_timestamp_millis({from}) AND to_timestamp_millis({to})");
    for topic in ["hot", "cold"] {
        let q = format!("SELECT count(*) FROM {topic} WHERE {range}");
        assert_eq!(count(&s.url, &q), 2 * PER_SEGMENT as u64, "{q}");
    }

    // Hot: 2 of the 100 segments read, the other 98 never opened.
    let plan = explain(&s.url, &format!("SELECT count(*) FROM hot WHERE {range}"));
    assert_eq!(metric(&plan, "segments_read"), 2, "{plan}");
    assert_eq!(metric(&plan, "segments_pruned"), SEGMENTS as u64 - 2, "{plan}");

    // Cold: the manifest leaves 2 of the 99 objects, statistics keep only their row groups.
    let plan = explain(&s.url, &format!("SELECT count(*) FROM cold WHERE {range}"));
    assert_eq!(plan.matches(".parquet").count(), 2, "two objects in the scan:\n{plan}");
    assert_eq!(metric(&plan, "files_opened"), 2, "{plan}");
    assert_eq!(metric(&plan, "segments_read"), 0, "the hot tail is outside the range:\n{plan}");
    let row_groups = row_groups_read(&plan);
    assert!((1..=2).contains(&row_groups), "{row_groups} row groups read:\n{plan}");

    // Exact pushdown: no filter above the scan for offset/partition/timestamp comparisons, and
    // the rows are exactly the ones asked for, in both tiers.
    for topic in ["hot", "cold"] {
        let q = format!(
            "SELECT \"offset\" FROM {topic} WHERE partition = 0 AND \"offset\" >= 1495 AND \"offset\" < 1505 AND {range} ORDER BY 1"
        );
        let plan = rows(&s.url, &format!("EXPLAIN {q}")).iter().map(|r| format!("{r:?}")).collect::<String>();
        assert!(!plan.contains("FilterExec"), "{topic}: the scan filters exactly:\n{plan}");
        let got: Vec<i64> = rows(&s.url, &q).iter().map(|r| r[0].as_i64().unwrap()).collect();
        assert_eq!(got, (1500..1505).collect::<Vec<_>>(), "{topic}");
        // The same through a filter the scan only prunes with (DataFusion filters again).
        let slow = format!(
            "SELECT \"offset\" FROM {topic} WHERE (\"offset\" + 0) >= 1495 AND (\"offset\" + 0) < 1505 AND \
             CAST(timestamp AS BIGINT) BETWEEN {from} AND {to} ORDER BY 1"
        );
        let slow: Vec<i64> = rows(&s.url, &slow).iter().map(|r| r[0].as_i64().unwrap()).collect();
        assert_eq!(got, slow, "{topic}");
    }
    // Empty and out-of-range bounds.
    for topic in ["hot", "cold"] {
        assert_eq!(count(&s.url, &format!("SELECT count(*) FROM {topic} WHERE \"offset\" < 0")), 0);
        assert_eq!(count(&s.url, &format!("SELECT count(*) FROM {topic} WHERE partition = 7")), 0);
        assert_eq!(count(&s.url, &format!("SELECT count(*) FROM {topic} WHERE \"offset\" > 10 AND \"offset\" < 5")), 0);
        assert_eq!(
            count(&s.url, &format!("SELECT count(*) FROM {topic}")),
            (SEGMENTS * PER_SEGMENT) as u64,
            "{topic}: every record once"
        );
    }
    // LIMIT with exact filters stops early and still answers right.
    let limited = rows(&s.url, "SELECT \"offset\" FROM hot WHERE \"offset\" >= 100 LIMIT 3");
    assert_eq!(limited.len(), 3);
    assert!(limited.iter().all(|r| r[0].as_i64().unwrap() >= 100));
}

/// Row groups the Parquet scan read: those its statistics did not prune.
fn row_groups_read(plan: &str) -> u64 {
    // DataFusion prints `row_groups_pruned_statistics=N total → M matched`.
    let key = "row_groups_pruned_statistics=";
    let at = plan.find(key).unwrap_or_else(|| panic!("no row group metrics in:\n{plan}"));
    let rest = &plan[at + key.len()..];
    let matched = rest.split("→").nth(1).unwrap_or_default().trim_start();
    matched.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or_else(|_| panic!("{plan}"))
}

//! SQL correctness against an independent engine: a dataset spanning both tiers (most of each
//! partition in Parquet objects, a hot tail on local disk) is read back through the fetch API,
//! exported to files DuckDB loads, and every query pair of `sql_duckdb_queries.txt` — filters on
//! partition, offset and timestamp, GROUP BY, HAVING, DISTINCT, joins across topics, window
//! functions, JSON extraction, time buckets, CTEs and subqueries, NULLs — must give the same rows
//! through `POST /v1/sql` as through DuckDB (`sql_duckdb.py` runs both and compares).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, create_topic, get, produce};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const ORDERS: u64 = 3000;
const EVENTS: u64 = 2500;
const HOUR_MS: i64 = 3_600_000;

fn produce_all(url: &str, topic: &str, records: Vec<Value>) {
    for chunk in records.chunks(250) {
        produce(url, topic, json!({ "records": chunk }));
    }
}

/// Orders `o0..o2999` over three partitions, timestamps about 7 s apart with up to 90 s of
/// jitter (so not in offset order), JSON values with nested objects, arrays, missing fields and
/// JSON nulls. Returns each order's timestamp.
fn orders(rng: &mut StdRng, base: i64) -> (Vec<Value>, Vec<i64>) {
    let pad = "o".repeat(120);
    let (mut records, mut times) = (Vec::new(), Vec::new());
    for n in 0..ORDERS {
        let ts = base + n as i64 * 7000 + rng.random_range(-90_000..90_000);
        let cents: i64 = rng.random_range(100..50_000);
        let mut user = json!({ "id": format!("u{}", rng.random_range(0..37)) });
        match rng.random_range(0..20) {
            0 => {}                             // no country
            1 => user["country"] = Value::Null, // a JSON null
            c => user["country"] = json!(["DE", "FR", "US", "NL", "PL"][c % 5]),
        }
        let items: Vec<Value> = (0..rng.random_range(0..4))
            .map(|_| json!({"sku": format!("sku-{}", rng.random_range(0..12)), "qty": rng.random_range(1..5)}))
            .collect();
        let status = ["new", "paid", "paid", "shipped", "cancelled"][rng.random_range(0..5)];
        let mut value = json!({
            "order": n, "user": user, "amount": cents as f64 / 100.0, "amount_cents": cents, "items": items,
            "status": status, "note": pad,
        });
        match n % 5 {
            0 => value["coupon"] = json!(format!("SAVE{}", n % 7)),
            1 => value["coupon"] = Value::Null,
            _ => {}
        }
        records.push(json!({"key": format!("o{n}"), "partition": n % 3, "timestamp": ts, "value": value}));
        times.push(ts);
    }
    (records, times)
}

/// Payments keyed by order key (partitioned by the server): about 60 % of orders, some paid twice
/// after a failed attempt, and a few for orders that do not exist.
fn payments(rng: &mut StdRng, order_times: &[i64]) -> Vec<Value> {
    let pad = "p".repeat(150);
    let mut out = Vec::new();
    for (n, &ts) in order_times.iter().enumerate() {
        if rng.random_range(0..10) >= 6 {
            continue;
        }
        let cents: i64 = rng.random_range(100..50_000);
        let method = ["card", "paypal", "invoice"][rng.random_range(0..3)];
        let delay = rng.random_range(1_000..900_000);
        let retried = rng.random_range(0..10) == 0;
        let attempts: &[bool] = if retried { &[false, true] } else { &[true] };
        for (i, &ok) in attempts.iter().enumerate() {
            out.push(json!({"key": format!("o{n}"), "timestamp": ts + delay + i as i64 * 60_000,
                "value": {"order": n, "method": method, "paid_cents": cents, "ok": ok, "note": pad}}));
        }
    }
    for i in 0..5 {
        let ts = order_times[i * 100] + 5_000;
        out.push(json!({"key": format!("x{i}"), "timestamp": ts,
            "value": {"order": null, "method": "card", "paid_cents": 100, "ok": true, "note": pad}}));
    }
    out
}

/// Web events in one partition: sessions `s0..s149`, one in ten without a key.
fn events(rng: &mut StdRng, base: i64) -> Vec<Value> {
    let pad = "e".repeat(120);
    (0..EVENTS)
        .map(|i| {
            let ts = base + i as i64 * 8000 + rng.random_range(-30_000..30_000);
            let kind = ["view", "view", "view", "click", "click", "purchase"][rng.random_range(0..6)];
            let value = json!({"type": kind, "page": format!("/p/{}", rng.random_range(0..40)),
                "ms": rng.random_range(5..5000), "mobile": rng.random_bool(0.4), "pad": pad});
            if rng.random_range(0..10) == 0 {
                json!({"timestamp": ts, "value": value})
            } else {
                json!({"key": format!("s{}", rng.random_range(0..150)), "timestamp": ts, "value": value})
            }
        })
        .collect()
}

/// One partition's place between the tiers: topic, partition, tiered end offset (exclusive), local
/// start offset, high watermark.
type Split = (String, u64, u64, u64, u64);

/// Waits until every partition of `topics` holds records in both tiers and tiering has come to
/// rest (the split unchanged for a second, five tier intervals: only active segments are left
/// locally), so every query sees the same split; returns the record counts per topic.
fn wait_until_tiered(url: &str, topics: &[&str]) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stable_since: Option<(Instant, Vec<Split>)> = None;
    loop {
        let mut split: Vec<Split> = Vec::new();
        for t in topics {
            let parts = get(&format!("{url}/v1/topics/{t}")).json()["partitions"].clone();
            for p in parts.as_array().unwrap() {
                let offset = |name: &str| p[name].as_u64().unwrap();
                split.push((
                    t.to_string(),
                    offset("partition"),
                    offset("tiered_end_offset"),
                    offset("local_start_offset"),
                    offset("high_watermark"),
                ));
            }
        }
        // Some records cold, the rest hot, and nothing tiered still kept locally.
        let both = split.iter().all(|&(_, _, cold, local, hw)| cold > 0 && local == cold && cold < hw);
        match &stable_since {
            Some((since, seen)) if both && *seen == split => {
                if since.elapsed() >= Duration::from_secs(1) {
                    for (t, p, cold, _, hw) in &split {
                        println!("{t}/{p}: offsets 0..{cold} cold, {cold}..{hw} hot");
                    }
                    return topics.iter().map(|t| split.iter().filter(|s| s.0 == *t).map(|s| s.4).sum()).collect();
                }
            }
            _ => stable_since = both.then(|| (Instant::now(), split.clone())),
        }
        assert!(
            Instant::now() < deadline,
            "not split between the tiers in time (topic, partition, tiered end, local start, high watermark): {split:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn strata_sql_matches_duckdb_over_both_tiers() {
    let python =
        common::test_python().expect("no test venv with duckdb: run ./scripts/setup-test-tools (./scripts/test does)");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(dir.path(), &[("STRATA_TIER_INTERVAL_MS", "200")]);
    let tiered = json!({"tiering": true, "segment_bytes": 65536, "local_retention_bytes": 0});
    let topics = ["orders", "payments", "web-events"];
    for (t, partitions) in topics.iter().zip([3, 2, 1]) {
        create_topic(&s.url, t, partitions, tiered.clone());
    }

    // Six hours of history ending two hours ago, starting on a whole hour.
    let base = (common::now_ms() - 8 * HOUR_MS) / HOUR_MS * HOUR_MS;
    let mut rng = StdRng::seed_from_u64(6);
    let (order_records, order_times) = orders(&mut rng, base);
    let payment_records = payments(&mut rng, &order_times);
    let event_records = events(&mut rng, base);
    let produced = [order_records.len() as u64, payment_records.len() as u64, event_records.len() as u64];
    produce_all(&s.url, "orders", order_records);
    produce_all(&s.url, "payments", payment_records);
    produce_all(&s.url, "web-events", event_records);

    assert_eq!(wait_until_tiered(&s.url, &topics), produced, "every produced record is there");

    let work = tempfile::tempdir().unwrap();
    let script = common::package_file("tests/sql_duckdb.py");
    let queries = common::package_file("tests/sql_duckdb_queries.txt");
    let out = Command::new(python)
        .arg(script)
        .arg(&s.url)
        .arg(&queries)
        .arg(work.path())
        .arg(base.to_string())
        .args(topics)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(out.status.success(), "Strata and DuckDB disagree (or the script failed):\n{stdout}\n{stderr}");
    for (t, n) in topics.iter().zip(produced) {
        assert!(stdout.contains(&format!("exported {t}: {n} records\n")), "{t}: {stdout}");
    }
    let summary = stdout.lines().find_map(|l| l.strip_prefix("duckdb comparison: ")).expect("a summary line");
    let numbers: Vec<usize> = summary.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert!(numbers.len() == 2 && numbers[0] == numbers[1], "{summary}");
    assert!(numbers[0] >= 25, "only {} queries compared", numbers[0]);
}

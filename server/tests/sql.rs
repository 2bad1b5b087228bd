//! SQL over topics against a real server: one table across the hot and cold tiers, joins,
//! aggregates, window functions, time buckets, the catalog, output formats, the CLI, and every
//! kind of bad query getting `sql_error`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_topic, get, post_json, produce};
use serde_json::{Value, json};

fn sql(url: &str, query: &str) -> Value {
    let r = post_json(&format!("{url}/v1/sql"), &json!({ "sql": query }));
    assert_eq!(r.status, 200, "{query}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn rows(url: &str, query: &str) -> Vec<Vec<Value>> {
    sql(url, query)["rows"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().clone()).collect()
}

fn scalar(url: &str, query: &str) -> Value {
    rows(url, query)[0][0].clone()
}

#[test]
fn one_table_across_tiers_with_joins_aggregates_windows_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(dir.path(), &[("STRATA_TIER_INTERVAL_MS", "200")]);
    create_topic(&s.url, "orders", 2, json!({"tiering": true, "segment_bytes": 65536, "local_retention_bytes": 0}));
    create_topic(&s.url, "payments", 2, json!({}));
    create_topic(&s.url, "web-events", 1, json!({}));
    let base = common::now_ms() - 3_600_000;
    // 1,200 orders (~1 KiB each, so most of them end up in Parquet), keys o0..o1199.
    let pad = "x".repeat(1000);
    for chunk in 0..12 {
        let records: Vec<Value> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                json!({"key": format!("o{n}"), "partition": n % 2, "timestamp": base + n * 1000,
                       "value": {"order": n, "amount": n % 50, "pad": pad}})
            })
            .collect();
        produce(&s.url, "orders", json!({ "records": records }));
    }
    // Payments for every third order.
    let payments: Vec<Value> = (0..1200)
        .step_by(3)
        .map(|n| json!({"key": format!("o{n}"), "partition": n % 2, "value": {"paid": n}}))
        .collect();
    produce(&s.url, "payments", json!({ "records": payments }));
    produce(&s.url, "web-events", json!({"records": [{"value": "a"}, {"value": "b"}]}));

    // Wait until both partitions of `orders` are mostly in object storage.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let parts = get(&format!("{}/v1/topics/orders", s.url)).json()["partitions"].clone();
        let tiered = parts.as_array().unwrap().iter().all(|p| {
            p["tiered_end_offset"].as_u64().unwrap() >= 400 && p["local_start_offset"] == p["tiered_end_offset"]
        });
        if tiered {
            break;
        }
        assert!(Instant::now() < deadline, "tiering did not happen: {parts}");
        std::thread::sleep(Duration::from_millis(100));
    }

    assert_eq!(scalar(&s.url, "SELECT count(*) FROM orders"), 1200, "every record, hot and cold, once");
    assert_eq!(
        rows(
            &s.url,
            "SELECT partition, count(*), min(\"offset\"), max(\"offset\") FROM orders GROUP BY partition ORDER BY partition"
        ),
        vec![vec![json!(0), json!(600), json!(0), json!(599)], vec![json!(1), json!(600), json!(0), json!(599)]]
    );
    let range =
        rows(&s.url, "SELECT \"offset\" FROM orders WHERE partition = 0 AND \"offset\" BETWEEN 10 AND 14 ORDER BY 1");
    assert_eq!(range, (10..15).map(|o| vec![json!(o)]).collect::<Vec<_>>());
    // The last records are still hot; a range across the boundary reads both tiers.
    let total: u64 = rows(&s.url, "SELECT count(*) FROM orders WHERE \"offset\" >= 500")[0][0].as_u64().unwrap();
    assert_eq!(total, 200);
    // Values as text, JSON inside.
    let text = scalar(&s.url, "SELECT CAST(value AS VARCHAR) FROM orders WHERE partition = 1 AND \"offset\" = 3");
    let order: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
    assert_eq!(order["order"], 7);
    // HTTP keys are JSON values stored as their JSON text.
    assert_eq!(
        scalar(&s.url, "SELECT CAST(key AS VARCHAR) FROM orders WHERE partition = 1 AND \"offset\" = 3"),
        "\"o7\""
    );
    // Timestamps are timestamps: a range and time buckets.
    let since = base + 600_000;
    assert_eq!(
        scalar(&s.url, &format!("SELECT count(*) FROM orders WHERE timestamp >= to_timestamp_millis({since})")),
        600
    );
    let buckets = rows(
        &s.url,
        "SELECT date_bin(INTERVAL '10 minutes', timestamp) AS b, count(*) AS n FROM orders GROUP BY b ORDER BY b",
    );
    assert_eq!(buckets.iter().map(|r| r[1].as_u64().unwrap()).sum::<u64>(), 1200);
    assert!(buckets.len() >= 2);
    // A join across topics on the key.
    assert_eq!(scalar(&s.url, "SELECT count(*) FROM orders o JOIN payments p ON o.key = p.key"), 400);
    // A window function.
    let ranked = rows(
        &s.url,
        "SELECT \"offset\", row_number() OVER (PARTITION BY partition ORDER BY \"offset\") AS rn FROM orders WHERE partition = 0 ORDER BY \"offset\" LIMIT 3",
    );
    assert_eq!(ranked, vec![vec![json!(0), json!(1)], vec![json!(1), json!(2)], vec![json!(2), json!(3)]]);
    // The catalog, and a name that is not an identifier.
    let tables: Vec<String> = rows(&s.url, "SHOW TABLES").iter().map(|r| r[2].as_str().unwrap().to_string()).collect();
    for t in ["orders", "payments", "web-events"] {
        assert!(tables.contains(&t.to_string()), "{tables:?}");
    }
    assert_eq!(scalar(&s.url, "SELECT count(*) FROM \"web-events\""), 2);
    let columns = rows(&s.url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders'");
    assert!(columns.iter().any(|c| c[0] == "timestamp") && columns.iter().any(|c| c[0] == "headers"), "{columns:?}");
    let described = sql(&s.url, "SELECT partition, \"offset\" FROM orders LIMIT 0");
    assert_eq!(described["columns"][0]["name"], "partition");
    assert_eq!(described["rows"], json!([]));

    // Formats.
    let csv = post_json(
        &format!("{}/v1/sql", s.url),
        &json!({"sql": "SELECT partition, count(*) AS n FROM orders GROUP BY partition ORDER BY partition", "format": "csv"}),
    );
    assert_eq!((csv.status, csv.content_type.as_str()), (200, "text/csv"));
    assert_eq!(String::from_utf8(csv.body).unwrap(), "partition,n\n0,600\n1,600\n");
    let arrow = post_json(&format!("{}/v1/sql", s.url), &json!({"sql": "SELECT * FROM orders", "format": "arrow"}));
    assert_eq!((arrow.status, arrow.content_type.as_str()), (200, "application/vnd.apache.arrow.stream"));
    assert_eq!(&arrow.body[..4], &[0xff, 0xff, 0xff, 0xff], "an Arrow IPC stream");
    assert!(arrow.body.len() > 1_000_000, "all 1,200 records");

    // Bad queries: sql_error (400) with DataFusion's message; nothing changes.
    for bad in [
        "SELEC 1",
        "SELECT * FROM nope",
        "SELECT nope FROM orders",
        "SELECT 'a' + 1 FROM orders",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO orders SELECT * FROM orders",
        "DROP TABLE orders",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let r = post_json(&format!("{}/v1/sql", s.url), &json!({ "sql": bad }));
        assert_eq!(r.status, 400, "{bad}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["code"], "sql_error", "{bad}");
    }
    let bad_format = post_json(&format!("{}/v1/sql", s.url), &json!({"sql": "SELECT 1", "format": "xml"}));
    assert_eq!(bad_format.status, 400);
    assert_eq!(scalar(&s.url, "SELECT count(*) FROM orders"), 1200);

    // The CLI prints an aligned table.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["sql", "SELECT partition, count(*) AS n FROM orders GROUP BY partition ORDER BY partition"])
        .env("STRATA_SERVER", &s.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "partition | n\n----------+----\n0         | 600\n1         | 600\n"
    );
    let failed = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["sql", "SELECT * FROM nope"])
        .env("STRATA_SERVER", &s.url)
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("nope"));
}

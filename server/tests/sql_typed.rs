//! SQL over a topic bound to an Avro subject, against a real server: the schema's fields are typed
//! columns (nested records as structs), each record resolved against its own writer schema, so
//! records written with v1 and v2 of an evolving schema query side by side — v1 rows with v2's
//! added field at its default — across the cold (Parquet) and hot tiers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Server, create_topic, get, post_json, produce};
use serde_json::{Value, json};

const V1: &str = r#"{"type":"record","name":"User","namespace":"shop","fields":[
    {"name":"id","type":"long"},
    {"name":"name","type":"string"},
    {"name":"key","type":"string","default":"k"},
    {"name":"signup","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"address","type":{"type":"record","name":"Address","fields":[
        {"name":"city","type":"string"},{"name":"zip","type":["null","string"],"default":null}]}}]}"#;

/// v1 plus `tier` with a default: BACKWARD compatible, so old records read with it.
const V2: &str = r#"{"type":"record","name":"User","namespace":"shop","fields":[
    {"name":"id","type":"long"},
    {"name":"name","type":"string"},
    {"name":"key","type":"string","default":"k"},
    {"name":"signup","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"address","type":{"type":"record","name":"Address","fields":[
        {"name":"city","type":"string"},{"name":"zip","type":["null","string"],"default":null}]}},
    {"name":"tier","type":"string","default":"basic"}]}"#;

const CITIES: [&str; 3] = ["Paris", "Oslo", "Lima"];
const V1_JSON: u64 = 600;
const V1_FRAMED: u64 = 4;
const V2_JSON: u64 = 600;
const V2_HOT: u64 = 5;

fn sql(url: &str, query: &str) -> Value {
    let r = post_json(&format!("{url}/v1/sql"), &json!({ "sql": query }));
    assert_eq!(r.status, 200, "{query}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn rows(url: &str, query: &str) -> Vec<Vec<Value>> {
    sql(url, query)["rows"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().clone()).collect()
}

fn register(url: &str, subject: &str, schema: &str) -> u32 {
    let r = post_json(&format!("{url}/registry/subjects/{subject}/versions"), &json!({ "schema": schema }));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_u64().unwrap() as u32
}

/// A v1 user as JSON (the server encodes it to Avro).
fn user(id: u64, pad: &str) -> Value {
    json!({"id": id, "name": format!("user-{id}-{pad}"), "signup": 1_700_000_000_000u64 + id,
           "address": {"city": CITIES[(id % 3) as usize], "zip": if id.is_multiple_of(2) { json!(format!("{id:05}")) } else { json!(null) }}})
}

fn zigzag(n: i64, out: &mut Vec<u8>) {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn avro_string(s: &str, out: &mut Vec<u8>) {
    zigzag(s.len() as i64, out);
    out.extend_from_slice(s.as_bytes());
}

/// A v1 user already in the wire framing (magic 0, schema id, Avro body), as a client library
/// would produce it.
fn framed_v1(schema_id: u32, id: i64) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&schema_id.to_be_bytes());
    zigzag(id, &mut out);
    avro_string(&format!("framed-{id}"), &mut out);
    avro_string("custom-key", &mut out);
    zigzag(1_800_000_000_000, &mut out);
    avro_string("Kyiv", &mut out);
    zigzag(1, &mut out); // union branch 1: string
    avro_string("01001", &mut out);
    out
}

#[test]
fn evolved_schema_reads_old_and_new_records_as_typed_columns_across_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(dir.path(), &[("STRATA_TIER_INTERVAL_MS", "200")]);
    let v1 = register(&s.url, "users-value", V1);
    let config = json!({"value_schema_subject": "users-value", "tiering": true, "segment_bytes": 65536,
                        "local_retention_bytes": 0});
    create_topic(&s.url, "users", 1, config);
    create_topic(&s.url, "plain", 1, json!({}));

    // v1: JSON records (~300 bytes each, so segments roll and get tiered), then framed ones.
    let pad = "x".repeat(250);
    for chunk in 0..V1_JSON / 100 {
        let records: Vec<Value> = (chunk * 100..(chunk + 1) * 100).map(|id| json!({"value": user(id, &pad)})).collect();
        produce(&s.url, "users", json!({ "records": records }));
    }
    let framed: Vec<Value> =
        (V1_JSON..V1_JSON + V1_FRAMED).map(|id| json!({"value_b64": B64.encode(framed_v1(v1, id as i64))})).collect();
    produce(&s.url, "users", json!({ "records": framed }));

    // v2 adds `tier` (default "basic"); new records carry their own.
    let v2 = register(&s.url, "users-value", V2);
    assert_ne!(v1, v2);
    let first_v2 = V1_JSON + V1_FRAMED;
    let v2_user = |id: u64| {
        let mut u = user(id, &pad);
        u["tier"] = json!(if id.is_multiple_of(2) { "gold" } else { "silver" });
        json!({ "value": u })
    };
    for chunk in 0..V2_JSON / 100 {
        let records: Vec<Value> = (first_v2 + chunk * 100..first_v2 + (chunk + 1) * 100).map(&v2_user).collect();
        produce(&s.url, "users", json!({ "records": records }));
    }

    // Wait until the v1 records and some v2 ones are in Parquet, then add a few hot v2 records.
    let deadline = Instant::now() + Duration::from_secs(60);
    let tiered_end = loop {
        let p = get(&format!("{}/v1/topics/users", s.url)).json()["partitions"][0].clone();
        let tiered = p["tiered_end_offset"].as_u64().unwrap();
        if tiered >= first_v2 + 100 && p["local_start_offset"] == p["tiered_end_offset"] {
            break tiered;
        }
        assert!(Instant::now() < deadline, "tiering did not happen: {p}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let hot_start = first_v2 + V2_JSON;
    let hot: Vec<Value> = (hot_start..hot_start + V2_HOT).map(&v2_user).collect();
    produce(&s.url, "users", json!({ "records": hot }));
    let total = hot_start + V2_HOT;
    assert!(tiered_end < total, "some records stay hot");

    // Every record once, typed, in offset order: v1 rows with the default, v2 rows with theirs.
    let all = rows(
        &s.url,
        "SELECT \"offset\", id, name, address['city'], address['zip'], tier, value_key, signup FROM users ORDER BY \"offset\"",
    );
    assert_eq!(all.len() as u64, total);
    for (offset, row) in all.iter().enumerate() {
        let id = offset as u64;
        assert_eq!(row[0], json!(offset), "{row:?}");
        assert_eq!(row[1], json!(id), "{row:?}");
        let framed = (V1_JSON..first_v2).contains(&id);
        let (name, city, zip, key) = if framed {
            (format!("framed-{id}"), "Kyiv".to_string(), json!("01001"), "custom-key")
        } else {
            let zip = if id.is_multiple_of(2) { json!(format!("{id:05}")) } else { json!(null) };
            (format!("user-{id}-{pad}"), CITIES[(id % 3) as usize].to_string(), zip, "k")
        };
        assert_eq!(row[2], json!(name), "offset {offset}");
        assert_eq!((&row[3], &row[4]), (&json!(city), &zip), "offset {offset}");
        let tier = match id {
            _ if id < first_v2 => "basic", // written with v1: the default
            _ if id.is_multiple_of(2) => "gold",
            _ => "silver",
        };
        assert_eq!(row[5], json!(tier), "offset {offset}");
        // A field named like a table column (`key`) is `value_key`; `key` is still the record key.
        assert_eq!(row[6], json!(key), "offset {offset}");
        assert!(row[7].as_str().is_some_and(|t| t.starts_with("20")), "a timestamp: {row:?}");
    }

    // Struct access by dot, too; filters and GROUP BY on typed columns, over both tiers.
    let counts = rows(&s.url, "SELECT tier, count(*) FROM users GROUP BY tier ORDER BY tier");
    let v1_rows = first_v2;
    let gold = (first_v2..total).filter(|id| id.is_multiple_of(2)).count() as u64;
    assert_eq!(
        counts,
        vec![
            vec![json!("basic"), json!(v1_rows)],
            vec![json!("gold"), json!(gold)],
            vec![json!("silver"), json!(total - v1_rows - gold)],
        ]
    );
    let paris = (0..total).filter(|id| !(V1_JSON..first_v2).contains(id) && id % 3 == 0).count() as u64;
    assert_eq!(rows(&s.url, "SELECT count(*) FROM users WHERE address.city = 'Paris'"), vec![vec![json!(paris)]]);
    assert_eq!(
        rows(&s.url, "SELECT count(*) FROM users WHERE tier = 'basic' AND \"offset\" < 100"),
        vec![vec![json!(100)]],
        "cold v1 rows decode"
    );
    assert_eq!(
        rows(&s.url, &format!("SELECT id, tier FROM users WHERE \"offset\" >= {hot_start} ORDER BY id LIMIT 2")),
        vec![vec![json!(hot_start), json!("gold")], vec![json!(hot_start + 1), json!("silver")]],
        "hot v2 rows decode"
    );
    let threes: Vec<u64> = (first_v2..total).filter(|id| id % 10 == 3).collect();
    let (max, min) = (threes.iter().max().unwrap(), threes.iter().min().unwrap());
    let found = rows(&s.url, "SELECT max(id), min(signup) FROM users WHERE id % 10 = 3 AND tier <> 'basic'");
    assert_eq!(found[0][0], json!(max));
    let earliest = found[0][1].as_str().unwrap();
    // signup = 1_700_000_000_000 ms (2023-11-14T22:13:20Z) + id, and min < 1000.
    assert!(earliest.starts_with(&format!("2023-11-14T22:13:20.{min:03}")), "{earliest}");
    // Typed columns are computed from the stored value, which stays readable as it is.
    let raw = rows(&s.url, "SELECT value FROM users WHERE \"offset\" = 0");
    assert!(raw[0][0].as_str().is_some(), "{raw:?}");

    // The catalog shows the typed columns with their Arrow types, after the stored ones.
    let described: Vec<(String, String)> = rows(&s.url, "DESCRIBE users")
        .into_iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_str().unwrap().to_string()))
        .collect();
    let typed: Vec<(&str, &str)> =
        described.iter().skip_while(|(name, _)| name != "id").map(|(n, t)| (n.as_str(), t.as_str())).collect();
    assert_eq!(typed.len(), 6, "{described:?}");
    assert_eq!(typed[0], ("id", "Int64"));
    assert_eq!(typed[1], ("name", "Utf8"));
    assert_eq!(typed[2], ("value_key", "Utf8"));
    assert!(typed[3].0 == "signup" && typed[3].1.starts_with("Timestamp(ms"), "{typed:?}");
    assert!(typed[4].0 == "address" && typed[4].1.starts_with("Struct("), "{typed:?}");
    assert!(typed[4].1.contains("city") && typed[4].1.contains("zip"), "{typed:?}");
    assert_eq!(typed[5], ("tier", "Utf8"));
    assert!(described.iter().any(|(n, t)| n == "key" && t == "Binary"), "{described:?}");

    // A topic bound to no subject has no typed columns.
    let plain: Vec<String> =
        rows(&s.url, "DESCRIBE plain").into_iter().map(|r| r[0].as_str().unwrap().to_string()).collect();
    let stored: Vec<String> = described.iter().take_while(|(name, _)| name != "id").map(|(n, _)| n.clone()).collect();
    assert_eq!(plain, stored);
    let r = post_json(&format!("{}/v1/sql", s.url), &json!({"sql": "SELECT tier FROM plain"}));
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("sql_error")));
}

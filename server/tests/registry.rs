//! The schema registry against a real `strata serve` process: the REST API under `/registry`
//! (bodies and error codes registry clients expect), compatibility modes, soft and hard deletes
//! surviving a restart, validated produce (JSON encoded to Avro, framed Avro checked, mismatches
//! refused whole), fetch `?decode=true`, the CLI, and a third-party client (Python
//! `confluent-kafka`'s `SchemaRegistryClient` and `AvroSerializer`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Server, create_topic, fetch, get, post_json, produce, request};
use serde_json::{Value, json};

const V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"long"},{"name":"total","type":"double"}]}"#;
const V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"long"},{"name":"total","type":"double"},{"name":"currency","type":"string","default":"EUR"}]}"#;
const V3_BAD: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"long"},{"name":"total","type":"double"},{"name":"customer","type":"string"}]}"#;

fn reg(s: &Server, path: &str) -> String {
    format!("{}/registry{path}", s.url)
}

fn register(s: &Server, subject: &str, schema: &str) -> common::Reply {
    post_json(&reg(s, &format!("/subjects/{subject}/versions")), &json!({"schema": schema}))
}

fn error_code(r: &common::Reply) -> u64 {
    r.json()["error_code"].as_u64().unwrap_or_else(|| panic!("no error_code in {}", String::from_utf8_lossy(&r.body)))
}

#[test]
fn subjects_versions_ids_configs_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());

    let r = register(&s, "orders-value", V1);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.content_type.starts_with("application/vnd.schemaregistry.v1+json"), "{}", r.content_type);
    let id1 = r.json()["id"].as_u64().unwrap();
    // The same schema again (whitespace and key order differ): the same id, no new version.
    let respaced = serde_json::to_string_pretty(&serde_json::from_str::<Value>(V1).unwrap()).unwrap();
    assert_eq!(register(&s, "orders-value", &respaced).json()["id"].as_u64().unwrap(), id1);
    // The same schema under another subject shares the global id.
    assert_eq!(register(&s, "other", V1).json()["id"].as_u64().unwrap(), id1);

    // BACKWARD (the default): a mandatory field without a default is refused, naming it.
    let bad = register(&s, "orders-value", V3_BAD);
    assert_eq!((bad.status, error_code(&bad)), (409, 409));
    let message = bad.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("customer") && message.contains("READER_FIELD_MISSING_DEFAULT_VALUE"), "{message}");
    let r = register(&s, "orders-value", V2);
    assert_eq!(r.status, 200);
    let id2 = r.json()["id"].as_u64().unwrap();
    assert_ne!(id1, id2);

    assert_eq!(get(&reg(&s, "/subjects")).json(), json!(["orders-value", "other"]));
    assert_eq!(get(&reg(&s, "/subjects/orders-value/versions")).json(), json!([1, 2]));
    let latest = get(&reg(&s, "/subjects/orders-value/versions/latest")).json();
    assert_eq!((latest["version"].as_u64(), latest["id"].as_u64()), (Some(2), Some(id2)));
    assert_eq!(latest["subject"], "orders-value");
    let v1 = get(&reg(&s, "/subjects/orders-value/versions/1/schema")).json();
    assert_eq!(v1["fields"][1]["name"], "total");
    let by_id = get(&reg(&s, &format!("/schemas/ids/{id2}"))).json();
    assert!(by_id["schema"].as_str().unwrap().contains("currency"));
    let found = post_json(&reg(&s, "/subjects/orders-value"), &json!({"schema": V2})).json();
    assert_eq!((found["version"].as_u64(), found["id"].as_u64()), (Some(2), Some(id2)));

    // Compatibility tests, verbose messages naming the field.
    let url = reg(&s, "/compatibility/subjects/orders-value/versions/latest?verbose=true");
    let c = post_json(&url, &json!({"schema": V3_BAD})).json();
    assert_eq!(c["is_compatible"], false);
    assert!(c["messages"][0].as_str().unwrap().contains("customer"), "{c}");
    let c = post_json(&reg(&s, "/compatibility/subjects/orders-value/versions/1"), &json!({"schema": V2})).json();
    assert_eq!(c, json!({"is_compatible": true}));

    // Configs: global default BACKWARD, per subject, 40408 when a subject has none.
    assert_eq!(get(&reg(&s, "/config")).json(), json!({"compatibilityLevel": "BACKWARD"}));
    let none = get(&reg(&s, "/config/orders-value"));
    assert_eq!((none.status, error_code(&none)), (404, 40408));
    let set = request("PUT", &reg(&s, "/config/orders-value"), &json!({"compatibility": "NONE"}));
    assert_eq!(set.json(), json!({"compatibility": "NONE"}));
    assert_eq!(register(&s, "orders-value", V3_BAD).status, 200, "NONE accepts anything");
    let bad_level = request("PUT", &reg(&s, "/config"), &json!({"compatibility": "SIDEWAYS"}));
    assert_eq!((bad_level.status, error_code(&bad_level)), (422, 42203));
    assert_eq!(request("DELETE", &reg(&s, "/config/orders-value"), &json!({})).status, 200);
    assert_eq!(get(&reg(&s, "/config/orders-value?defaultToGlobal=true")).json()["compatibilityLevel"], "BACKWARD");

    // Bad input: registry error codes, nothing stored changes.
    for (schema, why) in [
        ("{not json", "JSON"),
        (r#"{"type":"record","name":"R","fields":[{"name":"a","type":"nosuchtype"}]}"#, "nosuchtype"),
        (r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":"x"}]}"#, "default"),
        (
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":["string","null"],"default":null}]}"#,
            "first branch",
        ),
    ] {
        let r = register(&s, "orders-value", schema);
        assert_eq!((r.status, error_code(&r)), (422, 42201), "{schema}");
        assert!(r.json()["message"].as_str().unwrap().contains(why), "{schema}: {}", r.json());
    }
    for (path, status, code) in [
        ("/subjects/nope/versions", 404, 40401),
        ("/subjects/orders-value/versions/99", 404, 40402),
        ("/subjects/orders-value/versions/zero", 422, 42202),
        ("/schemas/ids/9999", 404, 40403),
    ] {
        let r = get(&reg(&s, path));
        assert_eq!((r.status, error_code(&r)), (status, code), "{path}");
    }
    let miss = post_json(&reg(&s, "/subjects/orders-value"), &json!({"schema": r#""string""#}));
    assert_eq!(error_code(&miss), 40403);
    assert_eq!(get(&reg(&s, "/subjects/orders-value/versions")).json(), json!([1, 2, 3]));

    // Soft delete, then permanent; hard delete needs the soft one first.
    let hard = request("DELETE", &reg(&s, "/subjects/orders-value/versions/3?permanent=true"), &json!({}));
    assert_eq!(error_code(&hard), 40407);
    assert_eq!(request("DELETE", &reg(&s, "/subjects/orders-value/versions/3"), &json!({})).json(), json!(3));
    assert_eq!(get(&reg(&s, "/subjects/orders-value/versions")).json(), json!([1, 2]));
    assert_eq!(get(&reg(&s, "/subjects/orders-value/versions?deleted=true")).json(), json!([1, 2, 3]));
    assert_eq!(error_code(&request("DELETE", &reg(&s, "/subjects/other?permanent=true"), &json!({}))), 40405);
    assert_eq!(request("DELETE", &reg(&s, "/subjects/other"), &json!({})).json(), json!([1]));
    assert_eq!(get(&reg(&s, "/subjects")).json(), json!(["orders-value"]));
    assert_eq!(get(&reg(&s, "/subjects?deleted=true")).json(), json!(["orders-value", "other"]));
    assert_eq!(get(&reg(&s, "/subjects?deletedOnly=true")).json(), json!(["other"]));
    assert_eq!(request("DELETE", &reg(&s, "/subjects/other?permanent=true"), &json!({})).json(), json!([1]));
    assert_eq!(get(&reg(&s, "/subjects?deleted=true")).json(), json!(["orders-value"]));

    // Everything survives a restart (Raft log / snapshot).
    drop(s);
    let s = Server::start(dir.path());
    assert_eq!(get(&reg(&s, "/subjects/orders-value/versions?deleted=true")).json(), json!([1, 2, 3]));
    assert_eq!(get(&reg(&s, &format!("/schemas/ids/{id2}"))).status, 200);
    let next = register(
        &s,
        "orders-value",
        r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"long"},{"name":"total","type":"double"},{"name":"currency","type":"string","default":"EUR"},{"name":"note","type":["null","string"],"default":null}]}"#,
    );
    assert_eq!(next.status, 200, "{}", String::from_utf8_lossy(&next.body));
    let id4 = next.json()["id"].as_u64().unwrap();
    assert!(id4 > id2, "ids are never reused");
    assert_eq!(get(&reg(&s, "/subjects/orders-value/versions/latest")).json()["version"], 4);
}

#[test]
fn validated_produce_encodes_checks_refuses_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let id1 = register(&s, "orders-value", V1).json()["id"].as_u64().unwrap() as u32;
    create_topic(&s.url, "orders", 1, json!({"value_schema_subject": "orders-value"}));

    // JSON in: encoded with the latest schema (v1).
    produce(&s.url, "orders", json!({"records": [{"key": "k", "value": {"id": 1, "total": 9.5}}]}));
    // v2 arrives: JSON is now encoded with v2 (the default fills `currency`).
    let id2 = register(&s, "orders-value", V2).json()["id"].as_u64().unwrap() as u32;
    produce(
        &s.url,
        "orders",
        json!({"records": [{"value": {"id": 2, "total": 1.0}}, {"value": {"id": 3, "total": 2.0, "currency": "USD"}}]}),
    );
    // Already framed Avro whose id belongs to the subject: stored as is.
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 0, 0, 0, 0]);
    body[1..5].copy_from_slice(&id1.to_be_bytes());
    body.extend_from_slice(&[8]); // id = 4 (zig-zag)
    body.extend_from_slice(&3.25f64.to_le_bytes());
    produce(&s.url, "orders", json!({"records": [{"value_b64": B64.encode(&body)}]}));
    // ... also through the webhook door.
    let hook = common::post_raw(
        &format!("{}/v1/topics/orders/records", s.url),
        &[("content-type", "application/octet-stream")],
        &body,
    );
    assert_eq!(hook.status, 200, "{}", String::from_utf8_lossy(&hook.body));

    // Mismatches: refused whole, with schema_mismatch naming the field.
    let before = fetch(&s.url, "orders", 0, "offset=earliest")["high_watermark"].clone();
    for (record, field) in [
        (json!({"value": {"id": "seven", "total": 1.0}}), "id"),
        (json!({"value": {"id": 7}}), "total"),
        (json!({"value": {"id": 7, "total": 1.0, "colour": "red"}}), "colour"),
        (json!({"value_b64": B64.encode([0, 0, 0, 0x7f, 0x7f, 1])}), "schema id"),
        (json!({"value_b64": B64.encode(&body[..7])}), "truncated"),
        (json!({"value": "plain text is JSON but not a record"}), "expected record"),
    ] {
        let r = post_json(
            &format!("{}/v1/topics/orders/records", s.url),
            &json!({"records": [{"value": {"id": 8, "total": 8.0}}, record.clone()]}),
        );
        assert_eq!(r.status, 400, "{record}");
        let problem = r.json();
        assert_eq!(problem["code"], "schema_mismatch", "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(field) && detail.contains("record 1"), "{record}: {detail}");
    }
    assert_eq!(fetch(&s.url, "orders", 0, "offset=earliest")["high_watermark"], before, "nothing appended");

    // Fetch: framed bytes by default, JSON with ?decode=true, each with its writer's schema.
    let raw = fetch(&s.url, "orders", 0, "offset=0");
    let first = B64.decode(raw["records"][0]["value_b64"].as_str().unwrap()).unwrap();
    assert_eq!(first[0], 0);
    assert_eq!(u32::from_be_bytes(first[1..5].try_into().unwrap()), id1);
    let decoded = fetch(&s.url, "orders", 0, "offset=0&decode=true");
    let values: Vec<Value> = decoded["records"].as_array().unwrap().iter().map(|r| r["value"].clone()).collect();
    let ids: Vec<u64> =
        decoded["records"].as_array().unwrap().iter().map(|r| r["value_schema_id"].as_u64().unwrap()).collect();
    assert_eq!(
        values,
        [
            json!({"id": 1, "total": 9.5}),
            json!({"id": 2, "total": 1.0, "currency": "EUR"}),
            json!({"id": 3, "total": 2.0, "currency": "USD"}),
            json!({"id": 4, "total": 3.25}),
            json!({"id": 4, "total": 3.25}),
        ]
    );
    assert_eq!(ids, [id1, id2, id2, id1, id1].map(u64::from));
    assert_eq!(decoded["records"][0]["key"], "k");

    // The CLI: schema register|get|list|check|config and consume --decode.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_strata")).args(args).env("STRATA_SERVER", &s.url).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // `strata produce` sends batches it built; on a validated topic the server decodes and checks
    // them as it does records: JSON lines are encoded, a mismatch refuses the batch whole.
    let produce_cli = |lines: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["produce", "orders"])
            .env("STRATA_SERVER", &s.url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), lines.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = produce_cli("{\"id\": 5, \"total\": 0.5}\n{\"id\": 6, \"total\": 1.5, \"currency\": \"GBP\"}\n");
    assert!(ok, "{err}");
    let (ok, err) = produce_cli("{\"id\": 7, \"total\": 1.0}\n{\"id\": \"seven\", \"total\": 1.0}\n");
    assert!(!ok && err.contains("schema_mismatch"), "{err}");
    let decoded = fetch(&s.url, "orders", 0, "offset=5&decode=true");
    let values: Vec<Value> = decoded["records"].as_array().unwrap().iter().map(|r| r["value"].clone()).collect();
    assert_eq!(
        values,
        [json!({"id": 5, "total": 0.5, "currency": "EUR"}), json!({"id": 6, "total": 1.5, "currency": "GBP"})]
    );

    let file = dir.path().join("v3.avsc");
    std::fs::write(&file, V3_BAD).unwrap();
    let (ok, _, err) = cli(&["schema", "check", "orders-value", file.to_str().unwrap()]);
    assert!(!ok && err.contains("customer"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "a one-line error: {err}");
    let (ok, out, err) = cli(&["schema", "list"]);
    assert!(ok && out.contains("orders-value"), "{out}{err}");
    let (ok, out, _) = cli(&["schema", "list", "orders-value"]);
    assert!(ok && out.split_whitespace().collect::<Vec<_>>() == ["1", "2"], "{out}");
    let (ok, out, err) = cli(&["schema", "get", "orders-value", "--version", "1"]);
    assert!(ok && out.contains("\"total\""), "{out}{err}");
    let (ok, out, _) = cli(&["schema", "config", "orders-value", "--set", "none"]);
    assert!(ok && out.contains("NONE"), "{out}");
    let (ok, out, err) = cli(&["schema", "register", "orders-value", file.to_str().unwrap()]);
    assert!(ok && out.contains("version 3"), "{out}{err}");
    let (ok, out, err) = cli(&["consume", "orders", "--max", "2", "--decode", "--format", "json"]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["value"], json!({"id": 1, "total": 9.5}), "{out}");
    assert_eq!(lines[1]["value"]["currency"], "EUR");
}

#[test]
fn confluent_kafka_schema_registry_client_round_trip() {
    let python = common::test_python()
        .expect("no test venv with confluent-kafka: run ./scripts/setup-test-tools (./scripts/test does)");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "payments", 1, json!({"value_schema_subject": "payments-value"}));
    let script = common::package_file("tests/registry_client.py");
    let cases = common::package_file("src/registry/testdata/compat.txt");
    let out = Command::new(python).arg(script).arg(&s.url).arg(cases).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "client script failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok: registry client round trip"), "{stdout}");
    assert!(stdout.contains("ok: reference checker agrees"), "{stdout}");
    // What the AvroSerializer produced reads back decoded.
    let page = fetch(&s.url, "payments", 0, "offset=0&decode=true");
    let values: Vec<Value> = page["records"].as_array().unwrap().iter().map(|r| r["value"].clone()).collect();
    assert_eq!(values.len(), 3, "{page}");
    assert_eq!(values[0], json!({"id": "p-1", "amount": 10.5, "note": null}));
    assert_eq!(values[2]["note"], "third");
}

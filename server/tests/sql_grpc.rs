//! gRPC `Sql.Query` against a real server: results as an Arrow IPC stream in pieces (decoded with
//! arrow's `StreamReader` and through the Rust client), large results in many messages, bad and
//! data-changing SQL refused; and the limits: a query over the memory limit or the time limit
//! fails cleanly, over HTTP and gRPC, while a concurrent producer sees no error.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Server, create_topic, post_json, produce, try_post};
use serde_json::{Value, json};
use strata_client::{Client, ClientError, proto};
use strata_sql::arrow::array::{AsArray, RecordBatch};
use strata_sql::arrow::datatypes::{Int64Type, SchemaRef, UInt32Type};
use strata_sql::arrow::ipc::reader::StreamReader;
use tokio_stream::StreamExt;

/// The raw `arrow_ipc` pieces of a query, through a plain tonic client with its default limits
/// (4 MiB per message).
async fn pieces(url: &str, sql: &str) -> Result<Vec<Bytes>, tonic::Status> {
    let mut client = proto::sql_client::SqlClient::connect(url.to_string()).await.unwrap();
    let mut stream = client.query(proto::SqlQueryRequest { sql: sql.to_string() }).await?.into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.next().await {
        out.push(message?.arrow_ipc);
    }
    Ok(out)
}

/// The pieces concatenated, read back as one Arrow IPC stream.
fn decode(pieces: &[Bytes]) -> (SchemaRef, Vec<RecordBatch>) {
    let bytes: Vec<u8> = pieces.concat();
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let schema = reader.schema();
    (schema, reader.collect::<Result<Vec<_>, _>>().unwrap())
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn int64s(batches: &[RecordBatch], column: usize) -> Vec<i64> {
    batches.iter().flat_map(|b| b.column(column).as_primitive::<Int64Type>().values().to_vec()).collect()
}

/// A gRPC failure's status, asserting its code and the stable code its message starts with.
fn assert_status(result: Result<Vec<Bytes>, tonic::Status>, code: tonic::Code, prefix: &str) -> String {
    let status = result.expect_err("the query should fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().starts_with(&format!("{prefix}: ")), "{status:?}");
    status.message().to_string()
}

const END_OF_STREAM: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

#[test]
fn query_streams_arrow_ipc_and_refuses_bad_sql() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    create_topic(&s.url, "events", 2, json!({}));
    for chunk in 0..2 {
        let records: Vec<Value> = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                json!({"key": format!("k{n}"), "partition": n % 2, "value": {"n": n, "user": format!("u{}", n % 10)}})
            })
            .collect();
        produce(&s.url, "events", json!({ "records": records }));
    }
    // 400 records of about 20 KB: 8 MB, more than one gRPC message may carry by default.
    create_topic(&s.url, "blobs", 1, json!({}));
    let blob = "b".repeat(20_000);
    for _ in 0..4 {
        let records: Vec<Value> = (0..100).map(|_| json!({ "value": blob })).collect();
        produce(&s.url, "blobs", json!({ "records": records }));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Schema first, then batches, then the end-of-stream marker; concatenated, one IPC stream.
        let sql =
            "SELECT partition, count(*) AS n, sum(\"offset\") AS s FROM events GROUP BY partition ORDER BY partition";
        let got = pieces(&s.url, sql).await.unwrap();
        assert!(got.len() >= 3, "{} pieces", got.len());
        let (schema, batches) = decode(&got[..1]);
        assert_eq!(schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["partition", "n", "s"]);
        assert!(batches.is_empty(), "the first message is the schema alone");
        assert_eq!(got.last().unwrap().as_ref(), END_OF_STREAM);
        let (_, batches) = decode(&got);
        let partitions: Vec<u32> =
            batches.iter().flat_map(|b| b.column(0).as_primitive::<UInt32Type>().values().to_vec()).collect();
        assert_eq!(partitions, [0, 1]);
        assert_eq!(int64s(&batches, 1), [500, 500]);
        assert_eq!(int64s(&batches, 2), [124_750, 124_750], "offsets 0..500 in each partition");

        // A large result: 1,000 records × 200 = 200,000 rows, batch by batch in many messages.
        let sql = "SELECT e.\"offset\", g.value FROM events e CROSS JOIN generate_series(1, 200) g";
        let got = pieces(&s.url, sql).await.unwrap();
        assert!(got.len() > 10, "{} pieces for 200,000 rows", got.len());
        let (_, batches) = decode(&got);
        assert_eq!(rows(&batches), 200_000);
        assert_eq!(int64s(&batches, 1).iter().sum::<i64>(), 1_000 * (200 * 201 / 2));

        // Wide rows: a batch over the message size is sliced, so a client with tonic's default
        // 4 MiB limit reads 8 MB of values.
        let got = pieces(&s.url, "SELECT \"offset\", value FROM blobs ORDER BY \"offset\"").await.unwrap();
        assert!(got.iter().all(|p| p.len() < 4 << 20), "{:?}", got.iter().map(Bytes::len).collect::<Vec<_>>());
        let (_, batches) = decode(&got);
        assert_eq!(int64s(&batches, 0), (0..400).collect::<Vec<_>>());
        for b in &batches {
            assert!(b.column(1).as_binary_opt::<i32>().map_or_else(
                || b.column(1).as_binary_view().iter().all(|v| v.unwrap().len() == 20_002),
                |values| values.iter().all(|v| v.unwrap().len() == 20_002)
            ));
        }

        // The Rust client decodes as it goes.
        let client = Client::connect(&s.url).await.unwrap();
        let result = client.sql("SELECT count(*) AS n FROM events WHERE partition = 1").await.unwrap();
        assert_eq!(result.schema().field(0).name(), "n");
        let batches = result.collect().await.unwrap();
        assert_eq!(int64s(&batches, 0), [500]);
        let mut result = client.sql("SELECT \"offset\" FROM blobs").await.unwrap();
        let mut n = 0;
        while let Some(batch) = result.next_batch().await.unwrap() {
            n += batch.num_rows();
        }
        assert_eq!(n, 400);
        let unknown = client.sql("SELECT * FROM nope").await.unwrap_err();
        assert!(
            matches!(&unknown, ClientError::Server { code: tonic::Code::InvalidArgument, message }
                if message.starts_with("sql_error: ") && message.contains("nope")),
            "{unknown:?}"
        );

        // Bad SQL: INVALID_ARGUMENT with DataFusion's message.
        let m = assert_status(pieces(&s.url, "SELEC 1").await, tonic::Code::InvalidArgument, "sql_error");
        assert!(m.contains("SELEC"), "{m}");
        let m =
            assert_status(pieces(&s.url, "SELECT nope FROM events").await, tonic::Code::InvalidArgument, "sql_error");
        assert!(m.contains("nope"), "{m}");
        // Statements that would change data or settings are refused; nothing changes.
        for statement in [
            "CREATE TABLE t AS SELECT 1",
            "DROP TABLE events",
            "INSERT INTO events SELECT * FROM events",
            "SET datafusion.execution.batch_size = 1",
        ] {
            assert_status(pieces(&s.url, statement).await, tonic::Code::InvalidArgument, "sql_error");
        }
        let (_, batches) = decode(&pieces(&s.url, "SELECT count(*) FROM events").await.unwrap());
        assert_eq!(int64s(&batches, 0), [1_000]);

        // A client giving up on a query that would run for hours cancels it; the server goes on.
        let mut client = proto::sql_client::SqlClient::connect(s.url.clone()).await.unwrap();
        let mut request = tonic::Request::new(proto::SqlQueryRequest {
            sql: "SELECT sum(value) FROM generate_series(1, 1000000000000)".into(),
        });
        request.set_timeout(Duration::from_millis(500));
        let gave_up = client.query(request).await.unwrap_err();
        assert!(matches!(gave_up.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{gave_up:?}");
        let (_, batches) = decode(&pieces(&s.url, "SELECT count(*) FROM blobs").await.unwrap());
        assert_eq!(int64s(&batches, 0), [400]);
    });
}

/// Produces 10 small records per request until `stop`, counting successes and failures.
fn producer(url: String, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Acquire) {
            let records: Vec<Value> = (0..10).map(|i| json!({"key": format!("p{n}-{i}"), "value": {"n": n}})).collect();
            let body = serde_json::to_vec(&json!({ "records": records })).unwrap();
            match try_post(&format!("{url}/v1/topics/live/records"), &body) {
                Ok(r) if r.status == 200 && r.json()["offsets"].as_array().is_some_and(|o| o.len() == 10) => {
                    ok.fetch_add(1, Ordering::AcqRel);
                }
                Ok(r) => failures.push(format!("{}: {}", r.status, String::from_utf8_lossy(&r.body))),
                Err(e) => failures.push(e.to_string()),
            }
            n += 1;
        }
        failures
    })
}

/// Waits (bounded) until the producer has had `more` further requests acknowledged.
fn wait_for_produce(ok: &AtomicU64, more: u64) {
    let target = ok.load(Ordering::Acquire) + more;
    for _ in 0..600 {
        if ok.load(Ordering::Acquire) >= target {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the producer made no progress");
}

#[test]
fn memory_and_time_limits_fail_cleanly_while_a_producer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(
        dir.path(),
        &[("STRATA_SQL_MEMORY_BYTES", &(8u64 << 20).to_string()), ("STRATA_SQL_TIMEOUT_MS", "3000")],
    );
    // 32,000 records of about 1 KB: a hash join of the topic with itself must hold ~32 MB.
    create_topic(&s.url, "big", 2, json!({}));
    let pad = "x".repeat(1000);
    for chunk in 0..32 {
        let records: Vec<Value> =
            (0..1000).map(|i| json!({"partition": i % 2, "value": {"n": chunk * 1000 + i, "pad": pad}})).collect();
        produce(&s.url, "big", json!({ "records": records }));
    }
    create_topic(&s.url, "live", 1, json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let producing = producer(s.url.clone(), Arc::clone(&stop), Arc::clone(&ok));
    wait_for_produce(&ok, 3);

    let join = "SELECT count(*) FROM big a JOIN big b ON a.value = b.value";
    let slow = "SELECT sum(value) FROM generate_series(1, 1000000000000)";
    let sql = |query: &str| post_json(&format!("{}/v1/sql", s.url), &json!({ "sql": query }));
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Over the memory limit: HTTP 400 `sql_resources_exhausted`, gRPC RESOURCE_EXHAUSTED.
    let r = sql(join);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let problem = r.json();
    assert_eq!(problem["code"], "sql_resources_exhausted", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("sql_memory_bytes (8388608 bytes)"), "{problem}");
    let m = assert_status(rt.block_on(pieces(&s.url, join)), tonic::Code::ResourceExhausted, "sql_resources_exhausted");
    assert!(m.contains("Resources exhausted"), "DataFusion's message: {m}");
    // A query within the limit still runs.
    let r = sql("SELECT count(*), sum(length(value)) FROM big");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["rows"][0][0], 32_000);

    // Over the time limit: HTTP 400 `sql_timeout`, gRPC DEADLINE_EXCEEDED.
    let r = sql(slow);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], "sql_timeout", "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["detail"].as_str().unwrap().contains("sql_timeout_ms (3000 ms)"));
    assert_status(rt.block_on(pieces(&s.url, slow)), tonic::Code::DeadlineExceeded, "sql_timeout");

    // The producer went on through all of it, and every acknowledged record is there.
    wait_for_produce(&ok, 3);
    stop.store(true, Ordering::Release);
    let failures = producing.join().unwrap();
    assert!(failures.is_empty(), "{} produce requests failed: {failures:?}", failures.len());
    let produced = ok.load(Ordering::Acquire) * 10;
    let r = sql("SELECT count(*), count(DISTINCT key) FROM live");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["rows"][0], json!([produced, produced]));
    let topic = common::get(&format!("{}/v1/topics/live", s.url)).json();
    assert_eq!(topic["partitions"][0]["high_watermark"], produced);
}

//! Schema-registry benchmark (issue #7): validated produce — JSON records encoded to Avro with the
//! subject's latest schema and checked on the way in — against unvalidated produce of the same
//! JSON records to a topic without a schema, in the same run, through the same HTTP door.
//!
//! Both topics use `flush=interval`, so that fsync does not hide the encoding cost.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::harness::{Server, median, show};

const BATCH: usize = 100;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: crate::harness::RunArgs,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// The `strata` binary (default: next to this one).
    #[arg(long)]
    strata: Option<PathBuf>,
}

const SCHEMA: &str = r#"{"type":"record","name":"Payment","namespace":"bench","fields":[
  {"name":"id","type":"long"},
  {"name":"user","type":"string"},
  {"name":"amount","type":"double"},
  {"name":"currency","type":{"type":"enum","name":"Currency","symbols":["EUR","USD","GBP"]}},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"note","type":["null","string"],"default":null},
  {"name":"country","type":"string","default":"NL"}
]}"#;

/// One produce request body: `BATCH` JSON records (about 200 bytes of JSON each). Their keys come
/// out alphabetical (`serde_json::Map` is sorted), not in the schema's field order, as from many
/// real producers: the encoder's field reordering is part of what is measured.
fn body(seq: u64) -> Vec<u8> {
    let records: Vec<Value> = (0..BATCH as u64)
        .map(|i| {
            let n = seq * BATCH as u64 + i;
            let currency = ["EUR", "USD", "GBP"][(n % 3) as usize];
            json!({"key": format!("user-{}", n % 1000), "partition": 0, "value": {
                "id": n, "user": format!("user-{}", n % 1000), "amount": (n % 10_000) as f64 / 100.0,
                "currency": currency, "ts": 1_700_000_000_000_i64 + n as i64,
                "tags": ["web", "promo"], "note": if n.is_multiple_of(2) { Value::Null } else { json!("gift wrap") },
            }})
        })
        .collect();
    serde_json::to_vec(&json!({"records": records, "acks": "leader"})).unwrap_or_default()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(true).build().into()
}

fn post(url: &str, body: &Value) -> anyhow::Result<Value> {
    let text = agent()
        .post(url)
        .header("content-type", "application/json")
        .send(serde_json::to_vec(body)?.as_slice())
        .with_context(|| format!("POST {url}"))?
        .body_mut()
        .read_to_string()?;
    Ok(serde_json::from_str(&text)?)
}

/// Records/s produced to `topic` by `clients` threads for `seconds`.
fn produce(url: &str, topic: &str, clients: usize, seconds: f64) -> anyhow::Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (count, target) = (Arc::clone(&count), format!("{url}/v1/topics/{topic}/records"));
            // Bodies prepared up front: the load generator's JSON work stays out of the window.
            let bodies: Vec<Vec<u8>> = (0..16).map(|i| body(c as u64 * 1000 + i)).collect();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let agent = agent();
                let mut i = 0;
                while Instant::now() < deadline {
                    agent
                        .post(&target)
                        .header("content-type", "application/json")
                        .send(&bodies[i % bodies.len()][..])?
                        .body_mut()
                        .read_to_vec()?;
                    count.fetch_add(BATCH as u64, Ordering::Relaxed);
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn topic_bytes(url: &str, topic: &str) -> anyhow::Result<f64> {
    let page = agent()
        .get(format!("{url}/v1/topics/{topic}/partitions/0/records?offset=0&max_records=100&encoding=base64"))
        .call()?
        .body_mut()
        .read_to_string()?;
    let page: Value = serde_json::from_str(&page)?;
    let records = page["records"].as_array().context("no records")?;
    let total: usize = records.iter().map(|r| r["value_b64"].as_str().map_or(0, |v| v.len() * 3 / 4)).sum();
    Ok(total as f64 / records.len().max(1) as f64)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let strata = crate::harness::strata_binary(args.strata.as_deref())?;
    let root = args.run.data_root()?;
    let runs = args.run.runs();
    let seconds = if args.run.quick { 1.0 } else { 5.0 };
    let loadavg = crate::harness::loadavg();
    println!(
        "# registry benchmark — {runs} run(s) of {seconds} s, {} HTTP clients, {BATCH} JSON records per request, load average at start: {}",
        args.clients,
        loadavg.trim()
    );
    let server = Server::start(&strata, &root.path().join("data"))?;
    for _ in 0..200 {
        if agent().get(format!("{}/readyz", server.url)).call().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = server.url.clone();
    let id = post(&format!("{url}/registry/subjects/bench-value/versions"), &json!({"schema": SCHEMA}))?["id"].clone();
    for (name, subject) in [("plain", Value::Null), ("validated", json!("bench-value"))] {
        let config = json!({"flush": "interval", "value_schema_subject": subject});
        post(&format!("{url}/v1/topics"), &json!({"name": name, "partitions": 1, "config": config}))?;
    }
    // Warm up both paths (connections, schema cache), then alternate so drift hits both alike.
    produce(&url, "plain", args.clients, 0.5)?;
    produce(&url, "validated", args.clients, 0.5)?;
    let (mut plain, mut validated) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        plain.push(produce(&url, "plain", args.clients, seconds)?);
        validated.push(produce(&url, "validated", args.clients, seconds)?);
    }
    let (json_size, avro_size) = (topic_bytes(&url, "plain")?, topic_bytes(&url, "validated")?);
    server.stop()?;
    let ratio = median(validated.clone()) / median(plain.clone());

    println!();
    println!("| measurement | Strata | same-run comparison | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| validated produce (JSON → Avro, schema id {id}), HTTP | {} | unvalidated produce of the same records: {} | {ratio:.2} (target ≥ 0.7) |",
        show(&validated, "records/s"),
        show(&plain, "records/s"),
    );
    println!(
        "| stored value size | {avro_size:.0} B (Avro, framed) | {json_size:.0} B (JSON) | {:.2} |",
        avro_size / json_size.max(1.0)
    );
    let doc = format!(
        "{{\"quick\":{},\"runs\":{runs},\"clients\":{},\"loadavg\":\"{}\",\"validated_rps\":{validated:?},\"plain_rps\":{plain:?},\"ratio\":{ratio:.3},\"avro_bytes\":{avro_size:.1},\"json_bytes\":{json_size:.1}}}\n",
        args.run.quick, args.clients, loadavg
    );
    let out_path = args.run.write_results("registry", &doc)?;
    println!("\nresults written to {}", out_path.display());
    Ok(())
}

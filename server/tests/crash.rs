//! `kill -9` of the server while 8 clients produce with `acks=leader` and `flush=always`: after
//! each restart every acknowledged record is readable with the same bytes, and offsets are dense.
//! Half the clients send small records (journaled), half large ones, into segments of 64 KiB
//! (rolled every few requests); rounds alternate `direct_writes` (large batches written by their
//! flush with `O_DIRECT`) and the default, and the last turns `direct_io` off (the journal, too,
//! through the page cache).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, create_topic, fetch_all};
use serde_json::json;

type Acked = HashMap<(u32, u64), String>;

/// Every acknowledged record is present with its value; offsets are dense from 0.
fn verify(url: &str, acked: &Acked) {
    for p in 0..4 {
        let records = fetch_all(url, "ledger", p);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r["offset"].as_u64().unwrap(), i as u64, "partition {p}: offsets dense");
        }
        for ((_, offset), value) in acked.iter().filter(|((part, _), _)| *part == p) {
            let r = records.get(*offset as usize).unwrap_or_else(|| panic!("acknowledged {p}/{offset} lost"));
            assert_eq!(r["value"], *value, "{p}/{offset}");
        }
    }
}

#[test]
fn acknowledged_records_survive_sigkill_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Acked::new();
    for round in 0..4u64 {
        // The large batches written by their appends, and past the page cache by their flushes
        // (`direct_writes`), in turn: each restart reads what the other way wrote. The last
        // round keeps every write in the page cache (`direct_io` off), the journal's and the
        // flushes' too.
        let direct = if round % 2 == 0 || round == 3 { "true" } else { "false" };
        let direct_io = if round == 3 { "false" } else { "true" };
        let server =
            Server::start_with_env(dir.path(), &[("STRATA_DIRECT_WRITES", direct), ("STRATA_DIRECT_IO", direct_io)]);
        if round == 0 {
            create_topic(&server.url, "ledger", 4, json!({"flush": "always", "segment_bytes": 65536}));
        } else {
            verify(&server.url, &acked);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let (url, stop, seen) = (server.url.clone(), Arc::clone(&stop), Arc::clone(&seen));
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        // Odd clients send one record of ~40 KiB a request: a batch the journal
                        // does not take, which its flush writes past the page cache.
                        let (n, pad) = if c % 2 == 1 { (1, "x".repeat(40_000)) } else { (5, String::new()) };
                        let values: Vec<String> = (0..n).map(|k| format!("r{round}-c{c}-{i}-{k}{pad}")).collect();
                        let records: Vec<_> = values.iter().map(|v| json!({"key": v, "value": v})).collect();
                        let body = serde_json::to_vec(&json!({"records": records, "acks": "leader"})).unwrap();
                        // A request cut off by the kill was never acknowledged: stop there.
                        let Ok(reply) = common::try_post(&format!("{url}/v1/topics/ledger/records"), &body) else {
                            return;
                        };
                        if reply.status != 200 {
                            return;
                        }
                        let offsets = reply.json()["offsets"].as_array().unwrap().clone();
                        let mut seen = seen.lock().unwrap();
                        for (o, v) in offsets.iter().zip(values) {
                            seen.push(((o["partition"].as_u64().unwrap() as u32, o["offset"].as_u64().unwrap()), v));
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + round * 200));
        server.kill9(); // while the clients are still sending
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let acknowledged = std::mem::take(&mut *seen.lock().unwrap());
        assert!(!acknowledged.is_empty(), "round {round} acknowledged nothing");
        for (k, v) in acknowledged {
            assert!(acked.insert(k, v).is_none(), "offset {k:?} acknowledged twice");
        }
    }
    let server = Server::start(dir.path());
    verify(&server.url, &acked);
}

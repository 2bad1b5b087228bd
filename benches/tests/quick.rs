//! The side-by-side harness checked in CI (issue #8): `strata-bench all --quick` runs every
//! workload end to end against the `strata` binary of this build, with Redis, NATS, RabbitMQ and Tansu when
//! `scripts/setup-bench-tools` installed them and without them (saying so) when not, and its JSON
//! result validates against benches/schema/results.schema.json (and `check-results`' rules: W4's
//! group and W8's cold catch-up received every record exactly once). No performance figure is
//! asserted: debug builds on a shared machine say nothing about speed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn quick_run_of_every_workload_writes_a_valid_report() {
    let bench = Path::new(env!("CARGO_BIN_EXE_strata-bench"));
    // `cargo test --workspace` builds the server's binary for its own tests, beside this one.
    let strata = bench.parent().unwrap().join("strata");
    assert!(strata.exists(), "{} not built (cargo test --workspace builds it)", strata.display());
    let dir = tempfile::tempdir().unwrap();
    let (json, md) = (dir.path().join("all-quick.json"), dir.path().join("RESULTS-quick.md"));
    let run = Command::new(bench)
        .args(["all", "--quick", "--strata"])
        .arg(&strata)
        .arg("--dir")
        .arg(dir.path())
        .arg("--out")
        .arg(&json)
        .arg("--report")
        .arg(&md)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));

    let check = Command::new(bench).arg("check-results").arg(&json).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = doc["results"].as_array().expect("results");
    // Every workload ran against Strata, and none of Strata's runs failed.
    for w in ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9"] {
        // W7's systems are Strata's doors ("strata grpc stream", ...).
        let strata_rows: Vec<&Value> = rows
            .iter()
            .filter(|r| r["workload"] == w && r["system"].as_str().is_some_and(|s| s.starts_with("strata")))
            .collect();
        assert!(!strata_rows.is_empty(), "no Strata row for {w}:\n{stdout}");
        for r in strata_rows {
            assert_eq!(r["status"], "ok", "{w} failed: {r}");
        }
    }
    // W4's group and W8's cold catch-up checked that every record arrived exactly once: on
    // Strata always, and on every peer whose group run succeeded.
    let checked = |w: &str, phase: &str| -> Vec<&Value> {
        rows.iter().filter(|r| r["workload"] == w && r["phase"] == phase && r["status"] == "ok").collect()
    };
    let group_rows = checked("W4", "group consume");
    assert!(group_rows.iter().any(|r| r["system"] == "strata"), "no ok W4 group row for Strata:\n{stdout}");
    for r in group_rows.into_iter().chain(checked("W8", "consume")) {
        assert_eq!(r["delivery"]["exactly_once"], true, "{r}");
        assert!(r["delivery"]["records"].as_u64().unwrap() > 0, "{r}");
    }
    // Each peer either ran or is reported missing with its reason.
    let peers = doc["peers"].as_array().expect("peers");
    for name in ["redis", "nats", "tansu", "rabbitmq"] {
        let peer = peers.iter().find(|p| p["name"] == name);
        assert!(peer.is_some_and(|p| p["status"].is_string()), "{name} is neither run nor reported missing: {peers:?}");
    }
    // Tansu (where its binary was built) and RabbitMQ run the relaxed rows, both produce and
    // consume, and say why they have no durable one.
    for name in
        ["tansu", "rabbitmq"].into_iter().filter(|n| peers.iter().any(|p| p["name"] == *n && p["status"] == "found"))
    {
        let row = |mode: &str, phase: &str| {
            rows.iter()
                .find(|r| r["workload"] == "W2" && r["system"] == name && r["mode"] == mode && r["phase"] == phase)
                .unwrap_or_else(|| panic!("no W2 {mode} {phase} row for {name}:\n{stdout}"))
        };
        assert_eq!(row("relaxed", "produce")["status"], "ok", "{}", row("relaxed", "produce"));
        assert_eq!(row("relaxed", "consume")["status"], "ok", "{}", row("relaxed", "consume"));
        assert_eq!(row("durable", "produce")["status"], "skipped", "{}", row("durable", "produce"));
        assert!(row("durable", "produce")["note"].as_str().unwrap().contains("fsync"), "{}", row("durable", "produce"));
    }
    assert!(std::fs::read_to_string(&md).unwrap().contains("| W1 |"), "the markdown report has the tables");
    assert!(dir.path().join("latency-throughput-quick.svg").exists(), "the plot beside the JSON");
}

/// `strata-bench server --only-latency` offers its load both ways, unary requests and the same
/// requests on `ProduceStream`s, and prints a row for each (every request acknowledged: the
/// stream measurement fails otherwise).
#[test]
fn the_latency_row_runs_unary_requests_and_streams() {
    let bench = Path::new(env!("CARGO_BIN_EXE_strata-bench"));
    let strata = bench.parent().unwrap().join("strata");
    assert!(strata.exists(), "{} not built (cargo test --workspace builds it)", strata.display());
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new(bench)
        .args(["server", "--quick", "--runs", "1", "--only-latency", "--latency-rate", "100", "--strata"])
        .arg(&strata)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    for line in [
        "latency run 1: p50 ",
        "latency run 1 (stream): p50 ",
        "unary requests | p50 ",
        "| the same load as gRPC stream requests",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}

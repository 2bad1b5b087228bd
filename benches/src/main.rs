//! Strata's benchmark harness. Every figure is printed beside a baseline measured in the same
//! run (BENCHMARKS.md): a plain-file writer or reader doing the same I/O without Strata.
//!
//! `strata-bench storage` runs the storage engine benchmarks of issue #2, `strata-bench server`
//! those of issue #3, `strata-bench groups` those of issue #4, `strata-bench tier`
//! those of issue #5, `strata-bench registry` those of issue #7 and `strata-bench sql` those of
//! issue #6 (workload W9 of `all`); each writes
//! `benches/results/<date>-<name>.json` and prints a markdown table.
//!
//! `strata-bench all` (issue #8) runs Strata side by side with Redis Streams and NATS JetStream
//! ([`peers`]) and the machine's own limits, and writes `benches/RESULTS.md`.

mod all;
mod groups;
mod harness;
mod pacer;
mod peers;
mod registry;
mod server;
mod sql;
mod storage;
mod tier;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "strata-bench", about = "Strata benchmarks, side by side with baselines from the same run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Side by side: Strata, Redis Streams, NATS JetStream, Tansu, RabbitMQ Streams and the machine's limits (W1–W9).
    All(Box<all::Args>),
    /// Storage engine: append (group commit), latency, sequential read, reopen, memory.
    Storage(storage::Args),
    /// Server: produce through each door, latency at half the peak, catch-up fetch, idle memory.
    Server(server::Args),
    /// Consumer groups: rebalance time, sticky moves, group consume vs plain fetch, memory.
    Groups(groups::Args),
    /// Tiering: segment to Parquet throughput, Parquet read vs log read, Parquet size.
    Tier(tier::Args),
    /// Schema registry: validated produce (JSON → Avro) vs unvalidated produce of the same records.
    Registry(registry::Args),
    /// SQL (W9): full scan vs DataFusion on the same Parquet, a 1 % time range, produce during scans.
    Sql(sql::Args),
    /// Checks a results JSON file against benches/schema/results.schema.json.
    CheckResults { path: std::path::PathBuf },
    /// Internal: open N idle logs and print peak RSS (run in its own process).
    #[command(hide = true)]
    IdleLogs { dir: std::path::PathBuf, count: u64 },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::All(args) => all::run(&args),
        Command::Storage(args) => storage::run(&args),
        Command::Server(args) => server::run(&args),
        Command::Groups(args) => groups::run(&args),
        Command::Tier(args) => tier::run(&args),
        Command::Registry(args) => registry::run(&args),
        Command::Sql(args) => sql::run(&args),
        Command::CheckResults { path } => all::check_results(&path),
        Command::IdleLogs { dir, count } => storage::idle_logs_child(&dir, count),
    }
}

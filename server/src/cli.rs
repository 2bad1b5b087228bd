//! The command-line client: `strata topic|produce|consume`, on top of `strata-client`.
//! Friendly on pipes: values in one per line, records out one per line; errors are one line on
//! stderr with a non-zero exit code; progress and rates go to stderr.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand, ValueEnum};
use strata_client::{
    Client, ClientError, GroupConfig, OffsetReset, ProducerConfig, RebalanceListener, Record, Start, TopicPartition,
    proto,
};
use strata_server::registry::cli::ValueDecoder;

#[derive(Args, Debug)]
pub struct ServerArg {
    /// Server URL: `http://HOST:PORT`, or `unix:PATH` for the server's Unix socket on this host.
    #[arg(long, env = "STRATA_SERVER", default_value = "http://127.0.0.1:7070", global = true)]
    pub server: String,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Create, list, describe, alter, grow and delete topics.
    Topic {
        #[command(subcommand)]
        action: TopicAction,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List, describe (members, committed offsets, lag), reset and delete consumer groups.
    Group {
        #[command(subcommand)]
        action: GroupAction,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Produce values read from stdin, one per line (or one `--value`).
    Produce {
        topic: String,
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        partition: Option<u32>,
        #[arg(long, value_enum, default_value = "leader")]
        acks: AcksArg,
        /// Produce this one value instead of reading stdin.
        #[arg(long)]
        value: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print records, one per line; with `--group`, as a member of a consumer group.
    Consume {
        /// A topic name (with `--group` also a regular expression over topic names).
        topic: String,
        /// Read as a member of this consumer group: the group assigns the partitions and the
        /// reading continues after the group's committed offsets. Ctrl-C leaves the group.
        #[arg(long)]
        group: Option<String>,
        /// With `--group`: `auto` (default) commits what was printed every 5 s and when leaving
        /// (after `--max` records or Ctrl-C); `manual` commits after each batch printed.
        #[arg(long, value_enum)]
        commit: Option<CommitArg>,
        /// `earliest`, `latest`, an offset, a time (RFC 3339, e.g. 2026-11-25T10:00:00Z), or how
        /// long ago (`15m`, `2h`, `1d`). With `--group` only `earliest` or `latest`: where
        /// partitions without a committed offset start.
        #[arg(long, default_value = "earliest")]
        from: String,
        /// Only this partition (default: all).
        #[arg(long)]
        partition: Option<u32>,
        /// Stop after this many records (default: follow forever).
        #[arg(long)]
        max: Option<u64>,
        /// Stop at the end of every partition as it stood when reading began (its high
        /// watermark then), instead of following: prints what the topic holds, and exits 0.
        #[arg(long, conflicts_with = "group")]
        to_end: bool,
        /// How often a consume that follows every partition (no `--partition`, `--to-end` or
        /// `--group`) looks for partitions added to the topic; they are read from their start.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s", conflicts_with_all = ["group", "partition", "to_end"])]
        metadata_max_age: Duration,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Print Avro values framed with a schema-registry id as JSON (schemas fetched from the
        /// server's registry).
        #[arg(long)]
        decode: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// The schema registry: register, get, list and check schemas, and set compatibility modes.
    Schema {
        #[command(subcommand)]
        action: strata_server::registry::cli::SchemaAction,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Run read-only SQL over the topics (hot and cold data alike); prints an aligned table.
    Sql {
        /// The statement, e.g. "SELECT partition, count(*) FROM orders GROUP BY partition".
        query: String,
        #[arg(long, value_enum, default_value = "table")]
        format: SqlFormat,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum SqlFormat {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand, Debug)]
pub enum TopicAction {
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// `key=value`, repeatable (keys as in the HTTP API: retention_ms, flush, ...).
        #[arg(long = "config", value_parser = parse_kv)]
        config: Vec<(String, String)>,
    },
    List,
    Describe {
        name: String,
    },
    Alter {
        name: String,
        #[arg(long = "config", value_parser = parse_kv, required = true)]
        config: Vec<(String, String)>,
    },
    AddPartitions {
        name: String,
        /// The new total.
        #[arg(long)]
        count: u32,
    },
    Delete {
        name: String,
    },
    /// Check every local segment's CRCs and every tiered object against the tier manifest;
    /// exits non-zero when anything is damaged.
    Verify {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum GroupAction {
    List,
    Describe {
        group: String,
    },
    /// Move the group's committed offsets for a topic (the group must have no members).
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// `earliest`, `latest`, an offset, a time (RFC 3339), or how long ago (`15m`, `2h`, `1d`).
        #[arg(long)]
        to: String,
    },
    Delete {
        group: String,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum AcksArg {
    None,
    Leader,
    All,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// When `consume --group` commits.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitArg {
    /// Every 5 s (what earlier batches printed) and on leaving.
    Auto,
    /// After each batch printed.
    Manual,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

pub async fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Topic { action, server } => topic(&connect(&server).await?, action).await,
        ClientCommand::Group { action, server } => group(&connect(&server).await?, action).await,
        ClientCommand::Produce { topic, key, partition, acks, value, server } => {
            produce(&connect(&server).await?, &topic, key, partition, acks, value).await
        }
        ClientCommand::Consume {
            topic,
            group,
            commit,
            from,
            partition,
            max,
            to_end,
            metadata_max_age,
            format,
            decode,
            server,
        } => {
            let mut decoder = decode.then(|| ValueDecoder::new(&server.server));
            match group {
                Some(group) => {
                    if partition.is_some() {
                        bail!("--partition does not combine with --group: the group assigns the partitions");
                    }
                    let commit = commit.unwrap_or(CommitArg::Auto);
                    let client = connect(&server).await?;
                    consume_group(&client, &topic, &group, &from, commit, max, format, decoder.as_mut()).await
                }
                None => {
                    if commit.is_some() {
                        bail!("--commit needs --group: without a group nothing is committed");
                    }
                    let stop = Stop { max, to_end };
                    let partitions = Partitions { only: partition, metadata_max_age };
                    consume(&server, &topic, &from, partitions, stop, format, decoder.as_mut()).await
                }
            }
        }
        ClientCommand::Schema { action, server } => {
            tokio::task::spawn_blocking(move || strata_server::registry::cli::run(&server.server, action)).await?
        }
        ClientCommand::Sql { query, format, server } => {
            tokio::task::spawn_blocking(move || sql(&server.server, &query, format)).await?
        }
    }
}

/// `strata sql`: POSTs the query to `/v1/sql` and prints the result.
fn sql(server: &str, query: &str, format: SqlFormat) -> anyhow::Result<()> {
    let url = format!("{}/v1/sql", server.trim_end_matches('/'));
    let wire = if matches!(format, SqlFormat::Csv) { "csv" } else { "json" };
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let body = serde_json::to_vec(&serde_json::json!({"sql": query, "format": wire}))?;
    let mut response = agent
        .post(&url)
        .header("content-type", "application/json")
        .send(&body[..])
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.body_mut().with_config().limit(u64::MAX).read_to_string()?;
    if !status.is_success() {
        let problem: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        bail!("{}", problem["detail"].as_str().unwrap_or(&text));
    }
    if !matches!(format, SqlFormat::Table) {
        print!("{text}");
        if matches!(format, SqlFormat::Json) {
            println!();
        }
        return Ok(());
    }
    let result: serde_json::Value = serde_json::from_str(&text)?;
    let names: Vec<String> = result["columns"]
        .as_array()
        .map(|c| c.iter().map(|c| c["name"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = result["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    row.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| match c {
                                    serde_json::Value::String(s) => s.clone(),
                                    serde_json::Value::Null => "NULL".to_string(),
                                    other => other.to_string(),
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    print!("{}", aligned_table(&names, &rows));
    eprintln!("({} row{})", rows.len(), if rows.len() == 1 { "" } else { "s" });
    Ok(())
}

/// Columns padded to their widest cell, a rule under the header.
fn aligned_table(names: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = names.iter().map(|n| n.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join(" | ").trim_end())
    };
    let mut out = line(names);
    out.push_str(&format!("{}\n", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-")));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

async fn connect(server: &ServerArg) -> anyhow::Result<Client> {
    Ok(Client::connect(&server.server).await?)
}

fn print_topic(info: &proto::TopicInfo) {
    let hw: Vec<String> = info.partitions.iter().map(|p| format!("{}:{}", p.partition, p.high_watermark)).collect();
    println!("{}\tpartitions={}\thigh_watermarks={}", info.name, info.partitions.len(), hw.join(","));
}

async fn topic(client: &Client, action: TopicAction) -> anyhow::Result<()> {
    let admin = client.admin();
    match action {
        TopicAction::Create { name, partitions, config } => {
            print_topic(&admin.create_topic(&name, partitions, config.into_iter().collect()).await?)
        }
        TopicAction::List => {
            for t in admin.list_topics().await? {
                print_topic(&t);
            }
        }
        TopicAction::Describe { name } => {
            let info = admin.describe_topic(&name).await?;
            print_topic(&info);
            let mut config: Vec<_> = info.config.iter().collect();
            config.sort();
            for (k, v) in config {
                println!("  {k}={v}");
            }
            for p in &info.partitions {
                println!(
                    "  partition {}: leader {} log_start {} local_start {} tiered_end {} high_watermark {}",
                    p.partition,
                    p.leader,
                    p.log_start_offset,
                    p.local_start_offset,
                    p.tiered_end_offset,
                    p.high_watermark
                );
            }
        }
        TopicAction::Alter { name, config } => {
            print_topic(&admin.alter_topic_config(&name, config.into_iter().collect::<HashMap<_, _>>()).await?)
        }
        TopicAction::AddPartitions { name, count } => print_topic(&admin.add_partitions(&name, count).await?),
        TopicAction::Delete { name } => {
            admin.delete_topic(&name).await?;
            println!("deleted {name}");
        }
        TopicAction::Verify { name } => {
            eprintln!("verifying {name}: every local segment and every tiered object ...");
            let report = admin.verify_topic(&name).await?;
            for d in &report.damage {
                println!(
                    "DAMAGED partition {} {} offsets {}..{}: {}",
                    d.partition, d.location, d.first_offset, d.end_offset, d.problem
                );
            }
            println!(
                "{name}: {} segments and {} tiered objects checked, {} damaged",
                report.segments_checked,
                report.objects_checked,
                report.damage.len()
            );
            if !report.damage.is_empty() {
                bail!("{name} has {} damaged segment(s) or object(s)", report.damage.len());
            }
        }
    }
    Ok(())
}

async fn group(client: &Client, action: GroupAction) -> anyhow::Result<()> {
    let admin = client.admin();
    match action {
        GroupAction::List => {
            for g in admin.list_groups().await? {
                println!("{g}");
            }
        }
        GroupAction::Describe { group } => {
            let info = admin.describe_group(&group).await?;
            println!(
                "{}\tstate={}\tgeneration={}\tassignor={}",
                info.group, info.state, info.generation, info.assignor
            );
            for m in &info.members {
                let owned: Vec<String> =
                    m.topics.iter().zip(&m.assignment).map(|(t, p)| format!("{t}/{}", p.partition)).collect();
                println!("  member {}: {}", m.member_id, owned.join(" "));
            }
            println!("  {:<24} {:>9} {:>12} {:>15} {:>10}", "topic", "partition", "committed", "high_watermark", "lag");
            for o in &info.offsets {
                let committed = o.committed.map_or_else(|| "-".to_string(), |c| c.to_string());
                println!(
                    "  {:<24} {:>9} {:>12} {:>15} {:>10}",
                    o.topic, o.partition, committed, o.high_watermark, o.lag
                );
            }
        }
        GroupAction::ResetOffsets { group, topic, to } => {
            for (partition, offset) in admin.reset_group_offsets(&group, &topic, parse_from("--to", &to)?).await? {
                println!("{topic}/{partition}\t{offset}");
            }
        }
        GroupAction::Delete { group } => {
            admin.delete_group(&group).await?;
            println!("deleted {group}");
        }
    }
    Ok(())
}

/// Human units for rates.
fn rate(n: u64, bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    format!("{n} records in {:.2} s ({:.0} records/s, {:.2} MB/s)", secs, n as f64 / secs, bytes as f64 / secs / 1e6)
}

async fn produce(
    client: &Client,
    topic: &str,
    key: Option<String>,
    partition: Option<u32>,
    acks: AcksArg,
    value: Option<String>,
) -> anyhow::Result<()> {
    let acks = match acks {
        AcksArg::None => proto::Acks::None,
        AcksArg::Leader => proto::Acks::Leader,
        AcksArg::All => proto::Acks::All,
    };
    client.admin().describe_topic(topic).await?;
    let producer = client.producer(ProducerConfig { acks, ..ProducerConfig::default() });
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut deliveries = Vec::new();
    let make = |v: String| Record {
        key: key.clone().map(String::into_bytes),
        value: Some(v.into_bytes()),
        headers: vec![],
        timestamp_ms: None,
        partition,
    };
    let values: Box<dyn Iterator<Item = std::io::Result<String>>> = match value {
        Some(v) => Box::new(std::iter::once(Ok(v))),
        None => Box::new(std::io::stdin().lock().lines()),
    };
    for line in values {
        let line = line.context("reading stdin")?;
        bytes += line.len() as u64;
        deliveries.push(producer.send(topic, make(line)).await?);
        n += 1;
        if last_progress.elapsed() > Duration::from_secs(1) {
            eprintln!("strata: {}", rate(n, bytes, start.elapsed()));
            last_progress = Instant::now();
        }
        // Bound what is tracked: check the oldest deliveries as we go.
        if deliveries.len() >= 10_000 {
            for d in deliveries.drain(..) {
                d.wait().await?;
            }
        }
    }
    producer.flush().await?;
    for d in deliveries {
        d.wait().await?;
    }
    eprintln!("strata: produced {}", rate(n, bytes, start.elapsed()));
    Ok(())
}

/// `earliest`, `latest`, an offset, a time (RFC 3339), or a time that long ago (`15m`, `2h`,
/// `1d 12h`: a duration with units, as `humantime` reads it).
fn parse_from(flag: &str, from: &str) -> anyhow::Result<Start> {
    parse_start(flag, from, std::time::SystemTime::now())
}

fn parse_start(flag: &str, from: &str, now: std::time::SystemTime) -> anyhow::Result<Start> {
    Ok(match from {
        "earliest" => Start::Earliest,
        "latest" => Start::Latest,
        other => match other.parse::<u64>() {
            Ok(offset) => Start::Offset(offset),
            Err(_) => {
                let time = humantime::parse_rfc3339_weak(other)
                    .ok()
                    .or_else(|| humantime::parse_duration(other).ok().and_then(|ago| now.checked_sub(ago)))
                    .with_context(|| {
                        format!(
                            "{flag} must be earliest, latest, an offset, an RFC 3339 time \
                             (2026-11-25T10:00:00Z) or how long ago (15m, 2h, 1d), got {other:?}"
                        )
                    })?;
                let ms = time.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
                Start::Timestamp(ms)
            }
        },
    })
}

fn text(bytes: Option<&[u8]>) -> serde_json::Value {
    match bytes {
        None => serde_json::Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => serde_json::Value::String(s.to_string()),
            Err(_) => serde_json::json!({ "b64": B64.encode(b) }),
        },
    }
}

/// One record as one line: its value (`text`), or partition, offset, timestamp, key, value and
/// headers (`json`).
/// With `decoder`, framed Avro values print as JSON.
fn write_record(
    out: &mut impl Write,
    format: Format,
    r: &proto::FetchedRecord,
    decoder: Option<&mut ValueDecoder>,
) -> std::io::Result<()> {
    let decoded = decoder.and_then(|d| r.value.as_deref().and_then(|v| d.decode(v)));
    match format {
        Format::Text => match decoded {
            Some(value) => writeln!(out, "{value}"),
            None => writeln!(out, "{}", r.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default()),
        },
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> =
                r.headers.iter().map(|h| (h.name.clone(), text(Some(&h.value)))).collect();
            let value = decoded.unwrap_or_else(|| text(r.value.as_deref()));
            let line = serde_json::json!({
                "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp_ms,
                "key": text(r.key.as_deref()), "value": value, "headers": headers,
            });
            writeln!(out, "{line}")
        }
    }
}

/// When `strata consume` (without a group) stops.
#[derive(Clone, Copy, Debug)]
struct Stop {
    /// After this many records.
    max: Option<u64>,
    /// At each partition's high watermark as its first fetch saw it.
    to_end: bool,
}

/// Which partitions `strata consume` (without a group) reads.
#[derive(Clone, Copy, Debug)]
struct Partitions {
    /// Only this one; otherwise all of them.
    only: Option<u32>,
    /// When following all of them: how often to look for new ones.
    metadata_max_age: Duration,
}

/// One partition `strata consume` reads: where it is, and (with `--to-end`) where it stops.
struct Reading {
    partition: u32,
    position: Start,
    end: Option<u64>,
    /// Records below this offset are not printed (`--from N` past the partition's end).
    skip_below: u64,
}

impl Reading {
    fn new(partition: u32, position: Start) -> Self {
        Self { partition, position, end: None, skip_below: 0 }
    }

    fn done(&self) -> bool {
        matches!((self.position, self.end), (Start::Offset(at), Some(end)) if at >= end)
    }

    /// After the server answered that the position is not in the partition: reads from its first
    /// record when the position is before it (retention removed the records there), or from its
    /// end, printing nothing below the position, when it is past it (`--from N` on a partition
    /// that holds fewer records). When it is neither by now (records arrived meanwhile), it is
    /// read from there again. `refused` is the server's answer, returned for a position that is
    /// not an offset.
    async fn reposition(&mut self, client: &Client, topic: &str, refused: ClientError) -> anyhow::Result<()> {
        let Start::Offset(at) = self.position else { return Err(refused.into()) };
        let bounds = client.fetch(topic, self.partition, Start::Earliest, 1, Duration::ZERO).await?;
        let moved = if at < bounds.log_start_offset {
            eprintln!(
                "strata: partition {} starts at offset {} (the records before it are gone); reading from there",
                self.partition, bounds.log_start_offset
            );
            bounds.log_start_offset
        } else {
            self.skip_below = self.skip_below.max(at);
            bounds.high_watermark.min(at)
        };
        self.position = Start::Offset(moved);
        Ok(())
    }
}

/// Whether the server refused a fetch because its offset is not in the partition.
fn out_of_range(e: &ClientError) -> bool {
    matches!(e, ClientError::Server { code: tonic::Code::OutOfRange, .. })
}

/// How long a caught-up partition reader long-polls before asking again (the server caps it too).
const FOLLOW_WAIT: Duration = Duration::from_secs(30);
/// Partitions whose readers share one connection: each has a request outstanding while it
/// waits, and a server takes only so many concurrent requests per HTTP/2 connection (200 by
/// default); a long-poll queued behind them would not be waiting at the server.
const READERS_PER_CONNECTION: usize = 100;
/// Pages being fetched or waiting to be printed while readers catch up, over all partitions:
/// what bounds the memory of reading a wide topic (a page holds up to 1,000 records).
const PAGES_IN_FLIGHT: usize = 16;

/// `strata consume` without a group: one reader task per partition, each fetching its pages in
/// order, catching up a page at a time and, once caught up, long-polling for the next record;
/// the caller's task prints what they send, in arrival order across partitions.
async fn consume(
    server: &ServerArg,
    topic: &str,
    from: &str,
    partitions: Partitions,
    stop: Stop,
    format: Format,
    mut decoder: Option<&mut ValueDecoder>,
) -> anyhow::Result<()> {
    let connections = vec![connect(server).await?];
    let info = connections[0].admin().describe_topic(topic).await?;
    let numbers: Vec<u32> = match partitions.only {
        Some(p) if (p as usize) < info.partitions.len() => vec![p],
        Some(p) => bail!("topic {topic:?} has partitions 0..{}, not {p}", info.partitions.len()),
        None => (0..info.partitions.len() as u32).collect(),
    };
    // Following every partition, partitions added meanwhile are read too, from their start:
    // whatever they hold came after this consume began.
    let discover = partitions.only.is_none() && !stop.to_end;
    let start = parse_from("--from", from)?;
    let reader = Reader {
        topic: Arc::from(topic),
        to_end: stop.to_end,
        limit: stop.max.map_or(1000, |m| m.min(1000)) as u32,
        pages: Arc::new(tokio::sync::Semaphore::new(PAGES_IN_FLIGHT)),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(PAGES_IN_FLIGHT);
    let mut readers = Readers { server, connections, reader, tx: Some(tx), tasks: tokio::task::JoinSet::new() };
    for &partition in &numbers {
        readers.spawn(partition, start).await?;
    }
    if !discover {
        // The channel then closes once every reader is done.
        readers.tx = None;
    }
    let mut printer = Printer::new(format, stop);
    let mut next_lookup = tokio::time::Instant::now() + partitions.metadata_max_age;
    let mut known = numbers.len() as u32;
    loop {
        tokio::select! {
            page = rx.recv() => match page {
                // Every reader is done (`--to-end`); following, they never are.
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(records)) => {
                    if let Printed::Enough = printer.print(records, decoder.as_deref_mut())? {
                        break;
                    }
                }
            },
            () = tokio::time::sleep_until(next_lookup), if discover => {
                let info = readers.connections[0].admin().describe_topic(topic).await?;
                for partition in known..info.partitions.len() as u32 {
                    eprintln!("strata: reading partition {partition}, added to {topic}");
                    readers.spawn(partition, Start::Earliest).await?;
                }
                known = known.max(info.partitions.len() as u32);
                next_lookup = tokio::time::Instant::now() + partitions.metadata_max_age;
            }
        }
    }
    printer.finish();
    Ok(())
}

/// The partition readers of one `strata consume`, spread over connections.
struct Readers<'a> {
    server: &'a ServerArg,
    connections: Vec<Client>,
    reader: Reader,
    /// Handed to each new reader; `None` once no more will be spawned.
    tx: Option<tokio::sync::mpsc::Sender<Page>>,
    /// Aborted when dropped (the printer stopped).
    tasks: tokio::task::JoinSet<()>,
}

impl Readers<'_> {
    async fn spawn(&mut self, partition: u32, position: Start) -> anyhow::Result<()> {
        let Some(tx) = &self.tx else { bail!("no more partition readers are expected") };
        let connection = self.tasks.len() / READERS_PER_CONNECTION;
        if connection >= self.connections.len() {
            self.connections.push(connect(self.server).await?);
        }
        let client = self.connections[connection].clone();
        self.tasks.spawn(self.reader.clone().run(client, Reading::new(partition, position), tx.clone()));
        Ok(())
    }
}

/// What every partition's reader task shares.
#[derive(Clone)]
struct Reader {
    topic: Arc<str>,
    to_end: bool,
    /// Records a page asks for.
    limit: u32,
    /// Permits for pages fetched while catching up ([`PAGES_IN_FLIGHT`]).
    pages: Arc<tokio::sync::Semaphore>,
}

/// What a reader sends the printer: a page's records to print, or why it stopped.
type Page = anyhow::Result<Vec<proto::FetchedRecord>>;

impl Reader {
    /// Reads one partition until it is done (`--to-end`) or the printer is gone.
    async fn run(self, client: Client, mut r: Reading, tx: tokio::sync::mpsc::Sender<Page>) {
        if let Err(e) = self.read(&client, &mut r, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    }

    async fn read(&self, client: &Client, r: &mut Reading, tx: &tokio::sync::mpsc::Sender<Page>) -> anyhow::Result<()> {
        let mut caught_up = false;
        while !r.done() {
            // Catching up, a page at a time under a permit, so that a wide topic's readers hold
            // at most `PAGES_IN_FLIGHT` full pages; caught up, a long-poll for one record (a
            // burst over many partitions then holds a record each), then catching up again.
            let permit = match caught_up {
                false => Some(self.pages.acquire().await?),
                true => None,
            };
            let (limit, wait) = if caught_up { (1, FOLLOW_WAIT) } else { (self.limit, Duration::ZERO) };
            let page = match client.fetch(&self.topic, r.partition, r.position, limit, wait).await {
                Ok(page) => page,
                Err(e) if out_of_range(&e) => {
                    r.reposition(client, &self.topic, e).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            r.position = Start::Offset(page.next_offset);
            if self.to_end && r.end.is_none() {
                r.end = Some(page.high_watermark);
            }
            // Records appended after the end was taken, or below `--from`, are not printed.
            let records: Vec<_> = page
                .records
                .into_iter()
                .filter(|rec| rec.offset >= r.skip_below && r.end.is_none_or(|end| rec.offset < end))
                .collect();
            caught_up = page.next_offset >= page.high_watermark;
            if !records.is_empty() && tx.send(Ok(records)).await.is_err() {
                return Ok(()); // the printer has stopped
            }
            drop(permit);
            if self.to_end && caught_up {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// What [`Printer::print`] did.
enum Printed {
    Continue,
    /// `--max` records are out: stop.
    Enough,
}

/// Prints fetched records for `strata consume` (without a group), counts them against `--max`,
/// and says on stderr how fast it goes (every second while records flow, and when it stops).
struct Printer {
    format: Format,
    stop: Stop,
    printed: u64,
    /// Bytes of the values printed.
    bytes: u64,
    started: Instant,
    last_progress: Instant,
}

impl Printer {
    fn new(format: Format, stop: Stop) -> Self {
        let now = Instant::now();
        Self { format, stop, printed: 0, bytes: 0, started: now, last_progress: now }
    }

    /// The closing line on stderr, once reading stops by itself (`--max` or `--to-end`).
    fn finish(&self) {
        eprintln!("strata: consumed {}", rate(self.printed, self.bytes, self.started.elapsed()));
    }

    fn print(
        &mut self,
        records: Vec<proto::FetchedRecord>,
        mut decoder: Option<&mut ValueDecoder>,
    ) -> anyhow::Result<Printed> {
        let mut printed = Printed::Continue;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for record in records {
            write_record(&mut out, self.format, &record, decoder.as_deref_mut())?;
            self.printed += 1;
            self.bytes += record.value.as_ref().map_or(0, |v| v.len() as u64);
            if self.stop.max.is_some_and(|m| self.printed >= m) {
                printed = Printed::Enough;
                break;
            }
        }
        out.flush()?;
        if self.last_progress.elapsed() > Duration::from_secs(1) {
            eprintln!("strata: {}", rate(self.printed, self.bytes, self.started.elapsed()));
            self.last_progress = Instant::now();
        }
        Ok(printed)
    }
}

/// Says on stderr what the group gives and takes, and commits what was printed of a revoked
/// partition (everything `poll` returned has been printed when the next `poll` runs a rebalance).
struct Announce;

impl RebalanceListener for Announce {
    fn on_revoked(
        &mut self,
        revoked: &[TopicPartition],
        positions: &std::collections::BTreeMap<TopicPartition, u64>,
    ) -> Vec<(TopicPartition, u64)> {
        eprintln!("strata: revoked {}", join_partitions(revoked));
        revoked.iter().filter_map(|tp| positions.get(tp).map(|&o| (tp.clone(), o))).collect()
    }

    fn on_assigned(&mut self, assigned: &[TopicPartition]) {
        eprintln!("strata: assigned {}", join_partitions(assigned));
    }
}

fn join_partitions(tps: &[TopicPartition]) -> String {
    tps.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

/// Cancelled by the first SIGINT (Ctrl-C) or SIGTERM; a second one exits at once.
fn stop_on_signal() -> tokio_util::sync::CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            eprintln!("strata: cannot listen for Ctrl-C; stop with --max");
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        stop.cancel();
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        std::process::exit(130);
    });
    token
}

/// `consume --group`: reads as a group member until `--max` records or Ctrl-C, then leaves.
///
/// Commits: `auto` commits the positions of what was printed every 5 s and when leaving;
/// `manual` commits after each printed batch. Either way a partition taken away in a rebalance
/// gets what was printed of it committed first, and `--max` stops after exactly that many records,
/// so the next run with the same group starts right after the last record printed.
#[allow(clippy::too_many_arguments)] // the flags of one command, passed through
async fn consume_group(
    client: &Client,
    topic: &str,
    group: &str,
    from: &str,
    commit: CommitArg,
    max: Option<u64>,
    format: Format,
    mut decoder: Option<&mut ValueDecoder>,
) -> anyhow::Result<()> {
    const BATCH: u64 = 500;
    let reset = match from {
        "earliest" => OffsetReset::Earliest,
        "latest" => OffsetReset::Latest,
        other => bail!(
            "with --group, --from is where partitions without a committed offset start: earliest or latest, not {other:?}"
        ),
    };
    let config = GroupConfig {
        reset,
        max_records: max.map_or(BATCH, |m| m.clamp(1, BATCH)) as u32,
        auto_commit: match commit {
            CommitArg::Auto => Some(Duration::from_secs(5)),
            CommitArg::Manual => None,
        },
        ..GroupConfig::new(group, [topic])
    };
    let stop = stop_on_signal();
    let mut consumer = client.group_consumer_with_listener(config, Announce).await?;
    eprintln!("strata: joined group {group} as {} (generation {})", consumer.member_id(), consumer.generation());
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let (mut printed, mut bytes) = (0u64, 0u64);
    let stdout = std::io::stdout();
    while !stop.is_cancelled() {
        if let Some(m) = max {
            if printed >= m {
                break;
            }
            // Never return (and so never commit) more than will be printed.
            consumer.set_max_poll_records((m - printed).min(BATCH) as usize);
        }
        // Short polls, not a cancelled one: Ctrl-C is noticed within this, and a rebalance is
        // never abandoned half-way (see strata_client::group, "Cancel safety").
        let records = match consumer.poll(Duration::from_millis(500)).await {
            Ok(records) => records,
            Err(e) if e.is_stale_generation() => {
                eprintln!("strata: warning: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if records.is_empty() {
            continue;
        }
        let mut out = stdout.lock();
        for r in &records {
            write_record(&mut out, format, &r.record, decoder.as_deref_mut())?;
            bytes += r.record.value.as_ref().map_or(0, |v| v.len() as u64);
        }
        out.flush()?;
        drop(out);
        printed += records.len() as u64;
        if commit == CommitArg::Manual
            && let Err(e) = consumer.commit().await
        {
            if !e.is_stale_generation() {
                return Err(e.into());
            }
            eprintln!("strata: warning: {e}");
        }
        if last_progress.elapsed() > Duration::from_secs(1) {
            eprintln!("strata: {}", rate(printed, bytes, start.elapsed()));
            last_progress = Instant::now();
        }
    }
    consumer.close().await?;
    eprintln!("strata: consumed {}; left group {group}", rate(printed, bytes, start.elapsed()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn from_takes_names_offsets_times_and_how_long_ago() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: &str| parse_start("--from", s, now).map_err(|e| e.to_string());
        assert!(matches!(at("earliest"), Ok(Start::Earliest)));
        assert!(matches!(at("latest"), Ok(Start::Latest)));
        assert!(matches!(at("42"), Ok(Start::Offset(42))));
        assert!(matches!(at("2026-11-25T10:00:00Z"), Ok(Start::Timestamp(1_795_600_800_000))));
        assert!(matches!(at("15m"), Ok(Start::Timestamp(ms)) if ms == 1_800_000_000_000 - 900_000));
        assert!(matches!(at("1d 2h"), Ok(Start::Timestamp(ms)) if ms == 1_800_000_000_000 - 93_600_000));
        let e = at("yesterday").unwrap_err();
        assert!(e.starts_with("--from must be earliest, latest") && e.contains("\"yesterday\""), "{e}");
        assert!(at("-5").is_err(), "no negative offsets");
    }
}

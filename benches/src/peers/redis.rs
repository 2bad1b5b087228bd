//! Redis Streams under the common load generator, over a minimal RESP2 client written here (the
//! same tokio sockets with TCP_NODELAY as every other system).
//!
//! Produce: each batch is a pipeline of `XADD <partition key> * v <value>`, up to `window`
//! pipelines in flight per connection; keyed (W6), each record goes to its key's stream as
//! `XADD <partition key> * k <key> v <value>`. Consume: `XREADGROUP GROUP g c COUNT <batch> STREAMS ...`
//! with the previous read's `XACK` pipelined before it.
//!
//! A group (W4): one consumer group `g` on every stream key; each member is a consumer of it on
//! its own connection, reading one key per `XREADGROUP ... COUNT 1000` (rotating over the keys)
//! with the previous read's `XACK` pipelined before it.
//!
//! Durable = AOF with `appendfsync always` (Redis writes and fsyncs the AOF before replying to the
//! commands of one event-loop round); relaxed = `appendfsync everysec`. RDB snapshots are off.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::group::GroupProgress;
use super::{Mode, Outcome, Placement, Proc, Reading, Workload};

/// How W4 reads from Redis, for the report.
pub const GROUP_METHOD: &str = "consumer group `g` on each of the 4 stream keys, 4 consumers, each \
     `XREADGROUP COUNT 1000` on one key at a time (rotating), the previous read's `XACK` pipelined before it";

#[derive(Debug)]
pub struct Redis {
    pub proc: Proc,
    port: u16,
}

/// A RESP2 reply.
#[derive(Debug)]
enum Value {
    Simple,
    Int(i64),
    Bulk(Option<bytes::Bytes>),
    Array(Option<Vec<Value>>),
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;

/// Reads one reply; a RESP error reply is an error.
async fn read_value(r: &mut Reader, line: &mut Vec<u8>) -> anyhow::Result<Value> {
    line.clear();
    let n = r.read_until(b'\n', line).await?;
    anyhow::ensure!(n >= 3, "redis closed the connection");
    let body = &line[1..line.len() - 2];
    let num = || -> anyhow::Result<i64> { Ok(std::str::from_utf8(body)?.parse::<i64>()?) };
    Ok(match line[0] {
        b'+' => Value::Simple,
        b':' => Value::Int(num()?),
        b'-' => anyhow::bail!("redis error: {}", String::from_utf8_lossy(body)),
        b'$' => {
            let len = num()?;
            if len < 0 {
                Value::Bulk(None)
            } else {
                let mut buf = vec![0u8; len as usize + 2];
                r.read_exact(&mut buf).await?;
                buf.truncate(len as usize);
                Value::Bulk(Some(buf.into()))
            }
        }
        b'*' => {
            let len = num()?;
            if len < 0 {
                Value::Array(None)
            } else {
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(Box::pin(read_value(r, line)).await?);
                }
                Value::Array(Some(items))
            }
        }
        other => anyhow::bail!("unexpected RESP type byte {other:#x}"),
    })
}

/// Appends one command in RESP to `buf`.
fn command(buf: &mut Vec<u8>, args: &[&[u8]]) {
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
}

fn key(partition: u32) -> String {
    format!("p{partition}")
}

/// A stream entry id `<ms>-<seq>` as one number that orders as the ids do.
fn entry_id(id: &[u8]) -> anyhow::Result<u128> {
    let text = std::str::from_utf8(id)?;
    let (ms, seq) = text.split_once('-').with_context(|| format!("bad stream entry id {text:?}"))?;
    Ok(u128::from(ms.parse::<u64>()?) << 64 | u128::from(seq.parse::<u64>()?))
}

/// The entries of an `XREADGROUP` reply for one key: (id, value).
fn entries(reply: Value) -> anyhow::Result<Vec<(bytes::Bytes, Option<bytes::Bytes>)>> {
    let Value::Array(Some(streams)) = reply else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(Some(mut pair)) = stream else { anyhow::bail!("bad XREADGROUP reply") };
        let (Some(Value::Array(Some(list))), Some(Value::Bulk(Some(_)))) = (pair.pop(), pair.pop()) else {
            anyhow::bail!("bad XREADGROUP stream reply")
        };
        for entry in list {
            let Value::Array(Some(mut e)) = entry else { anyhow::bail!("bad stream entry") };
            let (Some(Value::Array(Some(mut fields))), Some(Value::Bulk(Some(id)))) = (e.pop(), e.pop()) else {
                anyhow::bail!("bad stream entry")
            };
            let value = match fields.pop() {
                Some(Value::Bulk(v)) => v,
                _ => None,
            };
            out.push((id, value));
        }
    }
    Ok(out)
}

impl Redis {
    pub async fn start(binary: &Path, data_dir: &Path, mode: Mode) -> anyhow::Result<Redis> {
        std::fs::create_dir_all(data_dir)?;
        let port = super::free_port()?;
        let fsync = match mode {
            Mode::Durable => "always",
            Mode::Relaxed => "everysec",
        };
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(data_dir)
            .args(["--appendonly", "yes", "--appendfsync", fsync, "--save", "", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--logfile", "redis.log", "--tcp-keepalive", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut proc = Proc::of(child);
        super::wait_for_port(&mut proc, port, Duration::from_secs(10)).await?;
        Ok(Redis { proc, port })
    }

    pub async fn prepare(&self, _w: &Workload) -> anyhow::Result<()> {
        Ok(())
    }

    async fn connect(&self) -> anyhow::Result<(Reader, tokio::net::tcp::OwnedWriteHalf)> {
        let (r, w) = super::connect(self.port).await?.into_split();
        Ok((BufReader::with_capacity(1 << 20, r), w))
    }

    pub async fn produce(&self, w: &Workload, i: usize, deadline: Instant) -> anyhow::Result<Outcome> {
        let partitions = w.owned(i, w.producers);
        anyhow::ensure!(!partitions.is_empty(), "producer {i} owns no partition");
        let value = w.value();
        // One pipeline per partition, built once (the IDs are assigned by the server: `*`).
        // Keyed: each batch's pipeline is built when sent, every record to its key's stream.
        let pipelines: Vec<Vec<u8>> = if w.keyed() {
            Vec::new()
        } else {
            partitions
                .iter()
                .map(|p| {
                    let mut buf = Vec::with_capacity(w.batch_records * (w.record_bytes + 64));
                    let k = key(*p);
                    for _ in 0..w.batch_records {
                        command(&mut buf, &[b"XADD", k.as_bytes(), b"*", b"v", &value]);
                    }
                    buf
                })
                .collect()
        };
        let (mut reader, mut writer) = self.connect().await?;
        let window = Arc::new(tokio::sync::Semaphore::new(w.window.max(1)));
        // Batches in flight, in send order (replies come back in order on one connection).
        let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel::<(Instant, Placement)>();
        let batches = w.batches_for(i);
        let start = Instant::now();
        let feeder = {
            let (window, w, partitions) = (Arc::clone(&window), w.clone(), partitions.clone());
            tokio::spawn(async move {
                let mut n_sent = 0u64;
                let mut keyed = Vec::new();
                let mut pacer = w.pacer(start)?;
                for n in 0..batches {
                    let due = w.due(start, n);
                    if !super::turn(&mut pacer, n, deadline).await {
                        break;
                    }
                    window.acquire().await?.forget();
                    let placement = w.placement(i, n, &partitions);
                    let pipeline = match &placement {
                        Placement::One(_) => &pipelines[n as usize % partitions.len()],
                        Placement::Each(ps) => {
                            keyed.clear();
                            for (r, p) in ps.iter().enumerate() {
                                let (k, id) = (key(*p), w.key(i, n, r));
                                command(&mut keyed, &[b"XADD", k.as_bytes(), b"*", b"k", id.as_bytes(), b"v", &value]);
                            }
                            &keyed
                        }
                    };
                    sent_tx.send((due.unwrap_or_else(Instant::now), placement.clone()))?;
                    writer.write_all(pipeline).await?;
                    n_sent += 1;
                }
                Ok::<_, anyhow::Error>((n_sent, writer))
            })
        };
        let mut out = Outcome::new()?;
        out.measured_from = Some(w.measured_from(start));
        let mut per_partition = std::collections::BTreeMap::<u32, u64>::new();
        let mut line = Vec::new();
        let mut acked = 0u64;
        while let Some((t, placement)) = sent.recv().await {
            for _ in 0..w.batch_records {
                match read_value(&mut reader, &mut line).await? {
                    Value::Bulk(Some(_)) => {}
                    other => anyhow::bail!("unexpected XADD reply {other:?}"),
                }
            }
            out.record_latency(t)?;
            out.records += w.batch_records as u64;
            out.bytes += (w.batch_records * w.record_bytes) as u64;
            placement.count(w.batch_records, &mut per_partition);
            acked += 1;
            window.add_permits(1);
        }
        let (n_sent, _writer) = feeder.await??;
        anyhow::ensure!(acked == n_sent, "{n_sent} pipelines sent, {acked} acknowledged");
        out.per_partition = per_partition.into_iter().collect();
        Ok(out)
    }

    /// A consumer group `g` per stream key, created at `0`; reads `COUNT batch` from all of the
    /// consumer's keys at once and acknowledges each read with the next one.
    pub async fn consume(&self, w: &Workload, i: usize, read: Reading<'_>) -> anyhow::Result<Outcome> {
        let Reading { expected, deadline } = read;
        let (mut reader, mut writer) = self.connect().await?;
        let mut line = Vec::new();
        let mut buf = Vec::new();
        for (p, _) in expected {
            command(&mut buf, &[b"XGROUP", b"CREATE", key(*p).as_bytes(), b"g", b"0", b"MKSTREAM"]);
        }
        writer.write_all(&buf).await?;
        for _ in expected {
            read_value(&mut reader, &mut line).await?;
        }
        let consumer = format!("c{i}");
        let count = w.batch_records.to_string();
        let mut remaining: u64 = expected.iter().map(|(_, n)| n).sum();
        let mut out = Outcome::new()?;
        let mut acks: Vec<(String, Vec<bytes::Bytes>)> = Vec::new();
        while remaining > 0 && Instant::now() < deadline {
            buf.clear();
            let pending_acks = acks.len();
            for (k, ids) in acks.drain(..) {
                let mut args: Vec<&[u8]> = vec![b"XACK", k.as_bytes(), b"g"];
                args.extend(ids.iter().map(|id| id.as_ref()));
                command(&mut buf, &args);
            }
            let keys: Vec<String> = expected.iter().map(|(p, _)| key(*p)).collect();
            let mut args: Vec<&[u8]> =
                vec![b"XREADGROUP", b"GROUP", b"g", consumer.as_bytes(), b"COUNT", count.as_bytes(), b"STREAMS"];
            args.extend(keys.iter().map(|k| k.as_bytes()));
            args.extend(keys.iter().map(|_| b">".as_slice()));
            command(&mut buf, &args);
            let t = Instant::now();
            writer.write_all(&buf).await?;
            for _ in 0..pending_acks {
                read_value(&mut reader, &mut line).await?;
            }
            let reply = read_value(&mut reader, &mut line).await?;
            out.record_latency(t)?;
            let Value::Array(Some(streams)) = reply else { anyhow::bail!("{remaining} records never arrived") };
            for stream in streams {
                let Value::Array(Some(mut pair)) = stream else { anyhow::bail!("bad XREADGROUP reply") };
                let (Some(Value::Array(Some(entries))), Some(Value::Bulk(Some(k)))) = (pair.pop(), pair.pop()) else {
                    anyhow::bail!("bad XREADGROUP stream reply")
                };
                let mut ids = Vec::with_capacity(entries.len());
                for entry in entries {
                    let Value::Array(Some(mut e)) = entry else { anyhow::bail!("bad stream entry") };
                    let (Some(Value::Array(Some(fields))), Some(Value::Bulk(Some(id)))) = (e.pop(), e.pop()) else {
                        anyhow::bail!("bad stream entry")
                    };
                    // Field `v` (keyed entries also carry `k`).
                    let value = fields.chunks(2).find_map(|f| match f {
                        [Value::Bulk(Some(name)), Value::Bulk(Some(v))] if &name[..] == b"v" => Some(v.len()),
                        _ => None,
                    });
                    out.bytes += value.unwrap_or(0) as u64;
                    out.records += 1;
                    remaining = remaining.saturating_sub(1);
                    ids.push(id);
                }
                acks.push((String::from_utf8_lossy(&k).into_owned(), ids));
            }
        }
        buf.clear();
        let n = acks.len();
        for (k, ids) in acks.drain(..) {
            let mut args: Vec<&[u8]> = vec![b"XACK", k.as_bytes(), b"g"];
            args.extend(ids.iter().map(|id| id.as_ref()));
            command(&mut buf, &args);
        }
        writer.write_all(&buf).await?;
        for _ in 0..n {
            read_value(&mut reader, &mut line).await?;
        }
        Ok(out)
    }

    /// W4: the consumer group `g` on every stream key, reading from the start.
    pub async fn prepare_group(&self, w: &Workload) -> anyhow::Result<()> {
        let (mut reader, mut writer) = self.connect().await?;
        let (mut buf, mut line) = (Vec::new(), Vec::new());
        for p in 0..w.partitions {
            command(&mut buf, &[b"XGROUP", b"CREATE", key(p).as_bytes(), b"g", b"0", b"MKSTREAM"]);
        }
        writer.write_all(&buf).await?;
        for _ in 0..w.partitions {
            read_value(&mut reader, &mut line).await?;
        }
        Ok(())
    }

    /// Consumer `w<i>` of group `g`: one key per read, starting at key `i`, until the whole
    /// group is done; acknowledges every entry it read.
    pub async fn group_member(&self, w: &Workload, i: usize, progress: Arc<GroupProgress>) -> anyhow::Result<Outcome> {
        progress.joined();
        let (mut reader, mut writer) = self.connect().await?;
        let consumer = format!("w{i}");
        let count = w.batch_records.to_string();
        let keys = w.partitions.max(1) as usize;
        let (mut buf, mut line) = (Vec::new(), Vec::new());
        let mut out = Outcome::new()?;
        let mut acks: Option<(String, Vec<bytes::Bytes>)> = None;
        let (mut next, mut empty) = (i, 0usize);
        let ack = |buf: &mut Vec<u8>, k: &str, ids: &[bytes::Bytes]| {
            let mut args: Vec<&[u8]> = vec![b"XACK", k.as_bytes(), b"g"];
            args.extend(ids.iter().map(|id| id.as_ref()));
            command(buf, &args);
        };
        while !progress.done() {
            progress.check()?;
            let partition = (next % keys) as u32;
            next += 1;
            let k = key(partition);
            buf.clear();
            let acking = acks.take();
            if let Some((ak, ids)) = &acking {
                ack(&mut buf, ak, ids);
            }
            command(
                &mut buf,
                &[
                    b"XREADGROUP",
                    b"GROUP",
                    b"g",
                    consumer.as_bytes(),
                    b"COUNT",
                    count.as_bytes(),
                    b"STREAMS",
                    k.as_bytes(),
                    b">",
                ],
            );
            let t = Instant::now();
            writer.write_all(&buf).await?;
            if acking.is_some() {
                read_value(&mut reader, &mut line).await?;
            }
            let read = entries(read_value(&mut reader, &mut line).await?)?;
            if read.is_empty() {
                // This key is drained for the group: try the next; after a full round, breathe.
                empty += 1;
                if empty >= keys {
                    empty = 0;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                continue;
            }
            empty = 0;
            out.record_latency(t)?;
            let mut ids = Vec::with_capacity(read.len());
            for (id, value) in read {
                out.seen.record(partition, entry_id(&id)?);
                out.bytes += value.map_or(0, |v| v.len()) as u64;
                ids.push(id);
            }
            out.records += ids.len() as u64;
            progress.add(ids.len() as u64);
            acks = Some((k, ids));
        }
        if let Some((k, ids)) = acks {
            buf.clear();
            ack(&mut buf, &k, &ids);
            writer.write_all(&buf).await?;
            read_value(&mut reader, &mut line).await?;
        }
        Ok(out)
    }

    /// Nothing is pending in group `g` on any stream (every entry read was acknowledged).
    pub async fn verify_group(&self, expected: &[(u32, u64)]) -> anyhow::Result<&'static str> {
        let (mut reader, mut writer) = self.connect().await?;
        let (mut buf, mut line) = (Vec::new(), Vec::new());
        for &(p, _) in expected {
            buf.clear();
            command(&mut buf, &[b"XPENDING", key(p).as_bytes(), b"g"]);
            writer.write_all(&buf).await?;
            let pending = match read_value(&mut reader, &mut line).await? {
                Value::Array(Some(summary)) => match summary.first() {
                    Some(Value::Int(n)) => *n,
                    other => anyhow::bail!("bad XPENDING reply {other:?}"),
                },
                other => anyhow::bail!("bad XPENDING reply {other:?}"),
            };
            anyhow::ensure!(pending == 0, "stream {}: {pending} entries read but never acknowledged", key(p));
        }
        Ok("XPENDING of group `g` is 0 on every stream")
    }
}

/// `redis-server --version` → `7.0.15`.
pub fn version(binary: &Path) -> String {
    let v = super::version_of(binary);
    v.split_whitespace().find_map(|w| w.strip_prefix("v=")).map(str::to_string).unwrap_or(v)
}

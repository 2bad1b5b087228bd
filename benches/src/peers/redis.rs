//! Redis Streams under the common load generator, over a minimal RESP2 client written here (the
//! same tokio sockets with TCP_NODELAY as every other system).
//!
//! Produce: each batch is a pipeline of `XADD <partition key> * v <value>`, up to `window`
//! pipelines in flight per connection. Consume: `XREADGROUP GROUP g c COUNT <batch> STREAMS ...`
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

use super::{Mode, Outcome, Proc, Workload};

#[derive(Debug)]
pub struct Redis {
    pub proc: Proc,
    port: u16,
}

/// A RESP2 reply.
#[derive(Debug)]
enum Value {
    Simple,
    Int,
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
        b':' => Value::Int,
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
        let pipelines: Vec<Vec<u8>> = partitions
            .iter()
            .map(|p| {
                let mut buf = Vec::with_capacity(w.batch_records * (w.record_bytes + 64));
                let k = key(*p);
                for _ in 0..w.batch_records {
                    command(&mut buf, &[b"XADD", k.as_bytes(), b"*", b"v", &value]);
                }
                buf
            })
            .collect();
        let (mut reader, mut writer) = self.connect().await?;
        let window = Arc::new(tokio::sync::Semaphore::new(w.window.max(1)));
        // Batches in flight, in send order (replies come back in order on one connection).
        let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel::<(Instant, u32)>();
        let batches = w.batches_for(i);
        let start = Instant::now();
        let feeder = {
            let (window, w, partitions) = (Arc::clone(&window), w.clone(), partitions.clone());
            tokio::spawn(async move {
                let mut n_sent = 0u64;
                for n in 0..batches {
                    let due = w.due(start, n);
                    if let Some(due) = due {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    window.acquire().await?.forget();
                    let slot = n as usize % partitions.len();
                    sent_tx.send((due.unwrap_or_else(Instant::now), partitions[slot]))?;
                    writer.write_all(&pipelines[slot]).await?;
                    n_sent += 1;
                }
                Ok::<_, anyhow::Error>((n_sent, writer))
            })
        };
        let mut out = Outcome::new()?;
        let mut per_partition = std::collections::BTreeMap::<u32, u64>::new();
        let mut line = Vec::new();
        let mut acked = 0u64;
        while let Some((t, partition)) = sent.recv().await {
            for _ in 0..w.batch_records {
                match read_value(&mut reader, &mut line).await? {
                    Value::Bulk(Some(_)) => {}
                    other => anyhow::bail!("unexpected XADD reply {other:?}"),
                }
            }
            out.record_latency(t)?;
            out.records += w.batch_records as u64;
            out.bytes += (w.batch_records * w.record_bytes) as u64;
            *per_partition.entry(partition).or_default() += w.batch_records as u64;
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
    pub async fn consume(&self, w: &Workload, i: usize, expected: &[(u32, u64)]) -> anyhow::Result<Outcome> {
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
        while remaining > 0 {
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
                    if let Some(Value::Bulk(Some(v))) = fields.get(1) {
                        out.bytes += v.len() as u64;
                    }
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
}

/// `redis-server --version` → `7.0.15`.
pub fn version(binary: &Path) -> String {
    let v = super::version_of(binary);
    v.split_whitespace().find_map(|w| w.strip_prefix("v=")).map(str::to_string).unwrap_or(v)
}

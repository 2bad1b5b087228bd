//! Appends to a log under `always` durability from several threads until killed, printing one
//! line per acknowledged batch: `ack <base offset> <last offset> <tag>`. Each record's value is
//! `<tag>-<index>`, so a test can check every acknowledged byte after a `kill -9`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use strata_storage::{BatchBuilder, Compression, Durability, Log, LogConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("usage: crash_appender DIR SEED")?;
    let seed: u64 = args.next().context("usage: crash_appender DIR SEED")?.parse()?;
    let config = LogConfig { segment_bytes: 64 * 1024, durability: Durability::Always, ..LogConfig::default() };
    let log = Log::open(&dir, config)?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (log, out) = (log.clone(), Arc::clone(&out));
            std::thread::spawn(move || -> anyhow::Result<()> {
                for i in 0u64.. {
                    let tag = seed * 1_000_000_000 + t * 100_000_000 + i;
                    let n = 1 + (tag % 13) as usize;
                    let codec = [Compression::None, Compression::Lz4, Compression::Zstd][(tag % 3) as usize];
                    let mut b = BatchBuilder::new(codec);
                    for r in 0..n {
                        let value = format!("{tag}-{r}-{}", "p".repeat((tag % 200) as usize));
                        b.push(tag as i64, Some(tag.to_string().as_bytes()), Some(value.as_bytes()), &[]);
                    }
                    let info = log.append(b.build()?)?.wait()?;
                    let mut out = out.lock().map_err(|_| anyhow::anyhow!("stdout lock poisoned"))?;
                    writeln!(out, "ack {} {} {tag}", info.base_offset, info.last_offset)?;
                    out.flush()?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("appender panicked"))??;
    }
    Ok(())
}

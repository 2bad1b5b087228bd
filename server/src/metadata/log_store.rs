//! The durable Raft log: `raft-log.jsonl` (one JSON record per line, fsynced on append; truncate
//! and purge rewrite it atomically), plus the vote and committed-index files.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};

use super::types::*;

// ---------------------------------------------------------------------------------------------
// Durable log storage
// ---------------------------------------------------------------------------------------------

/// One line of `raft-log.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
enum LogRecord {
    /// Everything up to and including this id is purged (only written as the first line).
    Purged(LogId),
    /// A log entry; it replaces any entry with index >= its own index.
    Entry(Box<Entry>),
}

#[derive(Debug, Default)]
struct LogMem {
    last_purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// Durable log store. Cloning is cheap; a clone is also used as the `LogReader`.
#[derive(Clone)]
pub struct LogStore {
    dir: Arc<PathBuf>,
    /// In-memory index of the live log (metadata logs are small and purged after snapshots).
    mem: Arc<Mutex<LogMem>>,
    /// Append handle of `raft-log.jsonl`; only used inside `blocking` by the (serialized) writer.
    file: Arc<Mutex<File>>,
}

impl LogStore {
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut mem = LogMem {
            vote: read_json_opt(&dir.join(VOTE_FILE))?,
            committed: read_json_opt::<Option<LogId>>(&dir.join(COMMITTED_FILE))?.flatten(),
            ..Default::default()
        };

        let path = dir.join(LOG_FILE);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        // Replay complete lines; a trailing segment without '\n' is a torn write from a crash
        // before fsync returned (its IOFlushed callback never fired), so it is dropped.
        let mut valid_len = 0usize;
        for line in data.split_inclusive(|b| *b == b'\n') {
            if line.last() != Some(&b'\n') {
                break;
            }
            let rec: LogRecord = serde_json::from_slice(line).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("corrupt raft log at byte {valid_len}: {e}"))
            })?;
            match rec {
                LogRecord::Purged(id) => {
                    mem.entries = mem.entries.split_off(&(id.index + 1));
                    mem.last_purged = Some(id);
                }
                LogRecord::Entry(ent) => {
                    mem.entries.split_off(&ent.log_id.index);
                    mem.entries.insert(ent.log_id.index, *ent);
                }
            }
            valid_len += line.len();
        }

        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if valid_len < data.len() {
            file.set_len(valid_len as u64)?;
            file.sync_all()?;
        }
        if !existed {
            fsync_dir(dir)?;
        }

        Ok(Self { dir: Arc::new(dir.to_path_buf()), mem: Arc::new(Mutex::new(mem)), file: Arc::new(Mutex::new(file)) })
    }

    /// Atomically rewrite the whole log file from `mem` (used by truncate and purge).
    async fn rewrite(&self, last_purged: Option<LogId>, entries: Vec<Entry>) -> io::Result<()> {
        let mut buf = Vec::new();
        if let Some(p) = last_purged {
            serde_json::to_writer(&mut buf, &LogRecord::Purged(p)).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        for e in entries {
            serde_json::to_writer(&mut buf, &LogRecord::Entry(Box::new(e))).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let dir = self.dir.clone();
        let file = self.file.clone();
        blocking(move || {
            let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
            write_atomic(&dir, LOG_FILE, &buf)?;
            *f = OpenOptions::new().append(true).open(dir.join(LOG_FILE))?;
            Ok(())
        })
        .await
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(mem.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.mem.lock().unwrap_or_else(PoisonError::into_inner).vote)
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
        let last = mem.entries.last_key_value().map(|(_, e)| e.log_id);
        Ok(LogState { last_purged_log_id: mem.last_purged, last_log_id: last.or_else(|| mem.last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = serde_json::to_vec(vote).map_err(io::Error::other)?;
        let dir = self.dir.clone();
        blocking(move || write_atomic(&dir, VOTE_FILE, &bytes)).await?;
        self.mem.lock().unwrap_or_else(PoisonError::into_inner).vote = Some(*vote);
        Ok(())
    }

    // Persisting `committed` lets openraft re-apply committed entries on startup
    // (StorageHelper::get_initial_state). Without it the in-memory SM would only contain the
    // snapshot until a new leader commit is observed.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = serde_json::to_vec(&committed).map_err(io::Error::other)?;
        let dir = self.dir.clone();
        blocking(move || write_atomic(&dir, COMMITTED_FILE, &bytes)).await?;
        self.mem.lock().unwrap_or_else(PoisonError::into_inner).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.mem.lock().unwrap_or_else(PoisonError::into_inner).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut buf = Vec::new();
        for e in &entries {
            serde_json::to_writer(&mut buf, &LogRecord::Entry(Box::new(e.clone()))).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let file = self.file.clone();
        let res = blocking(move || {
            let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
            f.write_all(&buf)?;
            f.sync_data()
        })
        .await;

        match res {
            Ok(()) => {
                {
                    let mut mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
                    for e in entries {
                        mem.entries.split_off(&e.log_id.index);
                        mem.entries.insert(e.log_id.index, e);
                    }
                }
                // Only now the entries are durable: signal openraft.
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(clone_err(&e)));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let keep_upto = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        let (purged, entries) = {
            let mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
            if mem.entries.range(keep_upto..).next().is_none() {
                return Ok(());
            }
            (mem.last_purged, mem.entries.range(..keep_upto).map(|(_, e)| e.clone()).collect())
        };
        self.rewrite(purged, entries).await?;
        self.mem.lock().unwrap_or_else(PoisonError::into_inner).entries.split_off(&keep_upto);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let entries = {
            let mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
            if mem.last_purged.as_ref() >= Some(&log_id) {
                return Ok(());
            }
            mem.entries.range(log_id.index + 1..).map(|(_, e)| e.clone()).collect()
        };
        self.rewrite(Some(log_id), entries).await?;
        let mut mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
        mem.entries = mem.entries.split_off(&(log_id.index + 1));
        mem.last_purged = Some(log_id);
        Ok(())
    }
}

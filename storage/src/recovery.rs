//! Opening a log after a clean stop or a crash.
//!
//! Only the active (last) segment is scanned: a torn or damaged tail is cut at the last batch
//! whose checksum holds, and its index is rebuilt in memory. Sealed segments are only listed
//! (name and size); their indexes are read, and rebuilt if missing or stale, on first use — so
//! opening takes the same time whatever the amount of sealed data.
//!
//! Idempotent producers' state is loaded from the snapshot written when the active segment was
//! started, then the active segment's producer batches are replayed over it (see
//! [`crate::producer_state`]).
//!
//! Leftovers of interrupted work are removed: `*.cleaned` (a compaction that had not swapped its
//! segment in yet) and `*.tmp` (an index being written), and indexes with no log.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::config::{Durability, LogConfig};
use crate::error::{Error, IoContext, Result};
use crate::file_cache::FileId;
use crate::partition_log::{ActiveSegment, Log, LogState, Pending, SealedSegment, Shared, create_segment};
use crate::producer_state::{self, ProducerTable};
use crate::segment::{self, SEGMENT_HEADER_LEN, ScanEnd};

impl Log {
    pub(crate) fn open_with(dir: &Path, config: LogConfig, shared: Arc<Shared>) -> Result<Log> {
        config.validate()?;
        std::fs::create_dir_all(dir).at(dir)?;
        let now = shared.clock.now_ms();
        let mut bases = Vec::new();
        let mut indexes = Vec::new();
        for entry in std::fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(base) = segment::parse_file_name(name, "log") {
                bases.push(base);
            } else if let Some(base) = segment::parse_file_name(name, "index") {
                indexes.push(base);
            } else if name.ends_with(".cleaned") || name.ends_with(".tmp") {
                tracing::info!(file = name, "removing leftover of interrupted work");
                remove_leftover(&entry.path())?;
            }
        }
        bases.sort_unstable();
        for base in indexes {
            if bases.binary_search(&base).is_err() {
                remove_leftover(&segment::index_path(dir, base))?;
            }
        }
        let Some((&active_base, sealed_bases)) = bases.split_last() else {
            let active = create_segment(dir, 0, &shared, now)?;
            let state = fresh_state(config, BTreeMap::new(), active, ProducerTable::default());
            return Ok(Log::from_parts(dir.to_path_buf(), shared, state));
        };
        let mut sealed = BTreeMap::new();
        for &base in sealed_bases {
            let path = segment::log_path(dir, base);
            let meta = std::fs::metadata(&path).at(&path)?;
            let seg = SealedSegment {
                base,
                id: FileId::fresh(),
                ino: meta.ino(),
                size: meta.len(),
                path,
                index: OnceLock::new(),
            };
            sealed.insert(base, Arc::new(seg));
        }
        let (active, idempotent) = recover_active(dir, active_base, &config, &shared, now)?;
        let (producers, snapshot_missing) = recover_producers(dir, sealed_bases, active_base, &config, now)?;
        let mut state = fresh_state(config, sealed, active, producers.clone());
        state.log_start = bases[0];
        for header in &idempotent {
            state.producers.replay(header, now);
        }
        state.producers.expire(now.saturating_sub(shared.producer_expiry_ms));
        let log = Log::from_parts(dir.to_path_buf(), shared, state);
        if snapshot_missing {
            // Replayed from sealed segments: save the result so the next open need not.
            log.write_producer_snapshot(active_base, &producers);
        }
        Ok(log)
    }
}

/// Removes a file left by unfinished work; one already gone is fine (a log closed just before
/// may still be finishing its last roll's files on a flusher thread: see `Log::roll`).
fn remove_leftover(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(crate::Error::io(path.to_path_buf(), e)),
        _ => Ok(()),
    }
}

/// The producer table as of `active_base`: the newest readable snapshot at or below it, plus the
/// idempotent batches of the sealed segments after that snapshot (normally none: a snapshot is
/// written at every roll). `true` when no snapshot for `active_base` was found.
fn recover_producers(
    dir: &Path,
    sealed_bases: &[u64],
    active_base: u64,
    config: &LogConfig,
    now: i64,
) -> Result<(ProducerTable, bool)> {
    let snapshots = producer_state::list_snapshots(dir).at(dir)?;
    let mut found = None;
    for &base in snapshots.iter().rev().filter(|&&b| b <= active_base) {
        if let Some(table) = producer_state::read_snapshot(dir, base) {
            found = Some((base, table));
            break;
        }
    }
    if let Some((base, table)) = &found
        && *base == active_base
    {
        return Ok((table.clone(), false));
    }
    let (from, mut table) = found.unwrap_or((0, ProducerTable::default()));
    for &base in sealed_bases.iter().filter(|&&b| b >= from) {
        let path = segment::log_path(dir, base);
        let file = std::fs::File::open(&path).at(&path)?;
        let len = file.metadata().at(&path)?.len();
        let scan = segment::scan(&file, base, SEGMENT_HEADER_LEN, len, config.index_interval_bytes, false).at(&path)?;
        if let ScanEnd::Invalid { position, error } = &scan.end {
            tracing::warn!(path = %path.display(), position, %error, "producer state replay stopped at damage");
        }
        for header in &scan.idempotent {
            table.replay(header, now);
        }
    }
    Ok((table, true))
}

fn fresh_state(
    config: LogConfig,
    sealed: BTreeMap<u64, Arc<SealedSegment>>,
    active: ActiveSegment,
    producers: ProducerTable,
) -> LogState {
    let next_offset = active.index.next_offset;
    let log_start = sealed.keys().next().copied().unwrap_or(active.base);
    let durable_pos = (active.base, active.size);
    LogState {
        config,
        sealed,
        active,
        next_offset,
        log_start,
        durable: next_offset,
        durable_pos,
        waiters: Vec::new(),
        flush_scheduled: false,
        poisoned: false,
        deleted: false,
        producers,
        pins: BTreeMap::new(),
    }
}

/// Scans the last segment, cuts a torn tail, and makes what remains durable.
/// Also returns the headers of the idempotent producers' batches it kept, to replay.
fn recover_active(
    dir: &Path,
    base: u64,
    config: &LogConfig,
    shared: &Shared,
    now: i64,
) -> Result<(ActiveSegment, Vec<crate::batch::BatchHeader>)> {
    let path = segment::log_path(dir, base);
    let file = OpenOptions::new().read(true).write(true).open(&path).at(&path)?;
    let meta = file.metadata().at(&path)?;
    let len = meta.len();
    let mut head = vec![0u8; (SEGMENT_HEADER_LEN.min(len)) as usize];
    file.read_exact_at(&mut head, 0).at(&path)?;
    match segment::check_header(&head, base) {
        Ok(true) => {}
        Ok(false) if len <= SEGMENT_HEADER_LEN || segment::is_zero(&file, 0, len).at(&path)? => {
            // Crashed while creating the segment: nothing was ever appended to it.
            tracing::info!(path = %path.display(), "recreating a segment whose creation was interrupted");
            return Ok((create_segment(dir, base, shared, now)?, Vec::new()));
        }
        Ok(false) | Err(_) => {
            let reason = crate::batch::BatchError::MalformedRecord { index: 0, reason: "segment header is damaged" };
            return Err(Error::Corrupt { path, position: 0, source: reason });
        }
    }
    let scan = segment::scan(&file, base, SEGMENT_HEADER_LEN, len, config.index_interval_bytes, true).at(&path)?;
    let mut allocated = len;
    let torn = match &scan.end {
        ScanEnd::Invalid { position, error } => {
            tracing::warn!(path = %path.display(), position, %error, "truncating torn or damaged tail of the active segment");
            true
        }
        ScanEnd::Clean => scan.valid_end < len && !segment::is_zero(&file, scan.valid_end, len).at(&path)?,
    };
    if torn {
        file.set_len(scan.valid_end).at(&path)?;
        allocated = scan.valid_end;
    }
    // Records recovered from the page cache after a process crash become visible now: make sure
    // they are on disk first, so a reader never sees a record a power loss could take back.
    if torn || (config.durability == Durability::Always && scan.valid_end > SEGMENT_HEADER_LEN) {
        shared.fsync.sync_data(&file).at(&path)?;
    }
    let id = FileId::fresh();
    shared.files.insert(id, Arc::new(file));
    // Age counts from the file's creation (record timestamps are the producers' to choose, and
    // old ones must not make every append roll a segment).
    let created_ms = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now, |d| d.as_millis() as i64)
        .min(now);
    let active = ActiveSegment {
        base,
        id,
        ino: meta.ino(),
        path,
        size: scan.valid_end,
        written: scan.valid_end,
        settled: scan.valid_end,
        pending: Pending::default(),
        allocated,
        index: scan.index,
        created_ms,
    };
    Ok((active, scan.idempotent))
}

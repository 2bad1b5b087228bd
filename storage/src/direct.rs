//! The writer of a log's active segment, and how an `always` log's batches reach the disk past
//! the page cache.
//!
//! **Why.** Under `flush=always` every batch is synced before it is acknowledged, so the page
//! cache holds it for nothing but readers, and putting it there is the most expensive step of a
//! write on this project's VM: a `pwrite` of new data copies into freshly allocated page-cache
//! pages, which the VM's balloon hands back to the host once freed, ~1 GB/s per core against
//! 10–20 GB/s for a copy into memory touched before (`benches/FINDINGS.md`, "New page-cache pages
//! against `O_DIRECT`"). So with `StorageOptions::direct_writes` a durable batch the journal does
//! not take is not written by its append: it waits with the segment's other unwritten batches
//! (`Pending`), and the flush the
//! append queues hands them all to [`SegmentWriter::write`], which gathers them behind the
//! file's partly filled last block in a reused aligned buffer and writes them with `O_DIRECT`,
//! outside the log's lock. W3 (durable, 1 ms batches, 4 partitions) at 80 % of its peak kept up
//! for the first time that way (`benches/FINDINGS.md`, "Durable batches past the page cache,
//! landed as an option", which also says why it is not the default). Readers get the newest of
//! those bytes from memory ([`crate::recent`]), the rest from the disk.
//!
//! **Order.** Every write into the active segment, direct or not, holds the log's writer lock
//! (`LogInner::writer`), taken under the log's state lock; a flush takes it before letting go of
//! the state lock and writes after. Writes thus reach the file in the order their positions
//! were handed out, and whoever needs the file to hold every byte handed out so far (a read of
//! journaled bytes, a sync, a roll, a checkpoint) takes the writer lock and finds them written.
//!
//! **Crash safety.** A direct write rewrites the last partly filled block from memory with the
//! same bytes, so a write torn by a crash leaves earlier bytes as they were, and pads the block
//! with zeros, which a segment may end in (see [`crate::segment`]); a roll cuts them off.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use crate::aligned::{self, AlignedBuf};

/// Writes into one log's active segment; held under the log's writer lock.
#[derive(Debug, Default)]
pub(crate) struct SegmentWriter {
    /// The `O_DIRECT` descriptor of the segment written last, and what it knows of its end.
    direct: Option<DirectTail>,
    /// The log's filesystem refused `O_DIRECT`, a second descriptor could not be opened (out of
    /// descriptors), or `StorageOptions::direct_io` is off: its writes go through the page cache.
    refused: bool,
    /// A write failed: the log is poisoned, and nothing handed to the writer is known to be in
    /// the file.
    pub(crate) failed: bool,
}

/// A segment opened a second time with `O_DIRECT`, with the bytes of its last partly filled
/// block.
struct DirectTail {
    /// The segment's base offset.
    base: u64,
    file: File,
    align: usize,
    /// Reused for every write: the tail, the batches, the padding.
    buf: AlignedBuf,
    /// The bytes from the last block boundary up to `end`.
    tail: Vec<u8>,
    /// Where the bytes this descriptor wrote end.
    end: u64,
}

impl std::fmt::Debug for DirectTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectTail").field("base", &self.base).field("end", &self.end).finish_non_exhaustive()
    }
}

impl SegmentWriter {
    /// A writer that tries `O_DIRECT` only if `direct_io`.
    pub(crate) fn new(direct_io: bool) -> Self {
        Self { refused: !direct_io, ..Self::default() }
    }

    /// Writes `parts` back to back at `at` of the segment `base` (`path`, whose buffered
    /// descriptor is `file`) with `O_DIRECT` where the filesystem takes it. Returns the end of
    /// what the file now holds, padding included.
    pub(crate) fn write(&mut self, base: u64, path: &Path, file: &File, at: u64, parts: &[Bytes]) -> io::Result<u64> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if !self.refused {
            match self.write_direct(base, path, file, at, parts) {
                Ok(end) => return Ok(end),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    tracing::warn!(file = %path.display(), error = %e, "an O_DIRECT write was refused; the log writes its segments through the page cache");
                    self.refused = true;
                    self.direct = None;
                }
                Err(e) => {
                    self.direct = None;
                    return Err(e);
                }
            }
        }
        write_all_vectored_at(file, parts, at)?;
        Ok(at + len)
    }

    fn write_direct(&mut self, base: u64, path: &Path, file: &File, at: u64, parts: &[Bytes]) -> io::Result<u64> {
        let d = match &mut self.direct {
            Some(d) if d.base == base => d,
            slot => {
                let Some((direct, align)) = aligned::open_direct(path) else {
                    return Err(io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error()));
                };
                let buf = AlignedBuf::default();
                slot.insert(DirectTail { base, file: direct, align, buf, tail: Vec::new(), end: u64::MAX })
            }
        };
        if d.end != at {
            // Something else wrote the file since (a write through the page cache): read the
            // partly filled block back.
            let floor = at - at % d.align as u64;
            d.tail.resize((at - floor) as usize, 0);
            file.read_exact_at(&mut d.tail, floor)?;
            d.end = at;
        }
        let start = at - d.tail.len() as u64;
        d.buf.clear();
        d.buf.extend_from_slice(&d.tail);
        for p in parts {
            d.buf.extend_from_slice(p);
        }
        let len = d.buf.len();
        let padded = len.next_multiple_of(d.align);
        d.buf.extend_zeros(padded - len);
        // Not known to hold until the write succeeds.
        d.end = u64::MAX;
        d.file.write_all_at(d.buf.as_slice(), start)?;
        let keep = len % d.align;
        d.tail.clear();
        d.tail.extend_from_slice(&d.buf.as_slice()[len - keep..len]);
        d.end = start + len as u64;
        Ok(start + padded as u64)
    }

    /// Forgets the descriptor (the segment was sealed or removed).
    pub(crate) fn close(&mut self) {
        self.direct = None;
    }
}

/// Writes `parts` back to back at `offset` of `file` with vectored `pwrite`s.
pub(crate) fn write_all_vectored_at<B: AsRef<[u8]>>(file: &File, parts: &[B], mut offset: u64) -> io::Result<()> {
    /// Buffers one `pwritev` takes at most (the kernel's `IOV_MAX`).
    const MAX_IOVECS: usize = 1024;
    for chunk in parts.chunks(MAX_IOVECS) {
        let mut slices: Vec<IoSlice<'_>> = chunk.iter().map(|b| IoSlice::new(b.as_ref())).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = rustix::io::pwritev(file, rest, offset)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            offset += n as u64;
            IoSlice::advance_slices(&mut rest, n);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_writes_continue_the_file_and_pick_up_writes_made_around_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.log");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.write_all_at(b"header", 0).unwrap();
        let mut expected = b"header".to_vec();
        let mut writer = SegmentWriter::default();
        let mut at = 6u64;
        for i in 0..40u32 {
            let part = Bytes::from(vec![i as u8 + 1; 1000 + 37 * i as usize]);
            let end = if i % 7 == 3 {
                // A write through the page cache in between.
                file.write_all_at(&part, at).unwrap();
                at + part.len() as u64
            } else {
                writer.write(1, &path, &file, at, &[part.clone(), Bytes::from_static(b"xy")]).unwrap()
            };
            expected.extend_from_slice(&part);
            if i % 7 != 3 {
                expected.extend_from_slice(b"xy");
            }
            at = expected.len() as u64;
            assert!(end >= at);
        }
        let mut back = vec![0u8; expected.len()];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, expected);
        // Past the last byte only the padding's zeros.
        let len = file.metadata().unwrap().len();
        let mut pad = vec![1u8; (len - at) as usize];
        file.read_exact_at(&mut pad, at).unwrap();
        assert!(pad.iter().all(|&b| b == 0));
    }
}

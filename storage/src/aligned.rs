//! A growable byte buffer whose first byte sits at a page boundary in memory, so that what is
//! gathered in it can be written with `O_DIRECT` (which wants the memory aligned as the file
//! offset) without first being copied somewhere that is.
//!
//! The bytes live in a window of a plain `Vec<u8>` that never grows in place: growing allocates a
//! new one and copies, so the window's alignment, found once per allocation, holds for its life.

/// The alignment of the buffer's first byte: a page, which covers every block size `O_DIRECT`
/// asks for on Linux.
pub(crate) const ALIGN: usize = 4096;

/// The smallest allocation made when the buffer first grows.
const MIN_CAPACITY: usize = 64 << 10;

#[derive(Default)]
pub(crate) struct AlignedBuf {
    /// Allocated and zeroed whole; the bytes are `mem[at..at + len]`.
    mem: Vec<u8>,
    at: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the bytes, keeping the memory.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.mem[self.at..self.at + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.mem[self.at..self.at + self.len]
    }

    /// Whether the first byte is where `O_DIRECT` wants it (always, unless the platform declined
    /// to say where an aligned address is).
    pub(crate) fn is_aligned(&self) -> bool {
        self.mem.as_ptr().wrapping_add(self.at).addr().is_multiple_of(ALIGN)
    }

    /// Makes room for `additional` more bytes.
    pub(crate) fn reserve(&mut self, additional: usize) {
        if self.at + self.len + additional <= self.mem.len() {
            return;
        }
        let capacity = (self.len + additional).max(2 * self.mem.len().saturating_sub(ALIGN)).max(MIN_CAPACITY);
        let mut mem = vec![0u8; capacity + ALIGN];
        // `align_offset` may decline (`usize::MAX`); the buffer is then unaligned and an
        // `O_DIRECT` write of it is refused, which the writer answers by writing through the
        // page cache.
        let at = match mem.as_ptr().align_offset(ALIGN) {
            at if at < ALIGN => at,
            _ => 0,
        };
        mem[at..at + self.len].copy_from_slice(self.as_slice());
        self.mem = mem;
        self.at = at;
    }

    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        let end = self.at + self.len;
        self.mem[end..end + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends `n` zero bytes.
    pub(crate) fn extend_zeros(&mut self, n: usize) {
        self.reserve(n);
        let end = self.at + self.len;
        self.mem[end..end + n].fill(0);
        self.len += n;
    }
}

/// `path` opened a second time for `O_DIRECT` writes, and the block size those must be aligned
/// to, if its filesystem takes them in blocks of at most [`ALIGN`] (tmpfs before Linux 6.6
/// refuses the flag: the caller then writes through the page cache).
pub(crate) fn open_direct(path: &std::path::Path) -> Option<(std::fs::File, usize)> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
    let file = std::fs::OpenOptions::new().write(true).custom_flags(flags).open(path).ok()?;
    let wanted = rustix::fs::StatxFlags::DIOALIGN;
    let align = match rustix::fs::statx(&file, "", rustix::fs::AtFlags::EMPTY_PATH, wanted) {
        Ok(st) if st.stx_mask & wanted.bits() != 0 => {
            if st.stx_dio_offset_align == 0 {
                return None; // no O_DIRECT for this file
            }
            st.stx_dio_offset_align.max(st.stx_dio_mem_align) as usize
        }
        // Not reported (Linux before 6.1, or a filesystem that does not say): a page.
        _ => ALIGN,
    };
    (align.is_power_of_two() && align <= ALIGN).then_some((file, align))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_stay_aligned_and_in_order_as_the_buffer_grows() {
        let mut buf = AlignedBuf::default();
        let mut expected = Vec::new();
        for i in 0..20_000u32 {
            let bytes = i.to_le_bytes();
            buf.extend_from_slice(&bytes[..(i % 4 + 1) as usize]);
            expected.extend_from_slice(&bytes[..(i % 4 + 1) as usize]);
            if i % 997 == 0 {
                buf.extend_zeros(13);
                expected.extend_from_slice(&[0; 13]);
            }
            assert!(buf.is_aligned());
        }
        assert_eq!(buf.as_slice(), &expected[..]);
        buf.as_mut_slice()[0] = 0xff;
        assert_eq!(buf.as_slice()[0], 0xff);
        buf.clear();
        assert!(buf.is_empty());
        buf.extend_from_slice(b"again");
        assert_eq!(buf.as_slice(), b"again");
        assert_eq!(buf.len(), 5);
    }
}

//! Clients on the server's host: `unix:PATH` URLs reach the server's Unix socket (`strata serve
//! --unix-socket PATH`), for gRPC and for the raw batch door. There, a [`crate::BatchReader`]
//! asks for the segment files' descriptors and reads the batches from the page cache itself,
//! as HDFS's short-circuit local reads do: no bytes cross a socket, and the server only says
//! where they lie.
//!
//! ```text
//!  server thread ── F pos len + descriptor (SCM_RIGHTS) · S pos len · B len bytes · E ──► Unix socket
//!  receiving task ── pread(descriptor, pos, len) on a blocking thread ──► piece ──► BatchReader
//! ```
//!
//! Frames are a kind byte and two little-endian `u64`s (the server's `zero_copy::Frames` says
//! what each means). Every read of the socket goes through `recvmsg` with room for descriptors
//! ([`FdStream`]), so a descriptor is never dropped by a read that happened to reach the frame it
//! came with, including the read of the `101` head; descriptors arrive in order, one per `F`.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tonic::codegen::http::Uri;

use crate::batches::Piece;

/// The path of a `unix:PATH` (or `unix://PATH`) URL; `None` for other URLs.
pub(crate) fn unix_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("unix:")?;
    let path = rest.strip_prefix("//").unwrap_or(rest);
    Some(PathBuf::from(path))
}

/// Connects tonic's channel to the Unix socket, whatever URI it is asked for.
#[derive(Debug, Clone)]
pub(crate) struct UnixConnector(pub(crate) Arc<PathBuf>);

impl tonic::codegen::Service<Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<UnixStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = Arc::clone(&self.0);
        Box::pin(async move { Ok(hyper_util::rt::TokioIo::new(UnixStream::connect(&*path).await?)) })
    }
}

/// A Unix stream whose reads also collect the descriptors that come with the bytes.
#[derive(Debug)]
pub(crate) struct FdStream {
    stream: UnixStream,
    fds: VecDeque<OwnedFd>,
}

/// Descriptors one read makes room for (the server sends one per frame, and a read of the
/// socket stops after a message that carries descriptors).
const FDS_PER_READ: usize = 4;

impl FdStream {
    pub(crate) async fn connect(path: &std::path::Path) -> io::Result<Self> {
        Ok(Self { stream: UnixStream::connect(path).await?, fds: VecDeque::new() })
    }

    /// The next descriptor that came with the bytes read so far.
    fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }
}

/// Most bytes one read asks for: a [`ReadBuf`] over fresh capacity is zeroed before the read.
const READ_AT_MOST: usize = 256 << 10;

/// One `recvmsg` into `buf`, keeping the descriptors that come with it.
fn recv(stream: &UnixStream, fds: &mut VecDeque<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_READ))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(buf)];
    let got = rustix::net::recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(invalid("the server sent more descriptors than one read holds"));
    }
    Ok(got.bytes)
}

impl AsyncRead for FdStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let want = buf.remaining().min(READ_AT_MOST);
            let unfilled = buf.initialize_unfilled_to(want);
            match this.stream.try_io(Interest::READABLE, || recv(&this.stream, &mut this.fds, unfilled)) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Frame kinds and length (see the module docs).
const FRAME_FILE: u8 = b'F';
const FRAME_SAME_FILE: u8 = b'S';
const FRAME_BYTES: u8 = b'B';
const FRAME_END: u8 = b'E';
const FRAME_LEN: usize = 17;
/// Largest range or inline piece a frame may announce: a server read (2 MiB and a batch) is far
/// below it, and a damaged frame cannot make the reader allocate without bound.
const MAX_PIECE: u64 = 64 << 20;

/// Turns the frames that follow the `101` (`buf` holds what was read past its head) into pieces
/// for `tx`, until the end frame (then `Ok(None)`), an error, or the reader is dropped.
pub(crate) async fn receive(mut stream: FdStream, mut buf: BytesMut, tx: mpsc::Sender<Piece>) {
    let end = frames(&mut stream, &mut buf, &tx).await;
    let _ = tx.send(end.map(|()| None)).await;
}

async fn frames(stream: &mut FdStream, buf: &mut BytesMut, tx: &mpsc::Sender<Piece>) -> io::Result<()> {
    let mut file: Option<Arc<File>> = None;
    loop {
        fill(stream, buf, FRAME_LEN).await?;
        let kind = buf[0];
        let number = |at: usize| u64::from_le_bytes(std::array::from_fn(|i| buf[at + i]));
        let (position, len) = (number(1), number(9));
        buf.advance(FRAME_LEN);
        if len > MAX_PIECE {
            return Err(invalid(format!("a frame announces {len} bytes, more than the {MAX_PIECE} a piece may hold")));
        }
        let len = len as usize;
        let piece = match kind {
            FRAME_END => return Ok(()),
            FRAME_BYTES => {
                fill(stream, buf, len).await?;
                buf.split_to(len).freeze()
            }
            FRAME_FILE | FRAME_SAME_FILE => {
                if kind == FRAME_FILE {
                    let fd = stream.take_fd().ok_or_else(|| invalid("a file frame came without its descriptor"))?;
                    file = Some(Arc::new(File::from(fd)));
                }
                let file = file.clone().ok_or_else(|| invalid("a range frame came before any file"))?;
                tokio::task::spawn_blocking(move || read_range(&file, position, len))
                    .await
                    .map_err(io::Error::other)??
            }
            other => return Err(invalid(format!("unknown frame kind {other:#x}"))),
        };
        if tx.send(Ok(Some(piece))).await.is_err() {
            return Ok(()); // the reader was dropped
        }
    }
}

/// Reads until `buf` holds at least `n` bytes.
async fn fill(stream: &mut FdStream, buf: &mut BytesMut, n: usize) -> io::Result<()> {
    while buf.len() < n {
        buf.reserve(n - buf.len());
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the batch stream inside a frame",
            ));
        }
    }
    Ok(())
}

/// `len` bytes of `file` from `position`, read into fresh memory without zeroing it first.
fn read_range(file: &File, position: u64, len: usize) -> io::Result<Bytes> {
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let at = position + bytes.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut bytes), at) {
            Ok(0) => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the segment file ends inside the range"));
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    bytes.truncate(len);
    Ok(Bytes::from(bytes))
}

//! The raw batch door on a connection of its own. A client that asks for it (`Connection:
//! upgrade`, `Upgrade: strata-batches`) gets `101 Switching Protocols` with the same `Strata-*`
//! headers a `200` carries, and then the same chunked body, written by a thread of its own
//! straight to the socket, one segment file's run of whole batches at a time. To a peer on
//! another host the batches go from the page cache to the socket with `sendfile(2)` and never
//! pass through this process, as Kafka's brokers serve fetches; to a peer on this host they are
//! copied through one reused buffer (`pread` + `write`), which is faster over loopback (below).
//!
//! A client on the server's Unix socket may ask for the files themselves (`Strata-Transfer:
//! descriptors`): it then gets [`Frames`] naming ranges of segment files, each file's descriptor
//! passed once with `SCM_RIGHTS`, and reads the batches from the page cache on its own; nothing
//! but the frames crosses the socket.
//!
//! ```text
//!  handler ── first read (as for a 200) ──► 101 ──► hyper lets go of the connection
//!  blocking thread: size line (write) · batches of one segment (sendfile, or pread + write) · CRLF · … · 0 CRLF CRLF
//!                   cold-tier ranges and the first read: ordinary writes of the bytes read
//! ```
//!
//! Why an upgrade: hyper owns the connection and cannot hand a file to its socket. After a `101`
//! it gives the connection up; the thread writes to a duplicate of its descriptor, taken with
//! `pidfd_getfd(2)` on this process (the number is recorded when the connection is accepted, and
//! duplicating it needs no unsafe code), while the upgraded connection is held, unused, until the
//! stream ends. The server does not check the batches' checksums on this path (it does not read
//! them); the client checks every batch, as it does anyway. Where the duplicate cannot be made
//! (no `pidfd_getfd`, Linux before 5.6, or a seccomp filter that forbids it), or `zero_copy =
//! "never"`, the door answers with an ordinary `200`. The `101` says which way the bytes go in
//! `Strata-Transfer` (`sendfile` or `copy`).
//!
//! Over loopback `sendfile` is not the fast way: on this project's machine it moved 2.1–2.5 GB/s
//! where `pread` + `write` of the same segment files moved 3.2–3.5 GB/s (the receiver copies out
//! of page-cache pages instead of buffers the sender has just written, which are still in the
//! CPU's cache). A catch-up of 1 GiB through the door, alternated run by run (medians of nine):
//! copying through one 1 MiB buffer on this thread 3.4 GB/s, the ordinary `200` (reads on
//! blocking threads, handed to hyper through a channel) 3.0 GB/s, `sendfile` 2.9 GB/s; a 256 KiB
//! buffer 3.1 GB/s. A second series (fifteen each): 3.0 against 2.75 GB/s for the `200`. The
//! buffer fits the core's L2 cache, so `write` copies from cache what `pread` has just put
//! there, on the same core. Over a network card the sender copies nothing at all with
//! `sendfile`, which is why peers elsewhere get it (`zero_copy = "remote"`, the default).
//! Measured since (2026-12-05): what slows `sendfile` over loopback is mostly the sender waking
//! the receiver for every 64 KiB segment it hands over. A bare reader with a 256 KiB receive
//! low-water mark took 8.5–9.8 GB/s by `sendfile` against 2.7–3.1 without it. `strata-client`
//! does not set the mark: with its checks and decoding it gained at most 5 % (README,
//! Benchmarks, catch-up).

use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::Request;
use axum::extract::connect_info::ConnectInfo;
use axum::http::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::Response;
use axum::serve::Listener;
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use strata_storage::batch::count_records;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::either::Either;

use crate::AppState;
use crate::broker::Start;
use crate::config::ZeroCopy;

/// The protocol token a client upgrades to.
pub const PROTOCOL: &str = "strata-batches";
/// How long a write may wait for a client that stopped reading before the stream is cut.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The buffer a stream copied through (not `sendfile`d) is read into and written from: small
/// enough to stay in the core's L2 cache between the two, large enough for few system calls.
const COPY_BYTES: usize = 1 << 20;

/// What a handler may learn of the connection its request came on (axum's `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// The accepted socket's descriptor: the same socket while a request on it is served.
    fd: RawFd,
    peer: Peer,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A client on this host, through the server's Unix socket.
    Unix,
}

impl Conn {
    /// The connection on the accepted socket `fd`, from `peer`.
    pub fn new(fd: RawFd, peer: Peer) -> Self {
        Self { fd, peer }
    }
}

/// The server's listeners: TCP, with `TCP_NODELAY` on every accepted connection (replies are
/// written whole; Nagle's delay would only add latency), and the Unix socket when configured.
#[derive(Debug)]
pub struct Doors {
    pub tcp: TcpListener,
    pub unix: Option<UnixListener>,
}

impl Listener for Doors {
    type Io = Either<tokio::net::TcpStream, tokio::net::UnixStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let Self { tcp, unix } = self;
        let unix = async {
            match unix {
                Some(unix) => Listener::accept(unix).await.0,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            (tcp, addr) = Listener::accept(tcp) => {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                }
                (Either::Left(tcp), Peer::Tcp(addr))
            }
            unix = unix => (Either::Right(unix), Peer::Unix),
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr().map(Peer::Tcp)
    }
}

/// How an upgraded stream moves the segment files' bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    /// `pread` into one buffer, `write` from it.
    Copy,
    /// `sendfile` from the page cache.
    Sendfile,
    /// The files' descriptors go to the client (over the Unix socket), which reads them itself.
    Descriptors,
}

impl Transfer {
    fn name(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::Sendfile => "sendfile",
            Self::Descriptors => "descriptors",
        }
    }
}

/// A request that asked for the upgrade and can have it: the connection to take over once the
/// `101` is out, a duplicate of its socket to write to, and how to send the files' bytes.
#[derive(Debug)]
pub struct Upgrade {
    on_upgrade: OnUpgrade,
    socket: Socket,
    transfer: Transfer,
}

impl Upgrade {
    /// The upgrade `request` asks for, when it asks, `policy` allows it for this peer and the
    /// socket can be duplicated (else the door answers as usual). A client on the Unix socket
    /// that asks for `Strata-Transfer: descriptors` gets the segment files' descriptors.
    pub fn requested(request: &mut Request, policy: ZeroCopy) -> Option<Self> {
        if request.version() != Version::HTTP_11 || !asks_for_upgrade(request.headers()) {
            return None;
        }
        let conn = request.extensions().get::<ConnectInfo<Conn>>()?.0;
        let wants_descriptors = has_token(request.headers(), "strata-transfer", Transfer::Descriptors.name());
        let transfer = match (policy, conn.peer) {
            (ZeroCopy::Never, _) => return None,
            (_, Peer::Unix) if wants_descriptors => Transfer::Descriptors,
            (ZeroCopy::Always, _) => Transfer::Sendfile,
            (ZeroCopy::Remote, Peer::Tcp(peer)) if !peer.ip().to_canonical().is_loopback() => Transfer::Sendfile,
            (ZeroCopy::Remote, _) => Transfer::Copy,
        };
        let socket = match duplicate(conn) {
            Ok(socket) => socket,
            Err(e) => {
                tracing::debug!(error = %e, "cannot take over the connection: answering without the upgrade");
                return None;
            }
        };
        let on_upgrade = request.extensions_mut().remove::<OnUpgrade>()?;
        Some(Self { on_upgrade, socket, transfer })
    }

    /// The `101` to answer with, carrying `headers`.
    pub fn response(&self, headers: &[(&'static str, u64)]) -> Response {
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static(PROTOCOL));
        h.insert(CONTENT_TYPE, HeaderValue::from_static(super::batches::BATCHES_CONTENT_TYPE));
        h.insert("strata-transfer", HeaderValue::from_static(self.transfer.name()));
        for &(name, value) in headers {
            h.insert(name, HeaderValue::from(value));
        }
        response
    }

    /// Waits for hyper to give the connection up after the `101`, then writes `stream` on a
    /// blocking thread. Errors end the stream without its last chunk (or frame), which the
    /// client reports.
    pub async fn serve(self, stream: Stream) {
        let upgraded = match self.on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::warn!(error = %e, "the batch stream's upgrade failed");
                return;
            }
        };
        let runtime = tokio::runtime::Handle::current();
        let (topic, partition) = (stream.topic.clone(), stream.partition);
        let closing = stream.state.closing.clone();
        // A handle to shut the socket down with: a write blocked on a client that stopped reading
        // then fails at once, rather than holding shutdown for the write timeout.
        let stopper = self.socket.try_clone();
        let (socket, transfer) = (self.socket, self.transfer);
        let mut writing = tokio::task::spawn_blocking(move || {
            socket.set_nonblocking(false)?;
            socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
            match transfer {
                Transfer::Descriptors => stream.write(Frames { socket, sent: None }, &runtime),
                Transfer::Copy | Transfer::Sendfile => {
                    let copy = (transfer == Transfer::Copy).then(|| vec![0; COPY_BYTES]);
                    stream.write(Chunked { socket, started: false, copy }, &runtime)
                }
            }
        });
        let written = tokio::select! {
            written = &mut writing => written,
            () = closing.cancelled() => {
                if let Ok(stopper) = &stopper {
                    let _ = stopper.shutdown(std::net::Shutdown::Both);
                }
                writing.await
            }
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(topic, partition, error = %e, "batch stream cut short"),
            Err(e) => tracing::error!(topic, partition, error = %e, "batch stream task failed"),
        }
        // Only now: the duplicates written to above are closed, so the socket closes with this.
        drop(stopper);
        drop(upgraded);
    }
}

fn asks_for_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, CONNECTION, "upgrade") && has_token(headers, UPGRADE, PROTOCOL)
}

/// Whether a `name` header lists `token` (comma-separated, any case).
fn has_token(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

/// A descriptor of our own for the socket `conn` was accepted on.
fn duplicate(conn: Conn) -> io::Result<Socket> {
    static THIS_PROCESS: LazyLock<rustix::io::Result<OwnedFd>> =
        LazyLock::new(|| rustix::process::pidfd_open(rustix::process::getpid(), rustix::process::PidfdFlags::empty()));
    let pidfd = THIS_PROCESS.as_ref().map_err(|e| io::Error::from(*e))?;
    let fd = rustix::process::pidfd_getfd(pidfd, conn.fd, rustix::process::PidfdGetfdFlags::empty())?;
    // The request is in flight on this connection, so its descriptor cannot have been reused;
    // checked anyway, since writing to another client's socket would be unforgivable.
    match conn.peer {
        Peer::Tcp(peer) => {
            let socket = TcpStream::from(fd);
            if socket.peer_addr()? != peer {
                return Err(io::Error::other("the connection's descriptor now belongs to another peer"));
            }
            Ok(Socket::Tcp(socket))
        }
        Peer::Unix => {
            let socket = UnixStream::from(fd);
            // Fails unless the descriptor is a Unix socket.
            socket.local_addr()?;
            Ok(Socket::Unix(socket))
        }
    }
}

/// The duplicated socket an upgraded stream is written to.
#[derive(Debug)]
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_nonblocking(nonblocking),
            Self::Unix(s) => s.set_nonblocking(nonblocking),
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_write_timeout(timeout),
            Self::Unix(s) => s.set_write_timeout(timeout),
        }
    }

    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
            Self::Unix(s) => Self::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(how),
            Self::Unix(s) => s.shutdown(how),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(s) => s.as_fd(),
            Self::Unix(s) => s.as_fd(),
        }
    }
}

/// The rest of a batch stream after its first read: what to send and how far.
#[derive(Debug)]
pub struct Stream {
    pub state: Arc<AppState>,
    pub topic: String,
    pub partition: u32,
    /// The first read's batches, sent first (empty: the stream is empty).
    pub first: Bytes,
    /// Offset to continue from after them.
    pub next: u64,
    pub max_bytes: u64,
    /// Bytes of batches per read, and how far a read may go past it to finish a batch.
    pub read_bytes: usize,
    pub overshoot: usize,
}

impl Stream {
    /// Writes the stream to `out`'s socket (blocking): chunks of whole batches, then the last
    /// chunk.
    fn write(mut self, mut out: impl Out, runtime: &tokio::runtime::Handle) -> io::Result<()> {
        let mut sent = self.first.len() as u64;
        if !self.first.is_empty() {
            out.bytes(&self.first)?;
        }
        let mut more = !self.first.is_empty();
        while more && sent < self.max_bytes {
            if self.state.closing.is_cancelled() {
                return Err(io::Error::other("the server is shutting down"));
            }
            let want = (self.read_bytes as u64).min(self.max_bytes - sent) as usize;
            let broker = &self.state.broker;
            let located = broker.locate_local(&self.topic, self.partition, self.next, want, self.overshoot);
            let (next, len, records) = match located.map_err(io::Error::other)? {
                Some(located) => match located.span {
                    Some((file, span)) if located.next_offset > self.next => {
                        match &located.bytes {
                            // The newest bytes of a durable log, held in memory by the log.
                            Some(bytes) => out.bytes(bytes)?,
                            None => out.file(&file, span.position, span.len)?,
                        }
                        (located.next_offset, span.len, span.records)
                    }
                    // Caught up with the high watermark, or a compacted range that ends the log.
                    _ => break,
                },
                // Below the local log: the cold tier's records, re-encoded, written as bytes.
                None => {
                    let start = Start::Offset(self.next);
                    let fetch =
                        broker.fetch_raw(&self.topic, self.partition, start, want, self.overshoot, Duration::ZERO);
                    let (_, read) = runtime.block_on(fetch).map_err(io::Error::other)?;
                    if read.batches.is_empty() || read.next_offset <= self.next {
                        break;
                    }
                    out.bytes(&read.batches)?;
                    (read.next_offset, read.batches.len() as u64, count_records(&read.batches, self.next))
                }
            };
            self.state.metrics.records_out(&self.topic, records as usize);
            sent += len;
            more = next > self.next;
            self.next = next;
        }
        out.finish()
    }
}

/// A chunked HTTP/1.1 body written to a socket by hand.
struct Chunked {
    socket: Socket,
    /// Whether a chunk was written (its data then needs the CRLF that ends it).
    started: bool,
    /// The buffer file ranges are copied through; `None`: they are `sendfile`d.
    copy: Option<Vec<u8>>,
}

/// Where a batch stream's bytes go: bytes this process holds, or a range of a segment file.
trait Out {
    fn bytes(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn file(&mut self, file: &File, position: u64, len: u64) -> io::Result<()>;
    /// The end of the stream.
    fn finish(self) -> io::Result<()>;
}

impl Chunked {
    fn size_line(&mut self, len: u64) -> io::Result<()> {
        let end_of_last = if self.started { "\r\n" } else { "" };
        self.started = true;
        self.socket.write_all(format!("{end_of_last}{len:x}\r\n").as_bytes())
    }
}

impl Out for Chunked {
    fn bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.size_line(bytes.len() as u64)?;
        self.socket.write_all(bytes)
    }

    /// A chunk of `len` bytes of `file` from `position`: sent by the kernel from the page cache,
    /// or read into the copy buffer and written from there, a buffer at a time.
    fn file(&mut self, file: &File, position: u64, len: u64) -> io::Result<()> {
        self.size_line(len)?;
        let (mut at, end) = (position, position + len);
        if let Some(buffer) = &mut self.copy {
            while at < end {
                let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(buffer.len());
                let read = match rustix::io::pread(file, &mut buffer[..want], at) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the segment file ended early")),
                    Ok(read) => read,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                };
                self.socket.write_all(&buffer[..read])?;
                at += read as u64;
            }
            return Ok(());
        }
        while at < end {
            let count = usize::try_from(end - at).unwrap_or(usize::MAX);
            match rustix::fs::sendfile(&self.socket, file, Some(&mut at), count) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the segment file ended early")),
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The last chunk: the body is complete.
    fn finish(mut self) -> io::Result<()> {
        let end_of_last = if self.started { "\r\n" } else { "" };
        self.socket.write_all(format!("{end_of_last}0\r\n\r\n").as_bytes())?;
        self.socket.flush()
    }
}

/// A batch stream to a client on this host, as frames on the Unix socket: the client reads the
/// files' ranges itself, through descriptors passed with `SCM_RIGHTS`. A frame is a kind byte
/// and two little-endian `u64`s:
///
/// - `F position len`, with a descriptor attached: a range of a file not sent before (the
///   descriptor is a read-only one of its own, and the client reads the range from it);
/// - `S position len`: a range of the last file sent;
/// - `B 0 len`, then `len` bytes: batches this process holds (the first read, the cold tier);
/// - `E 0 0`: the end.
///
/// The client may read each range when it likes: a descriptor keeps its file readable after
/// retention or compaction deletes it, and the ranges are whole batches below the high watermark,
/// which nothing rewrites in place.
struct Frames {
    socket: Socket,
    /// The file (device, inode) the last `F` frame passed.
    sent: Option<(u64, u64)>,
}

/// The frame kinds.
const FRAME_FILE: u8 = b'F';
const FRAME_SAME_FILE: u8 = b'S';
const FRAME_BYTES: u8 = b'B';
const FRAME_END: u8 = b'E';
const FRAME_LEN: usize = 17;

fn frame(kind: u8, a: u64, b: u64) -> [u8; FRAME_LEN] {
    let mut f = [0; FRAME_LEN];
    f[0] = kind;
    f[1..9].copy_from_slice(&a.to_le_bytes());
    f[9..].copy_from_slice(&b.to_le_bytes());
    f
}

impl Out for Frames {
    fn bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.socket.write_all(&frame(FRAME_BYTES, 0, bytes.len() as u64))?;
        self.socket.write_all(bytes)
    }

    fn file(&mut self, file: &File, position: u64, len: u64) -> io::Result<()> {
        // The last file passed is still open (in the client, or in flight to it), so no other
        // file can have its inode number meanwhile.
        let stat = rustix::fs::fstat(file)?;
        let id = (stat.st_dev, stat.st_ino);
        if self.sent == Some(id) {
            return self.socket.write_all(&frame(FRAME_SAME_FILE, position, len));
        }
        // A read-only descriptor of its own (the log's may be open for writing): opening the
        // descriptor's /proc entry opens the same file, even when it has been unlinked.
        let fd = match rustix::fs::open(
            format!("/proc/self/fd/{}", file.as_raw_fd()),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                // No /proc here (a sandbox): the bytes go inline instead.
                tracing::debug!(error = %e, "cannot reopen a segment file to pass it: sending its bytes");
                let mut bytes = vec![0; usize::try_from(len).map_err(io::Error::other)?];
                file.read_exact_at(&mut bytes, position)?;
                return self.bytes(&bytes);
            }
        };
        let header = frame(FRAME_FILE, position, len);
        let fds = [fd.as_fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for a descriptor in the control message"));
        }
        let sent = loop {
            match rustix::net::sendmsg(&self.socket, &[io::IoSlice::new(&header)], &mut control, SendFlags::NOSIGNAL) {
                Ok(sent) => break sent,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"));
                }
                Err(e) => return Err(e.into()),
            }
        };
        // The descriptor went with the first byte; the rest of a frame cut short follows plainly.
        self.socket.write_all(&header[sent..])?;
        self.sent = Some(id);
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.socket.write_all(&frame(FRAME_END, 0, 0))
    }
}

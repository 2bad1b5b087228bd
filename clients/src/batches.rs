//! [`BatchReader`]: a partition read as the stream of its stored batches, over the server's raw
//! batch door (`GET /v1/topics/{topic}/partitions/{p}/batches`, HTTP/1.1) — the fast way to catch
//! up on a long partition.
//!
//! The response body is batches back to back in the storage format, in HTTP chunks. The server
//! puts whole batches in each chunk and the reader reads each chunk into one buffer, so a batch is
//! sliced out without copying; a batch that straddles pieces anyway (a chunk longer than a piece,
//! or another server) is assembled by copying. Every batch's CRC32C is checked here: the bytes
//! crossed a network, and on the zero-copy path the server does not read them at all.
//!
//! The reader asks to upgrade the connection (`Upgrade: strata-batches`); a server that agrees
//! answers `101` and sends the same chunked body from a thread of its own, with `sendfile` from
//! its page cache (to a client on another host) or through one reused buffer (to a client on the
//! same host, where that is faster). A server that declines answers `200` as before. Through a
//! `unix:` URL (the server's Unix socket) the reader asks for the segment files' descriptors
//! instead and reads the batches itself ([`crate::local`]).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strata_storage::batch::{Batch, BatchHeader, HEADER_LEN, MAX_UNCOMPRESSED_LEN};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::codegen::http::uri::InvalidUri;

use tokio::sync::mpsc;

use crate::http1::{self, Body};
use crate::local::FdStream;
use crate::{ClientError, Start};

/// The batch door's media type.
const CONTENT_TYPE: &str = "application/vnd.strata.batches";
/// The protocol the connection is upgraded to for the server's zero-copy stream.
const UPGRADE: &str = "strata-batches";

/// How the server sends a batch stream ([`BatchReader::transfer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// An ordinary `200` response from the server's HTTP stack (the server declined the upgrade).
    Response,
    /// On the upgraded connection, read from the segment files and written through one buffer.
    Copy,
    /// On the upgraded connection, from the page cache to the socket with `sendfile`.
    Sendfile,
    /// On the server's Unix socket: the server passes the segment files' descriptors and the
    /// reader reads the batches from them itself (no bytes cross the socket).
    Descriptors,
}

/// What the receiving task hands over: a piece, the end of the body, or the connection's error.
pub(crate) type Piece = std::io::Result<Option<Bytes>>;

/// Pieces the descriptor path's task reads ahead of the caller.
const PIECES_AHEAD: usize = 2;

/// Where a reader's pieces come from.
#[derive(Debug)]
enum Source {
    /// The body of a response over TCP, read by the caller's task itself as it asks for batches.
    Tcp(Body<TcpStream>),
    /// The body of a response over the Unix socket (a server that declined the descriptors).
    Unix(Body<FdStream>),
    /// Pieces read ahead by a task of their own (the segment files whose descriptors the server
    /// passed); dropping the reader stops the task.
    Ahead { pieces: mpsc::Receiver<Piece>, task: tokio::task::JoinHandle<()> },
}

impl Source {
    /// The next piece of the body: `None` at its end.
    async fn next_piece(&mut self) -> Piece {
        match self {
            Self::Tcp(body) => body.next_piece().await,
            Self::Unix(body) => body.next_piece().await,
            Self::Ahead { pieces, .. } => pieces.recv().await.unwrap_or_else(|| {
                Err(std::io::Error::other("the task receiving the stream stopped before the body ended"))
            }),
        }
    }
}

/// Stored batches of one partition as they arrive ([`crate::Client::read_batches`]).
///
/// Over TCP the caller's task reads the connection itself (see [`crate::http1`] for why not
/// hyper) when it needs the next piece, and a batch is sliced out of the buffer its bytes were
/// read into. Reading in the task that checks and decodes is faster than a task of its own
/// reading ahead: a 1 GiB catch-up over loopback moved 2.0–2.5 GB/s against 1.7–1.8 (four
/// alternated pairs, the reader in a task of a multi-threaded runtime). While the caller
/// decodes, the server's bytes gather in the socket's buffer and the next read takes them at
/// once, where a reader always waiting had to be woken for every 64 KiB segment: a wake-up
/// across cores, which on this project's VM was a fifth of the sending thread's CPU. The descriptor
/// path keeps a task that reads the files ahead on a blocking thread ([`crate::local`]): there the
/// read is a copy from the page cache, which overlaps with the decoding. Dropping the reader
/// closes the connection at once.
#[derive(Debug)]
pub struct BatchReader {
    source: Source,
    splitter: Splitter,
    offset: u64,
    next_offset: u64,
    high_watermark: u64,
    log_start_offset: u64,
    transfer: Transfer,
    done: bool,
}

impl BatchReader {
    /// Opens the stream: one HTTP/1.1 connection to the server behind `url`, one request.
    pub(crate) async fn open(
        url: &str,
        topic: &str,
        partition: u32,
        start: Start,
        max_bytes: u64,
        wait: Duration,
    ) -> Result<Self, ClientError> {
        if topic.is_empty() || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(ClientError::Invalid(format!("{topic:?} is not a valid topic name")));
        }
        let connect_error = |reason: String| ClientError::Connect { url: url.to_string(), reason };
        let start = match start {
            Start::Offset(o) => format!("offset={o}"),
            Start::Earliest => "offset=earliest".into(),
            Start::Latest => "offset=latest".into(),
            Start::Timestamp(ts) => format!("timestamp={ts}"),
        };
        let query = format!("{start}&max_bytes={max_bytes}&wait_ms={}", wait.as_millis());
        let door = |prefix: &str| format!("{prefix}/v1/topics/{topic}/partitions/{partition}/batches?{query}");
        let (head, source) = if let Some(socket) = crate::local::unix_path(url) {
            // On this host: ask for the files' descriptors and read them here.
            let stream = FdStream::connect(&socket).await.map_err(|e| connect_error(e.to_string()))?;
            let extra = [("Strata-Transfer", "descriptors")];
            let (head, body) = http1::get(stream, "localhost", &door(""), CONTENT_TYPE, Some(UPGRADE), &extra)
                .await
                .map_err(|e| connect_error(e.to_string()))?;
            let source = match (head.status, head.header("strata-transfer").map(str::trim)) {
                (101, Some("descriptors")) => {
                    let (stream, buf) = body.into_parts();
                    let (tx, pieces) = mpsc::channel(PIECES_AHEAD);
                    Source::Ahead { pieces, task: tokio::spawn(crate::local::receive(stream, buf, tx)) }
                }
                _ => Source::Unix(checked_body(head.status, body).await?),
            };
            (head, source)
        } else {
            let uri: Uri = url.parse().map_err(|e: InvalidUri| connect_error(e.to_string()))?;
            if uri.scheme_str().is_some_and(|s| s != "http") {
                return Err(connect_error("only http:// and unix: URLs can be read from".into()));
            }
            let authority = uri.authority().ok_or_else(|| connect_error("the URL names no host".into()))?.clone();
            let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
            let stream = TcpStream::connect(&address).await.map_err(|e| connect_error(e.to_string()))?;
            stream.set_nodelay(true).map_err(|e| connect_error(e.to_string()))?;
            let path = door(uri.path().trim_end_matches('/'));
            let (head, body) = http1::get(stream, authority.as_str(), &path, CONTENT_TYPE, Some(UPGRADE), &[])
                .await
                .map_err(|e| connect_error(e.to_string()))?;
            let body = checked_body(head.status, body).await?;
            (head, Source::Tcp(body))
        };
        let upgraded = head.status == 101;
        let header = |name: &str| -> Result<u64, ClientError> {
            head.header(name).and_then(|v| v.trim().parse().ok()).ok_or_else(|| {
                ClientError::Invalid(format!("the batch stream's response has no valid `{name}` header"))
            })
        };
        let offset = header("strata-offset")?;
        let high_watermark = header("strata-high-watermark")?;
        let log_start_offset = header("strata-log-start-offset")?;
        let transfer = match (upgraded, head.header("strata-transfer").map(str::trim)) {
            (false, _) => Transfer::Response,
            (true, Some("copy")) => Transfer::Copy,
            (true, Some("descriptors")) => Transfer::Descriptors,
            // Servers from before the header sent every upgraded stream with `sendfile`.
            (true, _) => Transfer::Sendfile,
        };
        Ok(Self {
            source,
            splitter: Splitter::default(),
            offset,
            next_offset: offset,
            high_watermark,
            log_start_offset,
            transfer,
            done: false,
        })
    }

    /// The offset the start resolved to: the first batch may begin before it (a consumer skips
    /// the records below it).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The offset after the last batch returned so far (the start offset before the first):
    /// where a next read continues.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The partition's high watermark when the stream started.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset
    }

    /// Whether the server sends the batches from its page cache without copying them
    /// (`sendfile`, after upgrading the connection); otherwise it reads and copies them, as it
    /// does for ranges that only the cold tier holds.
    pub fn is_zero_copy(&self) -> bool {
        self.transfer == Transfer::Sendfile
    }

    /// How the server sends this stream.
    pub fn transfer(&self) -> Transfer {
        self.transfer
    }

    /// The next batch, checksum verified; `None` once the response is complete (it reached the
    /// high watermark, or `max_bytes`).
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a batch that fails its checks, or a body that ends inside a
    /// batch (the reader is done after it); [`ClientError::Server`] (`UNAVAILABLE`) when the connection fails mid-stream (the
    /// server cuts the body when a read fails).
    ///
    /// # Cancel safety
    /// Cancel safe: a batch is taken out of the buffers only when it is returned.
    pub async fn next_batch(&mut self) -> Result<Option<Batch>, ClientError> {
        loop {
            match self.splitter.next_batch() {
                Ok(Some(batch)) => {
                    self.next_offset = batch.header().next_offset();
                    return Ok(Some(batch));
                }
                Ok(None) => {}
                Err(e) => {
                    // Nothing after a damaged batch can be trusted to be cut right.
                    self.done = true;
                    self.splitter = Splitter::default();
                    return Err(e);
                }
            }
            if self.done {
                return Ok(None);
            }
            match self.source.next_piece().await {
                Ok(Some(piece)) => self.splitter.push(piece),
                Err(e) => {
                    self.done = true;
                    return Err(ClientError::Server {
                        code: tonic::Code::Unavailable,
                        message: format!("the batch stream broke off at offset {}: {e}", self.next_offset),
                    });
                }
                Ok(None) => {
                    self.done = true;
                    if !self.splitter.partial.is_empty() {
                        return Err(ClientError::Invalid(format!(
                            "the batch stream ended inside a batch ({} bytes of it) at offset {}",
                            self.splitter.partial.len(),
                            self.next_offset
                        )));
                    }
                }
            }
        }
    }
}

impl Drop for BatchReader {
    fn drop(&mut self) {
        if let Source::Ahead { task, .. } = &self.source {
            task.abort();
        }
    }
}

/// The body of a `101` or `2xx` response, or the server's error for any other status.
async fn checked_body<S: AsyncRead + Unpin>(status: u16, mut body: Body<S>) -> Result<Body<S>, ClientError> {
    if status != 101 && !(200..300).contains(&status) {
        let body = body.collect_small().await.unwrap_or_default();
        return Err(problem(status, &body));
    }
    Ok(body)
}

/// Cuts a byte stream that arrives in arbitrary chunks back into whole batches.
#[derive(Debug, Default)]
struct Splitter {
    /// The unread rest of the chunk being split.
    chunk: Bytes,
    /// The start of a batch that continues in a later chunk.
    partial: BytesMut,
}

impl Splitter {
    /// Adds the next chunk; call only once [`Splitter::next_batch`] has returned `None`.
    fn push(&mut self, chunk: Bytes) {
        debug_assert!(self.chunk.is_empty(), "a chunk pushed before the last was split");
        self.chunk = chunk;
    }

    /// Takes the next whole batch out of the buffered bytes, if they hold one; `None` when more
    /// bytes are needed.
    fn next_batch(&mut self) -> Result<Option<Batch>, ClientError> {
        let invalid =
            |e: strata_storage::batch::BatchError| ClientError::Invalid(format!("fetched batch does not decode: {e}"));
        loop {
            if self.partial.is_empty() {
                // The common case: the batch lies whole in the chunk, and is sliced out of it.
                if self.chunk.len() >= HEADER_LEN {
                    let len = checked_len(&self.chunk).map_err(invalid)?;
                    if self.chunk.len() >= len {
                        return Batch::parse(self.chunk.split_to(len)).map(Some).map_err(invalid);
                    }
                }
                self.partial.extend_from_slice(&self.chunk);
                self.chunk = Bytes::new();
                return Ok(None);
            }
            // A batch straddles chunks: copy from this one only what completes it, header first.
            let header_known = self.partial.len() >= HEADER_LEN;
            let want = if header_known { checked_len(&self.partial).map_err(invalid)? } else { HEADER_LEN };
            let take = (want - self.partial.len()).min(self.chunk.len());
            self.partial.extend_from_slice(&self.chunk.split_to(take));
            if self.partial.len() < want {
                return Ok(None);
            }
            if header_known {
                return Batch::parse(self.partial.split().freeze()).map(Some).map_err(invalid);
            }
            // The header just completed: go round to learn the batch's length.
        }
    }
}

/// A batch's total length from its header, refusing lengths no writer produces (so a damaged
/// length cannot make the reader buffer without bound).
fn checked_len(buf: &[u8]) -> Result<usize, strata_storage::batch::BatchError> {
    let header = BatchHeader::decode(buf)?;
    if header.batch_length as usize > MAX_UNCOMPRESSED_LEN + HEADER_LEN {
        return Err(strata_storage::batch::BatchError::BadLength(header.batch_length));
    }
    Ok(header.total_len())
}

/// An error response: `application/problem+json` with the server's stable `code`.
fn problem(status: u16, body: &[u8]) -> ClientError {
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = doc["code"].as_str().unwrap_or("http_error");
    let detail = doc["detail"].as_str().map_or_else(|| String::from_utf8_lossy(body).into_owned(), str::to_string);
    let grpc = match status {
        400 | 413 | 415 | 422 => tonic::Code::InvalidArgument,
        404 => tonic::Code::NotFound,
        409 | 412 => tonic::Code::FailedPrecondition,
        416 => tonic::Code::OutOfRange,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    };
    ClientError::Server { code: grpc, message: format!("{code}: {detail}") }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use strata_storage::BatchBuilder;
    use strata_storage::batch::{Compression, set_base_offset};

    use super::*;

    /// Batches of 1 to 5 records at offsets 0, 1, 3, 6, ... back to back.
    fn stream() -> (Bytes, Vec<Bytes>) {
        let (mut all, mut each, mut offset) = (BytesMut::new(), Vec::new(), 0u64);
        for n in 1..=5u64 {
            let mut b = BatchBuilder::new(if n % 2 == 0 { Compression::Lz4 } else { Compression::None });
            for i in 0..n {
                b.push(1, Some(b"k"), Some(format!("value {offset} {i}").as_bytes()), &[]);
            }
            let mut batch = b.build().unwrap();
            set_base_offset(&mut batch, offset);
            offset += n;
            all.extend_from_slice(&batch);
            each.push(Bytes::from(batch));
        }
        (all.freeze(), each)
    }

    #[test]
    fn any_chunking_gives_back_the_same_batches() {
        let (all, each) = stream();
        for chunk in 1..=all.len() {
            let mut splitter = Splitter::default();
            let mut got = Vec::new();
            for piece in all.chunks(chunk) {
                splitter.push(Bytes::copy_from_slice(piece));
                while let Some(b) = splitter.next_batch().unwrap() {
                    got.push(b.bytes().clone());
                }
            }
            assert_eq!(got, each, "chunks of {chunk} bytes");
            assert!(splitter.partial.is_empty() && splitter.chunk.is_empty());
        }
    }

    #[test]
    fn a_damaged_batch_is_an_error_wherever_the_chunks_fall() {
        let (all, _) = stream();
        let mut damaged = all.to_vec();
        let last = damaged.len() - 3;
        damaged[last] ^= 0x40; // inside the last batch's records: its CRC no longer matches
        for chunk in [7, 64, damaged.len()] {
            let mut splitter = Splitter::default();
            let mut error = None;
            'pieces: for piece in damaged.chunks(chunk) {
                splitter.push(Bytes::copy_from_slice(piece));
                loop {
                    match splitter.next_batch() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            error = Some(e);
                            break 'pieces;
                        }
                    }
                }
            }
            let error = error.expect("the damaged batch was accepted").to_string();
            assert!(error.contains("checksum mismatch"), "{error}");
        }
    }

    /// Serves one hand-written response: the head, then `body` as one chunk (cut after `cut`
    /// bytes when set); then waits for the client to close the connection, and returns whether it
    /// did.
    async fn serve_once(body: Bytes, cut: Option<usize>) -> (String, tokio::task::JoinHandle<bool>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nstrata-offset: 0\r\n\
                strata-high-watermark: 15\r\nstrata-log-start-offset: 0\r\n\r\n";
            let mut out = format!("{head}{:x}\r\n", body.len()).into_bytes();
            out.extend_from_slice(&body[..cut.unwrap_or(body.len())]);
            if cut.is_none() {
                out.extend_from_slice(b"\r\n0\r\n\r\n");
            }
            socket.write_all(&out).await.unwrap();
            if cut.is_some() {
                return true; // closing here cuts the body
            }
            // The client closing its end is what ends this read.
            let closed = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut request)).await;
            matches!(closed, Ok(Ok(0)))
        });
        (url, server)
    }

    #[tokio::test]
    async fn the_reader_reads_a_whole_stream_and_reports_a_cut_one() {
        let (all, each) = stream();
        let (url, server) = serve_once(all.clone(), None).await;
        let mut reader = BatchReader::open(&url, "t", 0, Start::Earliest, 1 << 20, Duration::ZERO).await.unwrap();
        assert_eq!(reader.high_watermark(), 15);
        let mut got = Vec::new();
        while let Some(b) = reader.next_batch().await.unwrap() {
            got.push(b.bytes().clone());
        }
        assert_eq!((got, reader.next_offset()), (each.clone(), 15));
        drop(reader);
        assert!(server.await.unwrap(), "dropping the reader did not close its connection");

        // Cut inside the third batch: the first two arrive, then the break is reported.
        let cut = each[0].len() + each[1].len() + 5;
        let (url, server) = serve_once(all, Some(cut)).await;
        let mut reader = BatchReader::open(&url, "t", 0, Start::Earliest, 1 << 20, Duration::ZERO).await.unwrap();
        assert_eq!(reader.next_batch().await.unwrap().unwrap().bytes(), &each[0]);
        assert_eq!(reader.next_batch().await.unwrap().unwrap().bytes(), &each[1]);
        let error = reader.next_batch().await.unwrap_err();
        assert!(matches!(&error, ClientError::Server { code: tonic::Code::Unavailable, .. }), "{error}");
        assert!(error.to_string().contains("broke off at offset 3"), "{error}");
        assert!(server.await.unwrap());
    }

    /// `next_batch` reads the socket itself, so a call cancelled mid-read (here by a timeout
    /// shorter than the server's pauses) must lose nothing: the next call goes on from the bytes
    /// already read.
    #[tokio::test]
    async fn a_next_batch_cancelled_mid_read_loses_nothing() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (all, each) = stream();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let body = all.clone();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.set_nodelay(true).unwrap();
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nstrata-offset: 0\r\n\
                strata-high-watermark: 15\r\nstrata-log-start-offset: 0\r\n\r\n";
            let mut out = format!("{head}{:x}\r\n", body.len()).into_bytes();
            out.extend_from_slice(&body);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
            // The head at once, then the body in small pieces with pauses between them.
            let head_len = head.len();
            socket.write_all(&out[..head_len]).await.unwrap();
            for piece in out[head_len..].chunks(97) {
                tokio::time::sleep(Duration::from_millis(3)).await;
                socket.write_all(piece).await.unwrap();
            }
        });
        let mut reader = BatchReader::open(&url, "t", 0, Start::Earliest, 1 << 20, Duration::ZERO).await.unwrap();
        let (mut got, mut cancelled) = (Vec::new(), 0);
        loop {
            match tokio::time::timeout(Duration::from_millis(1), reader.next_batch()).await {
                Err(_) => cancelled += 1,
                Ok(batch) => match batch.unwrap() {
                    Some(b) => got.push(b.bytes().clone()),
                    None => break,
                },
            }
        }
        assert!(cancelled > 0, "no call was cancelled: the test did not test anything");
        assert_eq!((got, reader.next_offset()), (each, 15));
        server.await.unwrap();
    }

    #[test]
    fn an_impossible_length_is_refused_before_buffering() {
        let (_, each) = stream();
        let mut bogus = each[0].to_vec();
        // batch_length is the 4 bytes after the 8-byte base offset.
        bogus[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut splitter = Splitter::default();
        splitter.push(Bytes::from(bogus));
        let error = splitter.next_batch().unwrap_err().to_string();
        assert!(error.contains("impossible"), "{error}");
    }
}

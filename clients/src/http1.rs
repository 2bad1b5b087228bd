//! Just enough HTTP/1.1 to make one GET request and stream its response body, on a connection
//! the caller owns: the transport under [`crate::BatchReader`].
//!
//! Why not hyper: hyper hands out a body in the pieces its read buffer happened to hold, so a
//! 1 MiB batch arrives in several pieces and has to be copied back together. Measured on a
//! catch-up read, that copy was a quarter of the client's CPU. Here the reader knows how long the
//! current chunk is (the server sends whole batches per chunk) and reads it into one buffer, so a
//! piece is handed out whole, with the batches in it contiguous, and nothing is copied after the
//! socket read.
//!
//! ```text
//!  socket ──read (sized to the chunk)──► buf ──split, no copy──► Bytes piece ──► caller
//! ```

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response head read before giving up.
const MAX_HEAD: usize = 64 << 10;
/// Headers a response may carry.
const MAX_HEADERS: usize = 64;
/// Largest body piece buffered whole; a longer chunk is handed out in pieces of this size.
const MAX_PIECE: usize = 8 << 20;
/// Bytes read past the end of a chunk's data, so its trailing CRLF and the next size line
/// usually arrive with it (no extra read for them).
const SLACK: usize = 64;
/// Longest chunk-size line (hex digits and extensions) accepted.
const MAX_SIZE_LINE: usize = 4 << 10;
/// Buffers kept for reuse ([`Body::make_room`]): enough for the pieces a reader holds at once
/// (the one being read, and those whose batches the caller still holds).
const MAX_SPARE: usize = 4;
/// Buffers are allocated in multiples of this.
const MIN_BUFFER: usize = 1 << 20;
/// Largest error body read whole.
const MAX_ERROR_BODY: usize = 1 << 20;

/// A response's status line and headers; the body follows through [`Body`].
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: u16,
    /// Names in lower case.
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// How the body's end is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Transfer-Encoding: chunked`: `left` bytes of the current chunk's data remain; at 0 the
    /// next size line is due (after the CRLF that ends the data, unless `first`).
    Chunked {
        left: u64,
        first: bool,
    },
    /// `Content-Length`: `left` bytes remain.
    Length {
        left: u64,
    },
    /// Neither: the body runs until the server closes the connection.
    UntilClose,
    Done,
    /// The connection closed inside the body, after the bytes before that were handed out.
    Cut,
}

/// A response body being read; the connection is closed when it is dropped.
#[derive(Debug)]
pub(crate) struct Body<S> {
    stream: S,
    /// Bytes read and not yet handed out.
    buf: BytesMut,
    framing: Framing,
    /// Buffers earlier pieces were read into, read into again once the caller has dropped every
    /// piece of them ([`Body::make_room`]).
    spare: Vec<BytesMut>,
    /// Buffers allocated by [`Body::make_room`].
    #[cfg(test)]
    allocated: usize,
}

/// Sends `GET path` on `stream` and reads the response head; 1xx responses are skipped. The
/// server is asked to close the connection after the response, or, with `upgrade`, to switch
/// the connection to that protocol: a `101` agreeing to it is returned as the head, and what
/// follows it is read as a chunked body (the one protocol upgraded to here, the server's
/// zero-copy batch stream, is that).
///
/// # Errors
/// The I/O error, or `InvalidData` for a response that is not HTTP/1.1 or a `101` to a protocol
/// not asked for.
pub(crate) async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
    accept: &str,
    upgrade: Option<&str>,
    extra: &[(&str, &str)],
) -> io::Result<(Head, Body<S>)> {
    let connection = match upgrade {
        Some(protocol) => format!("Connection: upgrade\r\nUpgrade: {protocol}"),
        None => "Connection: close".to_string(),
    };
    let extra: String = extra.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\n{extra}{connection}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(8 << 10);
    loop {
        let (head, len) = loop {
            if let Some(parsed) = parse_head(&buf)? {
                break parsed;
            }
            if buf.len() >= MAX_HEAD {
                return Err(invalid(format!("the response head is longer than {MAX_HEAD} bytes")));
            }
            buf.reserve(8 << 10);
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before it answered",
                ));
            }
        };
        buf.advance(len);
        if head.status == 101 {
            let agreed = upgrade.zip(head.header("upgrade")).is_some_and(|(a, b)| a.eq_ignore_ascii_case(b.trim()));
            if !agreed {
                return Err(invalid(format!("the server switched to {:?}, not asked for", head.header("upgrade"))));
            }
            return Ok((head, Body::new(stream, buf, Framing::Chunked { left: 0, first: true })));
        }
        if (100..200).contains(&head.status) {
            continue;
        }
        let framing = if head.header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
            Framing::Chunked { left: 0, first: true }
        } else if let Some(length) = head.header("content-length") {
            match length.trim().parse() {
                Ok(0) => Framing::Done,
                Ok(left) => Framing::Length { left },
                Err(_) => return Err(invalid(format!("bad Content-Length {length:?}"))),
            }
        } else if head.status == 204 || head.status == 304 {
            Framing::Done
        } else {
            Framing::UntilClose
        };
        return Ok((head, Body::new(stream, buf, framing)));
    }
}

/// The head at the start of `buf` and its length, once it is all there.
fn parse_head(buf: &[u8]) -> io::Result<Option<(Head, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = response.code.unwrap_or_default();
            let headers = response
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            Ok(Some((Head { status, headers }, len)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(invalid(format!("the response is not HTTP/1.1: {e}"))),
    }
}

impl<S> Body<S> {
    fn new(stream: S, buf: BytesMut, framing: Framing) -> Self {
        Self {
            stream,
            buf,
            framing,
            spare: Vec::new(),
            #[cfg(test)]
            allocated: 0,
        }
    }

    /// The connection and the bytes read from it past the head (an upgraded connection's
    /// protocol is read by the caller).
    pub(crate) fn into_parts(self) -> (S, BytesMut) {
        (self.stream, self.buf)
    }
}

impl<S: AsyncRead + Unpin> Body<S> {
    /// The next piece of the body: a chunk's data whole when it is at most [`MAX_PIECE`] long
    /// (the reads are sized to it), else the next `MAX_PIECE` bytes of it. `None` at the end.
    /// When the connection closes inside the body, the bytes that did arrive come out as a last
    /// piece before the error.
    ///
    /// # Errors
    /// The connection's I/O error; `UnexpectedEof` when it closes before the body ends;
    /// `InvalidData` for broken chunk framing.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read are kept in the buffer, and state changes only between reads.
    pub(crate) async fn next_piece(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            match self.framing {
                Framing::Done => return Ok(None),
                Framing::Cut => return Err(cut()),
                Framing::Chunked { left: 0, first } => {
                    if let Some(next) = self.size_line(first)? {
                        self.framing = next;
                        continue;
                    }
                    if self.buf.len() >= MAX_SIZE_LINE {
                        return Err(invalid("a chunk-size line is too long".into()));
                    }
                    self.fill(SLACK).await?;
                }
                Framing::Chunked { left, .. } | Framing::Length { left } => {
                    let want = usize::try_from(left).unwrap_or(usize::MAX).min(MAX_PIECE);
                    if self.buf.len() >= want {
                        let piece = self.buf.split_to(want).freeze();
                        let left = left - want as u64;
                        self.framing = match self.framing {
                            Framing::Chunked { .. } => Framing::Chunked { left, first: false },
                            _ if left == 0 => Framing::Done,
                            _ => Framing::Length { left },
                        };
                        return Ok(Some(piece));
                    }
                    let slack = if matches!(self.framing, Framing::Chunked { .. }) { SLACK } else { 0 };
                    if let Err(e) = self.fill(want - self.buf.len() + slack).await {
                        // What arrived before a cut is handed out first; the error comes next.
                        if e.kind() == io::ErrorKind::UnexpectedEof && !self.buf.is_empty() {
                            self.framing = Framing::Cut;
                            return Ok(Some(self.buf.split().freeze()));
                        }
                        return Err(e);
                    }
                }
                Framing::UntilClose => {
                    // No length to size the reads by: pieces of up to 1 MiB, read 64 KiB at a time.
                    if self.buf.len() >= 1 << 20 {
                        return Ok(Some(self.buf.split().freeze()));
                    }
                    self.buf.reserve(64 << 10);
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        self.framing = Framing::Done;
                        if !self.buf.is_empty() {
                            return Ok(Some(self.buf.split().freeze()));
                        }
                    }
                }
            }
        }
    }

    /// The whole body, for an error response; at most [`MAX_ERROR_BODY`] bytes are kept.
    pub(crate) async fn collect_small(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(piece) = self.next_piece().await? {
            let room = MAX_ERROR_BODY.saturating_sub(body.len());
            body.extend_from_slice(&piece[..piece.len().min(room)]);
            if room < piece.len() {
                break;
            }
        }
        Ok(body)
    }

    /// Parses the CRLF ending the last chunk's data (unless `first`), the next size line, and
    /// for the last chunk the trailer section; `None` while more bytes are needed.
    fn size_line(&mut self, first: bool) -> io::Result<Option<Framing>> {
        let skip = if first { 0 } else { 2 };
        if self.buf.len() < skip {
            return Ok(None);
        }
        if !self.buf.starts_with(&b"\r\n"[..skip]) {
            return Err(invalid("a chunk's data does not end in CRLF".into()));
        }
        let Some(end) = find_crlf(&self.buf[skip..]) else { return Ok(None) };
        let line = &self.buf[skip..skip + end];
        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
        let digits = std::str::from_utf8(digits).map_err(|_| invalid("a chunk size is not hex".into()))?.trim();
        let size = u64::from_str_radix(digits, 16).map_err(|_| invalid(format!("bad chunk size {digits:?}")))?;
        let consumed = skip + end + 2;
        if size > 0 {
            self.buf.advance(consumed);
            return Ok(Some(Framing::Chunked { left: size, first: true }));
        }
        // The last chunk: trailer lines until an empty one.
        let mut at = consumed;
        loop {
            let Some(end) = find_crlf(&self.buf[at..]) else { return Ok(None) };
            at += end + 2;
            if end == 0 {
                self.buf.advance(at);
                return Ok(Some(Framing::Done));
            }
        }
    }

    /// Reads once, at most `limit` bytes, into the buffer.
    async fn fill(&mut self, limit: usize) -> io::Result<()> {
        self.make_room(limit);
        if (&mut self.stream).take(limit as u64).read_buf(&mut self.buf).await? == 0 {
            return Err(cut());
        }
        Ok(())
    }
}

impl<S> Body<S> {
    /// Room for `limit` more bytes in the buffer, in memory read into before where possible.
    ///
    /// Pieces handed out share the buffer they were read into, so the buffer cannot grow in place
    /// while any is alive, and a fresh one would be new memory: on this project's machine a page
    /// fault and a zeroed page per 4 KiB, which was a fifth of a catch-up reader's CPU (and
    /// allocators hand large freed blocks back to the system soon). So a buffer outgrown is
    /// kept, and taken again once every piece of it has been dropped.
    fn make_room(&mut self, limit: usize) {
        if self.buf.capacity() - self.buf.len() >= limit || self.buf.try_reclaim(limit) {
            return;
        }
        let need = self.buf.len() + limit;
        let reusable = self.spare.iter_mut().position(|b| b.try_reclaim(need));
        let mut next = match reusable {
            Some(i) => self.spare.swap_remove(i),
            None => {
                #[cfg(test)]
                {
                    self.allocated += 1;
                }
                BytesMut::with_capacity(need.next_multiple_of(MIN_BUFFER).max(MIN_BUFFER))
            }
        };
        // The bytes read past the last piece: usually only the next chunk's size line.
        next.extend_from_slice(&self.buf);
        let mut outgrown = std::mem::replace(&mut self.buf, next);
        outgrown.clear();
        if self.spare.len() == MAX_SPARE {
            self.spare.remove(0);
        }
        self.spare.push(outgrown);
    }
}

fn cut() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed inside the response body")
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Serves `response` to one request on an in-memory pipe, `step` bytes per write, and reads
    /// the body back in pieces.
    async fn read(response: &[u8], step: usize) -> io::Result<(Head, Vec<Bytes>)> {
        read_upgrading(response, step, None).await
    }

    /// As [`read`], asking to upgrade to `upgrade`.
    async fn read_upgrading(response: &[u8], step: usize, upgrade: Option<&str>) -> io::Result<(Head, Vec<Bytes>)> {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let response = response.to_vec();
        let serve = tokio::spawn(async move {
            let mut request = vec![0u8; 1024];
            let n = server.read(&mut request).await.unwrap();
            assert!(request[..n].starts_with(b"GET /p HTTP/1.1\r\nHost: h\r\n"));
            for part in response.chunks(step) {
                if server.write_all(part).await.is_err() {
                    return;
                }
            }
        });
        let (head, mut body) = get(client, "h", "/p", "*/*", upgrade, &[]).await?;
        let mut pieces = Vec::new();
        let outcome = loop {
            match body.next_piece().await {
                Ok(Some(p)) => pieces.push(p),
                Ok(None) => break Ok((head, pieces)),
                Err(e) => break Err(e),
            }
        };
        drop(body);
        serve.await.unwrap();
        outcome
    }

    #[tokio::test]
    async fn chunks_come_back_whole_however_the_bytes_arrive() {
        let response =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nStrata-Offset: 7\r\n\r\n\
            5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\ntrailer: x\r\n\r\n";
        for step in [1, 2, 3, 7, 16, response.len()] {
            let (head, pieces) = read(response, step).await.unwrap();
            assert_eq!(head.status, 200);
            assert_eq!(head.header("strata-offset"), Some("7"));
            assert_eq!(pieces, [&b"hello"[..], b"abcdefghijklmnopqrstuvwxyz"], "step {step}");
        }
    }

    #[tokio::test]
    async fn content_length_and_close_delimited_bodies() {
        let (head, pieces) = read(b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope", 3).await.unwrap();
        assert_eq!((head.status, pieces.concat()), (404, b"nope".to_vec()));
        let (_, pieces) = read(b"HTTP/1.1 200 OK\r\n\r\nuntil close", 4).await.unwrap();
        assert_eq!(pieces.concat(), b"until close");
        let (_, pieces) = read(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 4).await.unwrap();
        assert!(pieces.is_empty());
    }

    #[tokio::test]
    async fn broken_framing_and_early_ends_are_errors() {
        let cases: [(&[u8], io::ErrorKind); 5] = [
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", io::ErrorKind::InvalidData),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcXY", io::ErrorKind::InvalidData),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc", io::ErrorKind::UnexpectedEof),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", io::ErrorKind::UnexpectedEof),
            (b"SMTP ready\r\n\r\n", io::ErrorKind::InvalidData),
        ];
        for (response, kind) in cases {
            let error = read(response, 5).await.unwrap_err();
            assert_eq!(error.kind(), kind, "{}: {error}", String::from_utf8_lossy(response));
        }
    }

    #[tokio::test]
    async fn an_agreed_upgrade_is_followed_by_a_chunked_body() {
        let switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: Strata-Batches\r\n\
            Strata-Offset: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for step in [1, 4, switched.len()] {
            let (head, pieces) = read_upgrading(switched, step, Some("strata-batches")).await.unwrap();
            assert_eq!((head.status, head.header("strata-offset")), (101, Some("3")));
            assert_eq!(pieces, [&b"hello"[..]], "step {step}");
        }
        // A server that declines answers as usual; one that switches unasked, or to something
        // else, is refused.
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (head, pieces) = read_upgrading(plain, 3, Some("strata-batches")).await.unwrap();
        assert_eq!((head.status, pieces.concat()), (200, b"ok".to_vec()));
        for upgrade in [None, Some("websocket")] {
            let error = read_upgrading(switched, 8, upgrade).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{upgrade:?}: {error}");
        }
    }

    #[tokio::test]
    async fn a_chunk_longer_than_a_piece_is_handed_out_in_pieces() {
        let data: Vec<u8> = (0..MAX_PIECE + 10).map(|i| (i % 251) as u8).collect();
        let mut response =
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n", data.len()).into_bytes();
        response.extend_from_slice(&data);
        response.extend_from_slice(b"\r\n0\r\n\r\n");
        let (_, pieces) = read(&response, 1 << 20).await.unwrap();
        assert_eq!(pieces.iter().map(Bytes::len).collect::<Vec<_>>(), [MAX_PIECE, 10]);
        assert_eq!(pieces.concat(), data);
    }

    /// A chunked response of `chunks` chunks of `len` bytes, chunk `i` filled with byte `i`.
    fn chunked(chunks: usize, len: usize) -> Vec<u8> {
        let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for i in 0..chunks {
            response.extend_from_slice(format!("{len:x}\r\n").as_bytes());
            response.extend(std::iter::repeat_n(i as u8, len));
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(b"0\r\n\r\n");
        response
    }

    #[tokio::test]
    async fn buffers_are_read_into_again_only_once_their_pieces_are_dropped() {
        const LEN: usize = 300 << 10;
        let response = chunked(40, LEN);
        // Every piece kept: each is intact at the end, whatever was read after it.
        let (_, pieces) = read(&response, 64 << 10).await.unwrap();
        assert_eq!(pieces.len(), 40);
        for (i, piece) in pieces.iter().enumerate() {
            assert!(piece.len() == LEN && piece.iter().all(|&b| b == i as u8), "piece {i} changed");
        }
        // The last three pieces kept, as a caller still holding batches of earlier pieces does:
        // the buffers of dropped pieces are read into again.
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let serve = tokio::spawn(async move {
            let mut request = vec![0u8; 1024];
            let _ = server.read(&mut request).await.unwrap();
            server.write_all(&response).await.unwrap();
        });
        let (_, mut body) = get(client, "h", "/p", "*/*", None, &[]).await.unwrap();
        let mut held = std::collections::VecDeque::new();
        let mut i = 0u8;
        while let Some(piece) = body.next_piece().await.unwrap() {
            assert!(piece.iter().all(|&b| b == i), "piece {i}");
            held.push_back(piece);
            if held.len() > 3 {
                let oldest = held.pop_front().unwrap();
                assert!(oldest.iter().all(|&b| b == i - 3), "piece {} changed while held", i - 3);
            }
            i += 1;
        }
        serve.await.unwrap();
        assert_eq!(i, 40);
        assert!(body.allocated <= MAX_SPARE + 1, "40 pieces took {} new buffers", body.allocated);
        assert!(body.spare.len() <= MAX_SPARE);
    }
}

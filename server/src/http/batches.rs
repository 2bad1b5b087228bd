//! The raw batch door (`GET /v1/topics/{topic}/partitions/{p}/batches`): a partition's stored
//! batches streamed as they are, for consumers that decode batches themselves and want to catch
//! up at the disk's pace.
//!
//! ```text
//!  handler ── first read (resolves `offset`, long-polls) ──► status + headers
//!     └─ task: read ≤ READ_BYTES ─► channel (READ_AHEAD deep) ─► chunked HTTP/1.1 body ─► client
//! ```
//!
//! The body is the batches in the storage format (storage/FORMAT.md), whole and back to back,
//! with nothing around them: no JSON, no protobuf, no HTTP/2 framing or flow-control windows.
//! Reads run ahead of the socket by a bounded number of chunks, so the disk and the network
//! overlap while a slow reader holds at most that much server memory. The client finds the next
//! offset from the last batch's header (base offset + last offset delta + 1), as Kafka consumers do.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use strata_storage::batch::count_records;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::records::parse_start;
use super::zero_copy::{Stream, Upgrade};
use super::{Query, parse_partition, query_u64};
use crate::AppState;
use crate::broker::Start;
use crate::error::ApiError;

/// The body's media type.
pub const BATCHES_CONTENT_TYPE: &str = "application/vnd.strata.batches";
/// Default and largest `max_bytes` of one response.
const DEFAULT_MAX_BYTES: u64 = 64 << 20;
const MAX_MAX_BYTES: u64 = 1 << 30;
/// Bytes of batches read from the log at a time, and how many such reads may wait for the socket.
const READ_BYTES: usize = 2 << 20;
const READ_AHEAD: usize = 2;
/// How far a read may go past `READ_BYTES` to finish the batch crossing it: otherwise, over
/// batches of about 1 MiB (a producer's full batch), every read would keep one batch and read the
/// next one twice.
const OVERSHOOT: usize = READ_BYTES / 2;

#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/batches",
    params(("topic" = String, Path), ("partition" = u32, Path),
        ("offset" = Option<String>, Query, description = "N, `earliest` or `latest` (default earliest)"),
        ("timestamp" = Option<i64>, Query, description = "first record at or after this time (ms)"),
        ("max_bytes" = Option<u64>, Query, description = "stop once this many bytes of batches are sent (default 64 MiB, at most 1 GiB); whole batches, so the last may cross it, and the first is sent even when larger"),
        ("wait_ms" = Option<u32>, Query, description = "long-poll: wait up to this long for a first batch")),
    responses(
        (status = 200, content_type = "application/vnd.strata.batches",
            description = "The stored batches (storage/FORMAT.md) from the one holding the start offset, back to back; \
                the first may begin before the start offset. Headers: `Strata-Offset` (where `offset`/`timestamp` resolved to), \
                `Strata-High-Watermark` and `Strata-Log-Start-Offset` (at the first read). An empty body: nothing at or after the start yet. \
                A body cut short (the connection closes before the chunked body ends) means the server failed mid-stream."),
        (status = 101, description = "Asked for with `Connection: upgrade` and `Upgrade: strata-batches`: the same headers, \
                then the same chunked body on the upgraded connection, written by a server thread of its own: from the page cache \
                without copies (`sendfile`) to peers on other hosts, through one reused buffer to peers on this one; \
                `Strata-Transfer` says which (`sendfile` or `copy`). The server does not check checksums on this path; the client must. \
                On the server's Unix socket, a request with `Strata-Transfer: descriptors` gets frames instead of the body: \
                ranges of segment files whose descriptors come with `SCM_RIGHTS`, for the client to read itself (`Strata-Transfer: descriptors`)."),
        (status = 416, body = crate::error::Problem), (status = "4XX", body = crate::error::Problem)))]
pub async fn batches(
    State(state): State<Arc<AppState>>,
    Path((topic, partition)): Path<(String, String)>,
    query: Query,
    mut request: Request,
) -> Result<Response, ApiError> {
    let partition = parse_partition(&partition)?;
    let start = parse_start(&query)?;
    let max_bytes = query_u64(&query, "max_bytes")?.unwrap_or(DEFAULT_MAX_BYTES).clamp(1, MAX_MAX_BYTES);
    let wait = Duration::from_millis(query_u64(&query, "wait_ms")?.unwrap_or(0).min(state.max_wait_ms));
    // The first read answers with an error status if it fails; later ones can only cut the body.
    let first_read = (READ_BYTES as u64).min(max_bytes) as usize;
    let (offset, first) = state.broker.fetch_raw(&topic, partition, start, first_read, OVERSHOOT, wait).await?;
    let headers = [
        ("strata-offset", offset),
        ("strata-high-watermark", first.high_watermark),
        ("strata-log-start-offset", first.log_start_offset),
    ];
    if !first.batches.is_empty() {
        state.metrics.records_out(&topic, count_records(&first.batches, offset) as usize);
    }
    if let Some(upgrade) = Upgrade::requested(&mut request, state.zero_copy) {
        let stream = Stream {
            state,
            topic,
            partition,
            next: first.next_offset,
            first: first.batches,
            max_bytes,
            read_bytes: READ_BYTES,
            overshoot: OVERSHOOT,
        };
        let response = upgrade.response(&headers);
        tokio::spawn(upgrade.serve(stream));
        return Ok(response);
    }

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(READ_AHEAD);
    let mut sent = first.batches.len() as u64;
    let mut next = first.next_offset;
    let more = !first.batches.is_empty() && sent < max_bytes;
    if !first.batches.is_empty() {
        // Capacity READ_AHEAD ≥ 1 and nothing else has sent yet: this cannot be full.
        let _ = tx.try_send(Ok(first.batches));
    }
    // Without a reading task, the handler's sender is dropped on return, which ends the body.
    if more {
        tokio::spawn(async move {
            while sent < max_bytes {
                let want = (READ_BYTES as u64).min(max_bytes - sent) as usize;
                let read = match state
                    .broker
                    .fetch_raw(&topic, partition, Start::Offset(next), want, OVERSHOOT, Duration::ZERO)
                    .await
                {
                    Ok((_, read)) => read,
                    Err(e) => {
                        tracing::warn!(topic, partition, offset = next, error = %e, "batch stream cut short");
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                // Caught up with the high watermark, or a compacted range that ends the log.
                if read.batches.is_empty() || read.next_offset <= next {
                    return;
                }
                state.metrics.records_out(&topic, count_records(&read.batches, next) as usize);
                sent += read.batches.len() as u64;
                next = read.next_offset;
                if tx.send(Ok(read.batches)).await.is_err() {
                    return; // the client went away
                }
            }
        });
    }
    let mut response = (StatusCode::OK, Body::from_stream(ReceiverStream::new(rx))).into_response();
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(BATCHES_CONTENT_TYPE));
    for (name, value) in headers {
        h.insert(name, HeaderValue::from(value));
    }
    Ok(response)
}

//! `strata-client`: Strata's Rust client over gRPC.
//!
//! - [`Client`]: connect once, then [`Client::admin`] for topics and [`Client::fetch`] to read.
//! - [`Producer`]: batches records per partition (linger, batch bytes), partitions keys exactly as
//!   the server and Kafka do (murmur2), retries retriable failures with backoff, and bounds the
//!   bytes it holds (a full producer makes `send` wait: backpressure, not unbounded buffering).
//! - [`GroupConsumer`] ([`Client::group_consumer`]): a consumer-group member on one
//!   `Consumer.Subscribe` stream; `poll` returns pushed records and runs rebalances, commits are
//!   manual, asynchronous or automatic. The [`group`] module docs hold the delivery recipes.
//! - [`Client::sql`]: read-only SQL over the topics (`Sql.Query`), as Arrow record batches.
//! - [`Client::read_batches`]: a partition's stored batches streamed over HTTP/1.1, the fast way
//!   to catch up on a long history.

mod admin;
mod batches;
mod error;
pub mod group;
mod http1;
mod local;
mod murmur;
mod producer;
mod sql;

use std::time::Duration;

pub use admin::Admin;
/// The Arrow crate [`SqlRows`] decodes into (the server's version).
pub use arrow;
pub use batches::{BatchReader, Transfer};
pub use error::ClientError;
pub use group::{
    GroupConfig, GroupConsumer, GroupRecord, NoopListener, OffsetReset, RebalanceListener, TopicPartition,
};
pub use murmur::{murmur2, partition_for_key};
pub use producer::{Delivery, Producer, ProducerConfig, Record};
pub use sql::SqlRows;
pub use strata_proto::v1 as proto;
pub use strata_storage::Compression;
pub use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

/// Where a fetch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Offset(u64),
    Earliest,
    Latest,
    Timestamp(i64),
}

/// A connection to a Strata server (cheap to clone; requests are multiplexed over HTTP/2).
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    url: String,
}

impl Client {
    /// Connects to `url`: `http://HOST:PORT` (e.g. `http://127.0.0.1:7070`), or `unix:PATH` for
    /// the server's Unix socket on this host (`strata serve --unix-socket PATH`), where
    /// [`Client::read_batches`] reads the segment files through descriptors the server passes.
    ///
    /// # Errors
    /// [`ClientError::Connect`] when the URL is invalid or nothing answers there.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let connect_error = |reason: String| ClientError::Connect { url: url.to_string(), reason };
        let unix = local::unix_path(url);
        // The URI's authority is only a name on the Unix socket.
        let endpoint_url = if unix.is_some() { "http://localhost".to_string() } else { url.to_string() };
        let endpoint = Endpoint::from_shared(endpoint_url)
            .map_err(|e| connect_error(e.to_string()))?
            .tcp_nodelay(true)
            // HTTP/2's default 64 KiB windows cap a large fetch at a few hundred MB/s on loopback.
            .initial_stream_window_size(Some(16 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .connect_timeout(Duration::from_secs(5));
        let channel = match unix {
            Some(path) => endpoint.connect_with_connector(local::UnixConnector(std::sync::Arc::new(path))).await,
            None => endpoint.connect().await,
        }
        .map_err(|e| connect_error(source_chain(&e)))?;
        Ok(Self { channel, url: url.to_string() })
    }

    pub fn admin(&self) -> Admin {
        Admin::new(self.channel.clone())
    }

    /// A batching producer with its own background task.
    pub fn producer(&self, config: ProducerConfig) -> Producer {
        Producer::start(self.channel.clone(), self.admin(), config)
    }

    /// Joins a consumer group: opens a `Consumer.Subscribe` stream, sends `join` and waits for the
    /// first assignment (acked before this returns).
    ///
    /// # Errors
    /// [`ClientError::Invalid`] without a group or topics; the server's status (`NOT_FOUND` for an
    /// unknown topic, `INVALID_ARGUMENT` for a bad join); `DEADLINE_EXCEEDED` when no assignment
    /// comes within 30 s.
    pub async fn group_consumer(&self, config: GroupConfig) -> Result<GroupConsumer, ClientError> {
        GroupConsumer::join(self.channel.clone(), config, Box::new(NoopListener)).await
    }

    /// [`Client::group_consumer`] with a [`RebalanceListener`], which sees the first assignment too.
    ///
    /// # Errors
    /// As [`Client::group_consumer`].
    pub async fn group_consumer_with_listener(
        &self,
        config: GroupConfig,
        listener: impl RebalanceListener + 'static,
    ) -> Result<GroupConsumer, ClientError> {
        GroupConsumer::join(self.channel.clone(), config, Box::new(listener)).await
    }

    /// Runs one read-only SQL statement (topics are tables) and returns its result as it
    /// streams: the schema at once, then record batches ([`SqlRows::next_batch`],
    /// [`SqlRows::collect`]).
    ///
    /// # Errors
    /// The server's status: `INVALID_ARGUMENT` (`sql_error: <DataFusion's message>`),
    /// `RESOURCE_EXHAUSTED` (`sql_resources_exhausted`), `DEADLINE_EXCEEDED` (`sql_timeout`).
    pub async fn sql(&self, sql: &str) -> Result<SqlRows, ClientError> {
        SqlRows::start(self.channel.clone(), sql).await
    }

    /// Reads from one partition, waiting up to `wait` for records when there are none.
    ///
    /// # Errors
    /// The server's status (unknown topic, offset out of range, ...).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_records: u32,
        wait: Duration,
    ) -> Result<proto::FetchResponse, ClientError> {
        use proto::fetch_request::Start as S;
        let start = match start {
            Start::Offset(o) => S::Offset(o),
            Start::Earliest => S::Position(proto::Position::Earliest as i32),
            Start::Latest => S::Position(proto::Position::Latest as i32),
            Start::Timestamp(ts) => S::TimestampMs(ts),
        };
        let request = proto::FetchRequest {
            topic: topic.to_string(),
            partition,
            start: Some(start),
            max_records,
            // Large reads amortise the round trip when catching up; the server caps at 64 MiB.
            max_bytes: 8 << 20,
            wait_ms: wait.as_millis().min(u128::from(u32::MAX)) as u32,
            raw_batches: false,
        };
        let mut client =
            proto::consumer_client::ConsumerClient::new(self.channel.clone()).max_decoding_message_size(256 << 20);
        Ok(client.fetch(request).await?.into_inner())
    }
}

impl Client {
    /// Streams one partition's stored batches from `start` (the first batch may begin before
    /// it), up to about `max_bytes` of them (whole batches; the server caps it at 1 GiB) or until
    /// the end of the partition, over one HTTP/1.1 connection (`GET .../batches`): the server
    /// reads ahead of the socket and sends the batches as they are stored. The fast way to catch
    /// up: a loop of [`Client::fetch_batches`] waits a round trip per page. `wait` long-polls for
    /// a first batch when there is none yet. Read it with [`BatchReader::next_batch`]; continue
    /// from [`BatchReader::next_offset`].
    ///
    /// # Errors
    /// [`ClientError::Connect`] when the server cannot be reached; [`ClientError::Server`] with
    /// the server's code (`NOT_FOUND` for an unknown topic or partition, `OUT_OF_RANGE` for an
    /// offset outside the partition); [`ClientError::Invalid`] for a topic name the server could
    /// not hold.
    pub async fn read_batches(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_bytes: u64,
        wait: Duration,
    ) -> Result<BatchReader, ClientError> {
        BatchReader::open(&self.url, topic, partition, start, max_bytes, wait).await
    }
}

/// Records fetched as stored batches and decoded here (see [`Client::fetch_batches`]).
#[derive(Debug, Clone)]
pub struct Batches {
    pub records: Vec<strata_storage::Record>,
    pub next_offset: u64,
    pub high_watermark: u64,
}

impl Client {
    /// Fetches whole stored batches and decodes them in the client: the server does no
    /// per-record work, which is the fast path for catching up. Records before the requested
    /// offset (the start of the first batch) are skipped.
    ///
    /// # Errors
    /// The server's status, or [`ClientError::Invalid`] for a batch that does not decode.
    pub async fn fetch_batches(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<Batches, ClientError> {
        let request = proto::FetchRequest {
            topic: topic.to_string(),
            partition,
            start: Some(proto::fetch_request::Start::Offset(offset)),
            max_records: 0,
            max_bytes,
            wait_ms: wait.as_millis().min(u128::from(u32::MAX)) as u32,
            raw_batches: true,
        };
        let mut client =
            proto::consumer_client::ConsumerClient::new(self.channel.clone()).max_decoding_message_size(256 << 20);
        let response = client.fetch(request).await?.into_inner();
        let mut records = Vec::new();
        for batch in strata_storage::batch::split_batches(&response.batches) {
            let batch = batch.map_err(|e| ClientError::Invalid(format!("fetched batch does not decode: {e}")))?;
            let decoded =
                batch.records().map_err(|e| ClientError::Invalid(format!("fetched batch does not decode: {e}")))?;
            records.extend(decoded.into_iter().filter(|r| r.offset >= offset && r.offset < response.high_watermark));
        }
        Ok(Batches { records, next_offset: response.next_offset, high_watermark: response.high_watermark })
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

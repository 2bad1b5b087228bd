//! The batching producer.
//!
//! `send` hands a record to a background task and returns a [`Delivery`] that resolves to its
//! offset. The task groups records per partition, encoding each straight into a record batch in
//! the storage's format (`strata_storage::BatchBuilder`; compressed with `batch_compression`),
//! and sends the batch when it reaches `batch_bytes` or has waited `linger`: the server checks it
//! whole and appends it as it is, as Kafka's brokers take their producers' batches. Keys are
//! partitioned with murmur2 exactly as the server (and Kafka) would; keyless records stick to one
//! partition per batch. One request per partition is in flight at a time, so records of a
//! partition keep their order across retries. The bytes held (queued or in flight) are bounded by
//! `max_buffered_bytes`: `send` waits for room.
//!
//! With `idempotent` (the default, as in Kafka) the producer starts a producer session on the
//! server (`InitProducer`) and numbers its requests; a retried request carries the same number, so
//! the server stores it once even when the first attempt was appended but its answer was lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_proto::v1 as pb;
use strata_storage::{BatchBuilder, Clock, Compression, Header, SystemClock};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{Admin, ClientError, partition_for_key};

/// Producer tuning.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch may wait for more records.
    pub linger: Duration,
    /// A batch is sent when it holds this many bytes.
    pub batch_bytes: usize,
    /// Most record bytes held by the producer at once; `send` waits beyond it.
    pub max_buffered_bytes: usize,
    /// Attempts after the first for retriable failures (the server unavailable).
    pub retries: u32,
    /// First backoff; doubles each retry.
    pub retry_backoff: Duration,
    pub acks: pb::Acks,
    /// Compress each request on the wire (`Zstd` or `Gzip`); `None` sends it as is. The server
    /// stores what it receives uncompressed.
    pub compression: Option<tonic::codec::CompressionEncoding>,
    /// Compress each batch (`Lz4` or `Zstd`): stored and served compressed, and expanded only by
    /// whoever reads its records.
    pub batch_compression: Compression,
    /// Number requests in a producer session so retries are stored once.
    pub idempotent: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            batch_bytes: 1 << 20,
            max_buffered_bytes: 64 << 20,
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            acks: pb::Acks::Leader,
            compression: None,
            batch_compression: Compression::None,
            idempotent: true,
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: Option<i64>,
    pub partition: Option<u32>,
}

impl Record {
    pub fn new(key: Option<impl Into<Vec<u8>>>, value: impl Into<Vec<u8>>) -> Self {
        Self { key: key.map(Into::into), value: Some(value.into()), ..Default::default() }
    }

    fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
            + 16
    }
}

/// Resolves to `(partition, offset)` once the record is acknowledged.
#[derive(Debug)]
pub struct Delivery {
    rx: oneshot::Receiver<Result<(u32, u64), ClientError>>,
}

impl Delivery {
    /// # Errors
    /// The failure that ended the record's last attempt.
    pub async fn wait(self) -> Result<(u32, u64), ClientError> {
        self.rx.await.unwrap_or(Err(ClientError::Closed))
    }
}

type Reply = oneshot::Sender<Result<(u32, u64), ClientError>>;

/// One lock per partition: whoever holds it has the partition's only request in flight.
type PartitionLocks = Arc<std::sync::Mutex<HashMap<(String, u32), Arc<Mutex<()>>>>>;

enum Msg {
    Send { topic: String, record: Record, reply: Reply, permit: OwnedSemaphorePermit },
    Flush(oneshot::Sender<()>),
}

/// A batching, retrying producer. Dropping it stops its task after sending what it holds.
#[derive(Debug)]
pub struct Producer {
    tx: mpsc::UnboundedSender<Msg>,
    budget: Arc<Semaphore>,
    max_record: usize,
}

struct Pending {
    batch: BatchBuilder,
    replies: Vec<(Reply, OwnedSemaphorePermit)>,
    /// Whether the last record had no key (sticky partitioning moves on after its batch).
    last_keyless: bool,
    bytes: usize,
    since: Instant,
}

impl Producer {
    pub(crate) fn start(channel: Channel, admin: Admin, config: ProducerConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(config.max_buffered_bytes));
        let max_record = config.max_buffered_bytes;
        tokio::spawn(run(channel, admin, config, rx));
        Self { tx, budget, max_record }
    }

    /// Queues a record, waiting while the producer holds `max_buffered_bytes`.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a record larger than the whole buffer; [`ClientError::Closed`].
    pub async fn send(&self, topic: &str, record: Record) -> Result<Delivery, ClientError> {
        let size = record.size();
        if size > self.max_record {
            return Err(ClientError::Invalid(format!("record of {size} bytes exceeds the producer's buffer")));
        }
        let permit = Arc::clone(&self.budget).acquire_many_owned(size as u32).await.map_err(|_| ClientError::Closed)?;
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Send { topic: topic.to_string(), record, reply, permit }).map_err(|_| ClientError::Closed)?;
        Ok(Delivery { rx })
    }

    /// Sends everything queued and waits until every record sent so far is acknowledged or failed.
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the producer task is gone.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Flush(tx)).map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }
}

async fn run(channel: Channel, admin: Admin, config: ProducerConfig, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut pending: HashMap<(String, u32), Pending> = HashMap::new();
    let mut partitions: HashMap<String, u32> = HashMap::new();
    let mut sticky: HashMap<String, u32> = HashMap::new();
    let mut sticky_counter = 0u32;
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let locks: PartitionLocks = Arc::default();
    let session: Option<Arc<Session>> = config.idempotent.then(Arc::default);
    loop {
        let deadline = pending.values().map(|p| p.since + config.linger).min();
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                let due: Vec<_> = pending.iter().filter(|(_, p)| p.since + config.linger <= now).map(|(k, _)| k.clone()).collect();
                for key in due {
                    if let Some(batch) = pending.remove(&key) {
                        dispatch(&mut in_flight, &channel, &config, &locks, session.clone(), key, batch);
                    }
                }
                continue;
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        };
        match msg {
            None => {
                for (key, batch) in pending.drain() {
                    dispatch(&mut in_flight, &channel, &config, &locks, session.clone(), key, batch);
                }
                while in_flight.join_next().await.is_some() {}
                return;
            }
            Some(Msg::Flush(done)) => {
                for (key, batch) in pending.drain() {
                    dispatch(&mut in_flight, &channel, &config, &locks, session.clone(), key, batch);
                }
                while in_flight.join_next().await.is_some() {}
                let _ = done.send(());
            }
            Some(Msg::Send { topic, record, reply, permit }) => {
                let count = match partitions.get(&topic) {
                    Some(&n) => n,
                    None => match admin.describe_topic(&topic).await {
                        Ok(info) => {
                            let n = info.partitions.len().max(1) as u32;
                            partitions.insert(topic.clone(), n);
                            n
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    },
                };
                let partition = match (record.partition, &record.key) {
                    (Some(p), _) => p,
                    (None, Some(key)) => partition_for_key(key, count),
                    (None, None) => *sticky.entry(topic.clone()).or_insert_with(|| {
                        sticky_counter = sticky_counter.wrapping_add(1);
                        sticky_counter % count
                    }),
                };
                let size = record.size();
                let key = (topic.clone(), partition);
                let batch = pending.entry(key.clone()).or_insert_with(|| Pending {
                    batch: BatchBuilder::with_capacity(config.batch_compression, config.batch_bytes.min(64 << 10)),
                    replies: Vec::new(),
                    last_keyless: false,
                    bytes: 0,
                    since: Instant::now(),
                });
                let headers: Vec<Header> =
                    record.headers.into_iter().map(|(name, value)| Header { name, value: value.into() }).collect();
                let timestamp = record.timestamp_ms.unwrap_or_else(|| SystemClock.now_ms());
                batch.batch.push(timestamp, record.key.as_deref(), record.value.as_deref(), &headers);
                batch.replies.push((reply, permit));
                batch.last_keyless = record.partition.is_none() && record.key.is_none();
                batch.bytes += size;
                if batch.bytes >= config.batch_bytes
                    && let Some(batch) = pending.remove(&key)
                {
                    if batch.last_keyless {
                        sticky.remove(&topic);
                    }
                    dispatch(&mut in_flight, &channel, &config, &locks, session.clone(), key, batch);
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// An idempotent producer session, started on first use, and the next request number.
#[derive(Debug, Default)]
struct Session {
    id: tokio::sync::OnceCell<(i64, i32)>,
    next_sequence: std::sync::atomic::AtomicI32,
}

impl Session {
    /// The session for the next request, and its sequence number.
    async fn next(&self, client: &mut ProducerClient) -> Result<pb::ProducerSession, ClientError> {
        let &(id, epoch) = self
            .id
            .get_or_try_init(|| async {
                let response = client.init_producer(pb::InitProducerRequest {}).await?.into_inner();
                Ok::<_, ClientError>((response.id, response.epoch))
            })
            .await?;
        let sequence = self.next_sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if sequence < 0 {
            return Err(ClientError::Invalid("the producer session has used every sequence number".into()));
        }
        Ok(pb::ProducerSession { id, epoch, sequence })
    }
}

type ProducerClient = pb::producer_client::ProducerClient<Channel>;

fn dispatch(
    in_flight: &mut JoinSet<()>,
    channel: &Channel,
    config: &ProducerConfig,
    locks: &PartitionLocks,
    session: Option<Arc<Session>>,
    key: (String, u32),
    batch: Pending,
) {
    let lock = {
        let mut map = locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(key.clone()).or_default())
    };
    let mut client = pb::producer_client::ProducerClient::new(channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(256 << 20);
    if let Some(encoding) = config.compression {
        client = client.send_compressed(encoding);
    }
    let config = config.clone();
    in_flight.spawn(async move {
        // One request per partition in flight keeps the partition's order through retries.
        let _turn = lock.lock().await;
        let Pending { batch, replies, .. } = batch;
        let data = match batch.build() {
            Ok(data) => Bytes::from(data),
            Err(e) => {
                let e = ClientError::Invalid(format!("the batch does not encode: {e}"));
                for (reply, _permit) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut request = pb::ProduceRequest {
            batches: vec![pb::RecordBatch { partition: key.1, data }],
            topic: key.0.clone(),
            records: Vec::new(),
            acks: config.acks as i32,
            request_id: 0,
            producer: None,
        };
        let mut backoff = config.retry_backoff;
        let mut attempt = 0;
        let result = loop {
            // Numbered once, under the partition's turn (so a partition sees increasing numbers);
            // every retry repeats the number.
            let result = match (&session, request.producer) {
                (Some(session), None) => session.next(&mut client).await.map(|p| request.producer = Some(p)),
                _ => Ok(()),
            };
            let result = match result {
                Ok(()) => client.produce(request.clone()).await.map_err(ClientError::from),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_retriable() && attempt < config.retries => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "produce failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                other => break other,
            }
        };
        match result {
            Ok(response) => {
                let response = response.into_inner();
                let placed = response.batches.first().filter(|b| b.count as usize == replies.len());
                for (i, (reply, _permit)) in replies.into_iter().enumerate() {
                    let offset = placed.map(|b| (b.partition, b.base_offset + i as u64));
                    let _ = reply.send(offset.ok_or_else(|| ClientError::Produce {
                        code: "internal".into(),
                        message: "the response does not place the batch".into(),
                    }));
                }
            }
            Err(e) => {
                for (reply, _permit) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    });
}

//! The gRPC services of `strata.v1`: Producer (unary and pipelined stream), Consumer.Fetch,
//! Consumer.Subscribe (group membership on a stream), Admin, Sql.Query (Arrow IPC, streamed).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use strata_proto::v1 as pb;
use strata_storage::Header;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::AppState;
use crate::broker::{Acks, BatchOffsets, PendingProduce, ProduceOptions, ProduceRecord, Start};
use crate::error::ApiError;
use crate::group::assignor::Strategy;
use crate::group::coordinator::MemberView;
use crate::group::service::{Reset, Subscription};
use crate::producer::ProducerSession;
use crate::topic::TopicConfig;

/// Most produce requests of one stream waiting for their acknowledgement at once.
const STREAM_PIPELINE: usize = 64;

#[derive(Debug, Clone)]
pub struct Services {
    state: Arc<AppState>,
}

impl Services {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// All services as routes for the shared axum router. Requests may be as large as the
    /// configured `max_request_bytes` (tonic's default is 4 MiB).
    pub fn routes(self) -> axum::Router {
        use tonic::codec::CompressionEncoding::{Gzip, Zstd};
        let max = self.state.max_request_bytes;
        // Requests may come compressed (zstd or gzip); responses are compressed when the client
        // asks for it.
        let producer = pb::producer_server::ProducerServer::new(self.clone())
            .max_decoding_message_size(max)
            .accept_compressed(Zstd)
            .accept_compressed(Gzip);
        let consumer = pb::consumer_server::ConsumerServer::new(self.clone())
            .max_decoding_message_size(max)
            .send_compressed(Zstd)
            .send_compressed(Gzip);
        let admin = pb::admin_server::AdminServer::new(self.clone()).max_decoding_message_size(max);
        let sql = pb::sql_server::SqlServer::new(self)
            .max_decoding_message_size(max)
            .send_compressed(Zstd)
            .send_compressed(Gzip);
        tonic::service::Routes::new(producer)
            .add_service(consumer)
            .add_service(admin)
            .add_service(sql)
            .into_axum_router()
    }
}

fn acks(a: i32) -> Acks {
    match pb::Acks::try_from(a) {
        Ok(pb::Acks::None) => Acks::None,
        _ => Acks::Leader,
    }
}

fn records(req: &mut pb::ProduceRequest) -> Vec<ProduceRecord> {
    std::mem::take(&mut req.records)
        .into_iter()
        .map(|r| ProduceRecord {
            key: r.key,
            value: r.value,
            headers: r.headers.into_iter().map(|h| Header { name: h.name, value: h.value }).collect(),
            timestamp: r.timestamp_ms,
            partition: r.partition,
        })
        .collect()
}

/// Where a request's records went.
enum Produced {
    Records(Vec<(u32, u64)>),
    Batches(Vec<BatchOffsets>),
}

fn response(produced: Produced, request_id: u64) -> pb::ProduceResponse {
    let (offsets, batches) = match produced {
        Produced::Records(offsets) => (
            offsets.into_iter().map(|(partition, offset)| pb::RecordOffset { partition, offset }).collect(),
            Vec::new(),
        ),
        Produced::Batches(batches) => (
            Vec::new(),
            batches
                .into_iter()
                .map(|b| pb::BatchOffsets { partition: b.partition, base_offset: b.base_offset, count: b.count })
                .collect(),
        ),
    };
    pb::ProduceResponse { offsets, request_id, error: None, batches }
}

type AckFuture = Pin<Box<dyn std::future::Future<Output = pb::ProduceResponse> + Send>>;
/// A produce request appended, waiting for its acknowledgement.
type Acked = Pin<Box<dyn std::future::Future<Output = Result<Produced, ApiError>> + Send>>;

impl Services {
    /// Appends one produce request (records or client-built batches); the future resolves to
    /// where they went once acknowledged.
    async fn produce_request(&self, mut req: pb::ProduceRequest) -> Result<Acked, ApiError> {
        let started = Instant::now();
        let options = produce_options(&req)?;
        let (topic, acks) = (std::mem::take(&mut req.topic), acks(req.acks));
        let broker = &self.state.broker;
        if req.batches.is_empty() {
            let records = records(&mut req);
            self.state.metrics.records_in(&topic, records.len());
            let pending = broker.produce_with(&topic, records, acks, options).await?;
            return Ok(self.staged(started, pending, Produced::Records));
        }
        if !req.records.is_empty() {
            return Err(ApiError::invalid("a produce request carries records or batches, not both"));
        }
        let batches = std::mem::take(&mut req.batches).into_iter().map(|b| (b.partition, b.data)).collect();
        let pending = broker.produce_batches(&topic, batches, acks, options).await?;
        let count: u64 = pending.offsets().iter().map(|b| u64::from(b.count)).sum();
        self.state.metrics.records_in(&topic, count as usize);
        Ok(self.staged(started, pending, Produced::Batches))
    }

    /// The acknowledgement of a request appended since `started`, each stage's time recorded
    /// (`strata_produce_stage_seconds`: what a produce request's latency is made of).
    fn staged<T: Send + 'static>(
        &self,
        started: Instant,
        pending: PendingProduce<T>,
        produced: fn(T) -> Produced,
    ) -> Acked {
        let metrics = Arc::clone(&self.state.metrics);
        let appended = Instant::now();
        metrics.produce_appended(appended.duration_since(started).as_secs_f64());
        Box::pin(async move {
            let acked = pending.acknowledged().await.map(produced);
            metrics.produce_acknowledged(appended.elapsed().as_secs_f64());
            acked
        })
    }
}

#[tonic::async_trait]
impl pb::producer_server::Producer for Services {
    async fn produce(&self, request: Request<pb::ProduceRequest>) -> Result<Response<pb::ProduceResponse>, Status> {
        let req = request.into_inner();
        let id = req.request_id;
        let produced = self.produce_request(req).await?.await?;
        Ok(Response::new(response(produced, id)))
    }

    async fn init_producer(
        &self,
        _request: Request<pb::InitProducerRequest>,
    ) -> Result<Response<pb::InitProducerResponse>, Status> {
        let id = crate::producer::allocate(self.state.broker.metadata()).await?;
        Ok(Response::new(pb::InitProducerResponse { id, epoch: 0 }))
    }

    type ProduceStreamStream = ReceiverStream<Result<pb::ProduceResponse, Status>>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_PIPELINE);
        let services = self.clone();
        tokio::spawn(async move {
            // Appends happen one request at a time, in stream order; only the wait for
            // durability overlaps, and acknowledgements leave in request order.
            let mut inflight: FuturesOrdered<AckFuture> = FuturesOrdered::new();
            let mut input_done = false;
            loop {
                tokio::select! {
                    biased;
                    Some(ack) = inflight.next(), if !inflight.is_empty() => {
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                    msg = input.next(), if !input_done && inflight.len() < STREAM_PIPELINE => match msg {
                        Some(Ok(req)) => {
                            let id = req.request_id;
                            let fut: AckFuture = match services.produce_request(req).await {
                                Ok(acked) => Box::pin(async move {
                                    match acked.await {
                                        Ok(produced) => response(produced, id),
                                        Err(e) => error_response(id, e),
                                    }
                                }),
                                Err(e) => Box::pin(std::future::ready(error_response(id, e))),
                            };
                            inflight.push_back(fut);
                        }
                        Some(Err(status)) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        None => input_done = true,
                    },
                    else => return,
                }
                if input_done && inflight.is_empty() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The request's idempotent producer session, checked.
fn produce_options(req: &pb::ProduceRequest) -> Result<ProduceOptions, ApiError> {
    let producer = req
        .producer
        .map(|p| {
            let epoch = i16::try_from(p.epoch)
                .map_err(|_| ApiError::invalid(format!("producer.epoch must fit 16 bits, got {}", p.epoch)))?;
            ProducerSession { id: p.id, epoch, sequence: p.sequence }.validate()
        })
        .transpose()?;
    Ok(ProduceOptions { expected_offset: req.expected_offset, producer })
}

fn error_response(request_id: u64, e: ApiError) -> pb::ProduceResponse {
    pb::ProduceResponse {
        offsets: Vec::new(),
        request_id,
        error: Some(pb::Error { code: e.code.as_str().to_string(), message: e.detail }),
        batches: Vec::new(),
    }
}

#[tonic::async_trait]
impl pb::consumer_server::Consumer for Services {
    type SubscribeStream = ReceiverStream<Result<pb::SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut input = request.into_inner();
        let join = match input.next().await {
            Some(Ok(pb::SubscribeRequest { kind: Some(pb::subscribe_request::Kind::Join(join)) })) => join,
            Some(Err(status)) => return Err(status),
            _ => return Err(Status::invalid_argument("the first message of a Subscribe stream must be `join`")),
        };
        if join.topics.is_empty() {
            return Err(Status::invalid_argument("`join.topics` must name at least one topic"));
        }
        let strategy = match join.assignor.as_str() {
            "" => Strategy::Sticky,
            name => Strategy::parse(name).ok_or_else(|| {
                Status::invalid_argument(format!("assignor must be range, roundrobin or sticky, got {name:?}"))
            })?,
        };
        let timeout = match join.session_timeout_ms {
            0 => 10_000,
            t @ 1_000..=300_000 => u64::from(t),
            t => return Err(Status::invalid_argument(format!("session_timeout_ms must be 1000..=300000, got {t}"))),
        };
        let reset = if join.reset == pb::Position::Latest as i32 { Reset::Latest } else { Reset::Earliest };
        let max_records = if join.max_records == 0 { 500 } else { join.max_records.min(10_000) } as usize;
        let subscription = Subscription::parse(&join.topics)?;
        let view = self.state.groups.join(&join.group, subscription, strategy, timeout, reset, None).await?;
        let (tx, rx) = mpsc::channel(4);
        let session = Session { state: Arc::clone(&self.state), group: join.group, tx, max_records };
        tokio::spawn(session.run(view, input));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        let req = request.into_inner();
        let start = match req.start {
            Some(pb::fetch_request::Start::Offset(o)) => Start::Offset(o),
            Some(pb::fetch_request::Start::TimestampMs(ts)) => Start::Timestamp(ts),
            Some(pb::fetch_request::Start::Position(p)) if p == pb::Position::Latest as i32 => Start::Latest,
            _ => Start::Earliest,
        };
        let max_records = if req.max_records == 0 { 500 } else { req.max_records.min(10_000) } as usize;
        let max_bytes = if req.max_bytes == 0 { 1 << 20 } else { req.max_bytes.min(64 << 20) } as usize;
        let wait = Duration::from_millis(u64::from(req.wait_ms).min(self.state.max_wait_ms));
        if req.raw_batches {
            let (offset, read) =
                self.state.broker.fetch_raw(&req.topic, req.partition, start, max_bytes, 0, wait).await?;
            let records = strata_storage::batch::count_records(&read.batches, offset) as usize;
            self.state.metrics.records_out(&req.topic, records);
            return Ok(Response::new(pb::FetchResponse {
                records: Vec::new(),
                next_offset: read.next_offset,
                high_watermark: read.high_watermark,
                log_start_offset: read.log_start_offset,
                batches: read.batches,
            }));
        }
        let result = self.state.broker.fetch(&req.topic, req.partition, start, max_records, max_bytes, wait).await?;
        self.state.metrics.records_out(&req.topic, result.records.len());
        Ok(Response::new(pb::FetchResponse {
            records: result.records.into_iter().map(fetched_record).collect(),
            next_offset: result.next_offset,
            high_watermark: result.high_watermark,
            log_start_offset: result.log_start_offset,
            batches: bytes::Bytes::new(),
        }))
    }
}

fn topic_info(state: &AppState, name: &str) -> Result<pb::TopicInfo, ApiError> {
    let view = crate::http::topic_view(state, name)?;
    Ok(pb::TopicInfo {
        name: view.name,
        config: view.config.to_strings().into_iter().collect(),
        partitions: view
            .partitions
            .into_iter()
            .map(|p| pb::PartitionInfo {
                partition: p.partition,
                leader: p.leader,
                replicas: p.replicas,
                isr: p.isr,
                log_start_offset: p.log_start_offset,
                local_start_offset: p.local_start_offset,
                tiered_end_offset: p.tiered_end_offset,
                high_watermark: p.high_watermark,
            })
            .collect(),
    })
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Services {
    async fn create_topic(&self, request: Request<pb::CreateTopicRequest>) -> Result<Response<pb::TopicInfo>, Status> {
        let req = request.into_inner();
        let settings: BTreeMap<String, String> = req.config.into_iter().collect();
        let config = TopicConfig::default().with(&settings)?;
        let partitions = if req.partitions == 0 { 1 } else { req.partitions };
        let rf = (req.replication_factor != 0).then_some(req.replication_factor);
        self.state.admin.create_topic(&req.name, partitions, rf, config).await?;
        Ok(Response::new(topic_info(&self.state, &req.name)?))
    }

    async fn list_topics(
        &self,
        _request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let names: Vec<String> = self.state.broker.metadata().topics().into_keys().collect();
        let topics = names.iter().filter_map(|n| topic_info(&self.state, n).ok()).collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(&self, request: Request<pb::TopicRequest>) -> Result<Response<pb::TopicInfo>, Status> {
        Ok(Response::new(topic_info(&self.state, &request.into_inner().name)?))
    }

    async fn alter_topic_config(
        &self,
        request: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::TopicInfo>, Status> {
        let req = request.into_inner();
        let current =
            self.state.broker.metadata().topic(&req.name).ok_or_else(|| ApiError::topic_not_found(&req.name))?;
        let settings: BTreeMap<String, String> = req.config.into_iter().collect();
        let config = current.config.clone().with(&settings)?;
        self.state.admin.alter_config(&req.name, config).await?;
        Ok(Response::new(topic_info(&self.state, &req.name)?))
    }

    async fn add_partitions(
        &self,
        request: Request<pb::AddPartitionsRequest>,
    ) -> Result<Response<pb::TopicInfo>, Status> {
        let req = request.into_inner();
        self.state.admin.add_partitions(&req.name, req.count).await?;
        Ok(Response::new(topic_info(&self.state, &req.name)?))
    }

    async fn list_groups(
        &self,
        _request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        Ok(Response::new(pb::ListGroupsResponse { groups: self.state.groups.list() }))
    }

    async fn describe_group(&self, request: Request<pb::GroupRequest>) -> Result<Response<pb::GroupInfo>, Status> {
        let group = request.into_inner().group;
        let d = self.state.groups.describe(&group)?;
        let assignor = d.strategy.name();
        Ok(Response::new(pb::GroupInfo {
            state: d.state().into(),
            group,
            generation: d.generation,
            assignor: assignor.into(),
            members: d
                .members
                .into_iter()
                .map(|(member_id, a)| pb::GroupMember {
                    member_id,
                    topics: a.iter().map(|(t, _)| t.clone()).collect(),
                    assignment: a.into_iter().map(|(_, partition)| pb::RecordOffset { partition, offset: 0 }).collect(),
                })
                .collect(),
            offsets: d
                .offsets
                .into_iter()
                .map(|o| pb::GroupOffset {
                    topic: o.topic,
                    partition: o.partition,
                    committed: o.committed,
                    high_watermark: o.high_watermark,
                    lag: o.lag,
                })
                .collect(),
        }))
    }

    async fn reset_group_offsets(
        &self,
        request: Request<pb::ResetGroupOffsetsRequest>,
    ) -> Result<Response<pb::ResetGroupOffsetsResponse>, Status> {
        use pb::reset_group_offsets_request::To;
        let req = request.into_inner();
        let to = match req.to {
            Some(To::Offset(o)) => Start::Offset(o),
            Some(To::TimestampMs(ts)) => Start::Timestamp(ts),
            Some(To::Position(p)) if p == pb::Position::Latest as i32 => Start::Latest,
            Some(To::Position(_)) => Start::Earliest,
            None => return Err(ApiError::invalid("`to` is required").into()),
        };
        let offsets = self.state.groups.reset_offsets(&req.group, &req.topic, to, None).await?;
        Ok(Response::new(pb::ResetGroupOffsetsResponse {
            offsets: offsets.into_iter().map(|(partition, offset)| pb::RecordOffset { partition, offset }).collect(),
        }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        self.state.groups.delete(&request.into_inner().group).await?;
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::TopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        self.state.admin.delete_topic(&request.into_inner().name).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn verify_topic(
        &self,
        request: Request<pb::TopicRequest>,
    ) -> Result<Response<pb::VerifyTopicResponse>, Status> {
        let v = crate::tier::verify::verify_topic(&self.state.broker, &request.into_inner().name).await?;
        Ok(Response::new(pb::VerifyTopicResponse {
            segments_checked: v.segments_checked,
            objects_checked: v.objects_checked,
            damage: v
                .damage
                .into_iter()
                .map(|d| pb::Damage {
                    partition: d.partition,
                    location: d.location,
                    first_offset: d.first_offset,
                    end_offset: d.end_offset,
                    problem: d.problem,
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl pb::sql_server::Sql for Services {
    type QueryStream = Pin<Box<dyn futures::Stream<Item = Result<pb::SqlQueryResponse, Status>> + Send>>;

    /// The same query path as `POST /v1/sql` ([`crate::sql::Sql::start`]); dropping the
    /// response stream (the client cancels) drops the query with it.
    async fn query(&self, request: Request<pb::SqlQueryRequest>) -> Result<Response<Self::QueryStream>, Status> {
        let pieces = self.state.sql.arrow_ipc(&request.into_inner().sql).await?;
        let messages =
            pieces.map(|piece| piece.map(|arrow_ipc| pb::SqlQueryResponse { arrow_ipc }).map_err(Status::from));
        Ok(Response::new(Box::pin(messages)))
    }
}

/// One `Consumer.Subscribe` stream: a group member for as long as the stream is open.
struct Session {
    state: Arc<AppState>,
    group: String,
    tx: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
    max_records: usize,
}

/// How long one read waits for records before the session looks around again.
const SESSION_POLL: Duration = Duration::from_millis(500);

impl Session {
    /// Runs the member until the client closes the stream (or it fails), then leaves the group.
    async fn run(self, view: MemberView, input: Streaming<pb::SubscribeRequest>) {
        let member = view.member_id.clone();
        if let Err(status) = self.serve(view, input).await {
            let _ = self.tx.send(Err(status)).await;
        }
        match self.state.groups.leave(&self.group, &member).await {
            Ok(()) => tracing::debug!(group = %self.group, %member, "stream member left"),
            Err(e) => tracing::debug!(group = %self.group, %member, error = %e, "stream member already gone"),
        }
    }

    async fn send(&self, kind: pb::subscribe_response::Kind) -> Result<(), Closed> {
        self.tx.send(Ok(pb::SubscribeResponse { kind: Some(kind) })).await.map_err(|_| Closed)
    }

    async fn serve(&self, mut view: MemberView, mut input: Streaming<pb::SubscribeRequest>) -> Result<(), Status> {
        use pb::subscribe_request::Kind;
        let groups = &self.state.groups;
        let member = view.member_id.clone();
        let mut changes = groups.changes(&self.group)?;
        let mut sent: Option<MemberView> = None;
        loop {
            // Tell the member whenever its assignment changed.
            if sent.as_ref() != Some(&view) {
                if self.send(pb::subscribe_response::Kind::Assignment(assignment(&view))).await.is_err() {
                    return Ok(());
                }
                sent = Some(view.clone());
            }
            groups.touch(&self.group, &member)?;
            let deadline = tokio::time::Instant::now() + SESSION_POLL;
            tokio::select! {
                biased;
                // The server is shutting down: leave (before Raft stops) and end the stream.
                () = self.state.closing.cancelled() => return Err(Status::unavailable("the server is shutting down")),
                msg = input.next() => match msg {
                    // The client closed the stream (or the connection broke): leave.
                    None | Some(Err(_)) => return Ok(()),
                    Some(Ok(pb::SubscribeRequest { kind: Some(Kind::Commit(commit)) })) => {
                        let offsets = commit.offsets.into_iter().map(|o| (o.topic, o.partition, o.offset)).collect();
                        let error = match groups.commit(&self.group, &member, commit.generation, offsets).await {
                            Ok(()) => None,
                            Err(e) => Some(pb::Error { code: e.code.as_str().to_string(), message: e.detail }),
                        };
                        let result = pb::CommitResult { id: commit.id, error };
                        if self.send(pb::subscribe_response::Kind::CommitResult(result)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Some(Ok(pb::SubscribeRequest { kind: Some(Kind::Ack(ack)) })) => {
                        // Only an ack of the latest assignment sent hands revoked partitions over.
                        let latest = sent.as_ref().is_some_and(|v| v.generation == ack.generation);
                        view = groups.check_in(&self.group, &member, latest).await?;
                    }
                    Some(Ok(_)) => {
                        return Err(Status::invalid_argument("after `join`, send only `commit` and `ack`"));
                    }
                },
                _ = changes.changed() => view = groups.check_in(&self.group, &member, false).await?,
                records = groups.read(&self.group, &member, &view.assignment, self.max_records, deadline, None) => {
                    let records = records?;
                    if !records.is_empty() {
                        let mut per_topic: BTreeMap<&str, usize> = BTreeMap::new();
                        for (topic, _) in &records {
                            *per_topic.entry(topic).or_default() += 1;
                        }
                        for (topic, n) in per_topic {
                            self.state.metrics.records_out(topic, n);
                        }
                        let records = records
                            .into_iter()
                            .map(|(topic, r)| pb::GroupRecord { topic, record: Some(fetched_record(r)) })
                            .collect();
                        let batch = pb::GroupRecords { records };
                        if self.send(pb::subscribe_response::Kind::Records(batch)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// The client went away.
struct Closed;

fn assignment(view: &MemberView) -> pb::Assignment {
    let tps = |tps: &[(String, u32)]| {
        tps.iter()
            .map(|(topic, partition)| pb::TopicPartition { topic: topic.clone(), partition: *partition })
            .collect()
    };
    pb::Assignment {
        member_id: view.member_id.clone(),
        generation: view.generation,
        partitions: tps(&view.assignment),
        revoking: tps(&view.revoking),
    }
}

fn fetched_record(r: crate::broker::FetchedRecord) -> pb::FetchedRecord {
    pb::FetchedRecord {
        partition: r.partition,
        offset: r.offset,
        timestamp_ms: r.timestamp,
        key: r.key,
        value: r.value,
        headers: r.headers.into_iter().map(|h| pb::Header { name: h.name, value: h.value }).collect(),
    }
}

//! Prometheus metrics: request rate and latency per API (HTTP route or gRPC method), records in
//! and out per topic, per-partition high watermark and log size, and consumer-group lag (the
//! last three read at scrape time).

use std::sync::Mutex;
use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::broker::Broker;
use crate::group::service::Groups;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiOnly {
    api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: String,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    // A std mutex: encoding is synchronous and short.
    registry: Mutex<Registry>,
    requests: Family<ApiLabels, Counter>,
    latency: Family<ApiOnly, Histogram>,
    /// `strata_produce_stage_seconds`'s two series, taken from the family once: observed twice
    /// per produce request, without a label allocation and map lookup each time.
    produce_appended: Histogram,
    produce_acknowledged: Histogram,
    bytes_in: Family<ApiOnly, Counter>,
    records_in: Family<TopicLabels, Counter>,
    records_out: Family<TopicLabels, Counter>,
    high_watermark: Family<PartitionLabels, Gauge>,
    log_size: Family<PartitionLabels, Gauge>,
    group_lag: Family<GroupLabels, Gauge>,
    tier_lag_bytes: Family<PartitionLabels, Gauge>,
    tier_lag_seconds: Family<PartitionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("strata");
        let requests = Family::<ApiLabels, Counter>::default();
        let latency =
            Family::<ApiOnly, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
        // 10 µs to ~5 s: an in-memory append takes tens of microseconds.
        let produce_stages = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
        });
        let bytes_in = Family::<ApiOnly, Counter>::default();
        let records_in = Family::<TopicLabels, Counter>::default();
        let records_out = Family::<TopicLabels, Counter>::default();
        let high_watermark = Family::<PartitionLabels, Gauge>::default();
        let log_size = Family::<PartitionLabels, Gauge>::default();
        let group_lag = Family::<GroupLabels, Gauge>::default();
        let tier_lag_bytes = Family::<PartitionLabels, Gauge>::default();
        let tier_lag_seconds = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "tier_lag_bytes",
            "Local bytes of a tiered partition not yet in object storage",
            tier_lag_bytes.clone(),
        );
        registry.register(
            "tier_lag_seconds",
            "Age of the oldest sealed segment of a tiered partition not yet in object storage",
            tier_lag_seconds.clone(),
        );
        registry.register("requests", "Requests by API and status", requests.clone());
        registry.register("request_duration_seconds", "Request latency by API", latency.clone());
        registry.register(
            "produce_stage_seconds",
            "A gRPC produce request's time appending (`append`: until its offsets are known) and then \
             until acknowledged (`acknowledge`: durable as its acks ask); a stream's requests wait before \
             both for the ones ahead of them",
            produce_stages.clone(),
        );
        let stage = |name: &str| produce_stages.get_or_create(&StageLabels { stage: name.into() }).clone();
        let (produce_appended, produce_acknowledged) = (stage("append"), stage("acknowledge"));
        registry.register("request_bytes", "Request body bytes by API", bytes_in.clone());
        registry.register("records_produced", "Records appended, by topic", records_in.clone());
        registry.register("records_fetched", "Records returned by fetches, by topic", records_out.clone());
        registry.register("partition_high_watermark", "High watermark per partition", high_watermark.clone());
        registry.register("partition_log_bytes", "Log size per partition", log_size.clone());
        registry.register(
            "group_lag",
            "Records between a group's committed offset and the high watermark",
            group_lag.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            produce_appended,
            produce_acknowledged,
            bytes_in,
            records_in,
            records_out,
            high_watermark,
            log_size,
            group_lag,
            tier_lag_bytes,
            tier_lag_seconds,
        }
    }
}

impl Metrics {
    pub fn records_in(&self, topic: &str, n: usize) {
        self.records_in.get_or_create(&TopicLabels { topic: topic.into() }).inc_by(n as u64);
    }

    pub fn records_out(&self, topic: &str, n: usize) {
        self.records_out.get_or_create(&TopicLabels { topic: topic.into() }).inc_by(n as u64);
    }

    /// A gRPC produce request's append: until its offsets were known.
    pub fn produce_appended(&self, seconds: f64) {
        self.produce_appended.observe(seconds);
    }

    /// A gRPC produce request's wait, once appended, to be acknowledged.
    pub fn produce_acknowledged(&self, seconds: f64) {
        self.produce_acknowledged.observe(seconds);
    }

    pub fn observe(&self, api: &str, status: &str, seconds: f64) {
        self.requests.get_or_create(&ApiLabels { api: api.into(), status: status.into() }).inc();
        self.latency.get_or_create(&ApiOnly { api: api.into() }).observe(seconds);
    }

    /// The Prometheus text exposition, with partition gauges read now.
    ///
    /// # Errors
    /// Encoding failed (a bug).
    pub fn render(&self, broker: &Broker, groups: &Groups) -> Result<String, std::fmt::Error> {
        for (topic, s) in broker.all_partition_status() {
            let labels = PartitionLabels { topic, partition: s.partition.to_string() };
            self.high_watermark.get_or_create(&labels).set(s.high_watermark as i64);
            self.log_size.get_or_create(&labels).set(s.size_bytes as i64);
        }
        self.tier_lag_bytes.clear();
        self.tier_lag_seconds.clear();
        for ((topic, partition), lag) in broker.cold().all_lag() {
            let labels = PartitionLabels { topic, partition: partition.to_string() };
            self.tier_lag_bytes.get_or_create(&labels).set(lag.bytes as i64);
            self.tier_lag_seconds.get_or_create(&labels).set(lag.seconds as i64);
        }
        // Read now, so deleted groups and partitions do not linger.
        self.group_lag.clear();
        for group in groups.list() {
            if let Ok(d) = groups.describe(&group) {
                for o in d.offsets {
                    let labels =
                        GroupLabels { group: group.clone(), topic: o.topic, partition: o.partition.to_string() };
                    self.group_lag.get_or_create(&labels).set(o.lag as i64);
                }
            }
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// gRPC methods we serve; any other method path is labelled `grpc other`.
const GRPC_METHODS: [&str; 13] = [
    "/strata.v1.Producer/Produce",
    "/strata.v1.Producer/ProduceStream",
    "/strata.v1.Consumer/Fetch",
    "/strata.v1.Admin/CreateTopic",
    "/strata.v1.Admin/ListTopics",
    "/strata.v1.Admin/DescribeTopic",
    "/strata.v1.Admin/AlterTopicConfig",
    "/strata.v1.Admin/AddPartitions",
    "/strata.v1.Admin/DeleteTopic",
    "/strata.v1.Admin/ListGroups",
    "/strata.v1.Admin/DescribeGroup",
    "/strata.v1.Admin/ResetGroupOffsets",
    "/strata.v1.Admin/DeleteGroup",
];

/// A label from a bounded set, whatever paths clients send: the route for HTTP, the method for
/// gRPC, `unmatched` for anything else.
fn api_label(request: &Request) -> String {
    let path = request.uri().path();
    if let Some(method) = GRPC_METHODS.iter().find(|m| **m == path) {
        return (*method).to_string();
    }
    if path.starts_with("/strata.") {
        return "grpc other".to_string();
    }
    match request.extensions().get::<MatchedPath>() {
        Some(route) => format!("{} {}", request.method(), route.as_str()),
        None => "unmatched".to_string(),
    }
}

/// Middleware: times every request, counts it by API and status, and counts its body bytes as
/// they arrive (gRPC sends no `Content-Length`, and a stream's bytes come over its whole life).
/// gRPC calls are labelled by method path (`/strata.v1.Producer/Produce`), HTTP calls by route.
pub async fn track(State(metrics): State<std::sync::Arc<Metrics>>, request: Request, next: Next) -> Response {
    let api = api_label(&request);
    let counter = metrics.bytes_in.get_or_create(&ApiOnly { api: api.clone() }).clone();
    let request = request.map(|inner| axum::body::Body::new(CountingBody { inner, counter }));
    let start = Instant::now();
    let response = next.run(request).await;
    let status = match response.headers().get("grpc-status").and_then(|v| v.to_str().ok()) {
        Some(code) => format!("grpc-{code}"),
        None => response.status().as_u16().to_string(),
    };
    metrics.observe(&api, &status, start.elapsed().as_secs_f64());
    response
}

/// A request body that adds the length of every data frame to a counter as it is read.
struct CountingBody {
    inner: axum::body::Body,
    counter: Counter,
}

impl HttpBody for CountingBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

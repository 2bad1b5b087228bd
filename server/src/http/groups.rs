//! Consumer groups over plain requests (no connection needs to stay open): join, heartbeat,
//! fetch by member, commit, leave, describe, list.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::records::{JsonFetchedRecord, json_record};
use super::{Query, parse_json, query_u64, read_body};
use crate::AppState;
use crate::error::ApiError;
use crate::group::assignor::Strategy;
use crate::group::coordinator::MemberView;
use crate::group::service::{Reset, Subscription};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// Topic names, or regular expressions matched against whole topic names (any entry that is
    /// not a valid topic name); topics created later that match join the subscription.
    pub topics: Vec<String>,
    /// `range`, `roundrobin` or `sticky` (default).
    pub assignor: Option<String>,
    /// 1,000–300,000 (default 10,000).
    pub session_timeout_ms: Option<u64>,
    /// Where partitions without a committed offset start: `earliest` or `latest` (default).
    pub auto_offset_reset: Option<String>,
    /// Commit what was delivered before each fetch, at most this often (at-least-once). Absent:
    /// commit explicitly.
    pub auto_commit_interval_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopicPartitionView {
    pub topic: String,
    pub partition: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberResponse {
    pub member_id: String,
    pub generation: u64,
    /// The partitions to read.
    pub assignment: Vec<TopicPartitionView>,
    /// Partitions still this member's but moving to another (cooperative `sticky`): read no more
    /// from them, commit what was processed, and heartbeat to hand them over.
    pub revoking: Vec<TopicPartitionView>,
    /// Whether partitions are moving between members.
    pub rebalancing: bool,
}

fn member_response(v: MemberView) -> MemberResponse {
    MemberResponse {
        member_id: v.member_id,
        generation: v.generation,
        assignment: v
            .assignment
            .into_iter()
            .map(|(topic, partition)| TopicPartitionView { topic, partition })
            .collect(),
        rebalancing: !v.revoking.is_empty() || v.rebalancing,
        revoking: v.revoking.into_iter().map(|(topic, partition)| TopicPartitionView { topic, partition }).collect(),
    }
}

#[utoipa::path(post, path = "/v1/groups/{group}/members", params(("group" = String, Path)), request_body = JoinBody,
    responses((status = 200, body = MemberResponse), (status = "4XX", body = crate::error::Problem)))]
pub async fn join(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    body: Body,
) -> Result<Json<MemberResponse>, ApiError> {
    let body: JoinBody = parse_json(&read_body(body, state.max_request_bytes).await?)?;
    if body.topics.is_empty() {
        return Err(ApiError::invalid("`topics` must name at least one topic"));
    }
    let strategy = match body.assignor.as_deref() {
        None => Strategy::Sticky,
        Some(name) => Strategy::parse(name)
            .ok_or_else(|| ApiError::invalid(format!("assignor must be range, roundrobin or sticky, got {name:?}")))?,
    };
    let timeout = body.session_timeout_ms.unwrap_or(10_000);
    if !(1_000..=300_000).contains(&timeout) {
        return Err(ApiError::invalid("session_timeout_ms must be 1000..=300000"));
    }
    let reset = match body.auto_offset_reset.as_deref() {
        None | Some("latest") => Reset::Latest,
        Some("earliest") => Reset::Earliest,
        Some(other) => {
            return Err(ApiError::invalid(format!("auto_offset_reset must be earliest or latest, got {other:?}")));
        }
    };
    let subscription = Subscription::parse(&body.topics)?;
    Ok(Json(member_response(
        state.groups.join(&group, subscription, strategy, timeout, reset, body.auto_commit_interval_ms).await?,
    )))
}

#[utoipa::path(post, path = "/v1/groups/{group}/members/{member}/heartbeat", params(("group" = String, Path), ("member" = String, Path)),
    responses((status = 200, body = MemberResponse), (status = 404, body = crate::error::Problem)))]
pub async fn heartbeat(
    State(state): State<Arc<AppState>>,
    Path((group, member)): Path<(String, String)>,
) -> Result<Json<MemberResponse>, ApiError> {
    Ok(Json(member_response(state.groups.heartbeat(&group, &member).await?)))
}

#[utoipa::path(delete, path = "/v1/groups/{group}/members/{member}", params(("group" = String, Path), ("member" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::Problem)))]
pub async fn leave(
    State(state): State<Arc<AppState>>,
    Path((group, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.groups.leave(&group, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberRecords {
    pub records: Vec<GroupRecord>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupRecord {
    pub topic: String,
    #[serde(flatten)]
    pub record: JsonFetchedRecord,
}

#[utoipa::path(get, path = "/v1/groups/{group}/members/{member}/records", params(("group" = String, Path), ("member" = String, Path),
        ("max_records" = Option<u32>, Query), ("wait_ms" = Option<u32>, Query), ("generation" = Option<u64>, Query)),
    responses((status = 200, body = MemberRecords), (status = 404, body = crate::error::Problem), (status = 409, body = crate::error::Problem)))]
pub async fn records(
    State(state): State<Arc<AppState>>,
    Path((group, member)): Path<(String, String)>,
    query: Query,
) -> Result<Json<MemberRecords>, ApiError> {
    let max_records = query_u64(&query, "max_records")?.unwrap_or(500).clamp(1, 10_000) as usize;
    let wait = Duration::from_millis(query_u64(&query, "wait_ms")?.unwrap_or(0).min(state.max_wait_ms));
    let generation = query_u64(&query, "generation")?;
    let records = state.groups.fetch(&group, &member, generation, max_records, wait).await?;
    Ok(Json(MemberRecords {
        records: records.into_iter().map(|(topic, r)| GroupRecord { topic, record: json_record(r, false) }).collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitBody {
    pub member_id: String,
    pub generation: u64,
    pub offsets: Vec<CommitOffset>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitOffset {
    pub topic: String,
    pub partition: u32,
    /// The next offset to process.
    pub offset: u64,
}

#[utoipa::path(post, path = "/v1/groups/{group}/offsets", params(("group" = String, Path)), request_body = CommitBody,
    responses((status = 200), (status = 409, body = crate::error::Problem), (status = 404, body = crate::error::Problem)))]
pub async fn commit(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: CommitBody = parse_json(&read_body(body, state.max_request_bytes).await?)?;
    let offsets = body.offsets.into_iter().map(|o| (o.topic, o.partition, o.offset)).collect();
    state.groups.commit(&group, &body.member_id, body.generation, offsets).await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupOffsetView {
    pub topic: String,
    pub partition: u32,
    pub committed: Option<u64>,
    pub high_watermark: u64,
    pub lag: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupMemberView {
    pub member_id: String,
    pub assignment: Vec<TopicPartitionView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupView {
    pub group: String,
    pub state: String,
    pub generation: u64,
    pub assignor: String,
    pub members: Vec<GroupMemberView>,
    pub offsets: Vec<GroupOffsetView>,
}

#[utoipa::path(get, path = "/v1/groups/{group}", params(("group" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = crate::error::Problem)))]
pub async fn describe(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    let d = state.groups.describe(&group)?;
    let assignor = d.strategy.name();
    Ok(Json(GroupView {
        group,
        state: d.state().into(),
        generation: d.generation,
        assignor: assignor.into(),
        members: d
            .members
            .into_iter()
            .map(|(member_id, a)| GroupMemberView {
                member_id,
                assignment: a.into_iter().map(|(topic, partition)| TopicPartitionView { topic, partition }).collect(),
            })
            .collect(),
        offsets: d
            .offsets
            .into_iter()
            .map(|o| GroupOffsetView {
                topic: o.topic,
                partition: o.partition,
                committed: o.committed,
                high_watermark: o.high_watermark,
                lag: o.lag,
            })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/v1/groups", responses((status = 200, description = "group names")))]
pub async fn list(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "groups": state.groups.list() }))
}

#[utoipa::path(delete, path = "/v1/groups/{group}", params(("group" = String, Path)),
    responses((status = 204), (status = 409, body = crate::error::Problem)))]
pub async fn delete(State(state): State<Arc<AppState>>, Path(group): Path<String>) -> Result<StatusCode, ApiError> {
    state.groups.delete(&group).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    pub topic: String,
    /// `"earliest"`, `"latest"`, `{"timestamp": MS}` or `{"offset": N}`.
    #[schema(value_type = Object)]
    pub to: serde_json::Value,
    /// Reset as this member (with `generation`): only its own partitions of `topic`, while the
    /// group is active. Without it the group must have no members.
    pub member_id: Option<String>,
    pub generation: Option<u64>,
}

#[utoipa::path(post, path = "/v1/groups/{group}/offsets/reset", params(("group" = String, Path)), request_body = ResetBody,
    responses((status = 200), (status = 409, body = crate::error::Problem)))]
pub async fn reset(
    State(state): State<Arc<AppState>>,
    Path(group): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::broker::Start;
    let body: ResetBody = parse_json(&read_body(body, state.max_request_bytes).await?)?;
    let to = match &body.to {
        serde_json::Value::String(s) if s == "earliest" => Start::Earliest,
        serde_json::Value::String(s) if s == "latest" => Start::Latest,
        serde_json::Value::Object(o) => match (
            o.get("timestamp").and_then(serde_json::Value::as_i64),
            o.get("offset").and_then(serde_json::Value::as_u64),
        ) {
            (Some(ts), None) => Start::Timestamp(ts),
            (None, Some(offset)) => Start::Offset(offset),
            _ => {
                return Err(ApiError::invalid(
                    "`to` must be \"earliest\", \"latest\", {\"timestamp\": MS} or {\"offset\": N}",
                ));
            }
        },
        _ => {
            return Err(ApiError::invalid(
                "`to` must be \"earliest\", \"latest\", {\"timestamp\": MS} or {\"offset\": N}",
            ));
        }
    };
    let member = match (&body.member_id, body.generation) {
        (Some(m), Some(g)) => Some((m.as_str(), g)),
        (None, None) => None,
        _ => return Err(ApiError::invalid("`member_id` and `generation` go together")),
    };
    let offsets = state.groups.reset_offsets(&group, &body.topic, to, member).await?;
    let offsets: Vec<serde_json::Value> = offsets
        .into_iter()
        .map(|(p, o)| serde_json::json!({"topic": body.topic, "partition": p, "offset": o}))
        .collect();
    Ok(Json(serde_json::json!({ "offsets": offsets })))
}

/// Server-Sent Events: the member's records pushed as they arrive, each event with
/// `id: topic/partition/offset`; `Last-Event-ID` resumes after that record. Keep-alive comments
/// flow while idle, and the open stream counts as the member's heartbeat.
#[utoipa::path(get, path = "/v1/groups/{group}/members/{member}/stream", params(("group" = String, Path), ("member" = String, Path)),
    responses((status = 200, description = "text/event-stream of records", content_type = "text/event-stream"), (status = 404, body = crate::error::Problem)))]
pub async fn stream(
    State(state): State<Arc<AppState>>,
    Path((group, member)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    state.groups.heartbeat(&group, &member).await?;
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().map_err(|_| ApiError::invalid("Last-Event-ID must be topic/partition/offset"))?;
        let mut parts = text.rsplitn(3, '/');
        let (offset, partition, topic) = (parts.next(), parts.next(), parts.next());
        let parsed =
            match (topic, partition.and_then(|p| p.parse::<u32>().ok()), offset.and_then(|o| o.parse::<u64>().ok())) {
                (Some(t), Some(p), Some(o)) => (t.to_string(), p, o),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "Last-Event-ID must be topic/partition/offset, got {text:?}"
                    )));
                }
            };
        state.groups.seek(&group, &member, (parsed.0, parsed.1), parsed.2 + 1)?;
    }
    let state_closing = state.closing.clone();
    let events = stream::unfold(Some((state, group, member)), |ctx| async move {
        let (state, group, member) = ctx?;
        match state.groups.fetch(&group, &member, None, 500, Duration::from_secs(1)).await {
            Ok(records) => {
                let events: Vec<Result<Event, std::convert::Infallible>> = records
                    .into_iter()
                    .map(|(topic, r)| {
                        let id = format!("{topic}/{}/{}", r.partition, r.offset);
                        let data = serde_json::to_string(&GroupRecord { topic, record: json_record(r, false) })
                            .unwrap_or_default();
                        Ok(Event::default().id(id).data(data))
                    })
                    .collect();
                Some((events, Some((state, group, member))))
            }
            // The member expired or was fenced: say why, then end the stream.
            Err(e) => {
                let event = Event::default().event("error").data(format!("{{\"code\":\"{}\"}}", e.code.as_str()));
                Some((vec![Ok(event)], None))
            }
        }
    })
    .flat_map(stream::iter)
    // The server is shutting down: end the stream (the client resumes with Last-Event-ID).
    .take_until(state_closing.cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(5)).text("heartbeat")))
}

//! `/v1/topics`: create, list, describe, alter config, add partitions, delete.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{parse_json, read_body};
use crate::AppState;
use crate::error::ApiError;
use crate::topic::TopicConfig;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    pub name: String,
    /// Default 1.
    pub partitions: Option<u32>,
    /// Only 1 on a single node.
    pub replication_factor: Option<u32>,
    /// Config keys as in `TopicConfig`; numbers or strings.
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlterConfig {
    #[schema(value_type = Object)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPartitions {
    /// The new total number of partitions.
    pub count: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartitionView {
    pub partition: u32,
    pub leader: u64,
    pub replicas: Vec<u64>,
    pub isr: Vec<u64>,
    pub log_start_offset: u64,
    pub local_start_offset: u64,
    pub tiered_end_offset: u64,
    pub high_watermark: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopicView {
    pub name: String,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopicList {
    pub topics: Vec<TopicView>,
}

pub(crate) fn view(state: &AppState, name: &str) -> Result<TopicView, ApiError> {
    let meta = state.broker.metadata().topic(name).ok_or_else(|| ApiError::topic_not_found(name))?;
    let node = state.node_id;
    let partitions = state
        .broker
        .partition_status(name, meta.partitions)
        .into_iter()
        .map(|s| PartitionView {
            partition: s.partition,
            leader: node,
            replicas: vec![node],
            isr: vec![node],
            log_start_offset: s.log_start_offset,
            local_start_offset: s.local_start_offset,
            tiered_end_offset: s.tiered_end_offset,
            high_watermark: s.high_watermark,
        })
        .collect();
    Ok(TopicView { name: meta.name.clone(), config: meta.config.clone(), partitions })
}

#[utoipa::path(post, path = "/v1/topics", request_body = CreateTopic,
    responses((status = 201, body = TopicView), (status = "4XX", body = crate::error::Problem)))]
pub async fn create(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let body: CreateTopic = parse_json(&read_body(body, state.max_request_bytes).await?)?;
    let config = match &body.config {
        Some(c) => TopicConfig::default().with_json(c)?,
        None => TopicConfig::default(),
    };
    state.admin.create_topic(&body.name, body.partitions.unwrap_or(1), body.replication_factor, config).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &body.name)?)).into_response())
}

#[utoipa::path(get, path = "/v1/topics", responses((status = 200, body = TopicList)))]
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<TopicList>, ApiError> {
    let names: Vec<String> = state.broker.metadata().topics().into_keys().collect();
    let topics = names.iter().filter_map(|n| view(&state, n).ok()).collect();
    Ok(Json(TopicList { topics }))
}

#[utoipa::path(get, path = "/v1/topics/{topic}", params(("topic" = String, Path)),
    responses((status = 200, body = TopicView), (status = 404, body = crate::error::Problem)))]
pub async fn describe(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
) -> Result<Json<TopicView>, ApiError> {
    Ok(Json(view(&state, &topic)?))
}

#[utoipa::path(patch, path = "/v1/topics/{topic}", params(("topic" = String, Path)), request_body = AlterConfig,
    responses((status = 200, body = TopicView), (status = "4XX", body = crate::error::Problem)))]
pub async fn alter(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    body: Body,
) -> Result<Json<TopicView>, ApiError> {
    let body: AlterConfig = parse_json(&read_body(body, state.max_request_bytes).await?)?;
    let current = state.broker.metadata().topic(&topic).ok_or_else(|| ApiError::topic_not_found(&topic))?;
    let config = current.config.clone().with_json(&body.config)?;
    state.admin.alter_config(&topic, config).await?;
    Ok(Json(view(&state, &topic)?))
}

#[utoipa::path(post, path = "/v1/topics/{topic}/partitions", params(("topic" = String, Path)), request_body = AddPartitions,
    responses((status = 200, body = TopicView), (status = "4XX", body = crate::error::Problem)))]
pub async fn add_partitions(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    body: Body,
) -> Result<Json<TopicView>, ApiError> {
    let body: AddPartitions = parse_json(&read_body(body, state.max_request_bytes).await?)?;
    state.admin.add_partitions(&topic, body.count).await?;
    Ok(Json(view(&state, &topic)?))
}

#[utoipa::path(delete, path = "/v1/topics/{topic}", params(("topic" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::Problem)))]
pub async fn delete(State(state): State<Arc<AppState>>, Path(topic): Path<String>) -> Result<StatusCode, ApiError> {
    state.admin.delete_topic(&topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks every local segment's CRCs and every tiered object against the tier manifest.
#[utoipa::path(get, path = "/v1/topics/{topic}/verify", params(("topic" = String, Path)),
    responses((status = 200, body = crate::tier::verify::Verification), (status = 404, body = crate::error::Problem),
        (status = 503, body = crate::error::Problem)))]
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
) -> Result<Json<crate::tier::verify::Verification>, ApiError> {
    Ok(Json(crate::tier::verify::verify_topic(&state.broker, &topic).await?))
}

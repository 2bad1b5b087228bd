//! Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use crate::AppState;
use crate::error::{ApiError, ErrorCode};

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Strata",
        description = "Event streaming: topics, produce, fetch, consumer groups, SQL. Errors are application/problem+json."
    ),
    paths(
        super::topics::create,
        super::topics::list,
        super::topics::describe,
        super::topics::alter,
        super::topics::add_partitions,
        super::topics::delete,
        super::topics::verify,
        super::sql::query,
        super::records::produce,
        super::records::new_producer,
        super::records::fetch,
        super::batches::batches,
        super::groups::list,
        super::groups::describe,
        super::groups::delete,
        super::groups::reset,
        super::groups::join,
        super::groups::leave,
        super::groups::heartbeat,
        super::groups::records,
        super::groups::stream,
        super::groups::commit,
        healthz,
        readyz,
        metrics
    ),
    components(schemas(crate::error::Problem, crate::topic::TopicConfig))
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "the process is up")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "storage recovered and Raft has a leader"), (status = 503, body = crate::error::Problem)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.ready.load(Ordering::Acquire) {
        return Err(ApiError::new(ErrorCode::Unavailable, "storage is recovering"));
    }
    if !state.broker.metadata().has_leader() {
        return Err(ApiError::new(ErrorCode::Unavailable, "the metadata Raft group has no leader"));
    }
    Ok(Json(serde_json::json!({"status": "ready"})))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus metrics in the OpenMetrics text format (which Prometheus scrapes by preference)", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match state.metrics.render(&state.broker, &state.groups) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(e) => ApiError::new(ErrorCode::Internal, format!("cannot encode metrics: {e}")).into_response(),
    }
}

pub async fn openapi() -> Response {
    (StatusCode::OK, Json(ApiDoc::openapi())).into_response()
}

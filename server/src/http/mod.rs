//! The HTTP/1.1 JSON API (API.md): topics, produce (JSON and the raw webhook door), fetch, and
//! the operations endpoints. Every error is `application/problem+json` with a stable `code`.

mod batches;
mod groups;
mod ops;
mod records;
mod sql;
mod topics;
pub(crate) mod zero_copy;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::{ApiError, ErrorCode};

pub use ops::ApiDoc;
pub use records::{ProduceResponse, RecordOffset};
pub(crate) use topics::view as topic_view;

/// All HTTP routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/topics", post(topics::create).get(topics::list))
        .route("/v1/topics/{topic}", get(topics::describe).patch(topics::alter).delete(topics::delete))
        .route("/v1/topics/{topic}/partitions", post(topics::add_partitions))
        .route("/v1/topics/{topic}/verify", get(topics::verify))
        .route("/v1/sql", post(sql::query))
        .route("/v1/topics/{topic}/records", post(records::produce))
        .route("/v1/producers", post(records::new_producer))
        .route("/v1/topics/{topic}/partitions/{partition}/records", get(records::fetch))
        .route("/v1/topics/{topic}/partitions/{partition}/batches", get(batches::batches))
        .route("/v1/groups", get(groups::list))
        .route("/v1/groups/{group}", get(groups::describe).delete(groups::delete))
        .route("/v1/groups/{group}/offsets/reset", post(groups::reset))
        .route("/v1/groups/{group}/members", post(groups::join))
        .route("/v1/groups/{group}/members/{member}", axum::routing::delete(groups::leave))
        .route("/v1/groups/{group}/members/{member}/heartbeat", post(groups::heartbeat))
        .route("/v1/groups/{group}/members/{member}/records", get(groups::records))
        .route("/v1/groups/{group}/members/{member}/stream", get(groups::stream))
        .route("/v1/groups/{group}/offsets", post(groups::commit))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .nest("/registry", crate::registry::http::router())
        .with_state(state)
}

/// Reads a request body, refusing more than `max` bytes.
async fn read_body(body: Body, max: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::new(ErrorCode::RequestTooLarge, format!("request body exceeds {max} bytes"))
        } else {
            ApiError::invalid(format!("cannot read request body: {e}"))
        }
    })
}

/// Parses a JSON body into `T`, naming what is wrong.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))
}

/// Query parameters as strings (parsed by each handler, so errors name the parameter).
type Query = axum::extract::Query<HashMap<String, String>>;

fn query_u64(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::invalid(format!("query parameter `{name}` must be a non-negative integer, got {v:?}"))
            })
        })
        .transpose()
}

fn parse_partition(raw: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>().map_err(|_| ApiError::invalid(format!("partition must be a non-negative integer, got {raw:?}")))
}

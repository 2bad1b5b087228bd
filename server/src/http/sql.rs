//! `POST /v1/sql`: read-only SQL over every topic, hot and cold, streamed as JSON, CSV or Arrow.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{parse_json, read_body};
use crate::AppState;
use crate::error::ApiError;
use crate::sql::Format;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlBody {
    /// One statement: SELECT (joins, GROUP BY, window functions, ...), EXPLAIN, SHOW TABLES,
    /// DESCRIBE. Topics are tables; double-quote names that are not identifiers.
    pub sql: String,
    /// `json` (default), `csv` or `arrow` (an Arrow IPC stream).
    pub format: Option<String>,
}

#[utoipa::path(post, path = "/v1/sql", request_body = SqlBody,
    responses((status = 200, description = "the result: JSON `{\"columns\",\"rows\"}`, CSV, or an Arrow IPC stream"),
        (status = 400, body = crate::error::Problem)))]
pub async fn query(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let body: SqlBody = parse_json(&read_body(body, state.max_request_bytes).await?)?;
    let format = match body.format.as_deref() {
        None => Format::Json,
        Some(name) => Format::parse(name)
            .ok_or_else(|| ApiError::invalid(format!("format must be json, csv or arrow, got {name:?}")))?,
    };
    let stream = state.sql.run(&body.sql, format).await?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], Body::from_stream(stream)).into_response())
}

//! One error type for every API: each [`ApiError`] carries a stable [`ErrorCode`], which maps
//! once to an HTTP status, once to a gRPC code, and names the problem+json `code`.

use std::fmt;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Stable machine names of everything that can go wrong, as clients see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    TopicNotFound,
    TopicAlreadyExists,
    PartitionNotFound,
    InvalidTopic,
    InvalidConfig,
    InvalidRequest,
    InvalidRecord,
    /// A value that does not match the schema its topic is bound to (`value_schema_subject`).
    SchemaMismatch,
    /// A SQL query that does not parse, plan or run (DataFusion's message).
    SqlError,
    /// A SQL query that needed more memory than `sql_memory_bytes`.
    SqlResourcesExhausted,
    /// A SQL query still running at `sql_timeout_ms`.
    SqlTimeout,
    RecordTooLarge,
    RequestTooLarge,
    UnsupportedMediaType,
    OffsetOutOfRange,
    OffsetMismatch,
    IdempotencyKeyReused,
    /// An idempotent producer session older than the partition's current one (higher epoch).
    ProducerFenced,
    /// An idempotent producer's sequence that is not above its last one and is no retry of a
    /// recent request.
    OutOfOrderSequence,
    UnknownMember,
    StaleGeneration,
    GroupNotEmpty,
    NotFound,
    /// A path that exists, asked with a method it does not take.
    MethodNotAllowed,
    /// The node cannot serve now (shutting down, no Raft leader, storage refusing writes).
    Unavailable,
    /// Stored data is damaged.
    DataCorrupt,
    /// A bug.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TopicNotFound => "topic_not_found",
            ErrorCode::TopicAlreadyExists => "topic_already_exists",
            ErrorCode::PartitionNotFound => "partition_not_found",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidRecord => "invalid_record",
            ErrorCode::SchemaMismatch => "schema_mismatch",
            ErrorCode::SqlError => "sql_error",
            ErrorCode::SqlResourcesExhausted => "sql_resources_exhausted",
            ErrorCode::SqlTimeout => "sql_timeout",
            ErrorCode::RecordTooLarge => "record_too_large",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::OffsetOutOfRange => "offset_out_of_range",
            ErrorCode::OffsetMismatch => "offset_mismatch",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::ProducerFenced => "producer_fenced",
            ErrorCode::OutOfOrderSequence => "out_of_order_sequence",
            ErrorCode::UnknownMember => "unknown_member",
            ErrorCode::StaleGeneration => "stale_generation",
            ErrorCode::GroupNotEmpty => "group_not_empty",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DataCorrupt => "data_corrupt",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::TopicNotFound
            | ErrorCode::PartitionNotFound
            | ErrorCode::NotFound
            | ErrorCode::UnknownMember => StatusCode::NOT_FOUND,
            ErrorCode::TopicAlreadyExists
            | ErrorCode::StaleGeneration
            | ErrorCode::GroupNotEmpty
            | ErrorCode::ProducerFenced
            | ErrorCode::OutOfOrderSequence => StatusCode::CONFLICT,
            ErrorCode::InvalidTopic
            | ErrorCode::InvalidConfig
            | ErrorCode::InvalidRequest
            | ErrorCode::InvalidRecord
            | ErrorCode::SchemaMismatch
            | ErrorCode::SqlError
            // The query as written is too big for the configured limits (a retry fails alike):
            // the caller's to change, so 4xx — not 413, which is about the request body, nor a
            // 5xx that generic clients retry.
            | ErrorCode::SqlResourcesExhausted
            | ErrorCode::SqlTimeout => StatusCode::BAD_REQUEST,
            ErrorCode::RecordTooLarge | ErrorCode::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::OffsetOutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::OffsetMismatch => StatusCode::PRECONDITION_FAILED,
            ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::DataCorrupt | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::TopicNotFound
            | ErrorCode::PartitionNotFound
            | ErrorCode::NotFound
            | ErrorCode::UnknownMember => tonic::Code::NotFound,
            ErrorCode::StaleGeneration
            | ErrorCode::GroupNotEmpty
            | ErrorCode::ProducerFenced
            | ErrorCode::OutOfOrderSequence => tonic::Code::FailedPrecondition,
            ErrorCode::TopicAlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::InvalidTopic
            | ErrorCode::InvalidConfig
            | ErrorCode::InvalidRequest
            | ErrorCode::InvalidRecord
            | ErrorCode::SchemaMismatch
            | ErrorCode::SqlError
            | ErrorCode::UnsupportedMediaType => tonic::Code::InvalidArgument,
            ErrorCode::RecordTooLarge | ErrorCode::RequestTooLarge | ErrorCode::SqlResourcesExhausted => {
                tonic::Code::ResourceExhausted
            }
            ErrorCode::SqlTimeout => tonic::Code::DeadlineExceeded,
            ErrorCode::MethodNotAllowed => tonic::Code::Unimplemented,
            ErrorCode::OffsetOutOfRange => tonic::Code::OutOfRange,
            ErrorCode::OffsetMismatch | ErrorCode::IdempotencyKeyReused => tonic::Code::FailedPrecondition,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::DataCorrupt => tonic::Code::DataLoss,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    fn title(self) -> &'static str {
        match self.http_status().canonical_reason() {
            Some(reason) => reason,
            None => "Error",
        }
    }
}

/// An error as an API reports it: a code and a human sentence.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into() }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, detail)
    }

    pub fn topic_not_found(topic: &str) -> Self {
        Self::new(ErrorCode::TopicNotFound, format!("topic {topic:?} does not exist"))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for ApiError {}

/// The problem+json body (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.http_status();
        let body = Problem {
            kind: format!("https://strata.dev/problems/{}", self.code.as_str()),
            title: self.code.title().to_string(),
            status: status.as_u16(),
            detail: self.detail,
            code: self.code.as_str().to_string(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.code.grpc_code(), format!("{}: {}", e.code.as_str(), e.detail))
    }
}

impl From<strata_storage::Error> for ApiError {
    fn from(e: strata_storage::Error) -> Self {
        use strata_storage::Error as S;
        let code = match &e {
            S::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            S::OffsetMismatch { .. } => ErrorCode::OffsetMismatch,
            S::ProducerFenced { .. } => ErrorCode::ProducerFenced,
            S::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            S::BatchTooLarge { .. } => ErrorCode::RecordTooLarge,
            S::InvalidBatch { .. } => ErrorCode::InvalidRecord,
            S::InvalidConfig { .. } => ErrorCode::InvalidConfig,
            S::LogDeleted { .. } => ErrorCode::TopicNotFound,
            // A failed write or sync (a full disk, a failing device) and the log it leaves
            // refusing writes: the node cannot serve now, which is not a bug (API.md keeps 500
            // for those), so 503 with `Retry-After`.
            S::Poisoned { .. } | S::Io { .. } => ErrorCode::Unavailable,
            S::Corrupt { .. } => ErrorCode::DataCorrupt,
            S::Internal(_) => ErrorCode::Internal,
        };
        if matches!(code, ErrorCode::Internal | ErrorCode::DataCorrupt | ErrorCode::Unavailable) {
            tracing::error!(error = %e, "storage error");
        }
        ApiError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_io_errors_are_unavailable_not_bugs() {
        let full = std::io::Error::from_raw_os_error(28); // ENOSPC
        let path = "/data/t-0/00000000000000000000.log".into();
        let e = ApiError::from(strata_storage::Error::Io { path, source: full });
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.code.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code.grpc_code(), tonic::Code::Unavailable);
        assert!(e.detail.contains("00000000000000000000.log"), "{}", e.detail);
    }
}

//! The registry's REST API under `/registry`: the paths, bodies and error codes existing
//! schema-registry clients speak (`{"error_code","message"}` errors, not problem+json). Requests
//! and responses are `application/vnd.schemaregistry.v1+json` (plain `application/json` works too).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CONTENT_TYPE, Compatibility, Registry, RegistryError, VersionRef};
use crate::AppState;

type Params = Query<HashMap<String, String>>;
type Reply = Result<Response, RegistryError>;

/// The routes, to be nested under `/registry`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(root))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version).delete(delete_version))
        .route("/subjects/{subject}/versions/{version}/schema", get(version_schema))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route("/schemas/types", get(schema_types))
        .route("/config", get(global_config).put(set_global_config))
        .route("/config/{subject}", get(subject_config).put(set_subject_config).delete(delete_subject_config))
        .route("/mode", get(mode))
        .route("/compatibility/subjects/{subject}/versions", post(check_all))
        .route("/compatibility/subjects/{subject}/versions/{version}", post(check_version))
        .fallback(|| async { NotFound })
}

struct NotFound;

impl IntoResponse for NotFound {
    fn into_response(self) -> Response {
        let body = json!({"error_code": 404, "message": "HTTP 404 Not Found"});
        let mut r = (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        r
    }
}

fn ok(value: Value) -> Reply {
    let mut r = axum::Json(value).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(r)
}

fn registry(state: &AppState) -> &Registry {
    state.broker.registry()
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::BadRequest(format!("malformed request body: {e}")))
}

fn parse_id(raw: &str) -> Result<u32, RegistryError> {
    raw.parse::<u32>().map_err(|_| RegistryError::SchemaNotFound(raw.to_string()))
}

/// A schema as clients submit it.
#[derive(Debug, Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn parse_schema(body: &[u8]) -> Result<super::AvroSchema, RegistryError> {
    let body: SchemaBody = parse_body(body)?;
    if !body.references.is_empty() {
        return Err(RegistryError::InvalidSchema("schema references are not supported yet".to_string()));
    }
    let schema = Registry::parse(body.schema_type.as_deref(), &body.schema)?;
    super::defaults::check_union_defaults(schema.schema()).map_err(RegistryError::InvalidSchema)?;
    Ok(schema)
}

async fn root() -> Reply {
    ok(json!({}))
}

async fn subjects(State(state): State<Arc<AppState>>, q: Params) -> Reply {
    let mut names = registry(&state).subjects(flag(&q, "deleted"), flag(&q, "deletedOnly"));
    if let Some(prefix) = q.get("subjectPrefix") {
        names.retain(|n| n.starts_with(prefix.as_str()));
    }
    ok(json!(names))
}

async fn versions(State(state): State<Arc<AppState>>, Path(subject): Path<String>, q: Params) -> Reply {
    ok(json!(registry(&state).versions(&subject, flag(&q, "deleted"))?))
}

async fn register(State(state): State<Arc<AppState>>, Path(subject): Path<String>, body: Bytes) -> Reply {
    let schema = parse_schema(&body)?;
    let (id, version) = registry(&state).register(&subject, &schema).await?;
    ok(json!({"id": id, "subject": subject, "version": version, "schema": schema.normalized()}))
}

async fn version(
    State(state): State<Arc<AppState>>,
    Path((subject, version)): Path<(String, String)>,
    q: Params,
) -> Reply {
    let v = registry(&state).version(&subject, VersionRef::parse(&version)?, flag(&q, "deleted"))?;
    ok(json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema}))
}

async fn version_schema(
    State(state): State<Arc<AppState>>,
    Path((subject, version)): Path<(String, String)>,
    q: Params,
) -> Reply {
    let v = registry(&state).version(&subject, VersionRef::parse(&version)?, flag(&q, "deleted"))?;
    raw_schema(&v.schema)
}

fn raw_schema(text: &str) -> Reply {
    let value: Value = serde_json::from_str(text).map_err(|e| RegistryError::Internal(e.to_string()))?;
    ok(value)
}

async fn lookup(State(state): State<Arc<AppState>>, Path(subject): Path<String>, q: Params, body: Bytes) -> Reply {
    let schema = parse_schema(&body)?;
    let v = registry(&state).lookup(&subject, &schema, flag(&q, "deleted"))?;
    ok(json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema}))
}

async fn delete_subject(State(state): State<Arc<AppState>>, Path(subject): Path<String>, q: Params) -> Reply {
    ok(json!(registry(&state).delete_subject(&subject, flag(&q, "permanent")).await?))
}

async fn delete_version(
    State(state): State<Arc<AppState>>,
    Path((subject, version)): Path<(String, String)>,
    q: Params,
) -> Reply {
    let version = VersionRef::parse(&version)?;
    ok(json!(registry(&state).delete_version(&subject, version, flag(&q, "permanent")).await?))
}

async fn schema_by_id(State(state): State<Arc<AppState>>, Path(id): Path<String>, q: Params) -> Reply {
    let id = parse_id(&id)?;
    let r = registry(&state);
    if let Some(subject) = q.get("subject")
        && !r.uses_of(id, true).iter().any(|(s, _)| s == subject)
    {
        return Err(RegistryError::SchemaNotFound(id.to_string()));
    }
    ok(json!({"schema": r.schema_text(id)?}))
}

async fn raw_schema_by_id(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Reply {
    raw_schema(&registry(&state).schema_text(parse_id(&id)?)?)
}

async fn subjects_by_id(State(state): State<Arc<AppState>>, Path(id): Path<String>, q: Params) -> Reply {
    let id = parse_id(&id)?;
    let r = registry(&state);
    r.schema_text(id)?;
    let mut subjects: Vec<String> = r.uses_of(id, flag(&q, "deleted")).into_iter().map(|(s, _)| s).collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn versions_by_id(State(state): State<Arc<AppState>>, Path(id): Path<String>, q: Params) -> Reply {
    let id = parse_id(&id)?;
    let r = registry(&state);
    r.schema_text(id)?;
    let uses = r.uses_of(id, flag(&q, "deleted"));
    ok(json!(uses.into_iter().map(|(s, v)| json!({"subject": s, "version": v})).collect::<Vec<_>>()))
}

async fn schema_types() -> Reply {
    ok(json!(["AVRO"]))
}

async fn mode() -> Reply {
    ok(json!({"mode": "READWRITE"}))
}

#[derive(Debug, Deserialize)]
struct ConfigBody {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

fn parse_config(body: &[u8]) -> Result<Compatibility, RegistryError> {
    let body: ConfigBody = parse_body(body)?;
    let level = body.compatibility.or(body.compatibility_level).unwrap_or_default();
    Compatibility::parse(&level).ok_or(RegistryError::InvalidCompatibility(level))
}

async fn global_config(State(state): State<Arc<AppState>>) -> Reply {
    let level = registry(&state).compatibility(None).unwrap_or(Compatibility::Backward);
    ok(json!({"compatibilityLevel": level}))
}

async fn set_global_config(State(state): State<Arc<AppState>>, body: Bytes) -> Reply {
    let level = parse_config(&body)?;
    registry(&state).set_compatibility(None, Some(level)).await?;
    ok(json!({"compatibility": level}))
}

async fn subject_config(State(state): State<Arc<AppState>>, Path(subject): Path<String>, q: Params) -> Reply {
    let r = registry(&state);
    let level = match r.compatibility(Some(&subject)) {
        Some(level) => level,
        None if flag(&q, "defaultToGlobal") => r.compatibility(None).unwrap_or(Compatibility::Backward),
        None => return Err(RegistryError::SubjectCompatibilityNotFound(subject)),
    };
    ok(json!({"compatibilityLevel": level}))
}

async fn set_subject_config(State(state): State<Arc<AppState>>, Path(subject): Path<String>, body: Bytes) -> Reply {
    let level = parse_config(&body)?;
    registry(&state).set_compatibility(Some(&subject), Some(level)).await?;
    ok(json!({"compatibility": level}))
}

async fn delete_subject_config(State(state): State<Arc<AppState>>, Path(subject): Path<String>) -> Reply {
    let r = registry(&state);
    if r.compatibility(Some(&subject)).is_none() {
        return Err(RegistryError::SubjectCompatibilityNotFound(subject));
    }
    let previous = r.set_compatibility(Some(&subject), None).await?;
    ok(json!({"compatibilityLevel": previous.unwrap_or(Compatibility::Backward)}))
}

fn compatibility_reply(messages: Vec<String>, verbose: bool) -> Reply {
    if verbose {
        ok(json!({"is_compatible": messages.is_empty(), "messages": messages}))
    } else {
        ok(json!({"is_compatible": messages.is_empty()}))
    }
}

async fn check_all(State(state): State<Arc<AppState>>, Path(subject): Path<String>, q: Params, body: Bytes) -> Reply {
    let schema = parse_schema(&body)?;
    let messages = registry(&state).check(&subject, None, &schema)?;
    compatibility_reply(messages, flag(&q, "verbose"))
}

async fn check_version(
    State(state): State<Arc<AppState>>,
    Path((subject, version)): Path<(String, String)>,
    q: Params,
    body: Bytes,
) -> Reply {
    let version = VersionRef::parse(&version)?;
    let schema = parse_schema(&body)?;
    let messages = registry(&state).check(&subject, Some(version), &schema)?;
    compatibility_reply(messages, flag(&q, "verbose"))
}

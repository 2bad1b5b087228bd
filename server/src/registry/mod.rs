//! The schema registry: Avro subjects with versions, global schema ids and compatibility modes,
//! served under `/registry` with the REST API existing schema-registry clients speak, and used by
//! validated produce and decoded fetch.
//!
//! ```text
//!  http.rs (REST, registry error bodies) ──► Registry ──┬─ reads: Metadata::registry (applied state)
//!  broker produce (value_schema_subject) ──► Registry   ├─ writes: Command::Registry via Raft
//!  fetch ?decode=true / CLI --decode     ──► Registry   └─ SchemaCache: id → parsed AvroSchema
//!
//!  subject.rs  RegistryState + RegistryCommand::apply (in the metadata state machine)
//!  compat.rs   Avro schema resolution rules, modes (BACKWARD, FORWARD, FULL, *_TRANSITIVE, NONE)
//!  avro.rs     parsing + normalized text (apache-avro), JSON ⇄ Avro binary, wire framing
//!  encoder.rs  JSON text → Avro binary in one pass (validated produce's fast path), compiled
//!              once per schema id
//! ```
//!
//! Compatibility is checked before the write and the write carries the latest version it was
//! checked against: the state machine refuses it if another registration got in first, and the
//! check runs again, so two racing registrations cannot both skip each other's check.

pub mod avro;
pub mod cli;
pub mod compat;
mod defaults;
mod encoder;
pub mod http;
pub mod subject;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

pub use avro::{AvroSchema, InvalidSchema, JsonTextError, Mismatch};
pub use compat::Compatibility;
pub use subject::{RegistryCommand, RegistryOutcome, RegistryState};

use crate::error::{ApiError, ErrorCode};
use crate::metadata::{Command, CommandResult, Metadata};

/// A subject's live versions, oldest first, with their parsed schemas.
type History = Vec<(u32, Arc<AvroSchema>)>;

/// The content type registry clients send and expect.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A registry failure, with the registry API's own error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {version} not found.")]
    VersionNotFound { version: String },
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error("Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently")]
    VersionSoftDeleted { subject: String, version: u32 },
    #[error("Subject '{subject}' Version {version} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted { subject: String, version: u32 },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectCompatibilityNotFound(String),
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", details.join(", "))]
    Incompatible { subject: String, details: Vec<String> },
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive; got {0:?}"
    )]
    InvalidCompatibility(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    /// The registry API's `error_code`.
    pub fn error_code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound { .. } => 40402,
            RegistryError::SchemaNotFound(_) => 40403,
            RegistryError::SubjectSoftDeleted(_) => 40404,
            RegistryError::SubjectNotSoftDeleted(_) => 40405,
            RegistryError::VersionSoftDeleted { .. } => 40406,
            RegistryError::VersionNotSoftDeleted { .. } => 40407,
            RegistryError::SubjectCompatibilityNotFound(_) => 40408,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema(_) => 42201,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompatibility(_) => 42203,
            RegistryError::BadRequest(_) => 400,
            RegistryError::Unavailable(_) => 50003,
            RegistryError::Internal(_) => 50001,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.error_code() {
            409 => StatusCode::CONFLICT,
            400 => StatusCode::BAD_REQUEST,
            40400..=40499 => StatusCode::NOT_FOUND,
            42200..=42299 => StatusCode::UNPROCESSABLE_ENTITY,
            50003 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error_code": self.error_code(), "message": self.to_string()});
        let mut response = (self.status(), axum::Json(body)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<ApiError> for RegistryError {
    fn from(e: ApiError) -> Self {
        match e.code {
            ErrorCode::Unavailable => RegistryError::Unavailable(e.detail),
            _ => RegistryError::Internal(e.to_string()),
        }
    }
}

/// A version as a request names it: a number, or `latest` (also `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Latest,
    Number(u32),
}

impl VersionRef {
    /// # Errors
    /// `42202` for anything but 1..=2^31-1, `latest` and `-1`.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        match s {
            "latest" | "-1" => Ok(VersionRef::Latest),
            n => match n.parse::<u32>() {
                Ok(v) if (1..=i32::MAX as u32).contains(&v) => Ok(VersionRef::Number(v)),
                _ => Err(RegistryError::InvalidVersion(s.to_string())),
            },
        }
    }
}

/// A subject's version as reads return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
    pub deleted: bool,
}

/// What validated produce needs of a subject, read once per request.
#[derive(Debug, Clone)]
pub struct SubjectSchemas {
    subject: String,
    /// The latest live version: (version, id, schema).
    latest: Option<(u32, u32, Arc<AvroSchema>)>,
    /// Ids of the subject's live versions → version number.
    ids: HashMap<u32, u32>,
}

/// The registry service (cheap to clone): reads the applied state, writes through Raft, keeps
/// parsed schemas by id.
#[derive(Debug, Clone)]
pub struct Registry {
    metadata: Metadata,
    /// Parsed schemas by id. A std lock: map lookups and inserts only, never held across
    /// `.await` or parsing.
    cache: Arc<RwLock<HashMap<u32, Arc<AvroSchema>>>>,
}

impl Registry {
    pub fn new(metadata: Metadata) -> Self {
        Self { metadata, cache: Arc::default() }
    }

    /// The parsed schema with global id `id`.
    ///
    /// # Errors
    /// `40403` when no subject uses the id.
    pub fn schema_by_id(&self, id: u32) -> Result<Arc<AvroSchema>, RegistryError> {
        if let Some(s) = self.cache.read().unwrap_or_else(PoisonError::into_inner).get(&id) {
            return Ok(Arc::clone(s));
        }
        let text = self
            .metadata
            .registry(|r| r.schemas.get(&id).map(|s| s.schema.clone()))
            .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))?;
        // Stored text was parsed before it was stored: failing now is a bug.
        let parsed = Arc::new(AvroSchema::parse(&text).map_err(|e| {
            debug_assert!(false, "stored schema {id} does not parse: {e}");
            RegistryError::Internal(format!("stored schema {id} does not parse (a bug): {e}"))
        })?);
        self.cache.write().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::clone(&parsed));
        Ok(parsed)
    }

    /// The schema text of id `id`.
    ///
    /// # Errors
    /// `40403`.
    pub fn schema_text(&self, id: u32) -> Result<String, RegistryError> {
        self.metadata
            .registry(|r| r.schemas.get(&id).map(|s| s.schema.clone()))
            .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
    }

    /// Subject names: those with a live version, or also (`deleted`) or only (`deleted_only`)
    /// those whose versions are all soft-deleted.
    pub fn subjects(&self, deleted: bool, deleted_only: bool) -> Vec<String> {
        self.metadata.registry(|r| {
            r.subjects
                .iter()
                .filter(|(_, s)| match s.live().next().is_some() {
                    true => !deleted_only,
                    false => deleted || deleted_only,
                })
                .map(|(n, _)| n.clone())
                .collect()
        })
    }

    /// A subject's version numbers.
    ///
    /// # Errors
    /// `40401` for an unknown subject (or one with only soft-deleted versions, unless `deleted`).
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, RegistryError> {
        let versions = self.metadata.registry(|r| {
            r.subjects
                .get(subject)
                .map(|s| s.versions.iter().filter(|(_, v)| deleted || !v.deleted).map(|(n, _)| *n).collect::<Vec<_>>())
        });
        match versions {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(RegistryError::SubjectNotFound(subject.to_string())),
        }
    }

    /// One version of a subject.
    ///
    /// # Errors
    /// `40401`, `40402`.
    pub fn version(&self, subject: &str, version: VersionRef, deleted: bool) -> Result<VersionInfo, RegistryError> {
        self.metadata.registry(|r| {
            let s = r
                .subjects
                .get(subject)
                .filter(|s| deleted || s.live().next().is_some())
                .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
            let found = match version {
                VersionRef::Latest if deleted => s.versions.iter().next_back().map(|(n, v)| (*n, v)),
                VersionRef::Latest => s.latest_live(),
                VersionRef::Number(n) => s.versions.get(&n).filter(|v| deleted || !v.deleted).map(|v| (n, v)),
            };
            let (number, v) = found.ok_or_else(|| RegistryError::VersionNotFound {
                version: match version {
                    VersionRef::Latest => "latest".to_string(),
                    VersionRef::Number(n) => n.to_string(),
                },
            })?;
            let schema = r.schemas.get(&v.id).map(|s| s.schema.clone()).unwrap_or_default();
            Ok(VersionInfo { subject: subject.to_string(), version: number, id: v.id, schema, deleted: v.deleted })
        })
    }

    /// The subjects and versions that use schema `id` (soft-deleted ones only with `deleted`).
    pub fn uses_of(&self, id: u32, deleted: bool) -> Vec<(String, u32)> {
        self.metadata
            .registry(|r| r.uses_of(id).into_iter().filter(|(_, _, d)| deleted || !d).map(|(s, v, _)| (s, v)).collect())
    }

    /// Parses a submitted schema.
    ///
    /// # Errors
    /// `42201` naming what is wrong.
    pub fn parse(schema_type: Option<&str>, text: &str) -> Result<AvroSchema, RegistryError> {
        match schema_type {
            None | Some("AVRO") | Some("avro") => {}
            Some(other) => {
                return Err(RegistryError::InvalidSchema(format!("schema type {other:?} is not supported; use AVRO")));
            }
        }
        AvroSchema::parse(text).map_err(|e| RegistryError::InvalidSchema(e.reason))
    }

    /// Finds `schema` among a subject's versions.
    ///
    /// # Errors
    /// `40401` unknown subject, `40403` schema not under it.
    pub fn lookup(&self, subject: &str, schema: &AvroSchema, deleted: bool) -> Result<VersionInfo, RegistryError> {
        self.metadata.registry(|r| {
            let s = r
                .subjects
                .get(subject)
                .filter(|s| deleted || s.live().next().is_some())
                .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
            s.versions
                .iter()
                .filter(|(_, v)| deleted || !v.deleted)
                .find(|(_, v)| r.schemas.get(&v.id).is_some_and(|x| x.schema == schema.normalized()))
                .map(|(n, v)| VersionInfo {
                    subject: subject.to_string(),
                    version: *n,
                    id: v.id,
                    schema: schema.normalized().to_string(),
                    deleted: v.deleted,
                })
                .ok_or_else(|| RegistryError::SchemaNotFound("not found under this subject".to_string()))
        })
    }

    /// The live versions of a subject (oldest first), parsed, and its mode.
    fn history(&self, subject: &str) -> Result<(Compatibility, History), RegistryError> {
        let (mode, ids) = self.metadata.registry(|r| {
            let ids: Vec<(u32, u32)> =
                r.subjects.get(subject).map(|s| s.live().map(|(n, v)| (n, v.id)).collect()).unwrap_or_default();
            (r.compatibility_of(subject), ids)
        });
        let versions =
            ids.into_iter().map(|(n, id)| Ok((n, self.schema_by_id(id)?))).collect::<Result<_, RegistryError>>()?;
        Ok((mode, versions))
    }

    /// Registers `schema` under `subject` (or returns the version it already has there).
    ///
    /// # Errors
    /// `409` incompatible under the subject's mode (the details name each field and why),
    /// `50003` no metadata leader.
    pub async fn register(&self, subject: &str, schema: &AvroSchema) -> Result<(u32, u32), RegistryError> {
        for _ in 0..8 {
            if let Ok(found) = self.lookup(subject, schema, false) {
                return Ok((found.id, found.version));
            }
            let (mode, history) = self.history(subject)?;
            let existing: Vec<(u32, &AvroSchema)> = history.iter().map(|(n, s)| (*n, s.as_ref())).collect();
            let problems = compat::check_mode(mode, schema, &existing);
            if !problems.is_empty() {
                return Err(RegistryError::Incompatible {
                    subject: subject.to_string(),
                    details: describe(mode, &problems),
                });
            }
            let command = RegistryCommand::Register {
                subject: subject.to_string(),
                schema: schema.normalized().to_string(),
                expected_latest: history.last().map(|(n, _)| *n),
            };
            match self.write(command).await? {
                RegistryOutcome::Registered { id, version } => return Ok((id, version)),
                RegistryOutcome::Conflict => continue,
                other => return Err(unexpected(other)),
            }
        }
        Err(RegistryError::Unavailable(format!("subject {subject:?} is changing too fast to register; retry")))
    }

    /// Checks `schema` against a subject's versions under the subject's mode: against `version`
    /// only, or (with `None`) against the versions the mode names.
    ///
    /// # Errors
    /// `40401`, `40402` when the version to check against does not exist.
    pub fn check(
        &self,
        subject: &str,
        version: Option<VersionRef>,
        schema: &AvroSchema,
    ) -> Result<Vec<String>, RegistryError> {
        let (mode, history) = self.history(subject)?;
        let against: Vec<(u32, &AvroSchema)> = match version {
            None => history.iter().map(|(n, s)| (*n, s.as_ref())).collect(),
            Some(v) => {
                let info = self.version(subject, v, false)?;
                let s = history
                    .iter()
                    .find(|(n, _)| *n == info.version)
                    .ok_or_else(|| RegistryError::VersionNotFound { version: info.version.to_string() })?;
                vec![(s.0, s.1.as_ref())]
            }
        };
        Ok(describe(mode, &compat::check_mode(mode, schema, &against)))
    }

    /// Soft-deletes (or permanently deletes) a subject; returns the versions deleted.
    ///
    /// # Errors
    /// `40401`, `40404`, `40405`.
    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<u32>, RegistryError> {
        match self.write(RegistryCommand::DeleteSubject { subject: subject.to_string(), permanent }).await? {
            RegistryOutcome::Deleted { versions } => Ok(versions),
            RegistryOutcome::SubjectNotFound => Err(RegistryError::SubjectNotFound(subject.to_string())),
            RegistryOutcome::SubjectSoftDeleted => Err(RegistryError::SubjectSoftDeleted(subject.to_string())),
            RegistryOutcome::SubjectNotSoftDeleted => Err(RegistryError::SubjectNotSoftDeleted(subject.to_string())),
            other => Err(unexpected(other)),
        }
    }

    /// Soft-deletes (or permanently deletes) one version.
    ///
    /// # Errors
    /// `40401`, `40402`, `40406`, `40407`.
    pub async fn delete_version(
        &self,
        subject: &str,
        version: VersionRef,
        permanent: bool,
    ) -> Result<u32, RegistryError> {
        let number = self.version(subject, version, permanent)?.version;
        let command = RegistryCommand::DeleteVersion { subject: subject.to_string(), version: number, permanent };
        let (subject, version) = (subject.to_string(), number);
        match self.write(command).await? {
            RegistryOutcome::Deleted { .. } => Ok(number),
            RegistryOutcome::SubjectNotFound => Err(RegistryError::SubjectNotFound(subject)),
            RegistryOutcome::VersionNotFound => Err(RegistryError::VersionNotFound { version: version.to_string() }),
            RegistryOutcome::VersionSoftDeleted => Err(RegistryError::VersionSoftDeleted { subject, version }),
            RegistryOutcome::VersionNotSoftDeleted => Err(RegistryError::VersionNotSoftDeleted { subject, version }),
            other => Err(unexpected(other)),
        }
    }

    /// The global mode, or a subject's own (`None` when it has none).
    pub fn compatibility(&self, subject: Option<&str>) -> Option<Compatibility> {
        self.metadata.registry(|r| match subject {
            None => Some(r.global_compatibility()),
            Some(s) => r.subject_compatibility.get(s).copied(),
        })
    }

    /// Sets (or with `None` removes) the global or a subject's mode; returns the previous one.
    ///
    /// # Errors
    /// `50003` no metadata leader.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        compatibility: Option<Compatibility>,
    ) -> Result<Option<Compatibility>, RegistryError> {
        let command = RegistryCommand::SetCompatibility { subject: subject.map(str::to_string), compatibility };
        match self.write(command).await? {
            RegistryOutcome::ConfigSet { previous } => Ok(previous),
            other => Err(unexpected(other)),
        }
    }

    async fn write(&self, command: RegistryCommand) -> Result<RegistryOutcome, RegistryError> {
        match self.metadata.write(Command::Registry(command)).await? {
            CommandResult::Registry(outcome) => Ok(outcome),
            other => Err(RegistryError::Internal(format!("registry command answered {other} (a bug)"))),
        }
    }

    /// What validated produce needs of `subject`, read once per request.
    ///
    /// # Errors
    /// `internal` if a stored schema does not parse (a bug).
    pub fn subject_schemas(&self, subject: &str) -> Result<SubjectSchemas, ApiError> {
        let (latest, ids) = self.metadata.registry(|r| {
            let s = r.subjects.get(subject);
            let latest = s.and_then(|s| s.latest_live()).map(|(n, v)| (n, v.id));
            let ids: HashMap<u32, u32> = s.map(|s| s.live().map(|(n, v)| (v.id, n)).collect()).unwrap_or_default();
            (latest, ids)
        });
        let latest = match latest {
            Some((version, id)) => Some((version, id, self.schema_by_id(id).map_err(registry_to_api)?)),
            None => None,
        };
        Ok(SubjectSchemas { subject: subject.to_string(), latest, ids })
    }

    /// Turns one record's value into a framed Avro value of `subject`: a framed value whose id
    /// belongs to the subject and whose body decodes passes unchanged; JSON is encoded with the
    /// latest schema.
    ///
    /// # Errors
    /// `schema_mismatch` naming the record and the field.
    pub fn validate_value(&self, subject: &SubjectSchemas, i: usize, value: &Bytes) -> Result<Bytes, ApiError> {
        let fail = |detail: String| {
            ApiError::new(
                ErrorCode::SchemaMismatch,
                format!("record {i}: value does not match subject {:?}: {detail}", subject.subject),
            )
        };
        if let Some((id, body)) = avro::unframe(value) {
            if !subject.ids.contains_key(&id) {
                return Err(fail(format!("schema id {id} is not a version of the subject")));
            }
            let schema = self.schema_by_id(id).map_err(registry_to_api)?;
            schema.decode(body).map_err(|e| fail(format!("Avro body of schema id {id}: {e}")))?;
            return Ok(value.clone());
        }
        let Some((version, id, schema)) = &subject.latest else {
            return Err(fail("the subject has no schema registered".to_string()));
        };
        // Encoded in this thread's buffer and copied out at its exact size: one allocation per
        // value, none for the buffer.
        with_buffer(|out| {
            out.push(avro::MAGIC);
            out.extend_from_slice(&id.to_be_bytes());
            schema.encode_json_text(value, out).map_err(|e| match e {
                JsonTextError::NotJson(e) => fail(format!("neither framed Avro (magic byte 0) nor JSON: {e}")),
                JsonTextError::Mismatch(e) => fail(format!("{e} (schema id {id}, version {version})")),
            })?;
            Ok(Bytes::copy_from_slice(out))
        })
    }

    /// Decodes a framed Avro value to JSON (for fetch `?decode=true`): the schema id and the value,
    /// or `None` when the bytes are not a framed value of a known schema.
    pub fn decode_value(&self, value: &[u8]) -> Option<(u32, serde_json::Value)> {
        let (id, body) = avro::unframe(value)?;
        let schema = self.schema_by_id(id).ok()?;
        schema.decode(body).ok().map(|v| (id, v))
    }
}

thread_local! {
    /// Validated produce's encoding buffer.
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Lends `f` this thread's empty encoding buffer (a fresh one if it is already lent).
fn with_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            let result = f(&mut buffer);
            if buffer.capacity() > 1 << 20 {
                *buffer = Vec::new();
            }
            result
        }
        Err(_) => f(&mut Vec::new()),
    })
}

fn registry_to_api(e: RegistryError) -> ApiError {
    let code = match e {
        RegistryError::Unavailable(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

fn unexpected(outcome: RegistryOutcome) -> RegistryError {
    debug_assert!(false, "unexpected registry outcome {outcome:?}");
    RegistryError::Internal(format!("unexpected registry outcome {outcome:?} (a bug)"))
}

/// One message per incompatibility, naming the version, the field and why.
fn describe(mode: Compatibility, problems: &[(u32, compat::Incompatibility, &'static str)]) -> Vec<String> {
    problems
        .iter()
        .map(|(version, i, direction)| format!("{i} ({direction} version {version}; compatibility {mode})"))
        .collect()
}

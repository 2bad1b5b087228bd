//! Produce (`POST /v1/topics/{topic}/records`, JSON or raw webhook body) and fetch
//! (`GET /v1/topics/{topic}/partitions/{p}/records`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use strata_storage::Header;

use super::{Query, parse_json, parse_partition, query_u64, read_body};
use crate::AppState;
use crate::broker::{Acks, FetchedRecord, ProduceOptions, ProduceRecord, Start};
use crate::error::{ApiError, ErrorCode};
use crate::idempotency::Idempotent;
use crate::producer::ProducerSession;

/// A record in a JSON produce request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonRecord {
    /// Any JSON value, stored as its JSON text.
    #[schema(value_type = Option<Object>)]
    pub key: Option<Box<RawValue>>,
    /// Any JSON value, stored as its JSON text; `null` is a tombstone.
    #[schema(value_type = Option<Object>)]
    pub value: Option<Box<RawValue>>,
    /// Raw key bytes, base64 (instead of `key`).
    pub key_b64: Option<String>,
    /// Raw value bytes, base64 (instead of `value`).
    pub value_b64: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub partition: Option<u32>,
    /// Milliseconds since the epoch; default: the server's clock.
    pub timestamp: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceBody {
    pub records: Vec<JsonRecord>,
    /// `none`, `leader` (default) or `all`.
    pub acks: Option<String>,
    /// Append only if the (explicit) partition's next offset is this; else 412 `offset_mismatch`.
    pub expected_offset: Option<u64>,
    /// An idempotent producer session (`POST /v1/producers`) and this request's sequence number:
    /// a retry with the same sequence gets the first attempt's offsets and appends nothing.
    pub producer: Option<ProducerSession>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RecordOffset {
    pub partition: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ProduceResponse {
    pub offsets: Vec<RecordOffset>,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        essence == "application/json" || essence.ends_with("+json")
    })
}

pub(crate) fn parse_acks(acks: Option<&str>) -> Result<Acks, ApiError> {
    match acks {
        None | Some("leader") | Some("all") | Some("1") | Some("-1") => Ok(Acks::Leader),
        Some("none") | Some("0") => Ok(Acks::None),
        Some(other) => Err(ApiError::invalid(format!("acks must be `none`, `leader` or `all`, got {other:?}"))),
    }
}

fn bytes_field(
    i: usize,
    name: &str,
    json: Option<Box<RawValue>>,
    b64: Option<String>,
) -> Result<Option<Bytes>, ApiError> {
    match (json, b64) {
        (Some(_), Some(_)) => {
            Err(ApiError::new(ErrorCode::InvalidRecord, format!("record {i}: give `{name}` or `{name}_b64`, not both")))
        }
        (Some(raw), None) => Ok(Some(Bytes::copy_from_slice(raw.get().as_bytes()))),
        (None, Some(b)) => B64.decode(b.as_bytes()).map(|v| Some(Bytes::from(v))).map_err(|e| {
            ApiError::new(ErrorCode::InvalidRecord, format!("record {i}: `{name}_b64` is not valid base64: {e}"))
        }),
        (None, None) => Ok(None),
    }
}

fn json_records(body: ProduceBody) -> Result<(Vec<ProduceRecord>, Acks, ProduceOptions), ApiError> {
    let acks = parse_acks(body.acks.as_deref())?;
    let options = ProduceOptions {
        expected_offset: body.expected_offset,
        producer: body.producer.map(ProducerSession::validate).transpose()?,
    };
    let records = body
        .records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(ProduceRecord {
                key: bytes_field(i, "key", r.key, r.key_b64)?,
                value: bytes_field(i, "value", r.value, r.value_b64)?,
                headers: r
                    .headers
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, v)| Header { name, value: Bytes::from(v) })
                    .collect(),
                timestamp: r.timestamp,
                partition: r.partition,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok((records, acks, options))
}

/// The webhook door: the body is one record's value; key, partition and headers come from
/// `?key=`, `?partition=` and `X-Strata-Header-*`.
fn webhook_record(
    headers: &HeaderMap,
    query: &std::collections::HashMap<String, String>,
    body: Bytes,
) -> Result<(Vec<ProduceRecord>, Acks, ProduceOptions), ApiError> {
    let partition = query.get("partition").map(|p| parse_partition(p)).transpose()?;
    let record_headers = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix("x-strata-header-")?;
            Some(Header { name: name.to_string(), value: Bytes::copy_from_slice(value.as_bytes()) })
        })
        .collect();
    let timestamp = query
        .get("timestamp")
        .map(|t| {
            t.parse::<i64>()
                .map_err(|_| ApiError::invalid(format!("query parameter `timestamp` must be an integer, got {t:?}")))
        })
        .transpose()?;
    let record = ProduceRecord {
        key: query.get("key").map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Some(body),
        headers: record_headers,
        timestamp,
        partition,
    };
    let expected_offset = query
        .get("expected_offset")
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::invalid(format!(
                    "query parameter `expected_offset` must be a non-negative integer, got {v:?}"
                ))
            })
        })
        .transpose()?;
    let options = ProduceOptions { expected_offset, producer: None };
    Ok((vec![record], parse_acks(query.get("acks").map(String::as_str))?, options))
}

/// A new idempotent producer session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewProducer {
    pub id: i64,
    pub epoch: i16,
}

/// Starts an idempotent producer session: its requests carry `"producer": {"id", "epoch",
/// "sequence"}` with a sequence that increases per request, and a retried request is stored once.
#[utoipa::path(post, path = "/v1/producers",
    responses((status = 201, body = NewProducer), (status = 503, body = crate::error::Problem)))]
pub async fn new_producer(
    State(state): State<Arc<AppState>>,
) -> Result<(axum::http::StatusCode, Json<NewProducer>), ApiError> {
    let id = crate::producer::allocate(state.broker.metadata()).await?;
    Ok((axum::http::StatusCode::CREATED, Json(NewProducer { id, epoch: 0 })))
}

#[utoipa::path(post, path = "/v1/topics/{topic}/records", params(("topic" = String, Path)), request_body = ProduceBody,
    responses((status = 200, body = ProduceResponse), (status = "4XX", body = crate::error::Problem), (status = 503, body = crate::error::Problem)))]
pub async fn produce(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    query: Query,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ProduceResponse>, ApiError> {
    let body = read_body(body, state.max_request_bytes).await?;
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string).map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII")))
        .transpose()?;
    let json = is_json(&headers);
    let (records, acks, mut options) =
        if json { json_records(parse_json(&body)?)? } else { webhook_record(&headers, &query, body.clone())? };
    let fingerprint = key.as_ref().map(|_| crate::idempotency::fingerprint(&query.0, json, &body));
    if let (Some(key), Some(fingerprint), None) = (&key, fingerprint, options.producer) {
        // The key's own producer session: if a crash lost the key's entry after the records were
        // stored, the retry finds them in the logs instead of appending them again.
        options.producer = Some(ProducerSession::for_idempotency_key(&topic, key, fingerprint));
    }
    // The append runs in its own task: a client that disconnects mid-request must not leave it
    // half done (an idempotent retry relies on the first attempt finishing or failing cleanly).
    let run = {
        let state = Arc::clone(&state);
        let topic = topic.clone();
        move || {
            tokio::spawn(async move {
                state.metrics.records_in(&topic, records.len());
                let offsets = state.broker.produce_with(&topic, records, acks, options).await?.acknowledged().await?;
                Ok::<_, ApiError>(ProduceResponse {
                    offsets: offsets
                        .into_iter()
                        .map(|(partition, offset)| RecordOffset { partition, offset })
                        .collect(),
                })
            })
        }
    };
    let response = match key {
        None => run().await??,
        Some(key) => {
            if key.is_empty() || key.len() > 255 {
                return Err(ApiError::invalid("Idempotency-Key must be 1-255 characters"));
            }
            let fingerprint = fingerprint.unwrap_or_default();
            match state.idempotency.begin(&topic, &key, fingerprint).await? {
                Idempotent::Replay(stored) => stored,
                Idempotent::First(guard) => {
                    let result = run().await?;
                    guard.finish(result.as_ref().ok()).await?;
                    result?
                }
            }
        }
    };
    Ok(Json(response))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JsonFetchedRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    /// Absent when `key_b64` carries the key; `null` for a record without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub key: Option<Option<Box<RawValue>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    /// Absent when `value_b64` carries the value; `null` for a tombstone.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Option<Box<RawValue>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    /// With `?decode=true`: the registry schema id the value was decoded with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_schema_id: Option<u32>,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FetchResponse {
    pub records: Vec<JsonFetchedRecord>,
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

/// Bytes as a JSON value if they are UTF-8 JSON (and `base64` was not asked for), else base64.
fn json_or_b64(bytes: Option<Bytes>, force_b64: bool) -> (Option<Box<RawValue>>, Option<String>) {
    match bytes {
        None => (None, None),
        Some(b) => {
            if !force_b64
                && let Ok(text) = std::str::from_utf8(&b)
                && let Ok(raw) = serde_json::from_str::<Box<RawValue>>(text)
            {
                return (Some(raw), None);
            }
            (None, Some(B64.encode(&b)))
        }
    }
}

pub(crate) fn json_record(r: FetchedRecord, force_b64: bool) -> JsonFetchedRecord {
    let (key, key_b64) = json_or_b64(r.key, force_b64);
    let (value, value_b64) = json_or_b64(r.value, force_b64);
    JsonFetchedRecord {
        partition: r.partition,
        offset: r.offset,
        timestamp: r.timestamp,
        key: if key_b64.is_some() { None } else { Some(key) },
        key_b64,
        value: if value_b64.is_some() { None } else { Some(value) },
        value_b64,
        value_schema_id: None,
        headers: r.headers.into_iter().map(|h| (h.name, String::from_utf8_lossy(&h.value).into_owned())).collect(),
    }
}

/// Where a fetch starts: `?offset=N|earliest|latest` or `?timestamp=MS` (default earliest).
pub(super) fn parse_start(query: &HashMap<String, String>) -> Result<Start, ApiError> {
    Ok(match (query.get("offset").map(String::as_str), query.get("timestamp")) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give `offset` or `timestamp`, not both")),
        (None, Some(ts)) => {
            Start::Timestamp(ts.parse().map_err(|_| {
                ApiError::invalid(format!("query parameter `timestamp` must be an integer, got {ts:?}"))
            })?)
        }
        (None | Some("earliest"), None) => Start::Earliest,
        (Some("latest"), None) => Start::Latest,
        (Some(o), None) => Start::Offset(o.parse().map_err(|_| {
            ApiError::invalid(format!(
                "query parameter `offset` must be a non-negative integer, `earliest` or `latest`, got {o:?}"
            ))
        })?),
    })
}

#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/records",
    params(("topic" = String, Path), ("partition" = u32, Path),
        ("offset" = Option<String>, Query, description = "N, `earliest` or `latest` (default earliest)"),
        ("timestamp" = Option<i64>, Query, description = "first record at or after this time (ms)"),
        ("max_records" = Option<u32>, Query), ("max_bytes" = Option<u32>, Query),
        ("wait_ms" = Option<u32>, Query, description = "long-poll: return as soon as a record arrives"),
        ("encoding" = Option<String>, Query, description = "`base64` forces key_b64/value_b64"),
        ("decode" = Option<bool>, Query, description = "`true`: Avro values framed with a registry schema id come back as JSON")),
    responses((status = 200, body = FetchResponse), (status = 416, body = crate::error::Problem), (status = "4XX", body = crate::error::Problem)))]
pub async fn fetch(
    State(state): State<Arc<AppState>>,
    Path((topic, partition)): Path<(String, String)>,
    query: Query,
) -> Result<Json<FetchResponse>, ApiError> {
    let partition = parse_partition(&partition)?;
    let start = parse_start(&query)?;
    let max_records = query_u64(&query, "max_records")?.unwrap_or(500).clamp(1, 10_000) as usize;
    let max_bytes = query_u64(&query, "max_bytes")?.unwrap_or(1 << 20).clamp(1, 64 << 20) as usize;
    let wait = Duration::from_millis(query_u64(&query, "wait_ms")?.unwrap_or(0).min(state.max_wait_ms));
    let force_b64 = match query.get("encoding").map(String::as_str) {
        None | Some("json") => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::invalid(format!("encoding must be `json` or `base64`, got {other:?}"))),
    };
    let decode = match query.get("decode").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::invalid(format!("decode must be `true` or `false`, got {other:?}"))),
    };
    let result = state.broker.fetch(&topic, partition, start, max_records, max_bytes, wait).await?;
    state.metrics.records_out(&topic, result.records.len());
    let registry = state.broker.registry();
    let record = |r: FetchedRecord| {
        let decoded = if decode { r.value.as_deref().and_then(|v| registry.decode_value(v)) } else { None };
        let mut out = json_record(r, force_b64);
        if let Some((id, value)) = decoded {
            out.value = Some(RawValue::from_string(value.to_string()).ok());
            out.value_b64 = None;
            out.value_schema_id = Some(id);
        }
        out
    };
    Ok(Json(FetchResponse {
        records: result.records.into_iter().map(record).collect(),
        next_offset: result.next_offset,
        high_watermark: result.high_watermark,
        log_start_offset: result.log_start_offset,
    }))
}

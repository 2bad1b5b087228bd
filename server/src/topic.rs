//! Topic names and configuration: parsing (from JSON or gRPC string maps), validation, and the
//! storage config each partition log gets.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_storage::{CleanupPolicy, Durability, LogConfig};

use crate::error::{ApiError, ErrorCode};

pub const MAX_TOPIC_NAME_LEN: usize = 249;
pub const MAX_PARTITIONS: u32 = 10_000;
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Largest batch the server appends (a produce request's records for one partition).
pub const MAX_BATCH_BYTES: u32 = 64 * 1024 * 1024;

/// Checks a topic name: 1–249 of `[A-Za-z0-9._-]`, not `.` or `..` (as Kafka).
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > MAX_TOPIC_NAME_LEN || !ok_chars || name == "." || name == ".." {
        return Err(ApiError::new(
            ErrorCode::InvalidTopic,
            format!(
                "topic name {name:?} must be 1-{MAX_TOPIC_NAME_LEN} characters of [A-Za-z0-9._-], and not \".\" or \"..\""
            ),
        ));
    }
    Ok(())
}

pub fn validate_partitions(partitions: u32) -> Result<(), ApiError> {
    if !(1..=MAX_PARTITIONS).contains(&partitions) {
        return Err(ApiError::new(
            ErrorCode::InvalidTopic,
            format!("partitions must be 1..={MAX_PARTITIONS}, got {partitions}"),
        ));
    }
    Ok(())
}

/// How durable an acknowledged append is (`flush`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flush {
    Always,
    Interval,
    Never,
}

/// A topic's configuration, every key with its effective value (API.md lists the keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopicConfig {
    /// Delete data older than this; `null` keeps it forever.
    pub retention_ms: Option<u64>,
    /// Delete the oldest data while a partition is larger than this; `null` = no limit.
    pub retention_bytes: Option<u64>,
    /// `delete` or `compact`.
    pub cleanup_policy: String,
    pub segment_bytes: u64,
    pub segment_ms: u64,
    /// `always`, `interval` or `never`.
    pub flush: String,
    pub flush_interval_ms: u64,
    pub max_record_bytes: u64,
    /// With `tiering`: segments already in object storage are deleted locally past this age.
    pub local_retention_ms: Option<u64>,
    /// With `tiering`: tiered segments are deleted locally while the local log exceeds this.
    pub local_retention_bytes: Option<u64>,
    pub value_schema_subject: Option<String>,
    /// Sealed segments are copied to object storage as Parquet; reads span both tiers.
    #[serde(default)]
    pub tiering: bool,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            cleanup_policy: "delete".into(),
            segment_bytes: 128 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            flush: "always".into(),
            flush_interval_ms: 1000,
            max_record_bytes: 1024 * 1024,
            local_retention_ms: None,
            local_retention_bytes: None,
            value_schema_subject: None,
            tiering: false,
        }
    }
}

fn bad(key: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::InvalidConfig, format!("config `{key}`: {reason}"))
}

fn parse_u64(key: &str, value: &str) -> Result<u64, ApiError> {
    value.trim().parse::<u64>().map_err(|_| bad(key, format!("{value:?} is not a non-negative integer")))
}

/// `null`, `""` and `-1` mean "no limit" (Kafka uses -1).
fn parse_limit(key: &str, value: &str) -> Result<Option<u64>, ApiError> {
    match value.trim() {
        "" | "null" | "-1" => Ok(None),
        v => parse_u64(key, v).map(Some),
    }
}

impl TopicConfig {
    /// Sets one key from its string form.
    ///
    /// # Errors
    /// `invalid_config` naming the key for unknown keys and bad values.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ApiError> {
        match key {
            "retention_ms" => self.retention_ms = parse_limit(key, value)?,
            "retention_bytes" => self.retention_bytes = parse_limit(key, value)?,
            "cleanup_policy" => match value {
                "delete" | "compact" => self.cleanup_policy = value.into(),
                _ => return Err(bad(key, format!("{value:?} is not `delete` or `compact`"))),
            },
            "segment_bytes" => {
                let v = parse_u64(key, value)?;
                if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&v) {
                    return Err(bad(key, format!("{v} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}")));
                }
                self.segment_bytes = v;
            }
            "segment_ms" => {
                let v = parse_u64(key, value)?;
                if v == 0 {
                    return Err(bad(key, "must be positive"));
                }
                self.segment_ms = v;
            }
            "flush" => match value {
                "always" | "interval" | "never" => self.flush = value.into(),
                _ => return Err(bad(key, format!("{value:?} is not `always`, `interval` or `never`"))),
            },
            "flush_interval_ms" => {
                let v = parse_u64(key, value)?;
                if !(1..=3_600_000).contains(&v) {
                    return Err(bad(key, "must be 1..=3600000"));
                }
                self.flush_interval_ms = v;
            }
            "max_record_bytes" => {
                let v = parse_u64(key, value)?;
                if !(1..=u64::from(MAX_BATCH_BYTES) / 2).contains(&v) {
                    return Err(bad(key, format!("must be 1..={}", MAX_BATCH_BYTES / 2)));
                }
                self.max_record_bytes = v;
            }
            "local_retention_ms" => self.local_retention_ms = parse_limit(key, value)?,
            "local_retention_bytes" => self.local_retention_bytes = parse_limit(key, value)?,
            "tiering" => {
                self.tiering = match value.trim() {
                    "true" => true,
                    "false" => false,
                    v => return Err(bad(key, format!("{v:?} is not `true` or `false`"))),
                }
            }
            "value_schema_subject" => {
                self.value_schema_subject = match value.trim() {
                    "" | "null" => None,
                    v => Some(v.to_string()),
                }
            }
            other => return Err(bad(other, "unknown config key")),
        }
        Ok(())
    }

    /// Applies string settings on top of this config.
    ///
    /// # Errors
    /// The first bad key.
    pub fn with(mut self, settings: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        for (k, v) in settings {
            self.set(k, v)?;
        }
        if self.tiering && self.cleanup_policy == "compact" {
            return Err(bad("tiering", "a compacted topic cannot be tiered (its segments are rewritten)"));
        }
        Ok(self)
    }

    /// Applies JSON settings (numbers, strings or null) on top of this config.
    ///
    /// # Errors
    /// The first bad key.
    pub fn with_json(self, settings: &serde_json::Map<String, serde_json::Value>) -> Result<Self, ApiError> {
        let mut strings = BTreeMap::new();
        for (k, v) in settings {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Null => "null".to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => return Err(bad(k, format!("{other} is not a string or a number"))),
            };
            strings.insert(k.clone(), s);
        }
        self.with(&strings)
    }

    /// Every key as a string (the gRPC form).
    pub fn to_strings(&self) -> BTreeMap<String, String> {
        let limit = |v: Option<u64>| v.map_or_else(|| "-1".to_string(), |v| v.to_string());
        BTreeMap::from([
            ("retention_ms".into(), limit(self.retention_ms)),
            ("retention_bytes".into(), limit(self.retention_bytes)),
            ("cleanup_policy".into(), self.cleanup_policy.clone()),
            ("segment_bytes".into(), self.segment_bytes.to_string()),
            ("segment_ms".into(), self.segment_ms.to_string()),
            ("flush".into(), self.flush.clone()),
            ("flush_interval_ms".into(), self.flush_interval_ms.to_string()),
            ("max_record_bytes".into(), self.max_record_bytes.to_string()),
            ("local_retention_ms".into(), limit(self.local_retention_ms)),
            ("local_retention_bytes".into(), limit(self.local_retention_bytes)),
            ("value_schema_subject".into(), self.value_schema_subject.clone().unwrap_or_default()),
            ("tiering".into(), self.tiering.to_string()),
        ])
    }

    /// The storage config of each partition log of the topic.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: Some(self.segment_ms),
            durability: match self.flush.as_str() {
                "never" => Durability::Never,
                "interval" => Durability::Interval(Duration::from_millis(self.flush_interval_ms)),
                _ => Durability::Always,
            },
            index_interval_bytes: 4096,
            max_batch_bytes: MAX_BATCH_BYTES,
            // A tiered topic's local segments are deleted by the tiering loop, and only once they
            // are in object storage.
            retention_ms: if self.tiering { None } else { self.retention_ms },
            retention_bytes: if self.tiering { None } else { self.retention_bytes },
            cleanup_policy: if self.cleanup_policy == "compact" {
                CleanupPolicy::Compact
            } else {
                CleanupPolicy::Delete
            },
            tombstone_retention_ms: 24 * 3600 * 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        for ok in ["orders", "a", "A.b_c-9", &"x".repeat(249)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(250)] {
            assert!(matches!(validate_name(bad), Err(ApiError { code: ErrorCode::InvalidTopic, .. })), "{bad:?}");
        }
    }

    #[test]
    fn config_values_are_validated_and_name_the_key() {
        let c = TopicConfig::default();
        let e = c.clone().with(&BTreeMap::from([("segment_bytes".to_string(), "100".to_string())])).unwrap_err();
        assert!(e.detail.contains("segment_bytes"), "{e}");
        let e = c.clone().with(&BTreeMap::from([("nope".to_string(), "1".to_string())])).unwrap_err();
        assert!(e.detail.contains("nope"));
        let ok = c.with(&BTreeMap::from([
            ("flush".to_string(), "never".to_string()),
            ("retention_ms".to_string(), "-1".to_string()),
            ("cleanup_policy".to_string(), "compact".to_string()),
        ]));
        let ok = ok.unwrap();
        assert_eq!(ok.retention_ms, None);
        assert_eq!(ok.log_config().durability, Durability::Never);
        assert_eq!(ok.log_config().cleanup_policy, CleanupPolicy::Compact);
    }
}

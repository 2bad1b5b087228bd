//! The object store behind the cold tier: the local filesystem by default, S3 (or any
//! S3-compatible endpoint) by config. Keys: `<prefix>/topics/<topic>/<partition>/<base>-<end>.parquet`
//! with offsets zero-padded to 20 digits, so a listing is in offset order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::config::ServerConfig;

/// Why an object-store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} does not exist")]
    NotFound { key: String },
    #[error("object store: {0}")]
    Other(String),
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => StoreError::NotFound { key: path },
            other => StoreError::Other(error_chain(&other)),
        }
    }
}

/// The error with its sources, so "connection refused" or "403 Forbidden" is not hidden.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The tier's object store with its key layout.
#[derive(Debug, Clone)]
pub struct TierStore {
    store: Arc<dyn ObjectStore>,
    /// Where objects go, for messages: `file:///...` or `s3://bucket/prefix`.
    pub describe: String,
    prefix: String,
}

impl TierStore {
    /// Opens the configured store and checks it answers: a probe object is written and deleted,
    /// so wrong credentials or an unreachable endpoint stop start-up with the reason.
    ///
    /// # Errors
    /// A message naming the store and what failed.
    pub async fn open(config: &ServerConfig) -> Result<Self, String> {
        let timeout = Duration::from_millis(config.object_store_timeout_ms);
        let (store, describe, prefix): (Arc<dyn ObjectStore>, String, String) = match config.object_store.as_str() {
            "s3" => {
                let bucket = config.s3_bucket.clone().unwrap_or_default();
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&bucket)
                    .with_region(&config.s3_region)
                    .with_virtual_hosted_style_request(!config.s3_path_style)
                    .with_client_options(ClientOptions::new().with_timeout(timeout).with_connect_timeout(timeout))
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig::default(),
                        max_retries: 2,
                        retry_timeout: timeout,
                    });
                if let Some(endpoint) = &config.s3_endpoint {
                    builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(key) = &config.s3_access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &config.s3_secret_access_key {
                    builder = builder.with_secret_access_key(&secret.0);
                }
                let store = builder.build().map_err(|e| format!("object store s3://{bucket}: {}", error_chain(&e)))?;
                let at = config.s3_endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default();
                let prefix = config.s3_prefix.trim_matches('/').to_string();
                (Arc::new(store), format!("s3://{bucket}/{prefix}{at}"), prefix)
            }
            _ => {
                let dir = config.object_store_path.clone().unwrap_or_else(|| config.data_dir.join("objects"));
                std::fs::create_dir_all(&dir).map_err(|e| format!("object store directory {}: {e}", dir.display()))?;
                let store = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| format!("object store directory {}: {}", dir.display(), error_chain(&e)))?;
                (Arc::new(store), format!("file://{}", dir.display()), String::new())
            }
        };
        let tier = TierStore { store, describe, prefix };
        let probe = tier.path(".strata-probe");
        tier.store
            .put(&probe, PutPayload::from_static(b"strata"))
            .await
            .map_err(|e| format!("object store {}: cannot write a probe object: {}", tier.describe, error_chain(&e)))?;
        tier.store.delete(&probe).await.map_err(|e| {
            format!("object store {}: cannot delete the probe object: {}", tier.describe, error_chain(&e))
        })?;
        Ok(tier)
    }

    /// The underlying store (SQL reads the objects through it).
    pub fn inner(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// A key's full path in [`TierStore::inner`] (with the configured prefix).
    pub fn full_path(&self, key: &str) -> String {
        self.path(key).to_string()
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() { ObjectPath::from(key) } else { ObjectPath::from(format!("{}/{key}", self.prefix)) }
    }

    /// The key of a partition's object covering `[base, end)`.
    pub fn object_key(topic: &str, partition: u32, base: u64, end: u64) -> String {
        format!("{}{base:020}-{end:020}.parquet", Self::partition_dir(topic, partition))
    }

    /// The key prefix of a partition's objects (ends with `/`).
    pub fn partition_dir(topic: &str, partition: u32) -> String {
        format!("topics/{topic}/{partition}/")
    }

    /// # Errors
    /// [`StoreError`].
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.store.put(&self.path(key), PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// # Errors
    /// [`StoreError::NotFound`] or another [`StoreError`].
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        Ok(self.store.get(&self.path(key)).await?.bytes().await?)
    }

    /// Deletes an object (a missing one is not an error).
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Keys (relative to the prefix) under `dir`, in key order.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let base = self.path(dir.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut keys: Vec<String> = self
            .store
            .list(Some(&base))
            .map_ok(|meta| meta.location.as_ref().strip_prefix(&strip).unwrap_or(meta.location.as_ref()).to_string())
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }
}

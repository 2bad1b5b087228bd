//! The server's configuration: one typed tree with defaults in code, layered
//! defaults → TOML file (`--config`) → `STRATA_*` environment → command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `strata serve` can be told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// One port for HTTP/1.1 (JSON) and gRPC (HTTP/2).
    pub listen: SocketAddr,
    /// Also serve HTTP and gRPC on this Unix socket, for clients on this host (unset: no socket).
    /// Its clients' batch streams may take the segment files' descriptors and read them
    /// directly (see the raw batch door).
    pub unix_socket: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub node_id: u64,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window_ms: u64,
    /// Most segment files held open at once.
    pub max_open_files: usize,
    /// How often retention and compaction run.
    pub cleanup_interval_ms: u64,
    /// Most a fetch may wait for records (`wait_ms` is capped to this).
    pub max_wait_ms: u64,
    /// A consumer group's committed offsets are deleted this long after it last had members.
    pub group_offsets_retention_ms: u64,
    /// Log filter (`tracing` env-filter syntax), e.g. `info` or `strata_server=debug`.
    pub log: String,
    /// Where tiered segments go: `file` (a directory, `object_store_path`) or `s3`.
    pub object_store: String,
    /// The `file` store's directory (default: `objects` under the data directory).
    pub object_store_path: Option<PathBuf>,
    /// Each object-store request gives up after this long (then tiering retries with backoff).
    pub object_store_timeout_ms: u64,
    pub s3_bucket: Option<String>,
    /// Key prefix inside the bucket.
    pub s3_prefix: String,
    pub s3_region: String,
    /// An S3-compatible endpoint URL (MinIO, moto, R2, ...); unset = AWS.
    pub s3_endpoint: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible servers want.
    pub s3_path_style: bool,
    /// Credentials; unset = the standard AWS environment variables (`AWS_ACCESS_KEY_ID`, ...).
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<Secret>,
    /// How often the tiering loop looks for sealed segments to upload.
    pub tier_interval_ms: u64,
    /// Bytes of Parquet objects kept in memory for cold reads.
    pub tier_cache_bytes: u64,
    /// Produce to a tiered partition gets 503 once this many local bytes wait for tiering
    /// (the object store is unreachable).
    pub tier_max_untiered_bytes: u64,
    /// Memory one SQL query's operators may hold.
    pub sql_memory_bytes: u64,
    /// A SQL query still running after this long is cancelled.
    pub sql_timeout_ms: u64,
    /// How the raw batch door's upgraded stream (for clients that ask for it) sends batches:
    /// `remote` (`sendfile` to peers on other hosts, copied through one buffer to this host's),
    /// `always` (`sendfile` to all) or `never` (no upgraded stream; every client gets the `200`).
    pub zero_copy: ZeroCopy,
    /// Small appends to `flush = always` topics are made durable through one shared
    /// write-ahead journal (one write and one `fdatasync` per group of requests, whatever the
    /// partitions) rather than a sync of every partition's segment.
    pub journal: bool,
    /// Size of each journal file. A file is checkpointed when full (its logs' segments written
    /// and synced; earlier when few partitions write into it, see `storage/src/journal.rs`), so
    /// larger files mean rarer, larger checkpoints for wide topics and a longer replay after a
    /// crash; at most four exist, zero-filled when created.
    pub journal_file_bytes: u64,
    /// `flush = always` batches too large for the journal are written by their flush, past the
    /// page cache (`O_DIRECT`), rather than by their append into it: appends under load cost
    /// less, while readers find in memory only the newest `batch_cache_bytes` and read the rest
    /// from the disk.
    pub direct_writes: bool,
    /// With `direct_writes`, memory for the newest bytes of `flush = always` partitions, from
    /// which their readers are served (0: none).
    pub batch_cache_bytes: u64,
    /// The journal's entries (and `direct_writes`' segment writes) go past the page cache with
    /// `O_DIRECT` where the filesystem takes it; `false` keeps them in the page cache (for a
    /// filesystem whose `O_DIRECT` is slow or emulated).
    pub direct_io: bool,
}

/// When the raw batch door sends batches without copying them ([`ServerConfig::zero_copy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopy {
    /// `sendfile` to peers that are not on this host. A peer on this host that asks for the
    /// upgraded stream gets it copied through one buffer instead, which measured faster over
    /// loopback here (3.4 against 2.9 GB/s for the same catch-up): the receiving side then copies
    /// from buffers the sender just wrote (cache-hot) instead of from page-cache pages.
    Remote,
    /// `sendfile` to every peer that asks.
    Always,
    /// No upgraded stream: every client gets the ordinary `200`.
    Never,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            unix_socket: None,
            data_dir: PathBuf::from("./strata-data"),
            node_id: 1,
            max_request_bytes: 32 * 1024 * 1024,
            idempotency_window_ms: 24 * 3600 * 1000,
            max_open_files: 1024,
            cleanup_interval_ms: 60_000,
            max_wait_ms: 30_000,
            group_offsets_retention_ms: 7 * 24 * 3600 * 1000,
            log: "info".into(),
            object_store: "file".into(),
            object_store_path: None,
            object_store_timeout_ms: 30_000,
            s3_bucket: None,
            s3_prefix: String::new(),
            s3_region: "us-east-1".into(),
            s3_endpoint: None,
            s3_path_style: false,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            tier_interval_ms: 5_000,
            tier_cache_bytes: 256 * 1024 * 1024,
            tier_max_untiered_bytes: 4 * 1024 * 1024 * 1024,
            sql_memory_bytes: 512 * 1024 * 1024,
            sql_timeout_ms: 60_000,
            zero_copy: ZeroCopy::Remote,
            journal: true,
            journal_file_bytes: strata_storage::DEFAULT_JOURNAL_FILE_BYTES,
            direct_writes: false,
            batch_cache_bytes: strata_storage::DEFAULT_RECENT_BYTES as u64,
            direct_io: true,
        }
    }
}

/// A value that is never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Keys the environment may set (`STRATA_<KEY>`); other `STRATA_*` variables belong to the
/// client commands (e.g. `STRATA_SERVER`).
const ENV_KEYS: [&str; 32] = [
    "listen",
    "unix_socket",
    "data_dir",
    "node_id",
    "max_request_bytes",
    "idempotency_window_ms",
    "max_open_files",
    "cleanup_interval_ms",
    "max_wait_ms",
    "group_offsets_retention_ms",
    "log",
    "object_store",
    "object_store_path",
    "object_store_timeout_ms",
    "s3_bucket",
    "s3_prefix",
    "s3_region",
    "s3_endpoint",
    "s3_path_style",
    "s3_access_key_id",
    "s3_secret_access_key",
    "tier_interval_ms",
    "tier_cache_bytes",
    "tier_max_untiered_bytes",
    "sql_memory_bytes",
    "sql_timeout_ms",
    "zero_copy",
    "journal",
    "journal_file_bytes",
    "direct_writes",
    "batch_cache_bytes",
    "direct_io",
];

/// Values given as command-line flags (they win over everything else).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
}

impl ServerConfig {
    /// Builds the config from its layers.
    ///
    /// # Errors
    /// A message naming the file or key that is wrong (unknown key, bad value, missing file).
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Self, String> {
        let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(format!("config file {} does not exist", file.display()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("STRATA_").only(&ENV_KEYS)).merge(Serialized::globals(flags));
        let config: ServerConfig = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            let source = e.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_else(|| "config".into());
            if key.is_empty() {
                format!("invalid config ({source}): {e}")
            } else {
                format!("invalid config key `{key}` ({source}): {e}")
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.max_request_bytes < 1024 {
            return Err("invalid config key `max_request_bytes`: must be at least 1024".into());
        }
        if let Some(path) = &self.unix_socket {
            // sockaddr_un holds 108 bytes with the terminating NUL.
            if path.as_os_str().is_empty() || path.as_os_str().len() > 107 {
                return Err("invalid config key `unix_socket`: must be a path of 1 to 107 bytes".into());
            }
        }
        if self.node_id == 0 {
            return Err("invalid config key `node_id`: must be positive".into());
        }
        if self.idempotency_window_ms == 0 {
            return Err("invalid config key `idempotency_window_ms`: must be positive".into());
        }
        if self.cleanup_interval_ms == 0 {
            return Err("invalid config key `cleanup_interval_ms`: must be positive".into());
        }
        match self.object_store.as_str() {
            "file" => {}
            "s3" if self.s3_bucket.is_none() => {
                return Err("invalid config key `s3_bucket`: required with object_store = \"s3\"".into());
            }
            "s3" => {}
            other => return Err(format!("invalid config key `object_store`: {other:?} is not `file` or `s3`")),
        }
        if !(1 << 20..=4 << 30).contains(&self.journal_file_bytes) {
            return Err("invalid config key `journal_file_bytes`: must be from 1 MiB to 4 GiB".into());
        }
        if usize::try_from(self.batch_cache_bytes).is_err() {
            return Err("invalid config key `batch_cache_bytes`: larger than this machine can address".into());
        }
        for (key, value) in
            [("tier_interval_ms", self.tier_interval_ms), ("object_store_timeout_ms", self.object_store_timeout_ms)]
        {
            if value == 0 {
                return Err(format!("invalid config key `{key}`: must be positive"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strata.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nnode_id = 3\n").unwrap();
        let flags = FlagOverrides { node_id: Some(4), ..Default::default() };
        let c = ServerConfig::load(Some(&file), &flags).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.node_id, 4, "flags win over the file");

        std::fs::write(&file, "lissten = \"x\"\n").unwrap();
        let e = ServerConfig::load(Some(&file), &FlagOverrides::default()).unwrap_err();
        assert!(e.contains("lissten"), "{e}");
        std::fs::write(&file, "max_request_bytes = \"lots\"\n").unwrap();
        let e = ServerConfig::load(Some(&file), &FlagOverrides::default()).unwrap_err();
        assert!(e.contains("max_request_bytes"), "{e}");
        std::fs::write(&file, "zero_copy = \"always\"\n").unwrap();
        assert_eq!(ServerConfig::load(Some(&file), &FlagOverrides::default()).unwrap().zero_copy, ZeroCopy::Always);
        std::fs::write(&file, "zero_copy = \"sometimes\"\n").unwrap();
        let e = ServerConfig::load(Some(&file), &FlagOverrides::default()).unwrap_err();
        assert!(e.contains("zero_copy"), "{e}");
        std::fs::write(&file, "direct_writes = true\nbatch_cache_bytes = 1048576\n").unwrap();
        let config = ServerConfig::load(Some(&file), &FlagOverrides::default()).unwrap();
        assert_eq!((config.direct_writes, config.batch_cache_bytes), (true, 1 << 20));
        assert!(!ServerConfig::default().direct_writes, "the page cache by default");
        std::fs::write(&file, "direct_io = false\n").unwrap();
        assert!(!ServerConfig::load(Some(&file), &FlagOverrides::default()).unwrap().direct_io);
        assert!(ServerConfig::default().direct_io, "past the page cache where it can by default");
        std::fs::write(&file, "direct_writes = \"yes\"\n").unwrap();
        let e = ServerConfig::load(Some(&file), &FlagOverrides::default()).unwrap_err();
        assert!(e.contains("direct_writes"), "{e}");
        std::fs::write(&file, "journal_file_bytes = 8388608\n").unwrap();
        assert_eq!(ServerConfig::load(Some(&file), &FlagOverrides::default()).unwrap().journal_file_bytes, 8 << 20);
        std::fs::write(&file, "journal_file_bytes = 4096\n").unwrap();
        let e = ServerConfig::load(Some(&file), &FlagOverrides::default()).unwrap_err();
        assert!(e.contains("journal_file_bytes"), "{e}");
        let e = ServerConfig::load(Some(&dir.path().join("missing.toml")), &FlagOverrides::default()).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}

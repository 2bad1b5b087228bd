//! `strata-sql`: SQL over topics with DataFusion. Every topic is a table spanning both tiers —
//! the cold tier's Parquet objects, read by DataFusion's own Parquet scan (statistics and page
//! index pruning), and the hot tail on local disk, decoded straight into Arrow — as one relation:
//!
//! ```text
//!  SELECT ... FROM orders ──► UnionExec ─┬─ DataSourceExec (ParquetSource over the tier manifest's objects)
//!                                        └─ StreamingTableExec (one stream per partition: Log::read → Arrow)
//! ```
//!
//! Filters on `partition`, `offset` and `timestamp` prune partitions, cold objects (by their
//! manifest ranges) and the hot scan's offset range; DataFusion applies every filter again on top
//! (pushdown is `Inexact`), so pruning never changes a result. Queries are read-only.
//!
//! A topic bound to an Avro subject also has typed columns, one per field of the subject's latest
//! schema: `avro.rs` decodes them from `value` above the scan (`AvroDecodeExec`), each record with
//! the writer schema its framing names, resolved to the latest.
//!
//! The crate knows nothing of HTTP: the server implements [`TopicSource`] and turns results into
//! JSON, CSV or Arrow IPC.

mod avro;
mod hot;
mod table;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use object_store::ObjectStore;
use strata_storage::Log;

pub use avro::ValueSchema;
pub use datafusion::arrow;
/// The error a running query's batch stream yields (see [`DataFusionError::find_root`]).
pub use datafusion::error::DataFusionError;
pub use table::TopicTable;

/// One Parquet object of a partition's cold tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdFile {
    /// The object's path in the store [`TopicSource::object_store`] returns.
    pub path: String,
    pub size: u64,
    pub base_offset: u64,
    /// Exclusive.
    pub end_offset: u64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
    /// CRC32C of the whole object, as the manifest records it: an object is read whole and
    /// checked against it once per engine before any query scans it.
    pub crc32c: u32,
}

/// What the SQL engine reads: the topics, their local logs and their cold objects.
pub trait TopicSource: std::fmt::Debug + Send + Sync + 'static {
    /// Every topic with its partition count (internal `__` topics excluded by the caller).
    fn topics(&self) -> Vec<(String, u32)>;
    /// A partition's local log, if open on this node.
    fn log(&self, topic: &str, partition: u32) -> Option<Log>;
    /// A partition's cold objects in offset order.
    fn cold_files(&self, topic: &str, partition: u32) -> Vec<ColdFile>;
    /// The store holding the cold objects.
    fn object_store(&self) -> Arc<dyn ObjectStore>;
    /// The Avro schemas of a topic whose values are bound to a registry subject (its reader
    /// schema is the subject's latest version now): the table gets typed columns. `None` (the
    /// default) for a topic with no subject, which has only the stored columns.
    fn value_schema(&self, _topic: &str) -> Option<Arc<dyn ValueSchema>> {
        None
    }
}

/// Limits on one query.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    /// Memory the query's operators may hold (sorts and joins spill or fail beyond it).
    pub memory_bytes: usize,
}

/// Why a query failed: the caller's SQL, or the engine; `damaged` when a tiered object it had to
/// read does not match its manifest entry (stored data is damaged, not the query).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    pub message: String,
    pub damaged: bool,
}

impl SqlError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), damaged: false }
    }
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        let damaged = table::is_damage(&e);
        SqlError { message: e.to_string(), damaged }
    }
}

/// The URL the cold objects' store is registered under in each query's runtime.
pub(crate) const STORE_URL: &str = "strata://tier/";

/// Runs read-only SQL over the topics of a [`TopicSource`].
#[derive(Debug, Clone)]
pub struct SqlEngine {
    source: Arc<dyn TopicSource>,
    limits: SqlLimits,
    verified: Arc<table::VerifiedObjects>,
}

impl SqlEngine {
    pub fn new(source: Arc<dyn TopicSource>, limits: SqlLimits) -> Self {
        Self { source, limits, verified: Arc::default() }
    }

    /// A session with every topic registered as a table (names as they are: quote the ones
    /// that are not identifiers), `information_schema` on, the JSON functions of
    /// `datafusion-functions-json` (`json_get_str`, `json_get_int`, `->>`, ...), and this
    /// engine's memory limit.
    ///
    /// # Errors
    /// [`SqlError`] when the runtime cannot be built (a bug).
    pub fn session(&self) -> Result<SessionContext, SqlError> {
        let config = SessionConfig::new().with_information_schema(true);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(self.limits.memory_bytes)))
            .build_arc()?;
        let mut ctx = SessionContext::new_with_config_rt(config, runtime);
        // json_get_str(value_str, 'user', 'id'), json_get_int, ..., and the `->` / `->>` operators.
        datafusion_functions_json::register_all(&mut ctx)?;
        let url = url::Url::parse(STORE_URL).map_err(|e| SqlError::new(e.to_string()))?;
        ctx.register_object_store(&url, self.source.object_store());
        for (name, partitions) in self.source.topics() {
            let table = TopicTable::new(Arc::clone(&self.source), name.clone(), partitions, Arc::clone(&self.verified));
            ctx.register_table(TableReference::bare(name), Arc::new(table))?;
        }
        Ok(ctx)
    }

    /// Plans `sql` and starts it: the result's schema and its batches as a stream (a large
    /// result never has to be held at once).
    ///
    /// # Errors
    /// [`SqlError`] with DataFusion's message: syntax, unknown table or column, type errors, and
    /// any statement that would change data or the catalog (queries are read-only).
    pub async fn query(&self, sql: &str) -> Result<(SchemaRef, SendableRecordBatchStream), SqlError> {
        let ctx = self.session()?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let df = ctx.sql_with_options(sql, options).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let stream = df.execute_stream().await?;
        Ok((schema, stream))
    }
}

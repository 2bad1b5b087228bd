//! SQL over topics (`POST /v1/sql`, gRPC `Sql.Query`, `strata sql`): the broker as a
//! `strata_sql::TopicSource`, one query path with the time and memory limits ([`Sql::start`]),
//! and results as JSON, CSV or an Arrow IPC stream, streamed batch by batch.
//!
//! Queries run on a runtime of their own whose threads have a lower scheduling priority (nice
//! [`SQL_NICE`]): a full scan may use every idle core, but produce and fetch, on the server's
//! main runtime and the storage threads, get the CPU first when both want it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use strata_sql::arrow::array::{Array, RecordBatch};
use strata_sql::arrow::datatypes::SchemaRef;
use strata_sql::arrow::ipc::writer::StreamWriter;
use strata_sql::{ColdFile, DataFusionError, SqlEngine, SqlLimits, TopicSource};
use strata_storage::Log;

use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};

/// The broker's topics, logs and tier manifests, as the SQL engine reads them.
#[derive(Debug)]
pub struct BrokerTopics {
    broker: Arc<Broker>,
}

impl TopicSource for BrokerTopics {
    fn topics(&self) -> Vec<(String, u32)> {
        self.broker
            .metadata()
            .topics()
            .into_values()
            .filter(|t| !t.name.starts_with("__"))
            .map(|t| (t.name, t.partitions))
            .collect()
    }

    fn log(&self, topic: &str, partition: u32) -> Option<Log> {
        self.broker.log(topic, partition)
    }

    fn cold_files(&self, topic: &str, partition: u32) -> Vec<ColdFile> {
        let store = &self.broker.cold().store;
        self.broker
            .metadata()
            .tier_objects(topic, partition)
            .into_iter()
            .map(|o| ColdFile {
                path: store.full_path(&o.key),
                size: o.meta.size_bytes,
                base_offset: o.meta.base_offset,
                end_offset: o.meta.end_offset,
                min_timestamp: o.meta.min_timestamp,
                max_timestamp: o.meta.max_timestamp,
                crc32c: o.meta.crc32c,
            })
            .collect()
    }

    fn object_store(&self) -> Arc<dyn object_store::ObjectStore> {
        self.broker.cold().store.inner()
    }

    fn value_schema(&self, topic: &str) -> Option<Arc<dyn strata_sql::ValueSchema>> {
        let subject = self.broker.metadata().topic(topic)?.config.value_schema_subject?;
        let registry = self.broker.registry();
        let latest = registry.version(&subject, crate::registry::VersionRef::Latest, false).ok()?;
        let reader = registry.schema_by_id(latest.id).ok()?;
        Some(Arc::new(SubjectValues { registry: registry.clone(), reader }))
    }
}

/// A topic's subject as SQL reads it: its latest version is the reader schema, and each value's
/// writer schema is whatever its framed id names in the registry.
#[derive(Debug)]
struct SubjectValues {
    registry: crate::registry::Registry,
    reader: Arc<crate::registry::AvroSchema>,
}

impl strata_sql::ValueSchema for SubjectValues {
    fn reader(&self) -> &apache_avro::Schema {
        self.reader.schema()
    }

    fn writer(&self, id: u32) -> Option<apache_avro::Schema> {
        self.registry.schema_by_id(id).ok().map(|s| s.schema().clone())
    }
}

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"columns":[{"name","type"}],"rows":[[...]]}`
    Json,
    Csv,
    /// An Arrow IPC stream.
    Arrow,
}

impl Format {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "arrow" => Some(Format::Arrow),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// Nice value of the SQL runtime's threads (0 is normal; 19 the lowest priority). At 10 a
/// thread gets about a tenth of the CPU time of a normal one competing for the same core.
pub const SQL_NICE: i32 = 10;

/// Runs queries with a time limit, on the SQL runtime.
#[derive(Debug, Clone)]
pub struct Sql {
    engine: SqlEngine,
    timeout: Duration,
    memory_bytes: u64,
    runtime: Arc<SqlRuntime>,
}

/// The runtime queries execute on (DataFusion's tasks, the hot scan's readers, Parquet reads).
#[derive(Debug)]
struct SqlRuntime(Option<tokio::runtime::Runtime>);

impl SqlRuntime {
    fn start() -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("strata-sql")
            .on_thread_start(|| {
                // Linux keeps the nice value per thread: this lowers only the runtime's own
                // threads. Failing leaves them at normal priority, which is still correct.
                if let Err(e) = rustix::process::setpriority_process(None, SQL_NICE) {
                    tracing::debug!(error = %e, "cannot lower the SQL threads' priority");
                }
            })
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for SqlRuntime {
    fn drop(&mut self) {
        // Dropped from async code at shutdown: do not block on running queries.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A started query: its schema, then its record batches as they are computed.
///
/// # Cancel safety
/// Dropping `batches` (a client that goes away drops it with its response body or gRPC stream)
/// drops DataFusion's stream, which cancels the query and frees its memory.
pub struct Rows {
    pub schema: SchemaRef,
    /// Ends after the last batch, or with one error (`sql_error`, `sql_resources_exhausted`,
    /// `sql_timeout`) when the query fails part way.
    pub batches: BoxStream<'static, Result<RecordBatch, ApiError>>,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows").field("schema", &self.schema).finish_non_exhaustive()
    }
}

/// Largest record batch sent as one gRPC message (by its Arrow buffers); larger batches are
/// sliced, so messages stay well under the 4 MiB most gRPC clients accept by default.
const MESSAGE_BYTES: usize = 2 << 20;

type DfResult = Result<RecordBatch, DataFusionError>;

fn sql_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::SqlError, e.to_string())
}

impl Sql {
    /// # Errors
    /// When the SQL runtime's threads cannot be started.
    pub fn new(broker: Arc<Broker>, memory_bytes: u64, timeout: Duration) -> std::io::Result<Self> {
        let limits = SqlLimits { memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX) };
        Ok(Self {
            engine: SqlEngine::new(Arc::new(BrokerTopics { broker }), limits),
            timeout,
            memory_bytes,
            runtime: Arc::new(SqlRuntime::start()?),
        })
    }

    /// Plans and runs `sql` on the SQL runtime: its schema, then its batches through a small
    /// channel. Dropping the receiving side ends the task there, which drops DataFusion's stream
    /// and so cancels the query.
    async fn spawn(&self, sql: &str) -> Result<(SchemaRef, BoxStream<'static, DfResult>), ApiError> {
        let handle = self.runtime.handle().ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "shutting down"))?;
        let (engine, sql) = (self.engine.clone(), sql.to_string());
        let (schema_tx, schema_rx) = tokio::sync::oneshot::channel();
        let (tx, rx) = tokio::sync::mpsc::channel::<DfResult>(2);
        handle.spawn(async move {
            let mut stream = match engine.query(&sql).await {
                Ok((schema, stream)) => {
                    if schema_tx.send(Ok(schema)).is_err() {
                        return;
                    }
                    stream
                }
                Err(e) => {
                    let _ = schema_tx.send(Err(e));
                    return;
                }
            };
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = stream.next() => next,
                };
                match next {
                    Some(batch) => {
                        if tx.send(batch).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                }
            }
        });
        let schema = schema_rx
            .await
            .map_err(|_| ApiError::new(ErrorCode::Internal, "the query's task ended before planning it"))?
            .map_err(|e| match e.damaged {
                // The stored data, not the query: as a fetch of the object would say.
                true => ApiError::new(ErrorCode::DataCorrupt, e.message),
                false => sql_error(e),
            })?;
        let batches = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Ok((schema, batches.boxed()))
    }

    /// Plans and starts `sql` under this server's limits: the one query path behind
    /// `POST /v1/sql` and gRPC `Sql.Query`. The first batch is awaited here, so most failures
    /// (all planning errors, and a query that fails before producing anything, such as a join
    /// over the memory limit) are returned before any result is sent.
    ///
    /// # Errors
    /// `sql_error` with DataFusion's message (syntax, unknown table or column, types, a
    /// statement that would change data or settings); `sql_resources_exhausted` beyond
    /// `sql_memory_bytes`; `sql_timeout` beyond `sql_timeout_ms`.
    pub async fn start(&self, sql: &str) -> Result<Rows, ApiError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (timeout, memory_bytes) = (self.timeout, self.memory_bytes);
        let (schema, mut stream) =
            tokio::time::timeout_at(deadline, self.spawn(sql)).await.map_err(|_| timed_out(timeout))??;
        let first = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| timed_out(timeout))?
            .transpose()
            .map_err(|e| failed(&e, memory_bytes))?;
        let Some(first) = first else {
            return Ok(Rows { schema, batches: futures::stream::empty().boxed() });
        };
        let rest = futures::stream::unfold(Some(stream), move |stream| async move {
            let mut stream = stream?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(batch))) => Some((Ok(batch), Some(stream))),
                Ok(None) => None,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "query failed while streaming its result");
                    Some((Err(failed(&e, memory_bytes)), None))
                }
                Err(_) => {
                    tracing::warn!(timeout_ms = timeout.as_millis(), "query cancelled at its time limit");
                    Some((Err(timed_out(timeout)), None))
                }
            }
        });
        Ok(Rows { schema, batches: futures::stream::iter([Ok(first)]).chain(rest).boxed() })
    }

    /// Runs `sql` and streams its result in `format` (for `POST /v1/sql`): a body of chunks,
    /// one or more per record batch. Errors before the first batch are returned; an error or
    /// the time limit later on ends the body early (and is logged).
    ///
    /// # Errors
    /// As [`Sql::start`].
    pub async fn run(
        &self,
        sql: &str,
        format: Format,
    ) -> Result<impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, ApiError> {
        let Rows { schema, batches } = self.start(sql).await?;
        let writer = Writer::new(format, &schema);
        Ok(futures::stream::unfold(Some((writer, batches)), |state| async move {
            let (mut writer, mut batches) = state?;
            match batches.next().await {
                Some(Ok(batch)) => {
                    let chunk = writer.batch(&batch);
                    let next = chunk.is_ok().then_some((writer, batches));
                    Some((chunk, next))
                }
                Some(Err(e)) => Some((Err(std::io::Error::other(e.to_string())), None)),
                None => Some((writer.finish(), None)),
            }
        }))
    }

    /// Runs `sql` and streams its result as the pieces of an Arrow IPC stream (for gRPC
    /// `Sql.Query`): the schema message, one piece per record batch (a batch over
    /// `MESSAGE_BYTES` is sliced into several), then the end-of-stream marker. The pieces
    /// concatenated are one valid IPC stream.
    ///
    /// # Errors
    /// As [`Sql::start`]; the stream ends with the error of a query failing part way.
    pub async fn arrow_ipc(
        &self,
        sql: &str,
    ) -> Result<impl futures::Stream<Item = Result<Bytes, ApiError>> + Send + 'static, ApiError> {
        let Rows { schema, batches } = self.start(sql).await?;
        let internal = |e: strata_sql::arrow::error::ArrowError| {
            ApiError::new(ErrorCode::Internal, format!("cannot encode the result as Arrow IPC: {e}"))
        };
        let mut writer = StreamWriter::try_new(Vec::new(), &schema).map_err(internal)?;
        let head = Bytes::from(std::mem::take(writer.get_mut()));
        let batches = batches.flat_map(|batch| {
            let pieces = match batch {
                Ok(batch) => slices(&batch, MESSAGE_BYTES).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(pieces)
        });
        let pieces = futures::stream::unfold(Some((writer, batches)), move |state| async move {
            let (mut writer, mut batches) = state?;
            let piece = match batches.next().await {
                Some(Ok(batch)) => {
                    writer.write(&batch).map(|()| Bytes::from(std::mem::take(writer.get_mut()))).map_err(internal)
                }
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    let piece = writer.finish().map(|()| Bytes::from(std::mem::take(writer.get_mut())));
                    return Some((piece.map_err(internal), None));
                }
            };
            let next = piece.is_ok().then_some((writer, batches));
            Some((piece, next))
        });
        Ok(futures::stream::iter([Ok(head)]).chain(pieces))
    }
}

fn timed_out(timeout: Duration) -> ApiError {
    ApiError::new(
        ErrorCode::SqlTimeout,
        format!("the query ran longer than sql_timeout_ms ({} ms) and was cancelled", timeout.as_millis()),
    )
}

/// A running query's failure: over the memory limit, or anything else DataFusion reports.
fn failed(e: &DataFusionError, memory_bytes: u64) -> ApiError {
    // Operators wrap errors (shared join inputs, contexts, arrow errors): look at the root.
    if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
        return ApiError::new(
            ErrorCode::SqlResourcesExhausted,
            format!("the query needs more memory than sql_memory_bytes ({memory_bytes} bytes) and was cancelled: {e}"),
        );
    }
    sql_error(e)
}

/// `batch` cut by rows into slices of at most about `max_bytes` of Arrow buffers each (a single
/// row may be larger).
fn slices(batch: &RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let bytes: usize = batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
        .sum();
    let rows = batch.num_rows();
    if bytes <= max_bytes || rows <= 1 {
        return vec![batch.clone()];
    }
    let per_slice = rows.div_ceil(bytes.div_ceil(max_bytes)).max(1);
    (0..rows).step_by(per_slice).map(|at| batch.slice(at, per_slice.min(rows - at))).collect()
}

/// Encodes batches in a format, chunk by chunk.
enum Writer {
    Json { schema: SchemaRef, rows: usize },
    Csv { header: bool },
    Arrow(Box<StreamWriter<Vec<u8>>>),
    Failed,
}

impl Writer {
    fn new(format: Format, schema: &SchemaRef) -> Self {
        match format {
            Format::Json => Writer::Json { schema: Arc::clone(schema), rows: 0 },
            Format::Csv => Writer::Csv { header: true },
            Format::Arrow => match StreamWriter::try_new(Vec::new(), schema) {
                Ok(w) => Writer::Arrow(Box::new(w)),
                Err(_) => Writer::Failed,
            },
        }
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes, std::io::Error> {
        match self {
            Writer::Json { schema, rows } => {
                let mut out = if *rows == 0 { json_head(schema)? } else { Vec::new() };
                for row in json_rows(batch)? {
                    if *rows > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut out, &row)?;
                    *rows += 1;
                }
                Ok(Bytes::from(out))
            }
            Writer::Csv { header } => {
                let mut out = Vec::new();
                let mut w = strata_sql::arrow::csv::WriterBuilder::new().with_header(*header).build(&mut out);
                w.write(batch).map_err(std::io::Error::other)?;
                drop(w);
                *header = false;
                Ok(Bytes::from(out))
            }
            Writer::Arrow(w) => {
                w.write(batch).map_err(std::io::Error::other)?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
            Writer::Failed => Err(std::io::Error::other("cannot start the Arrow IPC stream")),
        }
    }

    fn finish(&mut self) -> Result<Bytes, std::io::Error> {
        match self {
            Writer::Json { schema, rows } => {
                // With no row at all, the head has not been written yet.
                let mut out = if *rows == 0 { json_head(schema)? } else { Vec::new() };
                out.extend_from_slice(b"]}");
                Ok(Bytes::from(out))
            }
            Writer::Csv { .. } | Writer::Failed => Ok(Bytes::new()),
            Writer::Arrow(w) => {
                w.finish().map_err(std::io::Error::other)?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
        }
    }
}

/// `{"columns":[{"name","type"}],"rows":[` — the start of a JSON result.
fn json_head(schema: &SchemaRef) -> Result<Vec<u8>, std::io::Error> {
    let columns: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let mut out = b"{\"columns\":".to_vec();
    serde_json::to_writer(&mut out, &columns)?;
    out.extend_from_slice(b",\"rows\":[");
    Ok(out)
}

/// A batch's rows as JSON arrays, in column order (binary values as base64 would be ambiguous:
/// arrow's JSON encoding is used as it is).
fn json_rows(batch: &RecordBatch) -> Result<Vec<Vec<serde_json::Value>>, std::io::Error> {
    let mut buf = Vec::new();
    {
        let mut w = strata_sql::arrow::json::ArrayWriter::new(&mut buf);
        w.write(batch).map_err(std::io::Error::other)?;
        w.finish().map_err(std::io::Error::other)?;
    }
    let objects: Vec<serde_json::Map<String, serde_json::Value>> =
        if buf.is_empty() { Vec::new() } else { serde_json::from_slice(&buf)? };
    let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    Ok(objects
        .into_iter()
        .map(|mut o| names.iter().map(|n| o.remove(n).unwrap_or(serde_json::Value::Null)).collect())
        .collect())
}

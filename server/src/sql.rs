//! SQL over topics (`POST /v1/sql`, `strata sql`): the broker as a `strata_sql::TopicSource`,
//! and query results as JSON, CSV or an Arrow IPC stream, streamed batch by batch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use strata_sql::arrow::array::RecordBatch;
use strata_sql::arrow::datatypes::SchemaRef;
use strata_sql::{ColdFile, SqlEngine, SqlLimits, TopicSource};
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
            })
            .collect()
    }

    fn object_store(&self) -> Arc<dyn object_store::ObjectStore> {
        self.broker.cold().store.inner()
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

/// Runs queries with a time limit.
#[derive(Debug, Clone)]
pub struct Sql {
    engine: SqlEngine,
    timeout: Duration,
}

fn sql_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::SqlError, e.to_string())
}

impl Sql {
    pub fn new(broker: Arc<Broker>, memory_bytes: u64, timeout: Duration) -> Self {
        let limits = SqlLimits { memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX) };
        Self { engine: SqlEngine::new(Arc::new(BrokerTopics { broker }), limits), timeout }
    }

    /// Plans and starts `sql`, then streams its result in `format`: a body of chunks, one or
    /// more per record batch. Errors before the first batch are returned; an error or the
    /// time limit later on ends the body early (and is logged).
    ///
    /// # Errors
    /// `sql_error` with DataFusion's message (syntax, unknown table or column, types, a
    /// statement that would change data, memory or time limits).
    pub async fn run(
        &self,
        sql: &str,
        format: Format,
    ) -> Result<impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, ApiError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out =
            || sql_error(format!("the query ran longer than sql_timeout_ms ({} ms)", self.timeout.as_millis()));
        let (schema, mut stream) = tokio::time::timeout_at(deadline, self.engine.query(sql))
            .await
            .map_err(|_| timed_out())?
            .map_err(sql_error)?;
        // The first batch is awaited here, so most failures still get a clean 400.
        let first = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| timed_out())?
            .transpose()
            .map_err(sql_error)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let timeout = self.timeout;
        tokio::spawn(async move {
            let mut writer = Writer::new(format, &schema);
            let mut next = first;
            loop {
                let chunk = match next.take() {
                    Some(batch) => writer.batch(&batch),
                    None => {
                        let _ = tx.send(writer.finish()).await;
                        return;
                    }
                };
                if tx.send(chunk).await.is_err() {
                    return; // the client went away: dropping the stream cancels the query
                }
                next = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(batch))) => Some(batch),
                    Ok(None) => None,
                    Ok(Some(Err(e))) => {
                        tracing::warn!(error = %e, "query failed while streaming its result");
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(timeout_ms = timeout.as_millis(), "query cancelled at its time limit");
                        let _ = tx.send(Err(std::io::Error::other("sql_timeout_ms reached"))).await;
                        return;
                    }
                };
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

/// Encodes batches in a format, chunk by chunk.
enum Writer {
    Json { schema: SchemaRef, rows: usize },
    Csv { header: bool },
    Arrow(Box<strata_sql::arrow::ipc::writer::StreamWriter<Vec<u8>>>),
    Failed,
}

impl Writer {
    fn new(format: Format, schema: &SchemaRef) -> Self {
        match format {
            Format::Json => Writer::Json { schema: Arc::clone(schema), rows: 0 },
            Format::Csv => Writer::Csv { header: true },
            Format::Arrow => match strata_sql::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema) {
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

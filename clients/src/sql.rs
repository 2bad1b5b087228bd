//! SQL over gRPC (`strata.v1.Sql.Query`): the server streams an Arrow IPC stream in pieces;
//! [`SqlRows`] decodes each piece as it arrives, so a large result is never held at once.

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::{StreamDecoder, StreamReader};
use strata_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::ClientError;

/// A running query's result: its schema, then its record batches in order.
///
/// # Cancel safety
/// Dropping it cancels the query on the server.
#[derive(Debug)]
pub struct SqlRows {
    schema: SchemaRef,
    stream: Streaming<pb::SqlQueryResponse>,
    decoder: StreamDecoder,
}

impl SqlRows {
    /// Sends the query and waits for the result's schema.
    pub(crate) async fn start(channel: Channel, sql: &str) -> Result<Self, ClientError> {
        let mut client = pb::sql_client::SqlClient::new(channel).max_decoding_message_size(64 << 20);
        let mut stream = client.query(pb::SqlQueryRequest { sql: sql.to_string() }).await?.into_inner();
        // The first piece is the schema message alone. The push decoder only completes a message
        // when bytes after it arrive, so the schema is read from the piece directly as well.
        let Some(first) = stream.next().await.transpose()? else {
            return Err(invalid("the result ended before its schema"));
        };
        let schema = StreamReader::try_new(std::io::Cursor::new(first.arrow_ipc.clone()), None)
            .map_err(|e| invalid(e.to_string()))?
            .schema();
        let mut decoder = StreamDecoder::new();
        if decoder.decode(&mut Buffer::from(first.arrow_ipc)).map_err(|e| invalid(e.to_string()))?.is_some() {
            return Err(invalid("a record batch came with the schema"));
        }
        Ok(Self { schema, stream, decoder })
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The next record batch, or `None` after the last one.
    ///
    /// # Errors
    /// The server's status when the query fails part way (`RESOURCE_EXHAUSTED`
    /// `sql_resources_exhausted`, `DEADLINE_EXCEEDED` `sql_timeout`, ...);
    /// [`ClientError::Invalid`] for bytes that are not an Arrow IPC stream.
    pub async fn next_batch(&mut self) -> Result<Option<RecordBatch>, ClientError> {
        while let Some(piece) = self.stream.next().await.transpose()? {
            let mut buffer = Buffer::from(piece.arrow_ipc);
            // One piece holds at most one record batch (dictionaries come with it).
            let batch = self.decoder.decode(&mut buffer).map_err(|e| invalid(e.to_string()))?;
            if !buffer.is_empty() {
                return Err(invalid("more than one record batch in one message"));
            }
            if batch.is_some() {
                return Ok(batch);
            }
        }
        self.decoder.finish().map_err(|e| invalid(e.to_string()))?;
        Ok(None)
    }

    /// Every remaining batch.
    ///
    /// # Errors
    /// As [`SqlRows::next_batch`].
    pub async fn collect(mut self) -> Result<Vec<RecordBatch>, ClientError> {
        let mut batches = Vec::new();
        while let Some(batch) = self.next_batch().await? {
            batches.push(batch);
        }
        Ok(batches)
    }
}

fn invalid(reason: impl std::fmt::Display) -> ClientError {
    ClientError::Invalid(format!("the SQL result is not a valid Arrow IPC stream: {reason}"))
}

//! The hot tier's scan: each partition's local segments decoded straight into Arrow, one output
//! partition (and one blocking reader thread) per topic partition. Segments whose offsets or
//! timestamps fall outside the filters' bounds are never opened; records are filtered one by one,
//! so the bounds hold exactly. `EXPLAIN ANALYZE` shows how many segments each scan read and
//! pruned.

use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions,
};
use strata_storage::Log;
use strata_storage::batch::split_batches;
use strata_storage::tier::ArrowRows;

/// Rows per record batch the hot scan emits.
const HOT_BATCH_ROWS: usize = 8192;
/// Bytes read from the log at a time.
const HOT_READ_BYTES: usize = 4 << 20;

/// One partition's part of the hot scan.
#[derive(Debug, Clone)]
pub(crate) struct HotPartition {
    pub partition: u32,
    pub log: Log,
    /// `[from, until)`: from where the cold tier ends to the high watermark, within the filters.
    pub offsets: Range<u64>,
    /// Inclusive; non-empty.
    pub timestamps: RangeInclusive<i64>,
    /// Keeps `offsets.start` and what follows on local disk while the scan may read it.
    pub _pin: Arc<strata_storage::LocalPin>,
}

/// Scans the hot tail of some partitions of one topic.
#[derive(Debug)]
pub(crate) struct HotScanExec {
    /// The stored columns ([`strata_storage::tier::arrow_schema`]).
    stored: SchemaRef,
    parts: Vec<HotPartition>,
    projection: Vec<usize>,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl HotScanExec {
    pub fn new(
        stored: SchemaRef,
        parts: Vec<HotPartition>,
        projection: Vec<usize>,
        limit: Option<usize>,
    ) -> Result<Self> {
        let projected = Arc::new(stored.project(&projection)?);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(parts.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            stored,
            parts,
            projection,
            limit,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for HotScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let parts: Vec<String> =
            self.parts.iter().map(|p| format!("{}:[{}, {})", p.partition, p.offsets.start, p.offsets.end)).collect();
        write!(f, "HotScanExec: partitions={{{}}}", parts.join(", "))?;
        if let Some(ts) = self.parts.first().map(|p| &p.timestamps)
            && (*ts.start() != i64::MIN || *ts.end() != i64::MAX)
        {
            write!(f, ", timestamps=[{}, {}]", ts.start(), ts.end())?;
        }
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for HotScanExec {
    fn name(&self) -> &'static str {
        "HotScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, _ctx: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let part = self
            .parts
            .get(partition)
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("HotScanExec has no partition {partition}")))?;
        let counters = Counters {
            segments_read: MetricBuilder::new(&self.metrics).counter("segments_read", partition),
            segments_pruned: MetricBuilder::new(&self.metrics).counter("segments_pruned", partition),
            output_rows: MetricBuilder::new(&self.metrics).output_rows(partition),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (projection, limit) = (self.projection.clone(), self.limit.unwrap_or(usize::MAX));
        // Reading and decoding are blocking work: a thread of their own, two batches ahead.
        tokio::task::spawn_blocking(move || {
            let mut send = |batch: Result<RecordBatch>| match batch.and_then(|b| Ok(b.project(&projection)?)) {
                Ok(b) => {
                    counters.output_rows.add(b.num_rows());
                    tx.blocking_send(Ok(b)).is_ok()
                }
                Err(e) => {
                    // The query fails: nothing more to read either way.
                    let _ = tx.blocking_send(Err(e));
                    false
                }
            };
            if let Err(e) = scan(&part, limit, &counters, &mut send) {
                send(Err(e));
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let schema = Arc::new(self.stored.project(&self.projection)?);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

struct Counters {
    segments_read: Count,
    segments_pruned: Count,
    output_rows: Count,
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Reads one partition's wanted segments, passing batches of rows to `send` until it returns
/// false (the query is gone) or `limit` rows went out.
fn scan(
    part: &HotPartition,
    limit: usize,
    counters: &Counters,
    send: &mut dyn FnMut(Result<RecordBatch>) -> bool,
) -> Result<()> {
    let (log, timestamps) = (&part.log, &part.timestamps);
    let mut rows = ArrowRows::new(part.partition);
    let mut sent = 0usize;
    for span in log.segment_spans() {
        let from = span.base_offset.max(part.offsets.start);
        let until = span.end_offset.min(part.offsets.end);
        if from >= until {
            continue;
        }
        if span.max_timestamp < *timestamps.start() || span.min_timestamp > *timestamps.end() {
            counters.segments_pruned.add(1);
            continue;
        }
        counters.segments_read.add(1);
        let mut offset = from;
        while offset < until {
            let read = log.read(offset, HOT_READ_BYTES).map_err(external)?;
            if read.batches.is_empty() {
                break;
            }
            for batch in split_batches(&read.batches) {
                let batch = batch.map_err(external)?;
                rows.push_where(&batch, offset..until, timestamps.clone()).map_err(external)?;
                if rows.len() >= HOT_BATCH_ROWS || sent + rows.len() >= limit {
                    sent += rows.len();
                    if !send(rows.finish().map_err(external)) || sent >= limit {
                        return Ok(());
                    }
                }
            }
            offset = read.next_offset.max(offset + 1);
        }
    }
    if !rows.is_empty() {
        send(rows.finish().map_err(external));
    }
    Ok(())
}

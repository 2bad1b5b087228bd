//! A topic as a DataFusion table: the union of its cold objects and its hot tail.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::union::UnionExec;
use strata_storage::Log;
use strata_storage::batch::split_batches;
use strata_storage::tier::{self, ArrowRows};

use crate::{STORE_URL, TopicSource};

/// Rows per record batch the hot scan emits.
const HOT_BATCH_ROWS: usize = 8192;
/// Bytes read from the log at a time by the hot scan.
const HOT_READ_BYTES: usize = 4 << 20;

/// One topic: columns `partition`, `offset`, `timestamp`, `key`, `value`, `headers`,
/// `producer_id`, `producer_epoch`, `sequence`, `transactional`, `control` — the schema of the
/// tiered Parquet objects, so both tiers scan alike.
#[derive(Debug)]
pub struct TopicTable {
    source: Arc<dyn TopicSource>,
    name: String,
    partitions: u32,
}

impl TopicTable {
    pub fn new(source: Arc<dyn TopicSource>, name: String, partitions: u32) -> Self {
        Self { source, name, partitions }
    }
}

/// What simple filters say about the rows wanted (anything else is left to DataFusion).
#[derive(Debug, Clone)]
struct Bounds {
    partitions: Option<BTreeSet<u32>>,
    offsets: RangeInclusive<u64>,
    timestamps: RangeInclusive<i64>,
}

impl Bounds {
    fn from_filters(filters: &[Expr]) -> Self {
        let mut b = Bounds { partitions: None, offsets: 0..=u64::MAX, timestamps: i64::MIN..=i64::MAX };
        for f in filters {
            b.narrow(f);
        }
        b
    }

    fn narrow(&mut self, e: &Expr) {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
                self.narrow(left);
                self.narrow(right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (column, op, value) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(v, _)) => (c.name.as_str(), *op, v),
                    (Expr::Literal(v, _), Expr::Column(c)) => match op.swap() {
                        Some(op) => (c.name.as_str(), op, v),
                        None => return,
                    },
                    _ => return,
                };
                let Some(n) = scalar_i128(value) else { return };
                match column {
                    "offset" => self.offsets = narrow(&self.offsets, op, n, |v| u64::try_from(v.max(0)).ok()),
                    "timestamp" => self.timestamps = narrow(&self.timestamps, op, n, |v| i64::try_from(v).ok()),
                    "partition" if op == Operator::Eq => {
                        let p = u32::try_from(n).ok();
                        let keep: BTreeSet<u32> = p.into_iter().collect();
                        self.partitions = Some(match self.partitions.take() {
                            Some(prev) => prev.intersection(&keep).copied().collect(),
                            None => keep,
                        });
                    }
                    _ => {}
                }
            }
            Expr::InList(list) if !list.negated => {
                if let Expr::Column(c) = list.expr.as_ref()
                    && c.name == "partition"
                {
                    let values: Option<BTreeSet<u32>> = list
                        .list
                        .iter()
                        .map(|v| match v {
                            Expr::Literal(s, _) => scalar_i128(s).and_then(|n| u32::try_from(n).ok()),
                            _ => None,
                        })
                        .collect();
                    if let Some(values) = values {
                        self.partitions = Some(match self.partitions.take() {
                            Some(prev) => prev.intersection(&values).copied().collect(),
                            None => values,
                        });
                    }
                }
            }
            _ => {}
        }
    }
}

fn scalar_i128(v: &ScalarValue) -> Option<i128> {
    match v {
        ScalarValue::Int8(Some(n)) => Some(i128::from(*n)),
        ScalarValue::Int16(Some(n)) => Some(i128::from(*n)),
        ScalarValue::Int32(Some(n)) => Some(i128::from(*n)),
        ScalarValue::Int64(Some(n)) => Some(i128::from(*n)),
        ScalarValue::UInt8(Some(n)) => Some(i128::from(*n)),
        ScalarValue::UInt16(Some(n)) => Some(i128::from(*n)),
        ScalarValue::UInt32(Some(n)) => Some(i128::from(*n)),
        ScalarValue::UInt64(Some(n)) => Some(i128::from(*n)),
        ScalarValue::TimestampMillisecond(Some(n), _) => Some(i128::from(*n)),
        ScalarValue::TimestampSecond(Some(n), _) => Some(i128::from(*n) * 1000),
        ScalarValue::TimestampMicrosecond(Some(n), _) => Some(i128::from(*n) / 1000),
        ScalarValue::TimestampNanosecond(Some(n), _) => Some(i128::from(*n) / 1_000_000),
        _ => None,
    }
}

/// Narrows an inclusive range by `column op n` (bounds that do not fit are ignored: the filter
/// still applies on top).
fn narrow<T: Copy + Ord>(
    range: &RangeInclusive<T>,
    op: Operator,
    n: i128,
    fit: impl Fn(i128) -> Option<T>,
) -> RangeInclusive<T> {
    let (lo, hi) = (*range.start(), *range.end());
    let (new_lo, new_hi) = match op {
        Operator::Eq => (fit(n), fit(n)),
        Operator::Gt => (fit(n + 1), None),
        Operator::GtEq => (fit(n), None),
        Operator::Lt => (None, fit(n - 1)),
        Operator::LtEq => (None, fit(n)),
        _ => (None, None),
    };
    new_lo.map_or(lo, |v| v.max(lo))..=new_hi.map_or(hi, |v| v.min(hi))
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        tier::arrow_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used for pruning (partitions, objects, row groups, the hot offset range); DataFusion
        // applies every filter again, so pruning can only skip, never change, results.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.schema();
        let bounds = Bounds::from_filters(filters);
        let partitions: Vec<u32> =
            (0..self.partitions).filter(|p| bounds.partitions.as_ref().is_none_or(|set| set.contains(p))).collect();
        let mut cold_groups = Vec::new();
        let mut hot = Vec::new();
        for &p in &partitions {
            let files = self.source.cold_files(&self.name, p);
            let tiered_end = files.last().map_or(0, |f| f.end_offset);
            let group: Vec<PartitionedFile> = files
                .iter()
                .filter(|f| f.base_offset <= *bounds.offsets.end() && f.end_offset > *bounds.offsets.start())
                .filter(|f| {
                    f.min_timestamp <= *bounds.timestamps.end() && f.max_timestamp >= *bounds.timestamps.start()
                })
                .map(|f| PartitionedFile::new(f.path.clone(), f.size))
                .collect();
            if !group.is_empty() {
                cold_groups.push(FileGroup::new(group));
            }
            if let Some(log) = self.source.log(&self.name, p) {
                // The hot tail starts where the cold tier ends (tiered segments may still be on
                // local disk), within the filters' offset range.
                let from = log.log_start_offset().max(tiered_end).max(*bounds.offsets.start());
                let until = log.high_watermark().min(bounds.offsets.end().saturating_add(1));
                if from < until {
                    hot.push(Arc::new(HotPartition { schema: Arc::clone(&schema), partition: p, log, from, until })
                        as Arc<dyn PartitionStream>);
                }
            }
        }
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !cold_groups.is_empty() {
            let mut source = ParquetSource::new(Arc::clone(&schema)).with_enable_page_index(true);
            if let Some(predicate) = conjunction(filters.to_vec()) {
                let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
                source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
            }
            let url = ObjectStoreUrl::parse(STORE_URL)?;
            let config = FileScanConfigBuilder::new(url, Arc::new(source))
                .with_file_groups(cold_groups)
                .with_limit(limit)
                .with_projection_indices(projection.cloned())?
                .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }
        if !hot.is_empty() || inputs.is_empty() {
            inputs.push(Arc::new(StreamingTableExec::try_new(schema, hot, projection, [], false, limit)?));
        }
        UnionExec::try_new(inputs)
    }
}

/// One partition's hot tail, `[from, until)`, decoded from the log into Arrow.
#[derive(Debug)]
struct HotPartition {
    schema: SchemaRef,
    partition: u32,
    log: Log,
    from: u64,
    until: u64,
}

impl PartitionStream for HotPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (log, partition, from, until) = (self.log.clone(), self.partition, self.from, self.until);
        // Reading and decoding are blocking work: a thread of their own, two batches ahead.
        tokio::task::spawn_blocking(move || {
            let mut rows = ArrowRows::new(partition);
            let mut offset = from;
            let send = |batch: Result<_>| tx.blocking_send(batch).is_ok();
            while offset < until {
                let read = match log.read(offset, HOT_READ_BYTES) {
                    Ok(r) => r,
                    Err(e) => {
                        send(Err(DataFusionError::External(Box::new(e))));
                        return;
                    }
                };
                if read.batches.is_empty() {
                    break;
                }
                for batch in split_batches(&read.batches) {
                    let pushed = batch
                        .map_err(|e| DataFusionError::External(Box::new(e)))
                        .and_then(|b| rows.push(&b, offset, until).map_err(|e| DataFusionError::External(Box::new(e))));
                    if let Err(e) = pushed {
                        send(Err(e));
                        return;
                    }
                    if rows.len() >= HOT_BATCH_ROWS
                        && !send(rows.finish().map_err(|e| DataFusionError::External(Box::new(e))))
                    {
                        return;
                    }
                }
                offset = read.next_offset.max(offset + 1);
            }
            if !rows.is_empty() {
                send(rows.finish().map_err(|e| DataFusionError::External(Box::new(e))));
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), stream))
    }
}

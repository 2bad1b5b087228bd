//! A topic as a DataFusion table: the union of its cold objects and its hot tail.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::compute::CastOptions;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::FormatOptions;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use strata_storage::tier;

use crate::TopicSource;
use crate::avro::TypedColumns;
use crate::hot::{HotPartition, HotScanExec};
use crate::{ColdFile, STORE_URL};
use datafusion::error::DataFusionError;

/// Columns computed from stored ones: the key and value as UTF-8 text (NULL where the bytes are
/// not valid UTF-8).
const DERIVED: [(&str, &str); 2] = [("key_str", "key"), ("value_str", "value")];

/// One topic: the stored columns `partition`, `offset`, `timestamp`, `key`, `value`, `headers`,
/// `producer_id`, `producer_epoch`, `sequence`, `transactional`, `control` — the schema of the
/// tiered Parquet objects, so both tiers scan alike — then the derived `key_str`, `value_str`.
#[derive(Debug)]
pub struct TopicTable {
    source: Arc<dyn TopicSource>,
    /// Cold objects already checked against their manifest CRC32C.
    verified: Arc<VerifiedObjects>,
    name: String,
    partitions: u32,
    /// The stored columns ([`tier::arrow_schema`]).
    stored: SchemaRef,
    /// The stored columns, then the derived ones, then the typed ones.
    schema: SchemaRef,
    /// The typed columns of a topic bound to an Avro subject (see `avro.rs`).
    typed: Option<Arc<TypedColumns>>,
}

impl TopicTable {
    pub fn new(source: Arc<dyn TopicSource>, name: String, partitions: u32, verified: Arc<VerifiedObjects>) -> Self {
        let stored = tier::arrow_schema();
        let mut fields: Vec<Field> = stored.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(DERIVED.iter().map(|(name, _)| Field::new(*name, DataType::Utf8View, true)));
        let typed =
            source.value_schema(&name).and_then(|v| TypedColumns::new(v, &Schema::new(fields.clone()))).map(Arc::new);
        fields.extend(typed.iter().flat_map(|t| t.fields().iter().map(|f| f.as_ref().clone())));
        let schema = Arc::new(Schema::new(fields));
        Self { source, verified, name, partitions, stored, schema, typed }
    }

    /// Partition `p`'s cold objects, and its hot tail to read from local disk: from where the
    /// cold tier ends (tiered segments may still be on local disk) to the high watermark, within
    /// the filters' ranges. The tail's start is pinned on local disk until the scan ends
    /// ([`strata_storage::Log::pin_local`]): without it, local retention could delete segments
    /// tiered after the manifest was read, and the scan would skip them in silence. Where
    /// retention got there first, the manifest (which then covers them) is read again.
    fn split_tiers(
        &self,
        p: u32,
        offsets: &std::ops::Range<u64>,
        timestamps: &RangeInclusive<i64>,
    ) -> Result<(Vec<ColdFile>, Option<HotPartition>)> {
        for _ in 0..PIN_ATTEMPTS {
            let files = self.source.cold_files(&self.name, p);
            let tiered_end = files.last().map_or(0, |f| f.end_offset);
            let Some(log) = self.source.log(&self.name, p) else { return Ok((files, None)) };
            let from = log.log_start_offset().max(tiered_end).max(offsets.start);
            let until = log.high_watermark().min(offsets.end);
            if from >= until || timestamps.start() > timestamps.end() {
                return Ok((files, None));
            }
            if let Some(pin) = log.pin_local(from) {
                let hot = HotPartition {
                    partition: p,
                    log,
                    offsets: from..until,
                    timestamps: timestamps.clone(),
                    _pin: Arc::new(pin),
                };
                return Ok((files, Some(hot)));
            }
        }
        Err(DataFusionError::Execution(format!(
            "partition {p} of {:?} kept moving to object storage while the query was planned; run it again",
            self.name
        )))
    }
}

/// Times a scan reads a partition's manifest again when local retention deleted the segments
/// it was about to pin.
const PIN_ATTEMPTS: usize = 4;

/// Cold objects whose bytes matched their manifest entry (size and CRC32C), by `(path, size,
/// crc32c)`. DataFusion reads objects by byte ranges and trusts their Parquet footers, which no
/// checksum of the format covers (a flipped bit there can shift every value of a column), so an
/// object is read whole and checked once before any query scans it; objects are immutable, so
/// once is enough.
#[derive(Debug, Default)]
pub struct VerifiedObjects {
    // A std mutex: set operations only, never held across `.await`.
    seen: std::sync::Mutex<std::collections::HashSet<(String, u64, u32)>>,
}

impl VerifiedObjects {
    fn contains(&self, file: &ColdFile) -> bool {
        let seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.contains(&(file.path.clone(), file.size, file.crc32c))
    }

    fn insert(&self, file: &ColdFile) {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.insert((file.path.clone(), file.size, file.crc32c));
    }

    /// Checks every file not checked yet.
    async fn check(&self, store: &dyn object_store::ObjectStore, files: &[&ColdFile]) -> Result<()> {
        use object_store::ObjectStoreExt;
        for file in files.iter().filter(|f| !self.contains(f)) {
            let path = object_store::path::Path::from(file.path.as_str());
            // Streamed: an object may be as large as a segment, and only its checksum is needed.
            let mut chunks = store.get(&path).await?.into_stream();
            let (mut size, mut crc) = (0u64, 0u32);
            while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
                let chunk = chunk?;
                size += chunk.len() as u64;
                crc = crc32c::crc32c_append(crc, &chunk);
            }
            if size != file.size || crc != file.crc32c {
                let damage = DamagedObject {
                    path: file.path.clone(),
                    base_offset: file.base_offset,
                    end_offset: file.end_offset,
                };
                return Err(DataFusionError::External(Box::new(damage)));
            }
            self.insert(file);
        }
        Ok(())
    }
}

/// A tiered object whose bytes do not match its manifest entry.
#[derive(Debug, thiserror::Error)]
#[error(
    "tiered object {path} (offsets {base_offset}..{end_offset}) is damaged: its size or CRC32C does not match the manifest"
)]
pub struct DamagedObject {
    pub path: String,
    pub base_offset: u64,
    pub end_offset: u64,
}

/// Whether `e` (or what it wraps) is a [`DamagedObject`].
pub(crate) fn is_damage(e: &DataFusionError) -> bool {
    match e.find_root() {
        DataFusionError::External(inner) => inner.downcast_ref::<DamagedObject>().is_some(),
        _ => false,
    }
}

/// What the pushed-down filters say about the rows wanted. Ranges are inclusive and in `i128`, so
/// no bound is lost to a type's limits; an empty range (start above end) matches nothing.
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    partitions: RangeInclusive<i128>,
    partition_set: Option<BTreeSet<i128>>,
    offsets: RangeInclusive<i128>,
    timestamps: RangeInclusive<i128>,
}

const ALL: RangeInclusive<i128> = i128::MIN..=i128::MAX;
const BOUNDED: [&str; 3] = ["partition", "offset", "timestamp"];

impl Bounds {
    fn from_filters(filters: &[Expr]) -> Self {
        let mut b = Bounds { partitions: ALL, partition_set: None, offsets: ALL, timestamps: ALL };
        for f in filters {
            b.narrow(f);
        }
        b
    }

    /// Whether `e` is a conjunction of comparisons these bounds represent exactly: the scan then
    /// returns exactly the rows `e` selects (the hot scan filters each record by the bounds, the
    /// Parquet scan evaluates the predicate on each row).
    fn is_exact(e: &Expr) -> bool {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
                Self::is_exact(left) && Self::is_exact(right)
            }
            Expr::BinaryExpr(b) => comparison(b).is_some_and(|(column, op, value)| {
                BOUNDED.contains(&column)
                    && matches!(op, Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq)
                    && scalar_ms(value).is_some_and(|(lo, hi)| lo == hi)
            }),
            Expr::InList(list) => {
                !list.negated
                    && matches!(list.expr.as_ref(), Expr::Column(c) if c.name == "partition")
                    && list
                        .list
                        .iter()
                        .all(|v| matches!(v, Expr::Literal(s, _) if scalar_ms(s).is_some_and(|(lo, hi)| lo == hi)))
            }
            _ => false,
        }
    }

    fn narrow(&mut self, e: &Expr) {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
                self.narrow(left);
                self.narrow(right);
            }
            Expr::BinaryExpr(b) => {
                let Some((column, op, value)) = comparison(b) else { return };
                let Some(value) = scalar_ms(value) else { return };
                let range = match column {
                    "partition" => &mut self.partitions,
                    "offset" => &mut self.offsets,
                    "timestamp" => &mut self.timestamps,
                    _ => return,
                };
                *range = narrow(range, op, value);
            }
            Expr::InList(list) if !list.negated => {
                if let Expr::Column(c) = list.expr.as_ref()
                    && c.name == "partition"
                {
                    let values: Option<BTreeSet<i128>> = list
                        .list
                        .iter()
                        .map(|v| match v {
                            Expr::Literal(s, _) => scalar_ms(s).filter(|(lo, hi)| lo == hi).map(|(v, _)| v),
                            _ => None,
                        })
                        .collect();
                    if let Some(values) = values {
                        self.partition_set = Some(match self.partition_set.take() {
                            Some(prev) => prev.intersection(&values).copied().collect(),
                            None => values,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    fn has_partition(&self, p: u32) -> bool {
        let p = i128::from(p);
        self.partitions.contains(&p) && self.partition_set.as_ref().is_none_or(|set| set.contains(&p))
    }

    /// The offsets wanted as `[start, end)` in `u64` (empty when none is).
    pub(crate) fn offset_range(&self) -> std::ops::Range<u64> {
        let clamp = |v: i128| u64::try_from(v.clamp(0, i128::from(u64::MAX))).unwrap_or(u64::MAX);
        let start = clamp(*self.offsets.start());
        let end = if *self.offsets.end() < 0 { 0 } else { clamp(*self.offsets.end()).saturating_add(1) };
        start..end.max(start)
    }

    /// The timestamps wanted, inclusive, in `i64` (`start > end` when none is).
    pub(crate) fn timestamp_range(&self) -> RangeInclusive<i64> {
        let clamp = |v: i128| i64::try_from(v.clamp(i128::from(i64::MIN), i128::from(i64::MAX))).unwrap_or(i64::MAX);
        let (lo, hi) = (*self.timestamps.start(), *self.timestamps.end());
        if lo > hi || hi < i128::from(i64::MIN) || lo > i128::from(i64::MAX) {
            return RangeInclusive::new(1, 0);
        }
        clamp(lo)..=clamp(hi)
    }
}

/// `column op literal` (or `literal op column`, swapped).
fn comparison(b: &BinaryExpr) -> Option<(&str, Operator, &ScalarValue)> {
    match (b.left.as_ref(), b.right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => Some((c.name.as_str(), b.op, v)),
        (Expr::Literal(v, _), Expr::Column(c)) => Some((c.name.as_str(), b.op.swap()?, v)),
        _ => None,
    }
}

/// An integer, or a timestamp in milliseconds, as `(floor, ceil)`: equal when exact, one apart
/// when a finer timestamp falls between two milliseconds.
fn scalar_ms(v: &ScalarValue) -> Option<(i128, i128)> {
    let exact = |n: i128| Some((n, n));
    let divided = |n: i128, by: i128| Some((n.div_euclid(by), -(-n).div_euclid(by)));
    match v {
        ScalarValue::Int8(Some(n)) => exact(i128::from(*n)),
        ScalarValue::Int16(Some(n)) => exact(i128::from(*n)),
        ScalarValue::Int32(Some(n)) => exact(i128::from(*n)),
        ScalarValue::Int64(Some(n)) => exact(i128::from(*n)),
        ScalarValue::UInt8(Some(n)) => exact(i128::from(*n)),
        ScalarValue::UInt16(Some(n)) => exact(i128::from(*n)),
        ScalarValue::UInt32(Some(n)) => exact(i128::from(*n)),
        ScalarValue::UInt64(Some(n)) => exact(i128::from(*n)),
        ScalarValue::TimestampSecond(Some(n), _) => exact(i128::from(*n) * 1000),
        ScalarValue::TimestampMillisecond(Some(n), _) => exact(i128::from(*n)),
        ScalarValue::TimestampMicrosecond(Some(n), _) => divided(i128::from(*n), 1000),
        ScalarValue::TimestampNanosecond(Some(n), _) => divided(i128::from(*n), 1_000_000),
        _ => None,
    }
}

/// Narrows an inclusive range by `column op value`, where `value` is `(floor, ceil)` of the
/// literal in the column's unit: exact when they are equal, a superset of the rows otherwise.
fn narrow(range: &RangeInclusive<i128>, op: Operator, (floor, ceil): (i128, i128)) -> RangeInclusive<i128> {
    let exact = floor == ceil;
    let (lo, hi) = match op {
        Operator::Eq => (floor, ceil),
        Operator::Gt if exact => (floor + 1, i128::MAX),
        Operator::Gt | Operator::GtEq => (floor, i128::MAX),
        Operator::Lt if exact => (i128::MIN, ceil - 1),
        Operator::Lt | Operator::LtEq => (i128::MIN, ceil),
        _ => return range.clone(),
    };
    (*range.start()).max(lo)..=(*range.end()).min(hi)
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if f.column_refs().iter().any(|c| self.stored.index_of(&c.name).is_err()) {
                    // Derived columns: DataFusion filters them above the scan.
                    TableProviderFilterPushDown::Unsupported
                } else if Bounds::is_exact(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    // Used for pruning (objects, row groups); DataFusion applies it again on top.
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Typed columns: scan the others and `value` (this same function), then decode on top.
        if let Some(typed) = &self.typed
            && let base_len = self.schema.fields().len() - typed.fields().len()
            && let Some(split) = typed.split(projection, base_len, self.stored.index_of("value")?)
        {
            let scanned = self.scan(state, Some(&split.base), filters, limit).await?;
            return typed.plan(scanned, split.value_index, split.outputs);
        }
        // Only filters over stored columns reach here (see supports_filters_pushdown).
        let filters: Vec<Expr> = filters
            .iter()
            .filter(|f| f.column_refs().iter().all(|c| self.stored.index_of(&c.name).is_ok()))
            .cloned()
            .collect();
        let exact = filters.iter().any(Bounds::is_exact);
        let bounds = Bounds::from_filters(&filters);

        // The stored columns to read: the projected ones, and what derived ones are computed from.
        let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let stored_len = self.stored.fields().len();
        let derived = wanted.iter().any(|&i| i >= stored_len);
        let read: Vec<usize> = if derived {
            let mut read: BTreeSet<usize> = wanted.iter().copied().filter(|&i| i < stored_len).collect();
            for &i in wanted.iter().filter(|&&i| i >= stored_len) {
                let (_, from) = DERIVED[i - stored_len];
                read.insert(self.stored.index_of(from)?);
            }
            read.into_iter().collect()
        } else {
            wanted.clone()
        };

        let offsets = bounds.offset_range();
        let timestamps = bounds.timestamp_range();
        let mut cold_groups = Vec::new();
        let mut hot = Vec::new();
        for p in (0..self.partitions).filter(|&p| bounds.has_partition(p)) {
            let (files, hot_part) = self.split_tiers(p, &offsets, &timestamps)?;
            hot.extend(hot_part);
            let wanted: Vec<&ColdFile> = files
                .iter()
                .filter(|f| f.base_offset < offsets.end && f.end_offset > offsets.start)
                .filter(|f| f.min_timestamp <= *timestamps.end() && f.max_timestamp >= *timestamps.start())
                .collect();
            self.verified.check(self.source.object_store().as_ref(), &wanted).await?;
            let group: Vec<PartitionedFile> =
                wanted.iter().map(|f| PartitionedFile::new(f.path.clone(), f.size)).collect();
            if !group.is_empty() {
                cold_groups.push(FileGroup::new(group));
            }
        }

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !cold_groups.is_empty() {
            let mut source = ParquetSource::new(Arc::clone(&self.stored)).with_enable_page_index(true);
            if let Some(predicate) = conjunction(filters.clone()) {
                let df_schema = DFSchema::try_from(self.stored.as_ref().clone())?;
                // Exact filters are promised row by row: Parquet then evaluates the predicate
                // while decoding, not only against statistics.
                source = source
                    .with_predicate(state.create_physical_expr(predicate, &df_schema)?)
                    .with_pushdown_filters(exact);
            }
            let url = ObjectStoreUrl::parse(STORE_URL)?;
            let config = FileScanConfigBuilder::new(url, Arc::new(source))
                .with_file_groups(cold_groups)
                .with_limit(limit)
                .with_projection_indices(Some(read.clone()))?
                .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }
        if !hot.is_empty() {
            inputs.push(Arc::new(HotScanExec::new(Arc::clone(&self.stored), hot, read.clone(), limit)?));
        }
        let scanned: Arc<dyn ExecutionPlan> = match inputs.len() {
            0 => Arc::new(EmptyExec::new(Arc::new(self.stored.project(&read)?))),
            1 => inputs.remove(0),
            _ => UnionExec::try_new(inputs)?,
        };
        if !derived {
            return Ok(scanned);
        }
        // Derived columns over the stored ones read: text from bytes, NULL where not UTF-8.
        let cast_options = CastOptions { safe: true, format_options: FormatOptions::default() };
        let position = |stored_index: usize| read.iter().position(|&r| r == stored_index).unwrap_or_default();
        let exprs = wanted
            .iter()
            .map(|&i| {
                if i < stored_len {
                    let name = self.stored.field(i).name();
                    (Arc::new(Column::new(name, position(i))) as Arc<dyn PhysicalExpr>, name.clone())
                } else {
                    let (name, from) = DERIVED[i - stored_len];
                    let from_index = self.stored.index_of(from).unwrap_or_default();
                    let column = Arc::new(Column::new(from, position(from_index)));
                    let cast = CastExpr::new(column, DataType::Utf8View, Some(cast_options.clone()));
                    (Arc::new(cast) as Arc<dyn PhysicalExpr>, name.to_string())
                }
            })
            .collect::<Vec<_>>();
        Ok(Arc::new(ProjectionExec::try_new(exprs, scanned)?))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    fn ts(ms: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(Some(ms), None))
    }

    #[test]
    fn bounds_are_exact_for_simple_comparisons_and_a_superset_otherwise() {
        let filters = [col("offset").gt_eq(lit(10i64)), col("offset").lt(lit(20i64)), col("timestamp").gt(ts(100))];
        let b = Bounds::from_filters(&filters);
        assert_eq!(b.offset_range(), 10..20);
        assert_eq!(b.timestamp_range(), 101..=i64::MAX);
        assert!(filters.iter().all(Bounds::is_exact));

        // A microsecond literal between two milliseconds: a superset, never exact.
        let micros = col("timestamp").lt(lit(ScalarValue::TimestampMicrosecond(Some(1500), None)));
        assert!(!Bounds::is_exact(&micros));
        assert_eq!(Bounds::from_filters(&[micros]).timestamp_range(), i64::MIN..=2);

        // Out-of-range literals leave nothing rather than wrapping.
        assert!(Bounds::from_filters(&[col("offset").lt(lit(-5i64))]).offset_range().is_empty());
        assert!(
            Bounds::from_filters(&[col("offset").gt(lit(5i64)), col("offset").lt(lit(3i64))]).offset_range().is_empty()
        );

        let b = Bounds::from_filters(&[
            col("partition").in_list(vec![lit(1u32), lit(3u32)], false),
            col("partition").gt(lit(1u32)),
        ]);
        assert_eq!((0..5).filter(|&p| b.has_partition(p)).collect::<Vec<_>>(), vec![3]);

        // Anything else is used for pruning only.
        assert!(!Bounds::is_exact(&col("offset").gt(lit(1i64)).or(col("offset").lt(lit(0i64)))));
        assert!(!Bounds::is_exact(&col("value").is_not_null()));
    }
}

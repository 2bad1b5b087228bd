//! Typed columns for a topic whose values are bound to an Avro subject: the reader schema (the
//! subject's latest version at query time) becomes Arrow columns, and each stored value — framed
//! as magic byte `0`, the writer's schema id (4 bytes big-endian), the Avro body — is decoded with
//! its own writer schema and resolved to the reader schema, so records written with older versions
//! read side by side with new ones (fields added since take their defaults).
//!
//! ```text
//!  table scan (… value …) ──► TypedExec ──► the scan's columns + one array per requested field
//!                                │
//!                                ├─ writer schema by id: ValueSchema::writer, cached per stream
//!                                └─ Avro resolution writer → reader, then Value → Arrow builders
//! ```
//!
//! Reader schema → Arrow (a record reader schema gives one column per field; any other reader
//! schema gives one column, `value_avro`):
//!
//! | Avro | Arrow |
//! | --- | --- |
//! | `null`, `boolean`, `int`, `long`, `float`, `double` | `Null`, `Boolean`, `Int32`, `Int64`, `Float32`, `Float64` |
//! | `string`, `enum` (the symbol), `uuid`, `big-decimal` (its text) | `Utf8` |
//! | `bytes`, `fixed` | `Binary` |
//! | `record` | `Struct` (fields in schema order) |
//! | `array`, `map` | `List`, `Map<Utf8, T>` (entries sorted by key) |
//! | `[null, T]` (either order) | `T` (null is NULL) |
//! | any other union | `Utf8`: the branch's value as JSON text (`json_get_*` reads it) |
//! | `date`, `time-millis`, `time-micros` | `Date32`, `Time32(ms)`, `Time64(µs)` |
//! | `timestamp-{millis,micros,nanos}` | `Timestamp(unit, "UTC")` (`local-timestamp-*`: no time zone) |
//! | `decimal(p, s)` | `Decimal128(p, s)` for p ≤ 38, `Decimal256` for p ≤ 76, else `Binary` (unscaled) |
//! | `duration` | `Interval(MonthDayNano)` |
//! | a reference to a record being defined (recursion) | `Utf8` (JSON text) |
//!
//! Every typed column is nullable: a value that is not framed, names a schema id the registry does
//! not know, or does not decode or resolve gives NULL in every typed column of its row — the query
//! does not fail, and the raw bytes stay in `value`.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, NamesRef, ResolvedSchema};
use apache_avro::types::Value;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Decimal256Array, Float32Array,
    Float64Array, Int32Array, Int64Array, IntervalMonthDayNanoArray, ListArray, MapArray, NullArray, RecordBatch,
    RecordBatchOptions, StringArray, StructArray, Time32MillisecondArray, Time64MicrosecondArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{
    DataType, Field, Fields, IntervalMonthDayNano, Schema as ArrowSchema, SchemaRef, TimeUnit, i256,
};
use datafusion::arrow::error::ArrowError;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties};
use futures::StreamExt;

/// The Avro schemas of a topic bound to a subject, as SQL reads them.
pub trait ValueSchema: fmt::Debug + Send + Sync + 'static {
    /// The schema rows are read as: the subject's latest version when the query started.
    fn reader(&self) -> &Schema;
    /// The schema values framed with global id `id` were written with, or `None` when no
    /// schema has that id. Called once per id and stream.
    fn writer(&self, id: u32) -> Option<Schema>;
}

/// The column of a non-record reader schema.
const WHOLE_VALUE_COLUMN: &str = "value_avro";

/// How one reader schema is laid out in Arrow (see the module docs for the mapping).
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Null,
    Boolean,
    Int32,
    Int64,
    Float32,
    Float64,
    /// `bytes`, `fixed`, decimals too wide for `Decimal256` (their unscaled bytes).
    Binary,
    /// `string`, `enum`, `uuid`, `big-decimal`.
    Utf8,
    /// Unions of two or more non-null branches and recursive references: JSON text.
    Json,
    Decimal128(u8, i8),
    Decimal256(u8, i8),
    Date32,
    TimeMillis,
    TimeMicros,
    /// The unit, and whether the instant is UTC (`timestamp-*`) or local (`local-timestamp-*`).
    Timestamp(TimeUnit, bool),
    Duration,
    List(Box<Shape>),
    Map(Box<Shape>),
    Struct(Vec<(String, Shape)>),
}

impl Shape {
    /// The shape of `schema`; `stack` holds the records being expanded (a reference to one of
    /// them is recursion, which Arrow cannot nest: JSON text).
    fn of(schema: &Schema, names: &NamesRef<'_>, stack: &mut Vec<Name>) -> Shape {
        match schema {
            Schema::Null => Shape::Null,
            Schema::Boolean => Shape::Boolean,
            Schema::Int => Shape::Int32,
            Schema::Long => Shape::Int64,
            Schema::Float => Shape::Float32,
            Schema::Double => Shape::Float64,
            Schema::Bytes | Schema::Fixed(_) => Shape::Binary,
            Schema::String | Schema::Enum(_) | Schema::Uuid(_) | Schema::BigDecimal => Shape::Utf8,
            Schema::Decimal(d) => Shape::decimal(d.precision, d.scale),
            Schema::Date => Shape::Date32,
            Schema::TimeMillis => Shape::TimeMillis,
            Schema::TimeMicros => Shape::TimeMicros,
            Schema::TimestampMillis => Shape::Timestamp(TimeUnit::Millisecond, true),
            Schema::TimestampMicros => Shape::Timestamp(TimeUnit::Microsecond, true),
            Schema::TimestampNanos => Shape::Timestamp(TimeUnit::Nanosecond, true),
            Schema::LocalTimestampMillis => Shape::Timestamp(TimeUnit::Millisecond, false),
            Schema::LocalTimestampMicros => Shape::Timestamp(TimeUnit::Microsecond, false),
            Schema::LocalTimestampNanos => Shape::Timestamp(TimeUnit::Nanosecond, false),
            Schema::Duration(_) => Shape::Duration,
            Schema::Array(a) => Shape::List(Box::new(Shape::of(&a.items, names, stack))),
            Schema::Map(m) => Shape::Map(Box::new(Shape::of(&m.types, names, stack))),
            Schema::Union(u) => {
                let branches: Vec<&Schema> = u.variants().iter().filter(|s| !matches!(s, Schema::Null)).collect();
                match branches.as_slice() {
                    [] => Shape::Null,
                    [one] => Shape::of(one, names, stack),
                    _ => Shape::Json,
                }
            }
            Schema::Record(r) => {
                if stack.contains(&r.name) {
                    return Shape::Json;
                }
                stack.push(r.name.clone());
                let fields = r.fields.iter().map(|f| (f.name.clone(), Shape::of(&f.schema, names, stack))).collect();
                stack.pop();
                Shape::Struct(fields)
            }
            Schema::Ref { name } => match names.get(name) {
                Some(s) if !stack.contains(name) => Shape::of(s, names, stack),
                _ => Shape::Json,
            },
        }
    }

    fn decimal(precision: usize, scale: usize) -> Shape {
        match (u8::try_from(precision), i8::try_from(scale)) {
            (Ok(p @ 1..=38), Ok(s)) if usize::from(p) >= scale => Shape::Decimal128(p, s),
            (Ok(p @ 39..=76), Ok(s)) if usize::from(p) >= scale => Shape::Decimal256(p, s),
            _ => Shape::Binary,
        }
    }

    fn data_type(&self) -> DataType {
        match self {
            Shape::Null => DataType::Null,
            Shape::Boolean => DataType::Boolean,
            Shape::Int32 => DataType::Int32,
            Shape::Int64 => DataType::Int64,
            Shape::Float32 => DataType::Float32,
            Shape::Float64 => DataType::Float64,
            Shape::Binary => DataType::Binary,
            Shape::Utf8 | Shape::Json => DataType::Utf8,
            Shape::Decimal128(p, s) => DataType::Decimal128(*p, *s),
            Shape::Decimal256(p, s) => DataType::Decimal256(*p, *s),
            Shape::Date32 => DataType::Date32,
            Shape::TimeMillis => DataType::Time32(TimeUnit::Millisecond),
            Shape::TimeMicros => DataType::Time64(TimeUnit::Microsecond),
            Shape::Timestamp(unit, utc) => DataType::Timestamp(*unit, utc.then(|| Arc::from("UTC"))),
            Shape::Duration => DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
            Shape::List(item) => DataType::List(Arc::new(Field::new_list_field(item.data_type(), true))),
            Shape::Map(value) => DataType::Map(Arc::new(map_entries(value)), false),
            Shape::Struct(fields) => DataType::Struct(struct_fields(fields)),
        }
    }
}

fn struct_fields(fields: &[(String, Shape)]) -> Fields {
    fields.iter().map(|(name, shape)| Field::new(name, shape.data_type(), true)).collect()
}

fn map_entries(value: &Shape) -> Field {
    let kv =
        Fields::from(vec![Field::new("keys", DataType::Utf8, false), Field::new("values", value.data_type(), true)]);
    Field::new("entries", DataType::Struct(kv), false)
}

/// One typed column: where its values come from and how they are laid out.
#[derive(Debug)]
struct Column {
    /// The reader record's field, or `None` for the whole value (a non-record reader schema).
    field: Option<(usize, String)>,
    shape: Shape,
}

/// The typed columns of one topic for one query: the reader schema's fields as Arrow fields, and
/// how to decode them.
#[derive(Debug)]
pub struct TypedColumns {
    schemas: Arc<dyn ValueSchema>,
    columns: Vec<Column>,
    fields: Fields,
}

impl TypedColumns {
    /// The typed columns of `schemas`' reader schema, named after its fields; a field whose name
    /// is already a column of `existing` (or another typed column) gets `value_` in front, as many
    /// times as it takes. `None` when the reader schema's named types do not resolve.
    pub fn new(schemas: Arc<dyn ValueSchema>, existing: &ArrowSchema) -> Option<Self> {
        let reader = schemas.reader();
        let resolved = ResolvedSchema::try_from(reader).ok()?;
        let names = resolved.get_names();
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        let mut taken: HashSet<String> = existing.fields().iter().map(|f| f.name().clone()).collect();
        let mut add = |name: &str, column: Column| {
            let mut name = name.to_string();
            while taken.contains(&name) {
                name = format!("value_{name}");
            }
            taken.insert(name.clone());
            fields.push(Field::new(name, column.shape.data_type(), true));
            columns.push(column);
        };
        match reader {
            Schema::Record(r) => {
                let mut stack = vec![r.name.clone()];
                for (i, f) in r.fields.iter().enumerate() {
                    let shape = Shape::of(&f.schema, names, &mut stack);
                    add(&f.name, Column { field: Some((i, f.name.clone())), shape });
                }
            }
            other => add(WHOLE_VALUE_COLUMN, Column { field: None, shape: Shape::of(other, names, &mut Vec::new()) }),
        }
        Some(Self { schemas, columns, fields: Fields::from(fields) })
    }

    /// The typed columns' fields, in the order [`Decoder::decode`] indexes them.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// A decoder with its own writer-schema cache.
    pub fn decoder(self: &Arc<Self>) -> Decoder {
        Decoder { typed: Arc::clone(self), writers: HashMap::new() }
    }

    /// Wraps `input` (whose column `value_index` is the stored `value`) in a plan whose columns
    /// are `outputs`: some of the input's, and some typed columns decoded from `value`.
    ///
    /// # Errors
    /// An internal error when an index is out of range (a bug).
    pub fn plan(
        self: &Arc<Self>,
        input: Arc<dyn ExecutionPlan>,
        value_index: usize,
        outputs: Vec<Output>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        TypedExec::try_new(Arc::clone(self), input, value_index, outputs).map(|e| Arc::new(e) as _)
    }
}

/// How a scan that wants typed columns reads: the other columns and `value` from the table's own
/// scan, then the typed columns decoded on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The projection to scan: the wanted columns before the typed ones, and `value`.
    pub base: Vec<usize>,
    /// Where `value` is in `base`.
    pub value_index: usize,
    /// The wanted columns, in order, from the scan or decoded.
    pub outputs: Vec<Output>,
}

impl TypedColumns {
    /// Splits `projection` over a table whose first `base_len` columns are scanned (`value` at
    /// `value_column`) and whose typed columns come after them; `None` when it wants no typed
    /// column (the scan then runs as it is, and the values are not decoded).
    pub fn split(&self, projection: Option<&Vec<usize>>, base_len: usize, value_column: usize) -> Option<Split> {
        let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..base_len + self.fields.len()).collect());
        if wanted.iter().all(|&i| i < base_len) {
            return None;
        }
        let mut base: Vec<usize> = Vec::new();
        let mut position = |i: usize| match base.iter().position(|&b| b == i) {
            Some(at) => at,
            None => {
                base.push(i);
                base.len() - 1
            }
        };
        let outputs = wanted
            .iter()
            .map(|&i| if i < base_len { Output::Input(position(i)) } else { Output::Typed(i - base_len) })
            .collect();
        let value_index = position(value_column);
        Some(Split { base, value_index, outputs })
    }
}

/// One output column of [`TypedColumns::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The input plan's column at this index.
    Input(usize),
    /// The typed column at this index of [`TypedColumns::fields`].
    Typed(usize),
}

/// Decodes framed values into typed columns, keeping the writer schemas it has looked up.
#[derive(Debug)]
pub struct Decoder {
    typed: Arc<TypedColumns>,
    /// Writer schemas by id (`None`: the registry does not know the id).
    writers: HashMap<u32, Option<Schema>>,
}

/// Magic byte `0`, the schema id, the body.
fn unframe(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, body) = bytes.split_first_chunk::<5>()?;
    let [0, a, b, c, d] = *head else { return None };
    Some((u32::from_be_bytes([a, b, c, d]), body))
}

impl Decoder {
    /// The typed columns `wanted` (indexes into [`TypedColumns::fields`]) of `values`, row for
    /// row. Rows whose value is null, not framed, of an unknown schema id, or not decodable with
    /// it (or not resolvable to the reader schema) are NULL in every column.
    ///
    /// # Errors
    /// When `values` is not a binary column, or an index is out of range (bugs).
    pub fn decode(&mut self, values: &dyn Array, wanted: &[usize]) -> Result<Vec<ArrayRef>> {
        let cast;
        let binary: &BinaryArray = match values.as_binary_opt::<i32>() {
            Some(b) => b,
            None => {
                cast = datafusion::arrow::compute::cast(values, &DataType::Binary)?;
                cast.as_binary::<i32>()
            }
        };
        let frames: Vec<Option<(u32, &[u8])>> =
            (0..binary.len()).map(|i| if binary.is_null(i) { None } else { unframe(binary.value(i)) }).collect();
        let ids: BTreeSet<u32> = frames.iter().flatten().map(|(id, _)| *id).collect();
        for id in &ids {
            let source = &self.typed.schemas;
            self.writers.entry(*id).or_insert_with(|| source.writer(*id));
        }
        // Decoding (and dropping the decoded values) recurses as deep as values nest: a batch
        // whose schemas allow unbounded nesting runs on a stack of its own, sized for the deepest
        // value allowed (see [`MAX_NESTING_BODY`]); other batches need no such stack.
        let nested = ids.iter().any(|id| self.writers.get(id).and_then(Option::as_ref).is_some_and(may_nest));
        if nested {
            stacker::grow(NESTING_STACK, || self.decode_frames(&frames, &ids, wanted))
        } else {
            self.decode_frames(&frames, &ids, wanted)
        }
    }

    /// [`Decoder::decode`] once the batch's frames are split and their writer schemas loaded.
    fn decode_frames(
        &self,
        frames: &[Option<(u32, &[u8])>],
        ids: &BTreeSet<u32>,
        wanted: &[usize],
    ) -> Result<Vec<ArrayRef>> {
        let source = &self.typed.schemas;
        let reader = source.reader();
        // Built per batch: a datum reader borrows its schemas, and resolving names is cheap next
        // to decoding a batch.
        let reader_form = reader.canonical_form();
        let mut resolved = BTreeSet::new();
        let readers: HashMap<u32, GenericDatumReader<'_>> = ids
            .iter()
            .filter_map(|id| {
                let writer = self.writers.get(id)?.as_ref()?;
                // Resolution is needed only across versions (and apache-avro's grows faster than
                // linearly with nesting): a value of the latest version is read as it is.
                let builder = GenericDatumReader::builder(writer);
                let r = if writer.canonical_form() == reader_form {
                    builder.build()
                } else {
                    resolved.insert(*id);
                    builder.reader_schema(reader).build()
                };
                Some((*id, r.ok()?))
            })
            .collect();
        // apache-avro decodes nested values recursively with no depth limit, and a recursive
        // schema lets every byte of a value open one more level: bounded bodies bound the depth.
        let deep: BTreeSet<u32> = ids
            .iter()
            .copied()
            .filter(|id| self.writers.get(id).and_then(Option::as_ref).is_some_and(may_nest))
            .collect();
        let rows: Vec<Option<Value>> = frames
            .iter()
            .map(|frame| {
                let (id, mut body) = (*frame)?;
                if deep.contains(&id) {
                    let limit = if resolved.contains(&id) { MAX_RESOLVED_NESTING_BODY } else { MAX_NESTING_BODY };
                    if body.len() > limit {
                        return None;
                    }
                }
                let value = readers.get(&id)?.read_value(&mut body).ok()?;
                // The body is exactly one value: trailing bytes mean it is not what it claims.
                body.is_empty().then_some(value)
            })
            .collect();
        wanted
            .iter()
            .map(|&j| {
                let column = self
                    .typed
                    .columns
                    .get(j)
                    .ok_or_else(|| DataFusionError::Internal(format!("typed column {j} does not exist (a bug)")))?;
                let values: Vec<Option<&Value>> = match &column.field {
                    Some((i, name)) => rows.iter().map(|r| record_field(r.as_ref()?, *i, name)).collect(),
                    None => rows.iter().map(Option::as_ref).collect(),
                };
                Ok(build(&column.shape, &values)?)
            })
            .collect()
    }
}

/// Largest value decoded with a schema that may nest without bound (see [`may_nest`]): each level
/// of nesting takes at least one byte, so this bounds the decoder's recursion. Larger such values
/// read as NULL.
pub(crate) const MAX_NESTING_BODY: usize = 1024;

/// The same limit for values that must also be resolved to a newer version: apache-avro's
/// resolution grows much faster than linearly with nesting (a 300-level value took minutes).
pub(crate) const MAX_RESOLVED_NESTING_BODY: usize = 64;

/// The stack a batch is decoded on: room for [`MAX_NESTING_BODY`] levels at the ~64 KiB each a
/// debug build's decoder takes (release far less). Only the pages a decode touches are committed.
const NESTING_STACK: usize = 256 << 20;

/// Whether values of `schema` can nest without bound: it refers to a named type (a reference,
/// which is how a type contains itself). Plain nesting is bounded by the schema itself.
fn may_nest(schema: &Schema) -> bool {
    match schema {
        Schema::Ref { .. } => true,
        Schema::Array(a) => may_nest(&a.items),
        Schema::Map(m) => may_nest(&m.types),
        Schema::Union(u) => u.variants().iter().any(may_nest),
        Schema::Record(r) => r.fields.iter().any(|f| may_nest(&f.schema)),
        _ => false,
    }
}

/// Field `i` (named `name`) of a resolved record (fields come in reader order; the name is checked).
fn record_field<'a>(value: &'a Value, i: usize, name: &str) -> Option<&'a Value> {
    let Value::Record(fields) = value else { return None };
    match fields.get(i) {
        Some((n, v)) if n == name => Some(v),
        _ => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
    }
}

/// A value with its union wrappers taken off; `None` for null.
fn plain(value: Option<&Value>) -> Option<&Value> {
    let mut v = value?;
    loop {
        match v {
            Value::Union(_, inner) => v = inner,
            Value::Null => return None,
            other => return Some(other),
        }
    }
}

fn validity(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|v| *v) { None } else { Some(NullBuffer::from(valid)) }
}

/// The unscaled value of an Avro decimal (big-endian two's complement) in `N` bytes, if it fits.
fn unscaled<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0 };
    let mut out = [fill; N];
    if bytes.len() > N {
        let (extra, rest) = bytes.split_at(bytes.len() - N);
        let sign_kept = rest.first().is_some_and(|b| (b & 0x80 != 0) == negative);
        if !sign_kept || extra.iter().any(|b| *b != fill) {
            return None;
        }
        out.copy_from_slice(rest);
    } else {
        out[N - bytes.len()..].copy_from_slice(bytes);
    }
    Some(out)
}

fn decimal_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Decimal(d) => Vec::<u8>::try_from(d).ok(),
        _ => None,
    }
}

/// One Arrow array of `shape` from resolved values (`None` is NULL).
fn build(shape: &Shape, values: &[Option<&Value>]) -> Result<ArrayRef, ArrowError> {
    let vals: Vec<Option<&Value>> = values.iter().map(|v| plain(*v)).collect();
    let n = vals.len();
    macro_rules! primitive {
        ($array:ty, $($pattern:pat => $out:expr),+) => {
            Arc::new(vals.iter().map(|v| match v { $(Some($pattern) => Some($out),)+ _ => None }).collect::<$array>())
        };
    }
    let array: ArrayRef = match shape {
        Shape::Null => Arc::new(NullArray::new(n)),
        Shape::Boolean => primitive!(BooleanArray, Value::Boolean(b) => *b),
        Shape::Int32 => primitive!(Int32Array, Value::Int(x) => *x),
        Shape::Int64 => primitive!(Int64Array, Value::Long(x) => *x),
        Shape::Float32 => primitive!(Float32Array, Value::Float(x) => *x),
        Shape::Float64 => primitive!(Float64Array, Value::Double(x) => *x),
        Shape::Date32 => primitive!(Date32Array, Value::Date(x) => *x),
        Shape::TimeMillis => primitive!(Time32MillisecondArray, Value::TimeMillis(x) => *x),
        Shape::TimeMicros => primitive!(Time64MicrosecondArray, Value::TimeMicros(x) => *x),
        Shape::Timestamp(unit, utc) => {
            let tz = utc.then_some("UTC");
            match unit {
                TimeUnit::Millisecond => Arc::new(
                    vals.iter()
                        .map(|v| match v {
                            Some(Value::TimestampMillis(x) | Value::LocalTimestampMillis(x)) => Some(*x),
                            _ => None,
                        })
                        .collect::<TimestampMillisecondArray>()
                        .with_timezone_opt(tz),
                ),
                TimeUnit::Microsecond => Arc::new(
                    vals.iter()
                        .map(|v| match v {
                            Some(Value::TimestampMicros(x) | Value::LocalTimestampMicros(x)) => Some(*x),
                            _ => None,
                        })
                        .collect::<TimestampMicrosecondArray>()
                        .with_timezone_opt(tz),
                ),
                TimeUnit::Nanosecond | TimeUnit::Second => Arc::new(
                    vals.iter()
                        .map(|v| match v {
                            Some(Value::TimestampNanos(x) | Value::LocalTimestampNanos(x)) => Some(*x),
                            _ => None,
                        })
                        .collect::<TimestampNanosecondArray>()
                        .with_timezone_opt(tz),
                ),
            }
        }
        Shape::Duration => Arc::new(
            vals.iter()
                .map(|v| {
                    let Some(Value::Duration(d)) = v else { return None };
                    // Months or days beyond i32 do not fit the interval type: NULL, not wrapped.
                    let months = i32::try_from(u32::from(d.months())).ok()?;
                    let days = i32::try_from(u32::from(d.days())).ok()?;
                    Some(IntervalMonthDayNano::new(months, days, i64::from(u32::from(d.millis())) * 1_000_000))
                })
                .collect::<IntervalMonthDayNanoArray>(),
        ),
        Shape::Decimal128(p, s) => Arc::new(
            vals.iter()
                .map(|v| decimal_bytes((*v)?).and_then(|b| unscaled::<16>(&b)).map(i128::from_be_bytes))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(*p, *s)?,
        ),
        Shape::Decimal256(p, s) => Arc::new(
            vals.iter()
                .map(|v| decimal_bytes((*v)?).and_then(|b| unscaled::<32>(&b)).map(i256::from_be_bytes))
                .collect::<Decimal256Array>()
                .with_precision_and_scale(*p, *s)?,
        ),
        Shape::Utf8 => Arc::new(
            vals.iter()
                .map(|v| match v {
                    Some(Value::String(s) | Value::Enum(_, s)) => Some(Cow::Borrowed(s.as_str())),
                    Some(Value::Uuid(u)) => Some(Cow::Owned(u.to_string())),
                    Some(Value::BigDecimal(d)) => Some(Cow::Owned(d.to_string())),
                    _ => None,
                })
                .collect::<StringArray>(),
        ),
        Shape::Json => Arc::new(
            vals.iter()
                .map(|v| serde_json::Value::try_from((*v)?.clone()).ok().map(|j| j.to_string()))
                .collect::<StringArray>(),
        ),
        Shape::Binary => Arc::new(
            vals.iter()
                .map(|v| match v {
                    Some(Value::Bytes(b) | Value::Fixed(_, b)) => Some(Cow::Borrowed(b.as_slice())),
                    Some(d @ Value::Decimal(_)) => decimal_bytes(d).map(Cow::Owned),
                    _ => None,
                })
                .collect::<BinaryArray>(),
        ),
        Shape::List(item) => {
            let (mut lengths, mut items, mut valid) = (Vec::with_capacity(n), Vec::new(), Vec::with_capacity(n));
            for v in &vals {
                match v {
                    Some(Value::Array(xs)) => {
                        lengths.push(xs.len());
                        items.extend(xs.iter().map(Some));
                        valid.push(true);
                    }
                    _ => {
                        lengths.push(0);
                        valid.push(false);
                    }
                }
            }
            let child = build(item, &items)?;
            let field = Arc::new(Field::new_list_field(item.data_type(), true));
            Arc::new(ListArray::try_new(field, OffsetBuffer::from_lengths(lengths), child, validity(valid))?)
        }
        Shape::Map(value) => {
            let (mut lengths, mut keys, mut items, mut valid) =
                (Vec::with_capacity(n), Vec::new(), Vec::new(), Vec::with_capacity(n));
            for v in &vals {
                match v {
                    Some(Value::Map(entries)) => {
                        let mut sorted: Vec<(&String, &Value)> = entries.iter().collect();
                        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                        lengths.push(sorted.len());
                        for (k, x) in sorted {
                            keys.push(k.as_str());
                            items.push(Some(x));
                        }
                        valid.push(true);
                    }
                    _ => {
                        lengths.push(0);
                        valid.push(false);
                    }
                }
            }
            let entries_field = map_entries(value);
            let DataType::Struct(kv) = entries_field.data_type() else {
                return Err(ArrowError::InvalidArgumentError("map entries are not a struct (a bug)".to_string()));
            };
            let keys: ArrayRef = Arc::new(StringArray::from(keys));
            let entries = StructArray::try_new(kv.clone(), vec![keys, build(value, &items)?], None)?;
            Arc::new(MapArray::try_new(
                Arc::new(entries_field),
                OffsetBuffer::from_lengths(lengths),
                entries,
                validity(valid),
                false,
            )?)
        }
        Shape::Struct(fields) => {
            let valid: Vec<bool> = vals.iter().map(|v| matches!(v, Some(Value::Record(_)))).collect();
            let nulls = validity(valid);
            if fields.is_empty() {
                return Ok(Arc::new(StructArray::new_empty_fields(n, nulls)));
            }
            let children = fields
                .iter()
                .enumerate()
                .map(|(i, (name, shape))| {
                    let child: Vec<Option<&Value>> = vals.iter().map(|v| record_field((*v)?, i, name)).collect();
                    build(shape, &child)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(StructArray::try_new(struct_fields(fields), children, nulls)?)
        }
    };
    Ok(array)
}

/// The table scan's columns plus typed columns decoded from its `value` column.
#[derive(Debug)]
struct TypedExec {
    typed: Arc<TypedColumns>,
    input: Arc<dyn ExecutionPlan>,
    value_index: usize,
    outputs: Vec<Output>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl TypedExec {
    fn try_new(
        typed: Arc<TypedColumns>,
        input: Arc<dyn ExecutionPlan>,
        value_index: usize,
        outputs: Vec<Output>,
    ) -> Result<Self> {
        let input_schema = input.schema();
        let out_of_range = |what: &str, i: usize| DataFusionError::Internal(format!("{what} {i} out of range (a bug)"));
        if value_index >= input_schema.fields().len() {
            return Err(out_of_range("value column", value_index));
        }
        let fields = outputs
            .iter()
            .map(|o| match *o {
                Output::Input(i) => {
                    input_schema.fields().get(i).cloned().ok_or_else(|| out_of_range("input column", i))
                }
                Output::Typed(j) => typed.fields.get(j).cloned().ok_or_else(|| out_of_range("typed column", j)),
            })
            .collect::<Result<Vec<_>>>()?;
        let schema = Arc::new(ArrowSchema::new(fields));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            input.pipeline_behavior(),
            input.boundedness(),
        ));
        Ok(Self { typed, input, value_index, outputs, schema, properties })
    }
}

impl DisplayAs for TypedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let typed: Vec<&str> = self
            .outputs
            .iter()
            .filter_map(|o| match o {
                Output::Typed(j) => self.typed.fields.get(*j).map(|f| f.name().as_str()),
                Output::Input(_) => None,
            })
            .collect();
        write!(f, "AvroDecodeExec: typed=[{}]", typed.join(", "))
    }
}

impl ExecutionPlan for TypedExec {
    fn name(&self) -> &str {
        "AvroDecodeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let input = match (children.pop(), children.is_empty()) {
            (Some(input), true) => input,
            _ => return Err(DataFusionError::Internal("AvroDecodeExec takes one child (a bug)".to_string())),
        };
        let exec = TypedExec::try_new(Arc::clone(&self.typed), input, self.value_index, self.outputs.clone())?;
        Ok(Arc::new(exec))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let mut decoder = self.typed.decoder();
        let wanted: Vec<usize> = self
            .outputs
            .iter()
            .filter_map(|o| match o {
                Output::Typed(j) => Some(*j),
                Output::Input(_) => None,
            })
            .collect();
        let (outputs, value_index, schema) = (self.outputs.clone(), self.value_index, Arc::clone(&self.schema));
        let out_schema = Arc::clone(&schema);
        let stream = input.map(move |batch| {
            let batch = batch?;
            let mut typed = decoder.decode(batch.column(value_index), &wanted)?.into_iter();
            let columns = outputs
                .iter()
                .map(|o| match o {
                    Output::Input(i) => Ok(Arc::clone(batch.column(*i))),
                    Output::Typed(_) => typed
                        .next()
                        .ok_or_else(|| DataFusionError::Internal("a typed column went missing (a bug)".to_string())),
                })
                .collect::<Result<Vec<_>>>()?;
            let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
            Ok(RecordBatch::try_new_with_options(Arc::clone(&out_schema), columns, &options)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::{Days, Duration, Millis, Months};
    use datafusion::arrow::array::{BinaryBuilder, Int64Array};

    use super::*;

    const V1: &str = r#"{"type":"record","name":"User","namespace":"t","fields":[
        {"name":"id","type":"long"},
        {"name":"name","type":"string"},
        {"name":"address","type":{"type":"record","name":"Address","fields":[
            {"name":"city","type":"string"},{"name":"zip","type":["null","string"],"default":null}]}}]}"#;
    const V2: &str = r#"{"type":"record","name":"User","namespace":"t","fields":[
        {"name":"id","type":"long"},
        {"name":"name","type":"string"},
        {"name":"address","type":{"type":"record","name":"Address","fields":[
            {"name":"city","type":"string"},{"name":"zip","type":["null","string"],"default":null}]}},
        {"name":"tier","type":"string","default":"basic"},
        {"name":"score","type":"int","default":7}]}"#;

    #[derive(Debug)]
    struct Registry {
        reader: Schema,
        by_id: HashMap<u32, Schema>,
    }

    impl ValueSchema for Registry {
        fn reader(&self) -> &Schema {
            &self.reader
        }
        fn writer(&self, id: u32) -> Option<Schema> {
            self.by_id.get(&id).cloned()
        }
    }

    fn parse(text: &str) -> Schema {
        Schema::parse_str(text).unwrap()
    }

    fn frame(id: u32, schema: &Schema, value: Value) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend(GenericDatumWriter::builder(schema).build().unwrap().write_value_to_vec(value).unwrap());
        out
    }

    fn typed_of(reader: &str, existing: &ArrowSchema) -> Arc<TypedColumns> {
        let registry = Registry { reader: parse(reader), by_id: HashMap::new() };
        Arc::new(TypedColumns::new(Arc::new(registry), existing).unwrap())
    }

    fn types(typed: &TypedColumns) -> Vec<(String, DataType)> {
        typed.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect()
    }

    #[test]
    fn every_avro_type_maps_to_its_arrow_type() {
        let schema = r#"{"type":"record","name":"All","fields":[
            {"name":"n","type":"null"},{"name":"b","type":"boolean"},{"name":"i","type":"int"},
            {"name":"l","type":"long"},{"name":"f","type":"float"},{"name":"d","type":"double"},
            {"name":"by","type":"bytes"},{"name":"s","type":"string"},
            {"name":"e","type":{"type":"enum","name":"Colour","symbols":["RED","GREEN"]}},
            {"name":"fx","type":{"type":"fixed","name":"F4","size":4}},
            {"name":"opt","type":["null","long"]},{"name":"opt2","type":["string","null"]},
            {"name":"multi","type":["null","long","string"]},
            {"name":"arr","type":{"type":"array","items":"int"}},
            {"name":"m","type":{"type":"map","values":"double"}},
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"tsu","type":{"type":"long","logicalType":"timestamp-micros"}},
            {"name":"lts","type":{"type":"long","logicalType":"local-timestamp-millis"}},
            {"name":"date","type":{"type":"int","logicalType":"date"}},
            {"name":"tm","type":{"type":"int","logicalType":"time-millis"}},
            {"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
            {"name":"wide","type":{"type":"bytes","logicalType":"decimal","precision":50,"scale":0}},
            {"name":"id","type":{"type":"string","logicalType":"uuid"}},
            {"name":"next","type":["null","All"],"default":null}]}"#;
        let typed = typed_of(schema, &ArrowSchema::empty());
        let utc = Some(Arc::from("UTC"));
        let expected = vec![
            ("n", DataType::Null),
            ("b", DataType::Boolean),
            ("i", DataType::Int32),
            ("l", DataType::Int64),
            ("f", DataType::Float32),
            ("d", DataType::Float64),
            ("by", DataType::Binary),
            ("s", DataType::Utf8),
            ("e", DataType::Utf8),
            ("fx", DataType::Binary),
            ("opt", DataType::Int64),
            ("opt2", DataType::Utf8),
            ("multi", DataType::Utf8),
            ("arr", DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)))),
            ("m", DataType::Map(Arc::new(map_entries(&Shape::Float64)), false)),
            ("ts", DataType::Timestamp(TimeUnit::Millisecond, utc.clone())),
            ("tsu", DataType::Timestamp(TimeUnit::Microsecond, utc)),
            ("lts", DataType::Timestamp(TimeUnit::Millisecond, None)),
            ("date", DataType::Date32),
            ("tm", DataType::Time32(TimeUnit::Millisecond)),
            ("dec", DataType::Decimal128(10, 2)),
            ("wide", DataType::Decimal256(50, 0)),
            ("id", DataType::Utf8),
            // A recursive reference cannot nest in Arrow: JSON text.
            ("next", DataType::Utf8),
        ];
        let expected: Vec<(String, DataType)> = expected.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
        assert_eq!(types(&typed), expected);
        assert!(typed.fields().iter().all(|f| f.is_nullable()));

        // Nested records are structs; a non-record schema is one column.
        let nested = typed_of(V1, &ArrowSchema::empty());
        let address = DataType::Struct(Fields::from(vec![
            Field::new("city", DataType::Utf8, true),
            Field::new("zip", DataType::Utf8, true),
        ]));
        assert_eq!(types(&nested)[2], ("address".to_string(), address));
        assert_eq!(types(&typed_of(r#""string""#, &ArrowSchema::empty())), vec![("value_avro".into(), DataType::Utf8)]);
    }

    #[test]
    fn names_taken_by_table_columns_get_a_value_prefix() {
        let existing = ArrowSchema::new(vec![
            Field::new("value", DataType::Binary, true),
            Field::new("timestamp", DataType::Int64, false),
            Field::new("value_timestamp", DataType::Int64, false),
        ]);
        let schema = r#"{"type":"record","name":"R","fields":[{"name":"value","type":"int"},
            {"name":"timestamp","type":"long"},{"name":"other","type":"string"}]}"#;
        let names: Vec<String> = types(&typed_of(schema, &existing)).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["value_value", "value_value_timestamp", "other"]);
    }

    #[test]
    fn old_records_resolve_to_the_latest_schema_with_defaults() {
        let (v1, v2) = (parse(V1), parse(V2));
        let registry = Registry { reader: v2.clone(), by_id: HashMap::from([(1, v1.clone()), (2, v2.clone())]) };
        let typed = Arc::new(TypedColumns::new(Arc::new(registry), &ArrowSchema::empty()).unwrap());
        let address = |city: &str, zip: Option<&str>| {
            Value::Record(vec![
                ("city".into(), Value::String(city.into())),
                (
                    "zip".into(),
                    zip.map_or(Value::Union(0, Box::new(Value::Null)), |z| {
                        Value::Union(1, Box::new(Value::String(z.into())))
                    }),
                ),
            ])
        };
        let old = Value::Record(vec![
            ("id".into(), Value::Long(1)),
            ("name".into(), Value::String("ada".into())),
            ("address".into(), address("Paris", Some("75001"))),
        ]);
        let new = Value::Record(vec![
            ("id".into(), Value::Long(2)),
            ("name".into(), Value::String("bob".into())),
            ("address".into(), address("Oslo", None)),
            ("tier".into(), Value::String("gold".into())),
            ("score".into(), Value::Int(42)),
        ]);
        let mut values = BinaryBuilder::new();
        values.append_value(frame(1, &v1, old.clone()));
        values.append_value(frame(2, &v2, new));
        values.append_value(b"{\"id\": 3}"); // not framed
        values.append_value([0, 0, 0, 0, 9, 2]); // unknown schema id
        values.append_null();
        let mut truncated = frame(1, &v1, old.clone());
        truncated.truncate(7);
        values.append_value(truncated); // does not decode
        let values = values.finish();

        let mut decoder = typed.decoder();
        let columns = decoder.decode(&values, &[0, 2, 3, 4]).unwrap();
        let ids = columns[0].as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.iter().collect::<Vec<_>>(), [Some(1), Some(2), None, None, None, None]);
        let tiers = columns[2].as_string::<i32>();
        assert_eq!(tiers.iter().collect::<Vec<_>>(), [Some("basic"), Some("gold"), None, None, None, None]);
        let scores = columns[3].as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        assert_eq!(scores.iter().collect::<Vec<_>>(), [Some(7), Some(42), None, None, None, None]);
        let address = columns[1].as_struct();
        assert_eq!(address.null_count(), 4);
        let city = address.column_by_name("city").unwrap().as_string::<i32>();
        let zip = address.column_by_name("zip").unwrap().as_string::<i32>();
        assert_eq!((city.value(0), city.value(1)), ("Paris", "Oslo"));
        assert_eq!((zip.value(0), zip.is_null(1)), ("75001", true));
        // Each id's writer schema is looked up once per decoder, known or not.
        assert_eq!(decoder.writers.len(), 3);
    }

    #[test]
    fn collections_decimals_unions_and_times_build_arrays() {
        let schema = parse(
            r#"{"type":"record","name":"R","fields":[
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"attrs","type":{"type":"map","values":"long"}},
            {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
            {"name":"either","type":["long","string"]},
            {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"colour","type":{"type":"enum","name":"C","symbols":["RED","GREEN"]}},
            {"name":"wait","type":{"type":"fixed","name":"D","size":12,"logicalType":"duration"}}]}"#,
        );
        let registry = Registry { reader: schema.clone(), by_id: HashMap::from([(5, schema.clone())]) };
        let typed = Arc::new(TypedColumns::new(Arc::new(registry), &ArrowSchema::empty()).unwrap());
        let value = Value::Record(vec![
            ("tags".into(), Value::Array(vec![Value::String("a".into()), Value::String("b".into())])),
            ("attrs".into(), Value::Map(HashMap::from([("y".into(), Value::Long(2)), ("x".into(), Value::Long(1))]))),
            ("price".into(), Value::Decimal(apache_avro::Decimal::from((-1234i32).to_be_bytes()))),
            ("either".into(), Value::Union(1, Box::new(Value::String("s".into())))),
            ("at".into(), Value::TimestampMillis(1_700_000_000_000)),
            ("colour".into(), Value::Enum(1, "GREEN".into())),
            ("wait".into(), Value::Duration(Duration::new(Months::new(1), Days::new(2), Millis::new(3)))),
        ]);
        let mut values = BinaryBuilder::new();
        values.append_value(frame(5, &schema, value));
        let columns = typed.decoder().decode(&values.finish(), &[0, 1, 2, 3, 4, 5, 6]).unwrap();
        let tags = columns[0].as_list::<i32>().value(0);
        assert_eq!(tags.as_string::<i32>().iter().collect::<Vec<_>>(), [Some("a"), Some("b")]);
        let attrs = columns[1].as_map();
        assert_eq!(attrs.keys().as_string::<i32>().iter().collect::<Vec<_>>(), [Some("x"), Some("y")]);
        let price = columns[2].as_primitive::<datafusion::arrow::datatypes::Decimal128Type>();
        assert_eq!(price.value_as_string(0), "-12.34");
        assert_eq!(columns[3].as_string::<i32>().value(0), "\"s\"");
        let at = columns[4].as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
        assert_eq!(at.value(0), 1_700_000_000_000);
        assert_eq!(columns[5].as_string::<i32>().value(0), "GREEN");
        let wait = columns[6].as_primitive::<datafusion::arrow::datatypes::IntervalMonthDayNanoType>();
        assert_eq!(wait.value(0), IntervalMonthDayNano::new(1, 2, 3_000_000));
    }

    #[test]
    fn a_projection_with_typed_columns_scans_value_too() {
        let typed = typed_of(V2, &ArrowSchema::empty());
        // Table: 3 scanned columns (value at 1), then id, name, address, tier, score.
        assert_eq!(typed.split(Some(&vec![0, 2]), 3, 1), None);
        assert_eq!(typed.split(Some(&vec![]), 3, 1), None);
        let split = typed.split(Some(&vec![6, 2, 3, 2]), 3, 1).unwrap();
        assert_eq!(split.base, [2, 1]);
        assert_eq!(split.value_index, 1);
        assert_eq!(split.outputs, [Output::Typed(3), Output::Input(0), Output::Typed(0), Output::Input(0)]);
        let all = typed.split(None, 3, 1).unwrap();
        assert_eq!((all.base, all.value_index), (vec![0, 1, 2], 1));
        assert_eq!(all.outputs.len(), 8);
    }

    #[test]
    fn deeply_nested_values_of_a_recursive_schema_read_as_null_instead_of_overflowing_the_stack() {
        let list = parse(
            r#"{"type":"record","name":"Node","fields":[
            {"name":"v","type":"int"},{"name":"next","type":["null","Node"],"default":null}]}"#,
        );
        assert!(may_nest(&list));
        assert!(!may_nest(&parse(V2)));
        let registry = Registry { reader: list.clone(), by_id: HashMap::from([(9, list.clone())]) };
        let typed = Arc::new(TypedColumns::new(Arc::new(registry), &ArrowSchema::empty()).unwrap());
        // A short list decodes: 1 -> 2 -> end.
        let node = |v: i32, next: Value| Value::Record(vec![("v".into(), Value::Int(v)), ("next".into(), next)]);
        let short = node(1, Value::Union(1, Box::new(node(2, Value::Union(0, Box::new(Value::Null))))));
        // A hostile value: a million levels, two bytes each (v = 0, then union branch 1), that no
        // producer through the registry could have written (JSON input is depth-limited).
        let mut hostile = vec![0, 0, 0, 0, 9];
        for _ in 0..1_000_000 {
            hostile.extend_from_slice(&[0, 2]);
        }
        hostile.extend_from_slice(&[0, 0]);
        let mut values = BinaryBuilder::new();
        values.append_value(frame(9, &list, short));
        values.append_value(&hostile);
        let columns = typed.decoder().decode(&values.finish(), &[0, 1]).unwrap();
        let v = columns[0].as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        assert_eq!((v.is_valid(0), v.value(0)), (true, 1));
        assert!(columns[1].as_string::<i32>().value(0).contains('2'), "the nested node as JSON text");
        assert!(v.is_null(1) && columns[1].is_null(1), "too deep to decode safely: NULL");

        // At the limit (one byte a level, the deepest a body of that size can go) decoding is
        // safe, debug build included: it runs on a stack of its own.
        let chain = parse(r#"{"type":"record","name":"C","fields":[{"name":"next","type":["null","C"]}]}"#);
        let registry = Registry { reader: chain.clone(), by_id: HashMap::from([(3, chain.clone())]) };
        let typed = Arc::new(TypedColumns::new(Arc::new(registry), &ArrowSchema::empty()).unwrap());
        let mut deepest = vec![0, 0, 0, 0, 3];
        deepest.extend(std::iter::repeat_n(2u8, MAX_NESTING_BODY - 1));
        deepest.push(0);
        let mut values = BinaryBuilder::new();
        values.append_value(&deepest);
        let columns = typed.decoder().decode(&values.finish(), &[0]).unwrap();
        assert!(columns[0].is_valid(0), "decoded, as JSON text of the nested chain");
    }

    #[test]
    fn decimal_bytes_fit_or_do_not() {
        assert_eq!(unscaled::<16>(&[0xff, 0x38]).map(i128::from_be_bytes), Some(-200));
        assert_eq!(unscaled::<16>(&[]).map(i128::from_be_bytes), Some(0));
        let mut wide = vec![0u8; 20];
        wide[19] = 5;
        assert_eq!(unscaled::<16>(&wide).map(i128::from_be_bytes), Some(5));
        wide[0] = 1;
        assert_eq!(unscaled::<16>(&wide), None);
    }
}

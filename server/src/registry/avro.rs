//! Avro schemas as the registry keeps them: parsing (the `apache-avro` crate), the normalized text
//! that identifies a schema, and the two codecs validated produce and decoded fetch need — JSON
//! value → Avro binary and Avro binary → JSON value — written against the schema directly so that
//! every mismatch names the field it is about.
//!
//! Wire framing of a registered value (the convention every schema-registry client uses): magic
//! byte `0`, the schema id as 4 bytes big-endian, then the Avro binary body.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, RecordSchema, ResolvedSchema, UuidSchema,
};
use serde_json::{Map, Number, Value};

use super::encoder::Compiled;

/// The magic byte that starts a framed value.
pub const MAGIC: u8 = 0;
/// Magic byte + 4-byte schema id.
pub const FRAME_HEADER: usize = 5;
/// Deepest nesting of values the codecs follow (a recursive schema could otherwise exhaust the
/// stack on hostile input).
const MAX_DEPTH: usize = 128;
/// Most array items or map entries one decode produces, whatever the block counts claim.
const MAX_ITEMS: u64 = 1 << 24;

/// A schema that cannot be registered: unparseable JSON, unknown type names, invalid defaults.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid Avro schema: {reason}")]
pub struct InvalidSchema {
    pub reason: String,
}

/// A value that does not match a schema, with the path of the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// `address.zip`, `items[2]`, or empty for the top level.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "field `{}`: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for Mismatch {}

/// Why a JSON text could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum JsonTextError {
    /// The text is not JSON.
    #[error("{0}")]
    NotJson(#[source] serde_json::Error),
    /// The JSON does not match the schema.
    #[error("{0}")]
    Mismatch(#[source] Mismatch),
}

/// A parsed schema with its named types resolved, ready to check, encode and decode.
#[derive(Debug, Clone)]
pub struct AvroSchema {
    schema: Schema,
    names: HashMap<Name, Schema>,
    normalized: String,
    /// The one-pass JSON text encoder, compiled on first use (once per cached schema id).
    compiled: OnceLock<Arc<Compiled>>,
}

impl AvroSchema {
    /// Parses a schema as a client submits it (a JSON string).
    ///
    /// # Errors
    /// [`InvalidSchema`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, InvalidSchema> {
        let json: Value = serde_json::from_str(text).map_err(|e| InvalidSchema { reason: format!("not JSON: {e}") })?;
        let schema = Schema::parse(&json).map_err(|e| InvalidSchema { reason: e.to_string() })?;
        let names = ResolvedSchema::new(&schema)
            .map_err(|e| InvalidSchema { reason: e.to_string() })?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        // Keeps what matters to resolution (defaults, aliases, logical types) and drops
        // whitespace and key order: the text that identifies the schema.
        let normalized = serde_json::to_string(&schema).map_err(|e| InvalidSchema { reason: e.to_string() })?;
        Ok(Self { schema, names, normalized, compiled: OnceLock::new() })
    }

    /// The schema as stored and served: compact JSON as the parser understood it.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }

    /// The Avro "Parsing Canonical Form" (no doc, defaults or aliases).
    pub fn canonical_form(&self) -> String {
        self.schema.canonical_form()
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Follows a reference to a named type.
    pub(crate) fn deref<'a>(&'a self, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => match self.names.get(name) {
                Some(s) => s,
                None => schema,
            },
            other => other,
        }
    }

    /// Encodes a JSON value as Avro binary, appending to `out`. On error, `out` may hold part of
    /// the value.
    ///
    /// # Errors
    /// [`Mismatch`] naming the field that does not fit.
    pub fn encode_json(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        let mut path = Vec::new();
        self.encode(&self.schema, value, out, &mut path)
    }

    /// Encodes a JSON text as Avro binary, appending to `out`: in one pass over the text when it
    /// can (see `encoder.rs`), else through a parsed [`Value`] and [`AvroSchema::encode_json`],
    /// which decides what is accepted and words every error. On error, `out` may hold part of
    /// the value.
    ///
    /// # Errors
    /// [`JsonTextError::NotJson`], or [`JsonTextError::Mismatch`] naming the field.
    pub fn encode_json_text(&self, text: &[u8], out: &mut Vec<u8>) -> Result<(), JsonTextError> {
        if self.compiled().encode(text, out) {
            return Ok(());
        }
        let value: Value = serde_json::from_slice(text).map_err(JsonTextError::NotJson)?;
        self.encode_json(&value, out).map_err(JsonTextError::Mismatch)
    }

    fn compiled(&self) -> &Compiled {
        self.compiled.get_or_init(|| Arc::new(Compiled::new(self)))
    }

    /// Whether the one-pass encoder alone accepts `text` (appending its encoding to `out`).
    #[cfg(test)]
    pub(crate) fn encode_json_text_fast(&self, text: &[u8], out: &mut Vec<u8>) -> bool {
        self.compiled().encode(text, out)
    }

    /// Encodes a JSON value as `schema` (a part of this schema), as [`AvroSchema::encode_json`]
    /// does for the whole.
    pub(crate) fn encode_json_with(&self, schema: &Schema, value: &Value, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        self.encode(schema, value, out, &mut Vec::new())
    }

    /// Decodes one Avro binary value (all of `bytes`) into JSON.
    ///
    /// # Errors
    /// [`Mismatch`] for truncated or malformed input and trailing bytes.
    pub fn decode(&self, bytes: &[u8]) -> Result<Value, Mismatch> {
        let mut d = Decoder { bytes, pos: 0, items: 0, path: Vec::new() };
        let value = d.value(self, &self.schema, 0)?;
        if d.pos != bytes.len() {
            return Err(mismatch(&[], format!("{} bytes left over after the value", bytes.len() - d.pos)));
        }
        Ok(value)
    }

    fn encode<'s>(
        &'s self,
        schema: &'s Schema,
        v: &'s Value,
        out: &mut Vec<u8>,
        path: &mut Vec<Seg<'s>>,
    ) -> Result<(), Mismatch> {
        if path.len() > MAX_DEPTH {
            return Err(mismatch(path, "nested too deeply"));
        }
        let schema = self.deref(schema);
        match schema {
            Schema::Null => match v {
                Value::Null => Ok(()),
                _ => Err(expected(path, "null", v)),
            },
            Schema::Boolean => match v {
                Value::Bool(b) => {
                    out.push(u8::from(*b));
                    Ok(())
                }
                _ => Err(expected(path, "boolean", v)),
            },
            Schema::Int | Schema::Date | Schema::TimeMillis => match v.as_i64().and_then(|n| i32::try_from(n).ok()) {
                Some(n) => {
                    write_long(out, i64::from(n));
                    Ok(())
                }
                None => Err(expected(path, "int (32-bit integer)", v)),
            },
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => match v.as_i64() {
                Some(n) => {
                    write_long(out, n);
                    Ok(())
                }
                None => Err(expected(path, "long (64-bit integer)", v)),
            },
            Schema::Float => match v.as_f64() {
                Some(f) => {
                    out.extend_from_slice(&(f as f32).to_le_bytes());
                    Ok(())
                }
                None => Err(expected(path, "float", v)),
            },
            Schema::Double => match v.as_f64() {
                Some(f) => {
                    out.extend_from_slice(&f.to_le_bytes());
                    Ok(())
                }
                None => Err(expected(path, "double", v)),
            },
            Schema::String | Schema::Uuid(UuidSchema::String) => match v {
                Value::String(s) => {
                    write_long(out, s.len() as i64);
                    out.extend_from_slice(s.as_bytes());
                    Ok(())
                }
                _ => Err(expected(path, "string", v)),
            },
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Bytes, .. }) => {
                let bytes = json_bytes(v).ok_or_else(|| expected(path, "bytes (a string of code points 0-255)", v))?;
                write_long(out, bytes.len() as i64);
                out.extend_from_slice(&bytes);
                Ok(())
            }
            Schema::Fixed(FixedSchema { size, .. })
            | Schema::Duration(FixedSchema { size, .. })
            | Schema::Uuid(UuidSchema::Fixed(FixedSchema { size, .. }))
            | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Fixed(FixedSchema { size, .. }), .. }) => {
                match json_bytes(v) {
                    Some(bytes) if bytes.len() == *size => {
                        out.extend_from_slice(&bytes);
                        Ok(())
                    }
                    _ => Err(expected(path, &format!("fixed of {size} bytes"), v)),
                }
            }
            Schema::Enum(EnumSchema { symbols, .. }) => {
                let index = v.as_str().and_then(|s| symbols.iter().position(|x| x == s));
                match index {
                    Some(i) => {
                        write_long(out, i as i64);
                        Ok(())
                    }
                    None => Err(expected(path, &format!("one of the symbols {symbols:?}"), v)),
                }
            }
            Schema::Array(array) => match v {
                Value::Array(items) => {
                    if !items.is_empty() {
                        write_long(out, items.len() as i64);
                        for (i, item) in items.iter().enumerate() {
                            path.push(Seg::Index(i));
                            self.encode(&array.items, item, out, path)?;
                            path.pop();
                        }
                    }
                    out.push(0);
                    Ok(())
                }
                _ => Err(expected(path, "array", v)),
            },
            Schema::Map(map) => match v {
                Value::Object(entries) => {
                    if !entries.is_empty() {
                        write_long(out, entries.len() as i64);
                        for (k, item) in entries {
                            write_long(out, k.len() as i64);
                            out.extend_from_slice(k.as_bytes());
                            path.push(Seg::Key(Cow::Borrowed(k)));
                            self.encode(&map.types, item, out, path)?;
                            path.pop();
                        }
                    }
                    out.push(0);
                    Ok(())
                }
                _ => Err(expected(path, "map (a JSON object)", v)),
            },
            Schema::Union(union) => {
                let branches = union.variants();
                // A failed attempt leaves its segments on `path`: each attempt starts from here.
                let depth = path.len();
                // The Avro JSON encoding wraps a non-null union value as {"<branch type>": value}.
                if let Value::Object(obj) = v
                    && obj.len() == 1
                    && let Some((key, inner)) = obj.iter().next()
                    && let Some(i) = branches.iter().position(|b| self.branch_name_matches(b, key))
                {
                    let mark = out.len();
                    write_long(out, i as i64);
                    if self.encode(&branches[i], inner, out, path).is_ok() {
                        return Ok(());
                    }
                    path.truncate(depth);
                    out.truncate(mark);
                }
                let mut first_error = None;
                for (i, branch) in branches.iter().enumerate() {
                    let mark = out.len();
                    write_long(out, i as i64);
                    match self.encode(branch, v, out, path) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            path.truncate(depth);
                            out.truncate(mark);
                            // The deepest error of a record branch is the useful one.
                            if first_error.is_none() && !matches!(self.deref(branch), Schema::Null) {
                                first_error = Some(e);
                            }
                        }
                    }
                }
                let names: Vec<String> = branches.iter().map(|b| self.type_name(b)).collect();
                Err(match first_error {
                    Some(e) if e.path.len() > path_string(path).len() => e,
                    _ => expected(path, &format!("one of the union's types [{}]", names.join(", ")), v),
                })
            }
            Schema::Record(RecordSchema { name, fields, lookup, .. }) => {
                let Value::Object(obj) = v else {
                    return Err(expected(path, &format!("record {}", name.fullname(None)), v));
                };
                if let Some(unknown) = obj.keys().find(|k| !lookup.contains_key(*k)) {
                    path.push(Seg::Field(Cow::Borrowed(unknown)));
                    let e = mismatch(path, format!("not a field of record {}", name.fullname(None)));
                    path.pop();
                    return Err(e);
                }
                for field in fields {
                    path.push(Seg::Field(Cow::Borrowed(&field.name)));
                    match obj.get(&field.name).or(field.default.as_ref()) {
                        Some(value) => self.encode(&field.schema, value, out, path)?,
                        None => {
                            // A missing optional field is null.
                            let null_branch = match self.deref(&field.schema) {
                                Schema::Union(u) => u.variants().iter().position(|b| matches!(b, Schema::Null)),
                                _ => None,
                            };
                            match null_branch {
                                Some(i) => write_long(out, i as i64),
                                None => return Err(mismatch(path, "missing (required, and it has no default)")),
                            }
                        }
                    }
                    path.pop();
                }
                Ok(())
            }
            Schema::Ref { name } => Err(mismatch(path, format!("unknown named type {}", name.fullname(None)))),
        }
    }

    /// Whether `key` names `branch` in the Avro JSON encoding of unions.
    fn branch_name_matches(&self, branch: &Schema, key: &str) -> bool {
        match self.deref(branch).name() {
            Some(name) => name.fullname(None) == key || name.name() == key,
            None => self.type_name(branch) == key,
        }
    }

    /// A type's name as messages and the JSON encoding of unions spell it.
    pub(crate) fn type_name(&self, schema: &Schema) -> String {
        let schema = self.deref(schema);
        if let Some(name) = schema.name() {
            return name.fullname(None);
        }
        match physical(schema) {
            Physical::Null => "null",
            Physical::Boolean => "boolean",
            Physical::Int => "int",
            Physical::Long => "long",
            Physical::Float => "float",
            Physical::Double => "double",
            Physical::Bytes => "bytes",
            Physical::String => "string",
            Physical::Array => "array",
            Physical::Map => "map",
            Physical::Union => "union",
            Physical::Record => "record",
            Physical::Enum => "enum",
            Physical::Fixed => "fixed",
        }
        .to_string()
    }
}

/// The physical (encoding) type of a schema: logical types are their underlying type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Physical {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array,
    Map,
    Union,
    Record,
    Enum,
    Fixed,
}

pub(crate) fn physical(schema: &Schema) -> Physical {
    match schema {
        Schema::Null => Physical::Null,
        Schema::Boolean => Physical::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Physical::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Physical::Long,
        Schema::Float => Physical::Float,
        Schema::Double => Physical::Double,
        Schema::Bytes
        | Schema::BigDecimal
        | Schema::Uuid(UuidSchema::Bytes)
        | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Bytes, .. }) => Physical::Bytes,
        Schema::String | Schema::Uuid(UuidSchema::String) => Physical::String,
        Schema::Array(_) => Physical::Array,
        Schema::Map(_) => Physical::Map,
        Schema::Union(_) => Physical::Union,
        Schema::Record(_) => Physical::Record,
        Schema::Enum(_) => Physical::Enum,
        Schema::Fixed(_)
        | Schema::Duration(_)
        | Schema::Uuid(UuidSchema::Fixed(_))
        | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Fixed(_), .. }) => Physical::Fixed,
        // An unresolved reference: only named types are referenced.
        Schema::Ref { .. } => Physical::Record,
    }
}

/// One step of a value path.
#[derive(Debug, Clone)]
enum Seg<'a> {
    Field(Cow<'a, str>),
    Index(usize),
    Key(Cow<'a, str>),
}

fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Field(f) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(f);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
            Seg::Key(k) => s.push_str(&format!("[{k:?}]")),
        }
    }
    s
}

fn mismatch(path: &[Seg], reason: impl Into<String>) -> Mismatch {
    Mismatch { path: path_string(path), reason: reason.into() }
}

fn expected(path: &[Seg], what: &str, got: &Value) -> Mismatch {
    let got = match got {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".to_string(),
    };
    mismatch(path, format!("expected {what}, got {got}"))
}

/// Avro's JSON form of bytes: a string whose code points are the byte values (0-255).
fn json_bytes(v: &Value) -> Option<Vec<u8>> {
    let s = v.as_str()?;
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

fn bytes_json(b: &[u8]) -> Value {
    Value::String(b.iter().map(|&x| char::from(x)).collect())
}

/// Zig-zag varint (Avro `int` and `long`).
pub fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Frames an Avro body with its schema id.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The schema id and body of a framed value, if it is one.
pub fn unframe(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [MAGIC, a, b, c, d, body @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        _ => None,
    }
}

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    items: u64,
    path: Vec<Seg<'static>>,
}

impl Decoder<'_> {
    fn fail(&self, reason: impl Into<String>) -> Mismatch {
        mismatch(&self.path, reason)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], Mismatch> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.fail(format!("truncated: needs {n} more bytes at byte {}", self.pos))),
        }
    }

    fn long(&mut self) -> Result<i64, Mismatch> {
        let mut z: u64 = 0;
        for shift in (0..70).step_by(7) {
            let [b] = self.take(1)? else { return Err(self.fail("truncated varint")) };
            let b = *b;
            if shift == 63 && b > 1 {
                return Err(self.fail("varint longer than 64 bits"));
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(self.fail("varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, Mismatch> {
        let n = self.long()?;
        i32::try_from(n).map_err(|_| self.fail(format!("int out of range: {n}")))
    }

    fn len(&mut self) -> Result<usize, Mismatch> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| self.fail(format!("negative length {n}")))
    }

    /// The next block count of an array or map (0 ends it).
    fn block(&mut self) -> Result<u64, Mismatch> {
        let n = self.long()?;
        let count = if n < 0 {
            self.long()?; // the block's size in bytes, which we do not need
            n.unsigned_abs()
        } else {
            n as u64
        };
        self.items = self.items.saturating_add(count);
        if self.items > MAX_ITEMS {
            return Err(self.fail("more array items or map entries than a value may hold"));
        }
        Ok(count)
    }

    fn value(&mut self, s: &AvroSchema, schema: &Schema, depth: usize) -> Result<Value, Mismatch> {
        if depth > MAX_DEPTH {
            return Err(self.fail("nested too deeply"));
        }
        let schema = s.deref(schema);
        Ok(match schema {
            Schema::Union(u) => {
                let i = self.long()?;
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| self.fail(format!("union branch {i} does not exist")))?;
                self.value(s, branch, depth + 1)?
            }
            Schema::Record(RecordSchema { fields, .. }) => {
                let mut obj = Map::with_capacity(fields.len());
                for field in fields {
                    self.path.push(Seg::Field(Cow::Owned(field.name.clone())));
                    let v = self.value(s, &field.schema, depth + 1)?;
                    self.path.pop();
                    obj.insert(field.name.clone(), v);
                }
                Value::Object(obj)
            }
            Schema::Enum(EnumSchema { symbols, .. }) => {
                let i = self.long()?;
                let symbol = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or_else(|| self.fail(format!("enum index {i} out of range")))?;
                Value::String(symbol.clone())
            }
            Schema::Array(array) => {
                let mut items = Vec::new();
                loop {
                    let count = self.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        self.path.push(Seg::Index(items.len()));
                        let v = self.value(s, &array.items, depth + 1)?;
                        self.path.pop();
                        items.push(v);
                    }
                }
                Value::Array(items)
            }
            Schema::Map(map) => {
                let mut obj = Map::new();
                loop {
                    let count = self.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        let n = self.len()?;
                        let key = match std::str::from_utf8(self.take(n)?) {
                            Ok(k) => k.to_string(),
                            Err(_) => return Err(self.fail("map key is not UTF-8")),
                        };
                        self.path.push(Seg::Key(Cow::Owned(key.clone())));
                        let v = self.value(s, &map.types, depth + 1)?;
                        self.path.pop();
                        obj.insert(key, v);
                    }
                }
                Value::Object(obj)
            }
            other => match physical(other) {
                Physical::Null => Value::Null,
                Physical::Boolean => match self.take(1)? {
                    [0] => Value::Bool(false),
                    [1] => Value::Bool(true),
                    _ => return Err(self.fail("boolean byte is not 0 or 1")),
                },
                Physical::Int => Value::from(self.int()?),
                Physical::Long => Value::from(self.long()?),
                Physical::Float => {
                    let b = self.take(4)?;
                    let f = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number)
                }
                Physical::Double => {
                    let b = self.take(8)?;
                    let f = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                    Number::from_f64(f).map_or(Value::Null, Value::Number)
                }
                Physical::String => {
                    let n = self.len()?;
                    match std::str::from_utf8(self.take(n)?) {
                        Ok(text) => Value::String(text.to_string()),
                        Err(_) => return Err(self.fail("string is not UTF-8")),
                    }
                }
                Physical::Bytes => {
                    let n = self.len()?;
                    bytes_json(self.take(n)?)
                }
                Physical::Fixed => {
                    let size = match other {
                        Schema::Fixed(f) | Schema::Duration(f) | Schema::Uuid(UuidSchema::Fixed(f)) => f.size,
                        Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Fixed(f), .. }) => f.size,
                        _ => 0,
                    };
                    bytes_json(self.take(size)?)
                }
                Physical::Array | Physical::Map | Physical::Union | Physical::Record | Physical::Enum => {
                    return Err(self.fail(format!("unresolved type {}", s.type_name(other))));
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value as AvroValue;
    use serde_json::json;

    use super::*;

    const USER: &str = r#"{"type":"record","name":"User","namespace":"com.example","fields":[
        {"name":"id","type":"long"},
        {"name":"name","type":"string"},
        {"name":"email","type":["null","string"],"default":null},
        {"name":"score","type":"double","default":0.5},
        {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["FREE","PAID"]},"default":"FREE"},
        {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
        {"name":"attrs","type":{"type":"map","values":"int"},"default":{}},
        {"name":"raw","type":"bytes","default":""},
        {"name":"hash","type":{"type":"fixed","name":"H","size":2},"default":"ab"},
        {"name":"next","type":["null","User"],"default":null},
        {"name":"ok","type":"boolean","default":true},
        {"name":"ratio","type":"float","default":1.0},
        {"name":"n","type":"int","default":0}
    ]}"#;

    #[test]
    #[allow(deprecated)] // the crate's one-call datum codec is what we compare against
    fn encodes_what_apache_avro_decodes_and_decodes_what_it_encodes() {
        let s = AvroSchema::parse(USER).unwrap();
        let value = json!({"id": -7, "name": "ann", "email": "a@x", "kind": "PAID", "tags": ["a", "b"],
            "attrs": {"k": 3}, "raw": "\u{0}\u{ff}", "next": {"id": 1, "name": "bob"}, "n": -40000});
        let mut out = Vec::new();
        s.encode_json(&value, &mut out).unwrap();
        let theirs = apache_avro::from_avro_datum(s.schema(), &mut &out[..], None).unwrap();
        let AvroValue::Record(fields) = &theirs else { panic!("{theirs:?}") };
        assert_eq!(fields[0], ("id".to_string(), AvroValue::Long(-7)));
        assert_eq!(fields[2], ("email".to_string(), AvroValue::Union(1, Box::new(AvroValue::String("a@x".into())))));
        assert_eq!(fields[7], ("raw".to_string(), AvroValue::Bytes(vec![0, 255])));
        assert_eq!(fields[12], ("n".to_string(), AvroValue::Int(-40000)));
        // And back: apache-avro's encoding of the same value decodes to the same JSON.
        let encoded = apache_avro::to_avro_datum(s.schema(), theirs).unwrap();
        assert_eq!(encoded, out);
        let decoded = s.decode(&out).unwrap();
        assert_eq!(decoded["next"]["name"], "bob");
        assert_eq!(decoded["next"]["next"], Value::Null);
        assert_eq!(decoded["hash"], "ab");
        assert_eq!(decoded["score"], 0.5);
        assert_eq!(decoded["tags"], json!(["a", "b"]));
        assert_eq!(decoded["raw"], "\u{0}\u{ff}");
        // The Avro JSON encoding of unions is accepted too.
        let mut wrapped = Vec::new();
        s.encode_json(&json!({"id": 1, "name": "x", "email": {"string": "e"}}), &mut wrapped).unwrap();
        assert_eq!(s.decode(&wrapped).unwrap()["email"], "e");
    }

    #[test]
    fn mismatches_name_the_field() {
        let s = AvroSchema::parse(USER).unwrap();
        let cases = [
            (json!({"name": "x"}), "id", "missing"),
            (json!({"id": "7", "name": "x"}), "id", "expected long"),
            (json!({"id": 1, "name": "x", "n": 3_000_000_000_i64}), "n", "expected int"),
            (json!({"id": 1, "name": "x", "kind": "GOLD"}), "kind", "symbols"),
            (json!({"id": 1, "name": "x", "tags": ["a", 2]}), "tags[1]", "expected string"),
            (json!({"id": 1, "name": "x", "nope": 1}), "nope", "not a field"),
            (json!({"id": 1, "name": "x", "next": {"id": 2}}), "next.name", "missing"),
            (json!({"id": 1, "name": "x", "hash": "abc"}), "hash", "fixed of 2"),
        ];
        for (value, path, reason) in cases {
            let e = s.encode_json(&value, &mut Vec::new()).unwrap_err();
            assert_eq!(e.path, path, "{value}: {e}");
            assert!(e.reason.contains(reason), "{value}: {e}");
        }
        assert!(s.encode_json(&json!([1]), &mut Vec::new()).unwrap_err().reason.contains("record com.example.User"));
    }

    #[test]
    fn hostile_bytes_are_refused_not_trusted() {
        let s = AvroSchema::parse(r#"{"type":"array","items":"null"}"#).unwrap();
        let mut huge = Vec::new();
        write_long(&mut huge, i64::MAX / 2);
        assert!(s.decode(&huge).unwrap_err().reason.contains("more array items"));
        let s = AvroSchema::parse(USER).unwrap();
        assert!(s.decode(&[2]).is_err(), "truncated");
        let mut ok = Vec::new();
        s.encode_json(&json!({"id": 1, "name": "x"}), &mut ok).unwrap();
        ok.push(0);
        assert!(s.decode(&ok).unwrap_err().reason.contains("left over"));
        assert!(s.decode(&[0xff; 11]).is_err());
        assert_eq!(unframe(&frame(258, b"xy")), Some((258, &b"xy"[..])));
        assert_eq!(unframe(b"{}"), None);
    }

    #[test]
    fn invalid_schemas_say_why() {
        for (text, why) in [
            ("{", "not json"),
            (r#"{"type":"record","name":"R","fields":[{"name":"a","type":"nope"}]}"#, "nope"),
            (r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":"x"}]}"#, "default"),
        ] {
            let e = AvroSchema::parse(text).unwrap_err();
            assert!(e.to_string().to_lowercase().contains(why), "{text}: {e}");
        }
        let a = AvroSchema::parse(r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}"#);
        let b = AvroSchema::parse(r#"{"fields":[{"type":"int","name":"a"}],"name":"R","type":"record"}"#);
        assert_eq!(a.unwrap().normalized(), b.unwrap().normalized());
    }
}

//! JSON text → Avro binary in one pass, for validated produce: serde_json's tokenizer walks the
//! text once, driven by the schema compiled once per schema id ([`Compiled`]), and writes Avro
//! straight into the output. No `serde_json::Value` tree, no per-field allocation.
//!
//! This is the fast path only. Whatever it does not accept — any mismatch, and the rare inputs
//! whose handling it does not reproduce (a union wrapper with a repeated key, nesting deeper than
//! [`MAX_NESTING`]) — is handed to the tree encoder ([`AvroSchema::encode_json`]), which stays the
//! single authority on acceptance and on error messages. The contract: when the fast path
//! succeeds, the tree encoder would have succeeded with the same bytes.
//!
//! Reproducing the tree encoder exactly means: record fields in schema order whatever the key
//! order (the last of repeated keys wins; missing fields take their pre-encoded default, or null
//! in an optional field); keys that are field aliases are ignored; map entries sorted by key and
//! deduplicated (a `serde_json::Map` is a `BTreeMap`); a union takes the first branch that
//! encodes, after trying the `{"type": value}` wrapper form.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, RecordSchema, UuidSchema};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::avro::{AvroSchema, write_long};

/// Deepest nesting of JSON containers the fast path follows; deeper input goes to the tree
/// encoder. Well under serde_json's recursion limit (128) and the tree encoder's path limit
/// (128) even with a pre-encoded default (at most [`MAX_DEFAULT_NESTING`]) below it.
const MAX_NESTING: usize = 64;
/// Defaults nested deeper than this are not pre-encoded (see [`MAX_NESTING`]).
const MAX_DEFAULT_NESTING: usize = 32;
/// Enums with more symbols, and records with more keys, than this are looked up through a hash
/// map; below it, comparing the strings is quicker than hashing one.
const LINEAR: usize = 16;

/// Index of a node in [`Compiled::nodes`].
type Id = usize;

/// JSON value kinds, as bits: which kinds a node can accept.
const NULL: u8 = 1;
const BOOL: u8 = 2;
const NUMBER: u8 = 4;
const STRING: u8 = 8;
const ARRAY: u8 = 16;
const OBJECT: u8 = 32;

/// A schema compiled for encoding: named types resolved to node indexes (recursive types point
/// back at themselves), record fields with a key → field table and their missing-field bytes,
/// union branches with the JSON kinds they accept and the names their wrapper form uses.
#[derive(Debug)]
pub(crate) struct Compiled {
    nodes: Vec<Node>,
    root: Id,
}

#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    String,
    Bytes,
    Fixed(usize),
    Enum(Enum),
    Array(Id),
    Map(Id),
    Union(Union),
    Record(Record),
    /// A reference to a type the schema does not define: the tree encoder reports it.
    Unresolved,
}

#[derive(Debug)]
struct Enum {
    symbols: Vec<String>,
    /// Symbol → index, for enums too long to scan.
    index: Option<HashMap<String, usize>>,
}

#[derive(Debug)]
struct Union {
    /// Each branch's node and the JSON kinds it can accept.
    branches: Vec<(Id, u8)>,
    /// Wrapper-form keys → branch, in branch order (the first match wins).
    names: Vec<(String, usize)>,
}

#[derive(Debug)]
struct Record {
    fields: Vec<Field>,
    /// Every key the record accepts (field names and aliases) → the field it fills; `None` for an
    /// alias, whose value the tree encoder ignores.
    keys: Keys,
}

#[derive(Debug)]
enum Keys {
    Few(Vec<(String, Option<usize>)>),
    Many(HashMap<String, Option<usize>>),
}

impl Keys {
    fn get(&self, key: &str) -> Option<Option<usize>> {
        match self {
            Keys::Few(keys) => keys.iter().find(|(k, _)| k == key).map(|(_, field)| *field),
            Keys::Many(keys) => keys.get(key).copied(),
        }
    }
}

#[derive(Debug)]
struct Field {
    name: String,
    node: Id,
    /// What a missing field encodes to: its default, or the null branch of an optional field;
    /// `None` when missing is a mismatch (or the default does not encode).
    missing: Option<Vec<u8>>,
}

impl Compiled {
    pub(crate) fn new(schema: &AvroSchema) -> Self {
        let mut builder = Builder { schema, nodes: Vec::new(), named: HashMap::new() };
        let root = builder.node(schema.schema());
        // Union branches' kinds once every node is built (a branch may be a type still being
        // built when its union was: a recursive reference).
        let kinds: Vec<u8> = (0..builder.nodes.len()).map(|id| builder.kinds(id)).collect();
        for node in &mut builder.nodes {
            if let Node::Union(u) = node {
                for (branch, k) in &mut u.branches {
                    *k = kinds[*branch];
                }
            }
        }
        Self { nodes: builder.nodes, root }
    }

    /// Encodes one JSON text as Avro binary, appending to `out`; `false` (with `out` as it was)
    /// when the fast path does not accept it.
    pub(crate) fn encode(&self, text: &[u8], out: &mut Vec<u8>) -> bool {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.run(text, out, &mut scratch),
            Err(_) => self.run(text, out, &mut Scratch::default()),
        })
    }

    fn run(&self, text: &[u8], out: &mut Vec<u8>, scratch: &mut Scratch) -> bool {
        let mark = out.len();
        let mut enc = Enc { c: self, out, s: scratch, depth: 0, abandon: false };
        let mut de = serde_json::Deserializer::from_slice(text);
        let ok = Seed { enc: &mut enc, node: self.root }.deserialize(&mut de).and_then(|()| de.end()).is_ok()
            && !enc.abandon;
        if !ok {
            enc.out.truncate(mark);
        }
        scratch.reset();
        ok
    }
}

struct Builder<'s> {
    schema: &'s AvroSchema,
    nodes: Vec<Node>,
    named: HashMap<&'s Name, Id>,
}

impl<'s> Builder<'s> {
    fn node(&mut self, schema: &'s Schema) -> Id {
        let schema = self.schema.deref(schema);
        if let Schema::Ref { .. } = schema {
            self.nodes.push(Node::Unresolved);
            return self.nodes.len() - 1;
        }
        if let Some(name) = schema.name()
            && let Some(&id) = self.named.get(name)
        {
            return id;
        }
        // Reserved before the children, so that a recursive reference finds it.
        let id = self.nodes.len();
        self.nodes.push(Node::Unresolved);
        if let Some(name) = schema.name() {
            self.named.insert(name, id);
        }
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::String | Schema::Uuid(UuidSchema::String) => Node::String,
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Bytes, .. }) => Node::Bytes,
            Schema::Fixed(FixedSchema { size, .. })
            | Schema::Duration(FixedSchema { size, .. })
            | Schema::Uuid(UuidSchema::Fixed(FixedSchema { size, .. }))
            | Schema::Decimal(DecimalSchema { inner: InnerDecimalSchema::Fixed(FixedSchema { size, .. }), .. }) => {
                Node::Fixed(*size)
            }
            Schema::Enum(EnumSchema { symbols, .. }) => Node::Enum(Enum {
                symbols: symbols.clone(),
                index: (symbols.len() > LINEAR).then(|| {
                    let mut index = HashMap::with_capacity(symbols.len());
                    for (i, s) in symbols.iter().enumerate() {
                        index.entry(s.clone()).or_insert(i);
                    }
                    index
                }),
            }),
            Schema::Array(array) => Node::Array(self.node(&array.items)),
            Schema::Map(map) => Node::Map(self.node(&map.types)),
            Schema::Union(union) => {
                let mut branches = Vec::with_capacity(union.variants().len());
                let mut names = Vec::new();
                for (i, branch) in union.variants().iter().enumerate() {
                    let node = self.node(branch);
                    branches.push((node, 0));
                    match self.schema.deref(branch).name() {
                        Some(name) => {
                            names.push((name.fullname(None), i));
                            names.push((name.name().to_string(), i));
                        }
                        None => names.push((self.schema.type_name(branch), i)),
                    }
                }
                Node::Union(Union { branches, names })
            }
            Schema::Record(RecordSchema { fields, lookup, .. }) => {
                let fields: Vec<Field> = fields
                    .iter()
                    .map(|field| Field {
                        name: field.name.clone(),
                        node: self.node(&field.schema),
                        missing: self.missing(&field.schema, field.default.as_ref()),
                    })
                    .collect();
                // `lookup` holds the names and the aliases: the keys the tree encoder lets through.
                let keys = lookup.keys().map(|k| (k.clone(), fields.iter().position(|f| f.name == *k)));
                let keys = if lookup.len() > LINEAR { Keys::Many(keys.collect()) } else { Keys::Few(keys.collect()) };
                Node::Record(Record { fields, keys })
            }
            // Handled above.
            Schema::Ref { .. } => Node::Unresolved,
        };
        self.nodes[id] = node;
        id
    }

    /// The JSON kinds a node can accept.
    fn kinds(&self, id: Id) -> u8 {
        match &self.nodes[id] {
            Node::Null => NULL,
            Node::Boolean => BOOL,
            Node::Int | Node::Long | Node::Float | Node::Double => NUMBER,
            Node::String | Node::Bytes | Node::Fixed(_) | Node::Enum(_) => STRING,
            Node::Array(_) => ARRAY,
            Node::Map(_) | Node::Record(_) => OBJECT,
            // Not a valid branch of a union (Avro forbids it), so never narrowed.
            Node::Union(_) => NULL | BOOL | NUMBER | STRING | ARRAY | OBJECT,
            Node::Unresolved => 0,
        }
    }

    /// The bytes of a missing field, as the tree encoder writes them.
    fn missing(&self, schema: &Schema, default: Option<&serde_json::Value>) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match default {
            Some(value) if nesting(value) <= MAX_DEFAULT_NESTING => {
                self.schema.encode_json_with(schema, value, &mut out).ok()?;
            }
            Some(_) => return None,
            None => {
                let Schema::Union(u) = self.schema.deref(schema) else { return None };
                let i = u.variants().iter().position(|b| matches!(b, Schema::Null))?;
                write_long(&mut out, i as i64);
            }
        }
        Some(out)
    }
}

/// How deeply a JSON value nests containers.
fn nesting(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(nesting).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

thread_local! {
    /// Span stacks and the reorder buffer, reused by every value encoded on this thread.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Default)]
struct Scratch {
    /// Where each record field's bytes landed (stacked: nested records above their parents).
    fields: Vec<FieldSpan>,
    /// Where each map entry's bytes landed (stacked likewise).
    entries: Vec<EntrySpan>,
    /// A record's or map's bytes while they are put in order.
    tmp: Vec<u8>,
}

impl Scratch {
    fn reset(&mut self) {
        self.fields.clear();
        self.entries.clear();
        // One huge value must not pin its buffer for the thread's lifetime.
        if self.tmp.capacity() > 1 << 20 {
            self.tmp = Vec::new();
        }
        if self.fields.capacity() > 1 << 16 {
            self.fields = Vec::new();
        }
        if self.entries.capacity() > 1 << 16 {
            self.entries = Vec::new();
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FieldSpan {
    field: usize,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy)]
struct EntrySpan {
    /// The key's text (after its length).
    key_start: usize,
    key_end: usize,
    /// The whole entry: length, key, value.
    start: usize,
    end: usize,
}

/// The encoder's state while one value is encoded.
struct Enc<'a> {
    c: &'a Compiled,
    out: &'a mut Vec<u8>,
    s: &'a mut Scratch,
    /// JSON containers entered.
    depth: usize,
    /// Set when the input needs the tree encoder's judgment: the whole fast path fails.
    abandon: bool,
}

const MISMATCH: &str = "mismatch (the tree encoder names it)";

impl<'a> Enc<'a> {
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.depth += 1;
        if self.depth > MAX_NESTING { Err(E::custom("nested too deeply for the fast path")) } else { Ok(()) }
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// Encodes a union value: captures its text, then tries the wrapper form and each branch
    /// that can accept its JSON kind, in order, on that text.
    fn union<'de, D: Deserializer<'de>>(&mut self, u: &'a Union, d: D) -> Result<(), D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        let text = raw.get();
        let kind = kind_of(text);
        if kind == OBJECT {
            match single_entry(text) {
                Entries::One(key, inner) => {
                    if let Some(&(_, i)) = u.names.iter().find(|(name, _)| *name == key) {
                        self.enter()?;
                        let ok = self.attempt(i, u.branches[i].0, inner.get());
                        self.leave();
                        if ok {
                            return Ok(());
                        }
                    }
                }
                Entries::Other => {}
                Entries::Repeated => self.abandon = true,
            }
        }
        for (i, &(node, kinds)) in u.branches.iter().enumerate() {
            if kinds & kind != 0 && self.attempt(i, node, text) {
                return Ok(());
            }
        }
        Err(de::Error::custom(MISMATCH))
    }

    /// Encodes `text` as branch `branch` of a union; on failure, leaves everything as it was.
    fn attempt(&mut self, branch: usize, node: Id, text: &str) -> bool {
        if self.abandon {
            return false;
        }
        let (mark, fields, entries, depth) = (self.out.len(), self.s.fields.len(), self.s.entries.len(), self.depth);
        write_long(self.out, branch as i64);
        let mut de = serde_json::Deserializer::from_str(text);
        let ok = Seed { enc: self, node }.deserialize(&mut de).and_then(|()| de.end()).is_ok();
        if !ok {
            self.out.truncate(mark);
            self.s.fields.truncate(fields);
            self.s.entries.truncate(entries);
            self.depth = depth;
        }
        ok && !self.abandon
    }

    /// Puts a record's fields in schema order, filling in missing ones.
    fn finish_record(&mut self, rec: &Record, start: usize, base: usize) -> Result<(), &'static str> {
        let (out, s) = (&mut *self.out, &mut *self.s);
        let spans = &mut s.fields[base..];
        let result = if spans.iter().enumerate().all(|(i, span)| span.field == i) {
            // The common case: the fields given came in schema order, the missing ones (if any)
            // are at the end.
            rec.fields[spans.len()..].iter().try_for_each(|f| match &f.missing {
                Some(bytes) => {
                    out.extend_from_slice(bytes);
                    Ok(())
                }
                None => Err(MISMATCH),
            })
        } else {
            s.tmp.clear();
            s.tmp.extend_from_slice(&out[start..]);
            out.truncate(start);
            spans.sort_unstable_by_key(|span| (span.field, span.start));
            let mut next = 0;
            rec.fields.iter().enumerate().try_for_each(|(f, field)| {
                let mut last = None;
                while next < spans.len() && spans[next].field == f {
                    last = Some(spans[next]);
                    next += 1;
                }
                match (last, &field.missing) {
                    (Some(span), _) => out.extend_from_slice(&s.tmp[span.start - start..span.end - start]),
                    (None, Some(bytes)) => out.extend_from_slice(bytes),
                    (None, None) => return Err(MISMATCH),
                }
                Ok(())
            })
        };
        s.fields.truncate(base);
        result
    }

    /// Writes a map's block: entries sorted by key, the last of repeated keys kept. `pos` is the
    /// one byte reserved for the count.
    fn finish_map(&mut self, pos: usize, base: usize, sorted: bool) {
        let (out, s) = (&mut *self.out, &mut *self.s);
        let spans = &mut s.entries[base..];
        if sorted {
            finish_count(out, pos, spans.len());
        } else {
            let offset = pos + 1;
            s.tmp.clear();
            s.tmp.extend_from_slice(&out[offset..]);
            out.truncate(pos);
            let tmp = &s.tmp;
            let key = |e: &EntrySpan| &tmp[e.key_start - offset..e.key_end - offset];
            spans.sort_unstable_by(|a, b| key(a).cmp(key(b)).then(a.start.cmp(&b.start)));
            let unique = spans.windows(2).filter(|w| key(&w[0]) != key(&w[1])).count() + 1;
            write_long(out, unique as i64);
            for (i, e) in spans.iter().enumerate() {
                if spans.get(i + 1).is_none_or(|next| key(next) != key(e)) {
                    out.extend_from_slice(&tmp[e.start - offset..e.end - offset]);
                }
            }
            out.push(0);
        }
        s.entries.truncate(base);
    }
}

/// Writes the item count of an array or map block into the byte reserved at `pos` (moving the
/// items when the count takes more than one byte), and ends the block.
fn finish_count(out: &mut Vec<u8>, pos: usize, n: usize) {
    if n == 0 {
        // An empty array or map is the end marker alone: the reserved byte, already 0.
        return;
    }
    if n < 64 {
        // Zig-zag of n < 64 fits one byte.
        out[pos] = (n as u8) << 1;
    } else {
        let mut count = Vec::with_capacity(10);
        write_long(&mut count, n as i64);
        out.splice(pos..pos + 1, count);
    }
    out.push(0);
}

/// The JSON kind of a value's text, from its first byte.
fn kind_of(text: &str) -> u8 {
    match text.trim_start().as_bytes().first() {
        Some(b'n') => NULL,
        Some(b't' | b'f') => BOOL,
        Some(b'"') => STRING,
        Some(b'[') => ARRAY,
        Some(b'{') => OBJECT,
        _ => NUMBER,
    }
}

enum Entries<'de> {
    /// Exactly one entry: maybe the wrapper form of a union value.
    One(Cow<'de, str>, &'de RawValue),
    /// Several entries under one key: one entry for the tree encoder, which keeps the last.
    Repeated,
    Other,
}

/// What kind of object `text` is, for the union wrapper form.
fn single_entry(text: &str) -> Entries<'_> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(EntriesVisitor).unwrap_or(Entries::Other)
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some(Key(first)) = map.next_key::<Key<'de>>()? else { return Ok(Entries::Other) };
        let value: &'de RawValue = map.next_value()?;
        let mut repeated = false;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            map.next_value::<&'de RawValue>()?;
            if key != first {
                return Ok(Entries::Other);
            }
            repeated = true;
        }
        Ok(if repeated { Entries::Repeated } else { Entries::One(first, value) })
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Encodes the next JSON value as node `node`.
struct Seed<'e, 'a> {
    enc: &'e mut Enc<'a>,
    node: Id,
}

impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let enc = self.enc;
        let c = enc.c;
        match &c.nodes[self.node] {
            Node::Record(rec) => d.deserialize_map(RecordVisitor { enc, rec }),
            Node::Map(values) => d.deserialize_map(MapVisitor { enc, values: *values }),
            Node::Array(items) => d.deserialize_seq(ArrayVisitor { enc, items: *items }),
            Node::Union(u) => enc.union(u, d),
            Node::Unresolved => Err(de::Error::custom(MISMATCH)),
            scalar => d.deserialize_any(Scalar { enc, node: scalar }),
        }
    }
}

/// Null, booleans, numbers and strings.
struct Scalar<'e, 'a> {
    enc: &'e mut Enc<'a>,
    node: &'a Node,
}

impl Scalar<'_, '_> {
    /// Writes a JSON number: `int` and `long` take integers in range, `float` and `double` any.
    fn number<E: de::Error>(self, n: Number) -> Result<(), E> {
        let out = &mut *self.enc.out;
        let int = match n {
            Number::Signed(i) => Some(i),
            Number::Unsigned(u) => i64::try_from(u).ok(),
            Number::Float(_) => None,
        };
        let float = match n {
            Number::Signed(i) => i as f64,
            Number::Unsigned(u) => u as f64,
            Number::Float(f) => f,
        };
        match self.node {
            Node::Int => match int.and_then(|i| i32::try_from(i).ok()) {
                Some(i) => write_long(out, i64::from(i)),
                None => return Err(E::custom(MISMATCH)),
            },
            Node::Long => match int {
                Some(i) => write_long(out, i),
                None => return Err(E::custom(MISMATCH)),
            },
            Node::Float => out.extend_from_slice(&(float as f32).to_le_bytes()),
            Node::Double => out.extend_from_slice(&float.to_le_bytes()),
            _ => return Err(E::custom(MISMATCH)),
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Number {
    Signed(i64),
    Unsigned(u64),
    Float(f64),
}

impl<'de> Visitor<'de> for Scalar<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value of the schema's type")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        match self.node {
            Node::Null => Ok(()),
            _ => Err(E::custom(MISMATCH)),
        }
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        match self.node {
            Node::Boolean => {
                self.enc.out.push(u8::from(b));
                Ok(())
            }
            _ => Err(E::custom(MISMATCH)),
        }
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.number(Number::Signed(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.number(Number::Unsigned(n))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        self.number(Number::Float(n))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        let out = &mut *self.enc.out;
        match self.node {
            Node::String => {
                write_long(out, s.len() as i64);
                out.extend_from_slice(s.as_bytes());
            }
            Node::Bytes => {
                if s.is_ascii() {
                    write_long(out, s.len() as i64);
                    out.extend_from_slice(s.as_bytes());
                } else {
                    write_long(out, code_points(s).ok_or_else(|| E::custom(MISMATCH))? as i64);
                    out.extend(s.chars().map(|c| c as u8));
                }
            }
            Node::Fixed(size) => {
                if s.is_ascii() && s.len() == *size {
                    out.extend_from_slice(s.as_bytes());
                } else if code_points(s) == Some(*size) {
                    out.extend(s.chars().map(|c| c as u8));
                } else {
                    return Err(E::custom(MISMATCH));
                }
            }
            Node::Enum(e) => {
                let i = match &e.index {
                    Some(index) => index.get(s).copied(),
                    None => e.symbols.iter().position(|x| x == s),
                };
                write_long(out, i.ok_or_else(|| E::custom(MISMATCH))? as i64);
            }
            _ => return Err(E::custom(MISMATCH)),
        }
        Ok(())
    }
}

/// How many code points `s` has, if all are 0-255 (Avro's JSON form of bytes).
fn code_points(s: &str) -> Option<usize> {
    let mut n = 0;
    for c in s.chars() {
        if u32::from(c) > 255 {
            return None;
        }
        n += 1;
    }
    Some(n)
}

struct RecordVisitor<'e, 'a> {
    enc: &'e mut Enc<'a>,
    rec: &'a Record,
}

impl<'de> Visitor<'de> for RecordVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (enc, rec) = (self.enc, self.rec);
        enc.enter()?;
        let start = enc.out.len();
        let base = enc.s.fields.len();
        let mut next = 0;
        while let Some(key) = map.next_key_seed(FieldKey { rec, next })? {
            match key {
                Some(field) => {
                    let at = enc.out.len();
                    map.next_value_seed(Seed { enc: &mut *enc, node: rec.fields[field].node })?;
                    enc.s.fields.push(FieldSpan { field, start: at, end: enc.out.len() });
                    next = field + 1;
                }
                None => map.next_value_seed(Skip { enc: &mut *enc })?,
            }
        }
        enc.finish_record(rec, start, base).map_err(de::Error::custom)?;
        enc.leave();
        Ok(())
    }
}

/// A record key → the field it fills (`None`: an alias, ignored); an unknown key is an error.
struct FieldKey<'a> {
    rec: &'a Record,
    /// The field expected next when keys follow the schema's order.
    next: usize,
}

impl<'de> DeserializeSeed<'de> for FieldKey<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldKey<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<usize>, E> {
        if self.rec.fields.get(self.next).is_some_and(|f| f.name == s) {
            return Ok(Some(self.next));
        }
        self.rec.keys.get(s).ok_or_else(|| E::custom(MISMATCH))
    }
}

struct MapVisitor<'e, 'a> {
    enc: &'e mut Enc<'a>,
    values: Id,
}

impl<'de> Visitor<'de> for MapVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let enc = self.enc;
        enc.enter()?;
        let pos = enc.out.len();
        enc.out.push(0);
        let base = enc.s.entries.len();
        let mut sorted = true;
        loop {
            let start = enc.out.len();
            let Some((key_start, key_end)) = map.next_key_seed(MapKey { out: &mut *enc.out })? else { break };
            map.next_value_seed(Seed { enc: &mut *enc, node: self.values })?;
            let entry = EntrySpan { key_start, key_end, start, end: enc.out.len() };
            if sorted && let Some(prev) = enc.s.entries[base..].last() {
                sorted = enc.out[prev.key_start..prev.key_end] < enc.out[key_start..key_end];
            }
            enc.s.entries.push(entry);
        }
        enc.finish_map(pos, base, sorted);
        enc.leave();
        Ok(())
    }
}

/// Writes a map key (length and text) and returns where its text landed.
struct MapKey<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for MapKey<'_> {
    type Value = (usize, usize);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(usize, usize), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MapKey<'_> {
    type Value = (usize, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(usize, usize), E> {
        write_long(self.out, s.len() as i64);
        let start = self.out.len();
        self.out.extend_from_slice(s.as_bytes());
        Ok((start, self.out.len()))
    }
}

struct ArrayVisitor<'e, 'a> {
    enc: &'e mut Enc<'a>,
    items: Id,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let enc = self.enc;
        enc.enter()?;
        let pos = enc.out.len();
        enc.out.push(0);
        let mut n = 0;
        while seq.next_element_seed(Seed { enc: &mut *enc, node: self.items })?.is_some() {
            n += 1;
        }
        finish_count(enc.out, pos, n);
        enc.leave();
        Ok(())
    }
}

/// Parses a value it does not encode (one under an alias key) as strictly as a `Value` parse
/// would, so that the fast path accepts no text the tree encoder's parse refuses.
struct Skip<'e, 'a> {
    enc: &'e mut Enc<'a>,
}

impl<'de> DeserializeSeed<'de> for Skip<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let enc = self.enc;
        enc.enter()?;
        while seq.next_element_seed(Skip { enc: &mut *enc })?.is_some() {}
        enc.leave();
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let enc = self.enc;
        enc.enter()?;
        while map.next_key_seed(Skip { enc: &mut *enc })?.is_some() {
            map.next_value_seed(Skip { enc: &mut *enc })?;
        }
        enc.leave();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use apache_avro::types::Value as Avro;
    use apache_avro::writer::datum::GenericDatumWriter;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::super::avro::{AvroSchema, JsonTextError};

    /// What the tree encoder (the authority) makes of `text`.
    fn tree(s: &AvroSchema, text: &str) -> Result<Vec<u8>, String> {
        let value: Value = serde_json::from_slice(text.as_bytes()).map_err(|e| format!("not JSON: {e}"))?;
        let mut out = Vec::new();
        s.encode_json(&value, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// What the one-pass encoder alone makes of `text`.
    fn fast(s: &AvroSchema, text: &str) -> Option<Vec<u8>> {
        let mut out = vec![9, 9];
        let ok = s.encode_json_text_fast(text.as_bytes(), &mut out);
        if !ok {
            assert_eq!(out, [9, 9], "a refused value leaves the output as it was");
            return None;
        }
        assert_eq!(out[..2], [9, 9], "appends");
        Some(out.split_off(2))
    }

    /// The contract: what the fast path accepts, the tree encoder accepts with the same bytes.
    fn check_agrees(s: &AvroSchema, text: &str) -> Option<Vec<u8>> {
        let fast = fast(s, text);
        if let Some(bytes) = &fast {
            assert_eq!(tree(s, text).as_ref(), Ok(bytes), "{text}");
        }
        fast
    }

    fn apache(schema: &AvroSchema, value: Avro) -> Vec<u8> {
        GenericDatumWriter::builder(schema.schema()).build().unwrap().write_value_to_vec(value).unwrap()
    }

    fn record(fields: &[(&str, Avro)]) -> Avro {
        Avro::Record(fields.iter().map(|(n, v)| (n.to_string(), v.clone())).collect())
    }

    fn string(s: &str) -> Avro {
        Avro::String(s.to_string())
    }

    const PRIMITIVES: &str = r#"{"type":"record","name":"Prims","namespace":"t","fields":[
        {"name":"b","type":"boolean"},
        {"name":"i","type":"int"},
        {"name":"l","type":"long"},
        {"name":"f","type":"float"},
        {"name":"d","type":"double"},
        {"name":"s","type":"string"},
        {"name":"by","type":"bytes"},
        {"name":"n","type":"null"},
        {"name":"date","type":{"type":"int","logicalType":"date"}},
        {"name":"tm","type":{"type":"int","logicalType":"time-millis"}},
        {"name":"tu","type":{"type":"long","logicalType":"time-micros"}},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"tsu","type":{"type":"long","logicalType":"timestamp-micros"}},
        {"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
        {"name":"decf","type":{"type":"fixed","name":"D4","size":4,"logicalType":"decimal","precision":9,"scale":2}},
        {"name":"uuid","type":{"type":"string","logicalType":"uuid"}},
        {"name":"fx","type":{"type":"fixed","name":"F3","size":3}},
        {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B","C"]}}
    ]}"#;

    const ORDER: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
        {"name":"id","type":"long"},
        {"name":"customer","type":{"type":"record","name":"Customer","fields":[
            {"name":"name","type":"string"},
            {"name":"address","type":["null",{"type":"record","name":"Address","fields":[
                {"name":"city","type":"string"},
                {"name":"zip","type":["null","string"],"default":null}]}],"default":null}]}},
        {"name":"lines","type":{"type":"array","items":{"type":"record","name":"Line","fields":[
            {"name":"sku","type":"string"},
            {"name":"qty","type":"int","default":1}]}}},
        {"name":"attrs","type":{"type":"map","values":["null","long","string"]},"default":{}},
        {"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]},"default":"NEW"},
        {"name":"note","type":["null","string"],"default":null,"aliases":["remark"]},
        {"name":"total","type":["double","null"],"default":0.0},
        {"name":"billing","type":["null","Address"],"default":null},
        {"name":"flags","type":{"type":"array","items":"boolean"},"default":[true]}
    ]}"#;

    /// Recursive, with every kind of field and a default for most.
    const USER: &str = r#"{"type":"record","name":"User","namespace":"com.example","fields":[
        {"name":"id","type":"long"},
        {"name":"name","type":"string"},
        {"name":"email","type":["null","string"],"default":null,"aliases":["mail"]},
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
    fn primitives_and_logical_types_encode_as_apache_avro_does() {
        let s = AvroSchema::parse(PRIMITIVES).unwrap();
        let text = r#"{"b": true, "i": -5, "l": 1234567890123, "f": 1.5, "d": -2.25, "s": "h\u00e9llo \"q\"",
            "by": "\u0000\u00ffa", "n": null, "date": 19000, "tm": 1000, "tu": 5, "ts": 1700000000000, "tsu": -1,
            "dec": "\u0001\u00e2", "decf": "\u0000\u0000\u0001\u00e2", "uuid": "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "fx": "abc", "e": "C"}"#;
        let expected = record(&[
            ("b", Avro::Boolean(true)),
            ("i", Avro::Int(-5)),
            ("l", Avro::Long(1_234_567_890_123)),
            ("f", Avro::Float(1.5)),
            ("d", Avro::Double(-2.25)),
            ("s", string("héllo \"q\"")),
            ("by", Avro::Bytes(vec![0, 255, b'a'])),
            ("n", Avro::Null),
            ("date", Avro::Date(19000)),
            ("tm", Avro::TimeMillis(1000)),
            ("tu", Avro::TimeMicros(5)),
            ("ts", Avro::TimestampMillis(1_700_000_000_000)),
            ("tsu", Avro::TimestampMicros(-1)),
            ("dec", Avro::Decimal(apache_avro::Decimal::from(vec![1, 0xe2]))),
            ("decf", Avro::Decimal(apache_avro::Decimal::from(vec![0, 0, 1, 0xe2]))),
            ("uuid", Avro::Uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8".parse().unwrap())),
            ("fx", Avro::Fixed(3, b"abc".to_vec())),
            ("e", Avro::Enum(2, "C".to_string())),
        ]);
        assert_eq!(check_agrees(&s, text), Some(apache(&s, expected)));
    }

    #[test]
    fn nested_records_arrays_maps_unions_and_defaults_encode_as_apache_avro_does() {
        let s = AvroSchema::parse(ORDER).unwrap();
        let address = |city: &str, zip: Avro| record(&[("city", string(city)), ("zip", zip)]);
        let line = |sku: &str, qty: i32| record(&[("sku", string(sku)), ("qty", Avro::Int(qty))]);
        let customer = |address: Avro| record(&[("name", string("ann")), ("address", address)]);
        let order = |fields: [Avro; 9]| {
            let names = ["id", "customer", "lines", "attrs", "status", "note", "total", "billing", "flags"];
            Avro::Record(names.iter().map(|n| n.to_string()).zip(fields).collect())
        };
        let null = || Avro::Union(0, Box::new(Avro::Null));
        let cases = [
            // Keys out of order, defaults for the missing fields, both union forms, a named
            // type referenced by its short and full name.
            (
                r#"{"customer": {"address": {"city": "Ghent"}, "name": "ann"}, "id": 7,
                    "lines": [{"sku": "a"}, {"qty": 3, "sku": "b"}], "attrs": {"k": "v"},
                    "note": {"string": "wrapped"}, "billing": {"shop.Address": {"city": "X", "zip": "9000"}}}"#,
                order([
                    Avro::Long(7),
                    customer(Avro::Union(1, Box::new(address("Ghent", null())))),
                    Avro::Array(vec![line("a", 1), line("b", 3)]),
                    Avro::Map(HashMap::from([("k".to_string(), Avro::Union(2, Box::new(string("v"))))])),
                    Avro::Enum(0, "NEW".to_string()),
                    Avro::Union(1, Box::new(string("wrapped"))),
                    Avro::Union(0, Box::new(Avro::Double(0.0))),
                    Avro::Union(1, Box::new(address("X", Avro::Union(1, Box::new(string("9000")))))),
                    Avro::Array(vec![Avro::Boolean(true)]),
                ]),
            ),
            // Everything given, in schema order; unions by value; empty array, null in a union.
            (
                r#"{"id": -1, "customer": {"name": "ann", "address": null}, "lines": [],
                    "attrs": {"n": 12345678901}, "status": "PAID", "note": "plain", "total": null,
                    "billing": {"Address": {"city": "Y", "zip": null}}, "flags": [false, true]}"#,
                order([
                    Avro::Long(-1),
                    customer(null()),
                    Avro::Array(vec![]),
                    Avro::Map(HashMap::from([("n".to_string(), Avro::Union(1, Box::new(Avro::Long(12_345_678_901))))])),
                    Avro::Enum(1, "PAID".to_string()),
                    Avro::Union(1, Box::new(string("plain"))),
                    Avro::Union(1, Box::new(Avro::Null)),
                    Avro::Union(1, Box::new(address("Y", null()))),
                    Avro::Array(vec![Avro::Boolean(false), Avro::Boolean(true)]),
                ]),
            ),
            // An alias key is let through and ignored, as the tree encoder does; a number fills a
            // double in a union; a map value null.
            (
                r#"{"remark": "ignored", "id": 0, "customer": {"name": "ann"}, "lines": [{"sku": "z", "qty": -2}],
                    "attrs": {"gone": null}, "total": 2}"#,
                order([
                    Avro::Long(0),
                    customer(null()),
                    Avro::Array(vec![line("z", -2)]),
                    Avro::Map(HashMap::from([("gone".to_string(), Avro::Union(0, Box::new(Avro::Null)))])),
                    Avro::Enum(0, "NEW".to_string()),
                    null(),
                    Avro::Union(0, Box::new(Avro::Double(2.0))),
                    null(),
                    Avro::Array(vec![Avro::Boolean(true)]),
                ]),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(check_agrees(&s, text), Some(apache(&s, expected)), "{text}");
        }
    }

    #[test]
    fn recursive_and_top_level_non_record_schemas_encode_as_apache_avro_does() {
        let s = AvroSchema::parse(USER).unwrap();
        let text = r#"{"id": 1, "name": "a", "next": {"com.example.User": {"name": "b", "id": 2, "next": {"id": 3, "name": "c"}}}}"#;
        let user = |id: i64, name: &str, next: Avro| {
            record(&[
                ("id", Avro::Long(id)),
                ("name", string(name)),
                ("email", Avro::Union(0, Box::new(Avro::Null))),
                ("score", Avro::Double(0.5)),
                ("kind", Avro::Enum(0, "FREE".to_string())),
                ("tags", Avro::Array(vec![])),
                ("attrs", Avro::Map(HashMap::new())),
                ("raw", Avro::Bytes(vec![])),
                ("hash", Avro::Fixed(2, b"ab".to_vec())),
                ("next", next),
                ("ok", Avro::Boolean(true)),
                ("ratio", Avro::Float(1.0)),
                ("n", Avro::Int(0)),
            ])
        };
        let null = Avro::Union(0, Box::new(Avro::Null));
        let expected =
            user(1, "a", Avro::Union(1, Box::new(user(2, "b", Avro::Union(1, Box::new(user(3, "c", null)))))));
        assert_eq!(check_agrees(&s, text), Some(apache(&s, expected)));

        let s = AvroSchema::parse(r#"{"type":"array","items":["null","int","string"]}"#).unwrap();
        let expected = Avro::Array(vec![
            Avro::Union(1, Box::new(Avro::Int(1))),
            Avro::Union(0, Box::new(Avro::Null)),
            Avro::Union(2, Box::new(string("x"))),
            Avro::Union(1, Box::new(Avro::Int(-3))),
        ]);
        assert_eq!(check_agrees(&s, r#"[1, null, "x", {"int": -3}]"#), Some(apache(&s, expected)));

        // More than 63 items: the count takes two bytes.
        let s = AvroSchema::parse(r#"{"type":"map","values":{"type":"array","items":"long"}}"#).unwrap();
        let items: Vec<i64> = (0..200).collect();
        let text = json!({"k": items}).to_string();
        let expected =
            Avro::Map(HashMap::from([("k".to_string(), Avro::Array(items.iter().map(|&i| Avro::Long(i)).collect()))]));
        assert_eq!(check_agrees(&s, &text), Some(apache(&s, expected)));

        let s = AvroSchema::parse(r#""string""#).unwrap();
        assert_eq!(check_agrees(&s, r#" "x\ny" "#), Some(apache(&s, string("x\ny"))));
    }

    #[test]
    fn maps_are_sorted_and_deduplicated_as_the_tree_encoder_does() {
        let s = AvroSchema::parse(r#"{"type":"map","values":"int"}"#).unwrap();
        let keys: Vec<String> = (0..70).map(|i| format!("k{}", (i * 37) % 70)).collect();
        let many = format!("{{{}}}", keys.iter().map(|k| format!("{k:?}: 1")).collect::<Vec<_>>().join(", "));
        for text in [r#"{"b": 1, "a": 2}"#, r#"{"a": 1, "b": 2, "a": 3}"#, r#"{"a": 1, "a": 2}"#, "{}", &many] {
            assert!(check_agrees(&s, text).is_some(), "{text}");
        }
    }

    #[test]
    fn typical_inputs_take_the_fast_path_and_agree() {
        let s = AvroSchema::parse(USER).unwrap();
        for text in [
            r#"{"id": 1, "name": "x"}"#,
            r#"{"name": "x", "id": 1}"#,
            r#"{"id": 1, "name": "x", "id": 2}"#,
            r#"{"id": 1, "na\u006de": "\u00e9\ud83d\ude00"}"#,
            r#"{"id": 9223372036854775807, "name": "x", "n": -2147483648, "ratio": 3, "score": 1e300}"#,
            r#"{"id": 1, "name": "x", "email": "e", "kind": "PAID", "tags": ["a", "b"], "attrs": {"z": 1, "a": 2}}"#,
            r#"{"id": 1, "name": "x", "raw": "\u0000\u00ff", "hash": "\u00ff\u0000", "ok": false, "mail": 5}"#,
            r#"{"id": 1, "name": "x", "next": {"User": {"id": 2, "name": "y"}}}"#,
            r#"{"id": 1, "name": "x", "email": {"string": "e"}}"#,
            r#" { "id" : 1 , "name" : "x" } "#,
        ] {
            assert!(check_agrees(&s, text).is_some(), "{text}");
        }
    }

    #[test]
    fn wide_records_and_long_enums_agree() {
        let symbols: Vec<String> = (0..40).map(|i| format!("S{i}")).collect();
        let mut fields: Vec<Value> =
            (0..30).map(|i| json!({"name": format!("f{i}"), "type": "int", "default": i})).collect();
        fields.push(json!({"name": "e", "type": {"type": "enum", "name": "Many", "symbols": symbols}}));
        let s = AvroSchema::parse(&json!({"type": "record", "name": "Wide", "fields": fields}).to_string()).unwrap();
        let given: Vec<String> = (0..30).rev().step_by(3).map(|i| format!("\"f{i}\": {}", i * 100)).collect();
        let text = format!("{{{}, \"e\": \"S33\"}}", given.join(", "));
        assert!(check_agrees(&s, &text).is_some(), "{text}");
        for bad in [r#"{"e": "S40"}"#, r#"{"e": "S1", "f31": 1}"#] {
            assert_eq!(check_agrees(&s, bad), None, "{bad}");
        }
    }

    #[test]
    fn what_the_fast_path_refuses_gets_the_tree_encoders_answer() {
        let s = AvroSchema::parse(USER).unwrap();
        let deep = format!("{}{}", r#"{"id": 1, "name": "x", "next": "#.repeat(70), "null}".repeat(70));
        for text in [
            "",
            "{",
            r#"{"id": 1, "name": "x"} x"#,
            r#"{"name": "x"}"#,
            r#"{"id": "7", "name": "x"}"#,
            r#"{"id": 1.0, "name": "x"}"#,
            r#"{"id": -0, "name": "x"}"#,
            r#"{"id": 18446744073709551615, "name": "x"}"#,
            r#"{"id": 1, "name": "x", "n": 3000000000}"#,
            r#"{"id": 1, "name": "x", "kind": "GOLD"}"#,
            r#"{"id": 1, "name": "x", "tags": ["a", 2]}"#,
            r#"{"id": 1, "name": "x", "nope": 1}"#,
            r#"{"id": 1, "name": "x", "next": {"id": 2}}"#,
            r#"{"id": 1, "name": "x", "hash": "abc"}"#,
            r#"{"id": 1, "name": "x", "raw": "\u0100"}"#,
            r#"{"id": 1, "name": "x", "mail": "\ud800"}"#,
            r#"{"id": "bad", "id": 1, "name": "x"}"#,
            r#"{"id": 1, "name": "x", "email": {"string": "\ud800", "string": "b"}}"#,
            r#"{"id": 1, "name": "x", "email": {"string": "a", "string": "b"}}"#,
            r#"{"id": 1, "name": "x", "email": {"long": 1}}"#,
            r#"[1]"#,
            &deep,
        ] {
            let mut out = Vec::new();
            let ours = s.encode_json_text(text.as_bytes(), &mut out).map(|()| out).map_err(|e| match e {
                JsonTextError::NotJson(e) => format!("not JSON: {e}"),
                JsonTextError::Mismatch(e) => e.to_string(),
            });
            assert_eq!(ours, tree(&s, text), "{text}");
            check_agrees(&s, text);
        }
        // Invalid UTF-8 is not JSON, on both paths.
        assert!(matches!(
            s.encode_json_text(b"{\"id\": 1, \"name\": \"\xff\"}", &mut Vec::new()),
            Err(JsonTextError::NotJson(_))
        ));
    }

    /// JSON texts shaped like `USER` records, right and wrong: keys in any order, repeated,
    /// unknown, aliases, wrapped unions, values of the wrong type.
    fn user_text(depth: u32) -> BoxedStrategy<String> {
        let scalar = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            (-5i64..5).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f).to_string()),
            prop::sample::select(vec!["FREE", "PAID", "GOLD", "ab", "", "\u{ff}\u{0}", "é", "x\"y", "\u{1F600}"])
                .prop_map(|s| json!(s).to_string()),
        ];
        let leaf = prop_oneof![
            4 => scalar.clone(),
            1 => prop::collection::vec(scalar.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            1 => prop::collection::vec((prop::sample::select(vec!["a", "b", "z"]), scalar.clone()), 0..4)
                .prop_map(|v| format!("{{{}}}", v.iter().map(|(k, v)| format!("{k:?}:{v}")).collect::<Vec<_>>().join(","))),
            1 => (prop::sample::select(vec!["string", "null", "long", "User", "com.example.User", "int"]), scalar)
                .prop_map(|(k, v)| format!("{{{k:?}:{v}}}")),
        ];
        let value = if depth == 0 {
            leaf.boxed()
        } else {
            prop_oneof![
                4 => leaf,
                1 => user_text(depth - 1),
                1 => user_text(depth - 1).prop_map(|u| format!("{{\"User\":{u}}}")),
            ]
            .boxed()
        };
        let key = prop::sample::select(vec![
            "email", "score", "kind", "tags", "attrs", "raw", "hash", "next", "ok", "ratio", "n", "mail", "id", "name",
            "nope",
        ]);
        (any::<i32>(), "[a-z]{0,3}", prop::collection::vec((key, value), 0..6), any::<bool>())
            .prop_flat_map(|(id, name, extra, ws)| {
                let mut entries =
                    vec![("id".to_string(), id.to_string()), ("name".to_string(), json!(name).to_string())];
                entries.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
                (Just(entries).prop_shuffle(), Just(ws))
            })
            .prop_map(|(entries, ws)| {
                let sep = if ws { ", " } else { "," };
                format!("{{{}}}", entries.iter().map(|(k, v)| format!("{k:?}:{v}")).collect::<Vec<_>>().join(sep))
            })
            .boxed()
    }

    /// Any JSON text, with keys from a small set (so that they meet union branch names and
    /// record fields) in any order.
    fn any_json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            (-3i64..3).prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            prop::sample::select(vec!["1.5", "-0", "1e2", "3000000000", "18446744073709551615"]).prop_map(String::from),
            prop::sample::select(vec!["a", "", r"\u00ff", r"\ud83d\ude00", "B"]).prop_map(|s| format!("\"{s}\"")),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            let key = prop::sample::select(vec!["x", "y", "int", "string", "A", "ns.A", "map", "array", "null"]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key, inner), 0..4).prop_map(|v| {
                    format!("{{{}}}", v.iter().map(|(k, v)| format!("{k:?}: {v}")).collect::<Vec<_>>().join(", "))
                }),
            ]
        })
    }

    const UNIONS: &str = r#"{"type":"array","items":["null","int","string",
        {"type":"record","name":"A","namespace":"ns","fields":[{"name":"x","type":"int"},{"name":"y","type":["null","A"],"default":null}]},
        {"type":"map","values":["int","ns.A"]},
        {"type":"array","items":["null","string",{"type":"enum","name":"B","symbols":["a","B"]}]}]}"#;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_json_against_nested_unions_agrees_with_the_tree_encoder(items in prop::collection::vec(any_json(), 0..4)) {
            let s = AvroSchema::parse(UNIONS).unwrap();
            let text = format!("[{}]", items.join(","));
            if let Some(bytes) = fast(&s, &text) {
                prop_assert_eq!(tree(&s, &text), Ok(bytes), "{}", text);
            }
        }

        #[test]
        fn the_fast_path_only_accepts_what_the_tree_encoder_accepts_with_the_same_bytes(text in user_text(2)) {
            let s = AvroSchema::parse(USER).unwrap();
            if let Some(bytes) = fast(&s, &text) {
                prop_assert_eq!(tree(&s, &text), Ok(bytes), "{}", text);
            }
        }
    }
}

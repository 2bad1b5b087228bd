//! Schema compatibility: can a reader schema read what a writer schema wrote, decided by Avro's
//! schema-resolution rules, and the registry's modes on top (which versions to check, in which
//! direction).
//!
//! The rules follow the Avro specification and its reference checker (Java
//! `SchemaCompatibility`, which existing registries use): every incompatibility is reported, each
//! with a kind, the JSON-pointer location in the reader schema, the field path, and why. The
//! `apache-avro` crate's own checker answers only "full / partial / no" and treats a missing enum
//! symbol or union branch as "partial", which a registry must refuse; so the walk is done here
//! over the crate's parsed schemas.

use std::collections::HashSet;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{EnumSchema, RecordSchema};
use serde::{Deserialize, Serialize};

use super::avro::{AvroSchema, Physical, physical};

/// A subject's (or the global) compatibility mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Compatibility {
    pub const ALL: [Compatibility; 7] = [
        Compatibility::None,
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::None => "NONE",
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Parses a mode name (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive | Compatibility::ForwardTransitive | Compatibility::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a reader cannot read a writer's data (the reference checker's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncompatibilityKind {
    NameMismatch,
    FixedSizeMismatch,
    MissingEnumSymbols,
    ReaderFieldMissingDefaultValue,
    TypeMismatch,
    MissingUnionBranch,
}

impl IncompatibilityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncompatibilityKind::NameMismatch => "NAME_MISMATCH",
            IncompatibilityKind::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
            IncompatibilityKind::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            IncompatibilityKind::ReaderFieldMissingDefaultValue => "READER_FIELD_MISSING_DEFAULT_VALUE",
            IncompatibilityKind::TypeMismatch => "TYPE_MISMATCH",
            IncompatibilityKind::MissingUnionBranch => "MISSING_UNION_BRANCH",
        }
    }
}

/// One reason a reader cannot read a writer's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    pub kind: IncompatibilityKind,
    /// JSON-pointer location in the reader schema, e.g. `/fields/1/type`.
    pub location: String,
    /// The field it is about, as a dotted path (`address.zip`); empty at the top level.
    pub field: String,
    /// Why, in words.
    pub detail: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = if self.field.is_empty() { String::new() } else { format!("field '{}' ", self.field) };
        write!(f, "{}: {field}at '{}': {}", self.kind.as_str(), self.location, self.detail)
    }
}

/// Every reason `reader` cannot read data written with `writer` (empty: it can).
pub fn can_read(reader: &AvroSchema, writer: &AvroSchema) -> Vec<Incompatibility> {
    let mut c = Checker { reader, writer, seen: HashSet::new(), out: Vec::new() };
    let mut location = Vec::new();
    let mut field = Vec::new();
    c.check(reader.schema(), writer.schema(), &mut location, &mut field);
    c.out
}

/// The incompatibilities of a new schema with a subject's existing versions (oldest first)
/// under `mode`, each message prefixed with the version it is about.
pub fn check_mode(
    mode: Compatibility,
    new: &AvroSchema,
    existing: &[(u32, &AvroSchema)],
) -> Vec<(u32, Incompatibility, &'static str)> {
    if mode == Compatibility::None {
        return Vec::new();
    }
    let against: &[(u32, &AvroSchema)] = if mode.transitive() {
        existing
    } else {
        match existing.last() {
            Some(_) => &existing[existing.len() - 1..],
            None => &[],
        }
    };
    let mut out = Vec::new();
    for (version, old) in against.iter().rev() {
        if mode.backward() {
            out.extend(
                can_read(new, old).into_iter().map(|i| (*version, i, "the new schema cannot read data written with")),
            );
        }
        if mode.forward() {
            out.extend(
                can_read(old, new)
                    .into_iter()
                    .map(|i| (*version, i, "data written with the new schema cannot be read with")),
            );
        }
    }
    out
}

struct Checker<'a> {
    reader: &'a AvroSchema,
    writer: &'a AvroSchema,
    /// Named (reader, writer) pairs being checked: a recursive type is assumed compatible when
    /// met again (as the reference checker does).
    seen: HashSet<(String, String)>,
    out: Vec<Incompatibility>,
}

impl Checker<'_> {
    fn report(&mut self, kind: IncompatibilityKind, location: &[String], field: &[String], detail: String) {
        let location = if location.is_empty() { "/".to_string() } else { format!("/{}", location.join("/")) };
        self.out.push(Incompatibility { kind, location, field: field.join("."), detail });
    }

    /// Whether the pair is compatible, without reporting.
    fn compatible(&mut self, reader: &Schema, writer: &Schema) -> bool {
        let before = self.out.len();
        self.check(reader, writer, &mut Vec::new(), &mut Vec::new());
        let ok = self.out.len() == before;
        self.out.truncate(before);
        ok
    }

    fn check(&mut self, reader: &Schema, writer: &Schema, location: &mut Vec<String>, field: &mut Vec<String>) {
        let r = self.reader.deref(reader);
        let w = self.writer.deref(writer);
        let (rk, wk) = (physical(r), physical(w));
        if rk == wk {
            match (r, w) {
                (Schema::Array(ra), Schema::Array(wa)) => {
                    location.push("items".into());
                    self.check(&ra.items, &wa.items, location, field);
                    location.pop();
                }
                (Schema::Map(rm), Schema::Map(wm)) => {
                    location.push("values".into());
                    self.check(&rm.types, &wm.types, location, field);
                    location.pop();
                }
                (Schema::Union(_), Schema::Union(wu)) => {
                    // Every branch the writer may have written must be readable.
                    for (i, branch) in wu.variants().iter().enumerate() {
                        if !self.compatible(r, branch) {
                            location.push(i.to_string());
                            let name = self.writer.type_name(branch);
                            self.report(
                                IncompatibilityKind::MissingUnionBranch,
                                location,
                                field,
                                format!("reader union lacking writer type: {name}"),
                            );
                            location.pop();
                        }
                    }
                }
                _ if matches!(rk, Physical::Record | Physical::Enum | Physical::Fixed) => {
                    self.check_named(r, w, location, field);
                }
                _ => {}
            }
            return;
        }
        // A writer union: the reader must read each of its branches.
        if let Schema::Union(wu) = w {
            for branch in wu.variants() {
                self.check(r, branch, location, field);
            }
            return;
        }
        let promotable = matches!(
            (rk, wk),
            (Physical::Long, Physical::Int)
                | (Physical::Float, Physical::Int | Physical::Long)
                | (Physical::Double, Physical::Int | Physical::Long | Physical::Float)
                | (Physical::Bytes, Physical::String)
                | (Physical::String, Physical::Bytes)
        );
        if promotable {
            return;
        }
        if let Schema::Union(ru) = r {
            if ru.variants().iter().any(|branch| self.compatible(branch, w)) {
                return;
            }
            let name = self.writer.type_name(w);
            self.report(
                IncompatibilityKind::MissingUnionBranch,
                location,
                field,
                format!("reader union lacking writer type: {name}"),
            );
            return;
        }
        let (rn, wn) = (self.reader.type_name(r), self.writer.type_name(w));
        self.report(
            IncompatibilityKind::TypeMismatch,
            location,
            field,
            format!("reader type: {rn} not compatible with writer type: {wn}"),
        );
    }

    fn check_named(&mut self, r: &Schema, w: &Schema, location: &mut Vec<String>, field: &mut Vec<String>) {
        let (Some(rname), Some(wname)) = (r.name(), w.name()) else { return };
        // Unqualified names must match, or the reader must list the writer's full name as an alias.
        let aliased = r.aliases().is_some_and(|aliases| {
            aliases.iter().any(|a| a.fullname(rname.namespace()) == wname.fullname(None) || a.name() == wname.name())
        });
        if rname.name() != wname.name() && !aliased {
            location.push("name".into());
            self.report(
                IncompatibilityKind::NameMismatch,
                location,
                field,
                format!("expected: {}, found: {}", wname.fullname(None), rname.fullname(None)),
            );
            location.pop();
            return;
        }
        let key = (rname.fullname(None), wname.fullname(None));
        if !self.seen.insert(key.clone()) {
            return;
        }
        match (r, w) {
            (Schema::Record(RecordSchema { fields: rf, .. }), Schema::Record(RecordSchema { fields: wf, .. })) => {
                for (i, reader_field) in rf.iter().enumerate() {
                    let writer_field = std::iter::once(&reader_field.name)
                        .chain(reader_field.aliases.iter())
                        .find_map(|n| wf.iter().find(|f| &f.name == n));
                    location.push("fields".into());
                    location.push(i.to_string());
                    field.push(reader_field.name.clone());
                    match writer_field {
                        Some(writer_field) => {
                            location.push("type".into());
                            self.check(&reader_field.schema, &writer_field.schema, location, field);
                            location.pop();
                        }
                        None if reader_field.default.is_some() => {}
                        None => {
                            // An enum field with a default symbol is read as that symbol.
                            let enum_default = matches!(
                                self.reader.deref(&reader_field.schema),
                                Schema::Enum(EnumSchema { default: Some(_), .. })
                            );
                            if !enum_default {
                                self.report(
                                    IncompatibilityKind::ReaderFieldMissingDefaultValue,
                                    location,
                                    field,
                                    format!(
                                        "the reader's field '{}' has no default value and the writer has no such field",
                                        reader_field.name
                                    ),
                                );
                            }
                        }
                    }
                    field.pop();
                    location.pop();
                    location.pop();
                }
            }
            (Schema::Enum(re), Schema::Enum(we)) => {
                let missing: Vec<&String> = we.symbols.iter().filter(|s| !re.symbols.contains(s)).collect();
                if !missing.is_empty() && re.default.is_none() {
                    location.push("symbols".into());
                    self.report(
                        IncompatibilityKind::MissingEnumSymbols,
                        location,
                        field,
                        format!("the reader's enum lacks the writer's symbols {missing:?} and has no default symbol"),
                    );
                    location.pop();
                }
            }
            _ => {
                let size = |s: &Schema| match s {
                    Schema::Fixed(f) | Schema::Duration(f) => Some(f.size),
                    Schema::Uuid(apache_avro::schema::UuidSchema::Fixed(f)) => Some(f.size),
                    Schema::Decimal(d) => match &d.inner {
                        apache_avro::schema::InnerDecimalSchema::Fixed(f) => Some(f.size),
                        apache_avro::schema::InnerDecimalSchema::Bytes => None,
                    },
                    _ => None,
                };
                if let (Some(rs), Some(ws)) = (size(r), size(w))
                    && rs != ws
                {
                    location.push("size".into());
                    self.report(
                        IncompatibilityKind::FixedSizeMismatch,
                        location,
                        field,
                        format!("expected: {ws}, found: {rs}"),
                    );
                    location.pop();
                }
            }
        }
        self.seen.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// One expectation of `testdata/compat.txt`.
    fn expect(line: &str, what: &str, problems: &[Incompatibility], expected: &[&str]) -> Result<(), String> {
        match expected {
            ["compatible"] if problems.is_empty() => Ok(()),
            ["compatible"] => Err(format!("{line}: {what}: expected compatible, got {problems:?}")),
            ["incompatible", rest @ ..] => {
                let Some(first) = problems.first() else {
                    return Err(format!("{line}: {what}: expected incompatible, got compatible"));
                };
                if let Some(kind) = rest.first()
                    && first.kind.as_str() != *kind
                {
                    return Err(format!("{line}: {what}: expected {kind}, got {first}"));
                }
                let field = if first.field.is_empty() { "-" } else { first.field.as_str() };
                if let Some(want) = rest.get(1)
                    && field != *want
                {
                    return Err(format!("{line}: {what}: expected field {want}, got {first}"));
                }
                // Every message names where and why.
                let text = first.to_string();
                if !first.field.is_empty() && !text.contains(&format!("'{}'", first.field)) {
                    return Err(format!("{line}: message {text:?} does not name the field"));
                }
                Ok(())
            }
            _ => Err(format!("{line}: bad expectation {expected:?}")),
        }
    }

    #[test]
    fn compatibility_cases_from_the_avro_resolution_rules() {
        let mut schemas: HashMap<String, AvroSchema> = HashMap::new();
        let (mut pairs, mut modes, mut failures) = (0, 0, Vec::new());
        for line in include_str!("testdata/compat.txt").lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let get = |name: &str| schemas.get(name).unwrap_or_else(|| panic!("{line}: unknown schema {name}"));
            match words[0] {
                "schema" => {
                    let (name, json) = line["schema ".len()..].split_once(" = ").unwrap();
                    let parsed = AvroSchema::parse(json).unwrap_or_else(|e| panic!("{line}: {e}"));
                    schemas.insert(name.to_string(), parsed);
                }
                "pair" => {
                    pairs += 1;
                    let (writer, reader) = (get(words[1]), get(words[2]));
                    let expected = &words[3..];
                    let results = [
                        ("can_read", can_read(reader, writer)),
                        (
                            "BACKWARD",
                            check_mode(Compatibility::Backward, reader, &[(1, writer)])
                                .into_iter()
                                .map(|(_, i, _)| i)
                                .collect(),
                        ),
                        (
                            "FORWARD",
                            check_mode(Compatibility::Forward, writer, &[(1, reader)])
                                .into_iter()
                                .map(|(_, i, _)| i)
                                .collect(),
                        ),
                    ];
                    for (what, problems) in results {
                        if let Err(e) = expect(line, what, &problems, expected) {
                            failures.push(e);
                        }
                    }
                }
                "mode" => {
                    modes += 1;
                    let mode = Compatibility::parse(words[1]).unwrap();
                    let close = words.iter().position(|w| w.ends_with(']')).unwrap();
                    let history: Vec<(u32, &AvroSchema)> = words[2..=close]
                        .iter()
                        .map(|w| w.trim_matches(|c| c == '[' || c == ']'))
                        .filter(|w| !w.is_empty())
                        .enumerate()
                        .map(|(i, w)| (i as u32 + 1, get(w)))
                        .collect();
                    let new = get(words[close + 1]);
                    let problems: Vec<Incompatibility> =
                        check_mode(mode, new, &history).into_iter().map(|(_, i, _)| i).collect();
                    if let Err(e) = expect(line, words[1], &problems, &words[close + 2..close + 3]) {
                        failures.push(e);
                    }
                }
                other => panic!("{line}: unknown directive {other}"),
            }
        }
        assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
        assert!(pairs >= 40 && modes >= 15, "{pairs} pairs, {modes} mode cases");
    }

    #[test]
    fn every_problem_is_reported_with_its_location() {
        let writer = AvroSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}}]}"#,
        )
        .unwrap();
        let reader = AvroSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"e","type":{"type":"enum","name":"E","symbols":["X"]}},{"name":"n","type":"string"}]}"#,
        )
        .unwrap();
        let problems = can_read(&reader, &writer);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{text:?}");
        assert_eq!(problems[0].location, "/fields/0/type");
        assert!(
            text[0].contains("field 'a'") && text[0].contains("reader type: int not compatible with writer type: long")
        );
        assert_eq!(problems[1].location, "/fields/1/type/symbols");
        assert!(text[1].contains("\"Y\""), "{}", text[1]);
        assert_eq!(problems[2].kind, IncompatibilityKind::ReaderFieldMissingDefaultValue);
        assert!(text[2].contains("field 'n'"));
        assert_eq!(Compatibility::parse("backward_transitive"), Some(Compatibility::BackwardTransitive));
        assert_eq!(Compatibility::parse("sideways"), None);
    }
}

//! The Avro specification's rule for union defaults, which apache-avro applies more loosely: a
//! field whose type is a union may only default to a value of the union's *first* branch
//! (`["null", "string"]` defaults to `null`, `["string", "null"]` to a string). apache-avro
//! accepts a default matching any branch; Apache Avro's Java and Python libraries, and so the
//! registries their users know, refuse it. Checked when a schema is registered or tested.

use apache_avro::Schema;
use serde_json::Value;

/// The first field whose union default does not match its union's first branch, as a message
/// naming the field.
pub fn check_union_defaults(schema: &Schema) -> Result<(), String> {
    walk(schema, "")
}

fn walk(schema: &Schema, path: &str) -> Result<(), String> {
    match schema {
        Schema::Record(record) => {
            for field in &record.fields {
                let at = if path.is_empty() { field.name.clone() } else { format!("{path}.{}", field.name) };
                if let (Schema::Union(union), Some(default)) = (&field.schema, &field.default)
                    && let Some(first) = union.variants().first()
                    && !fits(default, first)
                {
                    return Err(format!(
                        "field `{at}`: the default {default} does not match the union's first branch ({}); \
                         a union's default must be a value of its first type",
                        kind(first)
                    ));
                }
                walk(&field.schema, &at)?;
            }
            Ok(())
        }
        Schema::Array(array) => walk(&array.items, &format!("{path}[]")),
        Schema::Map(map) => walk(&map.types, &format!("{path}{{}}")),
        Schema::Union(union) => union.variants().iter().try_for_each(|v| walk(v, path)),
        _ => Ok(()),
    }
}

/// Whether a JSON default is of the kind `schema` takes (its exact validity apache-avro checks).
fn fits(default: &Value, schema: &Schema) -> bool {
    match schema {
        Schema::Null => default.is_null(),
        Schema::Boolean => default.is_boolean(),
        Schema::Int
        | Schema::Long
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => default.is_i64() || default.is_u64(),
        Schema::Float | Schema::Double => default.is_number(),
        Schema::Bytes
        | Schema::String
        | Schema::Fixed(_)
        | Schema::Enum(_)
        | Schema::Uuid(_)
        | Schema::Decimal(_)
        | Schema::BigDecimal
        | Schema::Duration(_) => default.is_string(),
        Schema::Array(_) => default.is_array(),
        Schema::Map(_) | Schema::Record(_) => default.is_object(),
        // A named type defined elsewhere: a record (object), an enum or fixed (string).
        Schema::Ref { .. } => default.is_object() || default.is_string(),
        Schema::Union(_) => true,
    }
}

fn kind(schema: &Schema) -> String {
    match schema {
        Schema::Ref { name } => name.fullname(None),
        Schema::Record(r) => r.name.fullname(None),
        Schema::Enum(e) => e.name.fullname(None),
        Schema::Fixed(f) => f.name.fullname(None),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| {
                v.as_str().map(str::to_string).or_else(|| v.get("type").and_then(Value::as_str).map(str::to_string))
            })
            .unwrap_or_else(|| "?".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), String> {
        check_union_defaults(&Schema::parse_str(text).unwrap())
    }

    #[test]
    fn a_union_default_must_match_the_first_branch() {
        let ok = [
            r#"{"type":"record","name":"r","fields":[{"name":"a","type":["null","string"],"default":null}]}"#,
            r#"{"type":"record","name":"r","fields":[{"name":"a","type":["string","null"],"default":"x"}]}"#,
            r#"{"type":"record","name":"r","fields":[{"name":"a","type":["long","null"],"default":3}]}"#,
            r#"{"type":"record","name":"r","fields":[{"name":"a","type":["null","long"]}]}"#,
        ];
        for text in ok {
            assert_eq!(check(text), Ok(()), "{text}");
        }
        let bad = r#"{"type":"record","name":"r","fields":[{"name":"n","type":{"type":"record","name":"in","fields":[
            {"name":"a","type":["string","null"],"default":null}]}}]}"#;
        let err = check(bad).unwrap_err();
        assert!(err.contains("`n.a`") && err.contains("first branch (string)"), "{err}");
        let bad = r#"{"type":"record","name":"r","fields":[{"name":"b","type":["null","long"],"default":5}]}"#;
        assert!(check(bad).unwrap_err().contains("`b`"));
    }
}

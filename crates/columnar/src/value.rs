//! Attribute values: how an OTLP `AnyValue` is stored (a display string plus a one-byte type
//! tag) and how it is read back as a [`TypedValue`].
//!
//! | tag | OTLP type   | stored string                                  |
//! |-----|-------------|------------------------------------------------|
//! | `s` | string      | the string                                     |
//! | `b` | bool        | `true` / `false`                               |
//! | `i` | int         | decimal                                        |
//! | `d` | double      | shortest round-trip decimal (`NaN`, `inf`)     |
//! | `y` | bytes       | standard base64                                |
//! | `a` | array       | JSON array of the element values               |
//! | `k` | kvlist      | JSON object                                    |
//! | `n` | empty       | empty string                                   |

use base64::Engine;
use serde_json::Value as Json;
use skein_otlp::proto::common::v1::{AnyValue, any_value::Value};

/// An attribute value with its OTLP type.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedValue {
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A double.
    Double(f64),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// An array (JSON array) or kvlist (JSON object) value.
    Json(Json),
    /// An `AnyValue` with no value set.
    Empty,
}

/// Tag byte of each stored type.
pub mod tag {
    /// String.
    pub const STRING: u8 = b's';
    /// Bool.
    pub const BOOL: u8 = b'b';
    /// Int.
    pub const INT: u8 = b'i';
    /// Double.
    pub const DOUBLE: u8 = b'd';
    /// Bytes.
    pub const BYTES: u8 = b'y';
    /// Array.
    pub const ARRAY: u8 = b'a';
    /// Key-value list.
    pub const KVLIST: u8 = b'k';
    /// Empty.
    pub const EMPTY: u8 = b'n';
}

/// A scalar attribute value borrowed from wherever it was read (a decoded `AnyValue` or the
/// protobuf bytes of one), rendered by [`render_ref`] exactly as [`render`] renders the owned
/// value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// A string, as its UTF-8 bytes. They may be checked after rendering: the spans builders
    /// validate whole columns at once rather than each value.
    Str(&'a [u8]),
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A double.
    Double(f64),
    /// Raw bytes.
    Bytes(&'a [u8]),
    /// No value (or a `string_value_strindex`, which Skein does not resolve).
    Empty,
}

/// Appends the stored string form of a scalar value to `out` (UTF-8 if the value's string
/// was) and returns its type tag.
pub fn render_ref(v: ValueRef<'_>, out: &mut Vec<u8>) -> u8 {
    match v {
        ValueRef::Str(s) => {
            out.extend_from_slice(s);
            tag::STRING
        }
        ValueRef::Bool(b) => {
            out.extend_from_slice(if b { b"true" } else { b"false" });
            tag::BOOL
        }
        ValueRef::Int(i) => {
            push_int(i, out);
            tag::INT
        }
        ValueRef::Double(d) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{d:?}");
            tag::DOUBLE
        }
        ValueRef::Bytes(b) => {
            let start = out.len();
            out.resize(start + base64::encoded_len(b.len(), true).unwrap_or(0), 0);
            let n = base64::engine::general_purpose::STANDARD.encode_slice(b, &mut out[start..]).unwrap_or(0);
            out.truncate(start + n);
            tag::BYTES
        }
        ValueRef::Empty => tag::EMPTY,
    }
}

/// Appends `i` in decimal, as `{i}` formats it, without the formatting machinery (ints are the
/// second most common attribute type and this is the ingest hot path).
fn push_int(i: i64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut n = i.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[at..]);
}

/// Appends the stored string form of `v` (always UTF-8) to `out` and returns its type tag.
pub fn render(v: Option<&AnyValue>, out: &mut Vec<u8>) -> u8 {
    let scalar = match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => ValueRef::Str(s.as_bytes()),
        Some(Value::BoolValue(b)) => ValueRef::Bool(*b),
        Some(Value::IntValue(i)) => ValueRef::Int(*i),
        Some(Value::DoubleValue(d)) => ValueRef::Double(*d),
        Some(Value::BytesValue(b)) => ValueRef::Bytes(b),
        Some(Value::ArrayValue(a)) => {
            let j = Json::Array(a.values.iter().map(any_to_json).collect());
            out.extend_from_slice(j.to_string().as_bytes());
            return tag::ARRAY;
        }
        Some(Value::KvlistValue(kv)) => {
            let j = Json::Object(
                kv.values.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(any_to_json).unwrap_or(Json::Null))).collect(),
            );
            out.extend_from_slice(j.to_string().as_bytes());
            return tag::KVLIST;
        }
        Some(Value::StringValueStrindex(_)) | None => ValueRef::Empty,
    };
    render_ref(scalar, out)
}

/// Plain JSON for an `AnyValue` nested inside an array or kvlist.
fn any_to_json(v: &AnyValue) -> Json {
    match &v.value {
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d).map(Json::Number).unwrap_or_else(|| Json::String(d.to_string())),
        Some(Value::BytesValue(b)) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Some(Value::ArrayValue(a)) => Json::Array(a.values.iter().map(any_to_json).collect()),
        Some(Value::KvlistValue(kv)) => {
            Json::Object(kv.values.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(any_to_json).unwrap_or(Json::Null))).collect())
        }
        Some(Value::StringValueStrindex(_)) | None => Json::Null,
    }
}

/// Reads a stored value back. A value that does not parse as its tag says (which only a bug
/// or a damaged block can produce) comes back as a string rather than failing the query.
pub fn parse(tag: u8, s: &str) -> TypedValue {
    match tag {
        tag::BOOL => TypedValue::Bool(s == "true"),
        tag::INT => s.parse().map(TypedValue::Int).unwrap_or_else(|_| TypedValue::String(s.to_string())),
        tag::DOUBLE => s.parse().map(TypedValue::Double).unwrap_or_else(|_| TypedValue::String(s.to_string())),
        tag::BYTES => {
            base64::engine::general_purpose::STANDARD.decode(s).map(TypedValue::Bytes).unwrap_or_else(|_| TypedValue::String(s.to_string()))
        }
        tag::ARRAY | tag::KVLIST => serde_json::from_str(s).map(TypedValue::Json).unwrap_or_else(|_| TypedValue::String(s.to_string())),
        tag::EMPTY => TypedValue::Empty,
        _ => TypedValue::String(s.to_string()),
    }
}

impl TypedValue {
    /// The value as JSON with its type preserved: ints as integers, doubles as floats, bytes
    /// as base64 strings, arrays and kvlists as JSON arrays and objects.
    pub fn to_json(&self) -> Json {
        match self {
            Self::String(s) => Json::String(s.clone()),
            Self::Bool(b) => Json::Bool(*b),
            Self::Int(i) => Json::from(*i),
            Self::Double(d) => serde_json::Number::from_f64(*d).map(Json::Number).unwrap_or_else(|| Json::String(d.to_string())),
            Self::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
            Self::Json(j) => j.clone(),
            Self::Empty => Json::Null,
        }
    }

    /// The value as a display string (what SQL and attribute filters compare against).
    pub fn to_display(&self) -> String {
        match self {
            Self::String(s) => s.clone(),
            Self::Bool(b) => b.to_string(),
            Self::Int(i) => i.to_string(),
            Self::Double(d) => format!("{d:?}"),
            Self::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b),
            Self::Json(j) => j.to_string(),
            Self::Empty => String::new(),
        }
    }

    /// The value as a string if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_otlp::proto::common::v1::ArrayValue;

    fn rt(v: Value) -> TypedValue {
        let mut s = Vec::new();
        let t = render(Some(&AnyValue { value: Some(v) }), &mut s);
        parse(t, std::str::from_utf8(&s).unwrap())
    }

    #[test]
    fn values_round_trip_with_their_types() {
        assert_eq!(rt(Value::IntValue(-42)), TypedValue::Int(-42));
        assert_eq!(rt(Value::BoolValue(true)), TypedValue::Bool(true));
        assert_eq!(rt(Value::DoubleValue(0.1)), TypedValue::Double(0.1));
        assert_eq!(rt(Value::DoubleValue(200.0)), TypedValue::Double(200.0));
        assert_eq!(rt(Value::StringValue("true".into())), TypedValue::String("true".into()));
        assert_eq!(rt(Value::BytesValue(vec![0, 255, 7])), TypedValue::Bytes(vec![0, 255, 7]));
        for n in 0..7 {
            let b: Vec<u8> = (0..n).map(|i| i * 40).collect();
            let mut s = Vec::new();
            render_ref(ValueRef::Bytes(&b), &mut s);
            assert_eq!(s, base64::engine::general_purpose::STANDARD.encode(&b).into_bytes());
        }
        let arr = Value::ArrayValue(ArrayValue {
            values: vec![AnyValue { value: Some(Value::StringValue("a".into())) }, AnyValue { value: Some(Value::IntValue(2)) }],
        });
        assert_eq!(rt(arr), TypedValue::Json(serde_json::json!(["a", 2])));
        assert_eq!(TypedValue::Double(200.0).to_json().to_string(), "200.0");
    }

    #[test]
    fn ints_render_as_display_does() {
        for i in [0, 1, -1, 9, 10, -10, 42, 1_000_000_007, -987_654_321_012, i64::MAX, i64::MIN, i64::MIN + 1] {
            let mut s = b"x".to_vec();
            assert_eq!(render_ref(ValueRef::Int(i), &mut s), tag::INT);
            assert_eq!(s, format!("x{i}").into_bytes());
        }
    }
}

//! SQL answers as JSON: `{"columns": [{"name", "type"}], "rows": [[…]], "truncated"}`.
//!
//! Numbers stay numbers, timestamps are Unix nanoseconds (as everywhere in the native API),
//! binary values (trace and span ids) are lowercase hex, maps are objects, lists are arrays,
//! structs are objects. Anything else is its Arrow display string.

use super::SqlAnswer;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Value, json};

fn hex(bytes: &[u8]) -> Value {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Value::String(s)
}

fn number<T: Into<f64> + Copy>(v: T) -> Value {
    serde_json::Number::from_f64(v.into()).map_or(Value::Null, Value::Number)
}

/// The JSON value of `array[row]`.
pub fn value(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => json!(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => json!(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => json!(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => json!(array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => json!(array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => json!(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => json!(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => number(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => number(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Binary => hex(array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => hex(array.as_binary::<i64>().value(row)),
        DataType::BinaryView => hex(array.as_binary_view().value(row)),
        DataType::FixedSizeBinary(_) => hex(array.as_fixed_size_binary().value(row)),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            json!(array.as_primitive::<arrow::datatypes::TimestampNanosecondType>().value(row))
        }
        DataType::Dictionary(_, _) => match array.as_any_dictionary_opt() {
            Some(d) => {
                let key = d.normalized_keys()[row];
                value(d.values().as_ref(), key)
            }
            None => display(array, row),
        },
        DataType::Map(_, _) => {
            let m = array.as_map();
            let entries = m.value(row);
            let (keys, vals) = (entries.column(0), entries.column(1));
            let mut obj = Map::new();
            for i in 0..entries.len() {
                let k = match value(keys.as_ref(), i) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                obj.insert(k, value(vals.as_ref(), i));
            }
            Value::Object(obj)
        }
        DataType::List(_) => {
            let l = array.as_list::<i32>().value(row);
            Value::Array((0..l.len()).map(|i| value(l.as_ref(), i)).collect())
        }
        DataType::LargeList(_) => {
            let l = array.as_list::<i64>().value(row);
            Value::Array((0..l.len()).map(|i| value(l.as_ref(), i)).collect())
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            Value::Object(fields.iter().zip(s.columns()).map(|(f, c)| (f.name().clone(), value(c.as_ref(), row))).collect())
        }
        _ => display(array, row),
    }
}

fn display(array: &dyn Array, row: usize) -> Value {
    match ArrayFormatter::try_new(array, &FormatOptions::default()) {
        Ok(f) => Value::String(f.value(row).to_string()),
        Err(e) => Value::String(format!("<{e}>")),
    }
}

/// The JSON answer of `POST /api/v1/sql`.
pub fn to_json(answer: &SqlAnswer) -> Value {
    let columns: Vec<Value> = answer.schema.fields().iter().map(|f| json!({"name": f.name(), "type": f.data_type().to_string()})).collect();
    let mut rows = Vec::new();
    for b in &answer.batches {
        for r in 0..b.num_rows() {
            rows.push(Value::Array(b.columns().iter().map(|c| value(c.as_ref(), r)).collect()));
        }
    }
    json!({"columns": columns, "rows": rows, "truncated": answer.truncated})
}

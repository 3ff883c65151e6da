//! The `logs` table: one row per OTLP log record (ARCHITECTURE §3), its builder from a
//! validated `ExportLogsServiceRequest`, and a reader that turns rows into the JSON the API
//! answers with.
//!
//! Columns follow the spans table's conventions: low-cardinality strings are dictionaries,
//! attributes are `Map<Utf8, Utf8>` plus a type-tag column, and the resource is stored once per
//! distinct resource of a batch as its protobuf encoding (`resource`; SQL sees it through
//! `resource_attributes(resource)`). Two columns are derived:
//! - `correlation_id`: the first of the attributes in [`CORRELATION_KEYS`] (a request or
//!   correlation id that is not a trace id);
//! - `source`: the attribute `log.file.path` for a tailed file, else `otlp`;
//! - `fingerprint`: a 64-bit hash (XXH3) of the record's resource, scope and protobuf encoding.
//!   A retry delivers the same record twice with the same fingerprint, so duplicates are
//!   removed by it: on insert into the head and at query time across blocks.

use crate::spans::build::{MapCol, ResourceCol, StrCol, dict_builder, exact};
use crate::spans::view::{DictStr, ResourceDict, read_map};
use crate::spans::{dict, map_type, node_of, resource_type, service_of, ts};
use crate::value;
use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryBuilder, Int32Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimestampNanosecondType, UInt64Type};
use arrow::error::ArrowError;
use prost::Message;
use serde_json::{Map, Value as Json, json};
use skein_otlp::ExportLogsServiceRequest;
use skein_otlp::proto::common::v1::{KeyValue, any_value::Value};
use std::sync::{Arc, OnceLock};

/// Attribute keys read into `correlation_id`, in order.
pub const CORRELATION_KEYS: [&str; 6] = ["correlation_id", "correlation.id", "request_id", "request.id", "http.request.id", "x_request_id"];
/// The attribute naming the file a tailed log line came from.
pub const FILE_PATH_KEY: &str = "log.file.path";
/// `source` of a record received over OTLP without a file path.
pub const SOURCE_OTLP: &str = "otlp";

/// Column positions in [`schema`].
pub mod col {
    #![allow(missing_docs)]
    pub const TIME: usize = 0;
    pub const OBSERVED_TIME: usize = 1;
    pub const SEVERITY_NUMBER: usize = 2;
    pub const SEVERITY_TEXT: usize = 3;
    pub const BODY: usize = 4;
    pub const TRACE_ID: usize = 5;
    pub const SPAN_ID: usize = 6;
    pub const FLAGS: usize = 7;
    pub const EVENT_NAME: usize = 8;
    pub const CORRELATION_ID: usize = 9;
    pub const SERVICE_NAME: usize = 10;
    pub const NODE: usize = 11;
    pub const RESOURCE: usize = 12;
    pub const ATTRIBUTES: usize = 13;
    pub const ATTRIBUTE_TYPES: usize = 14;
    pub const SCOPE_NAME: usize = 15;
    pub const SCOPE_VERSION: usize = 16;
    pub const DROPPED_ATTRIBUTES_COUNT: usize = 17;
    pub const SOURCE: usize = 18;
    pub const FINGERPRINT: usize = 19;
}

/// The Arrow schema of the `logs` table (in the head and in blocks alike).
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("time", ts(), false),
            Field::new("observed_time", ts(), false),
            Field::new("severity_number", DataType::Int32, false),
            Field::new("severity_text", dict(), true),
            Field::new("body", DataType::Utf8, false),
            Field::new("trace_id", DataType::FixedSizeBinary(16), true),
            Field::new("span_id", DataType::FixedSizeBinary(8), true),
            Field::new("flags", DataType::UInt32, false),
            Field::new("event_name", dict(), true),
            Field::new("correlation_id", DataType::Utf8, true),
            Field::new("service_name", dict(), false),
            Field::new("node", dict(), false),
            Field::new("resource", resource_type(), false),
            Field::new("attributes", map_type(), false),
            Field::new("attribute_types", DataType::Binary, false),
            Field::new("scope_name", dict(), true),
            Field::new("scope_version", dict(), true),
            Field::new("dropped_attributes_count", DataType::UInt32, false),
            Field::new("source", dict(), false),
            Field::new("fingerprint", DataType::UInt64, false),
        ]))
    }))
}

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<std::borrow::Cow<'a, str>> {
    let kv = attrs.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) if !s.is_empty() => Some(std::borrow::Cow::Borrowed(s.as_str())),
        Value::IntValue(i) => Some(std::borrow::Cow::Owned(i.to_string())),
        _ => None,
    }
}

/// `buf` := the protobuf encoding of `msg` (empty for `None`).
pub(crate) fn encode_into(msg: Option<&impl Message>, buf: &mut Vec<u8>) {
    buf.clear();
    if let Some(m) = msg {
        // Encoding into a Vec cannot fail.
        let _ = m.encode(buf);
    }
}

/// The fingerprint of one record: XXH3-64 over the encodings of its resource, its scope and
/// the record itself. `buf` is scratch space.
pub fn fingerprint(resource: &[u8], scope: &[u8], record: &impl Message, buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    buf.extend_from_slice(&(resource.len() as u64).to_le_bytes());
    buf.extend_from_slice(resource);
    buf.extend_from_slice(&(scope.len() as u64).to_le_bytes());
    buf.extend_from_slice(scope);
    // Encoding into a Vec cannot fail.
    let _ = record.encode(buf);
    twox_hash::XxHash3_64::oneshot(buf)
}

/// Builds one batch of the `logs` schema from a request that passed
/// [`skein_otlp::validate_logs`].
///
/// # Errors
/// Only if the request was not validated (an id of the wrong length) or a string is not UTF-8.
pub fn build(req: &ExportLogsServiceRequest) -> Result<RecordBatch, ArrowError> {
    let n: usize = req.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum();
    let mut time = Vec::with_capacity(n);
    let mut observed = Vec::with_capacity(n);
    let mut sev_num = Vec::with_capacity(n);
    let mut sev_text = dict_builder(n);
    let mut body = StrCol::new();
    let mut trace_id = FixedSizeBinaryBuilder::with_capacity(n, 16);
    let mut span_id = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut flags = Vec::with_capacity(n);
    let mut event_name = dict_builder(n);
    let mut correlation = StrCol::new();
    let (mut service, mut node, mut scope_name, mut scope_version, mut source) =
        (dict_builder(n), dict_builder(n), dict_builder(n), dict_builder(n), dict_builder(n));
    let mut resource = ResourceCol::new(n);
    let mut attrs = MapCol::new();
    let mut dropped = Vec::with_capacity(n);
    let mut fingerprints = Vec::with_capacity(n);
    let (mut res_bytes, mut scope_bytes, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    for rl in &req.resource_logs {
        let rattrs = rl.resource.as_ref().map_or(&[][..], |r| &r.attributes);
        let (svc, nd) = (service_of(rattrs), node_of(rattrs));
        encode_into(rl.resource.as_ref(), &mut res_bytes);
        let mut rows = 0usize;
        for sl in &rl.scope_logs {
            encode_into(sl.scope.as_ref(), &mut scope_bytes);
            let (sn, sv) = sl.scope.as_ref().map_or(("", ""), |s| (s.name.as_str(), s.version.as_str()));
            for r in &sl.log_records {
                let t = if r.time_unix_nano == 0 { r.observed_time_unix_nano } else { r.time_unix_nano };
                time.push(t as i64);
                observed.push(r.observed_time_unix_nano as i64);
                sev_num.push(r.severity_number);
                if r.severity_text.is_empty() {
                    sev_text.append_null();
                } else {
                    sev_text.append_value(&r.severity_text);
                }
                match &r.body {
                    Some(b) => {
                        value::render(Some(b), &mut body.data);
                        body.close(true);
                    }
                    None => body.push(b""),
                }
                if r.trace_id.is_empty() {
                    trace_id.append_null();
                } else {
                    trace_id.append_value(&r.trace_id)?;
                }
                if r.span_id.is_empty() {
                    span_id.append_null();
                } else {
                    span_id.append_value(&r.span_id)?;
                }
                flags.push(r.flags);
                if r.event_name.is_empty() {
                    event_name.append_null();
                } else {
                    event_name.append_value(&r.event_name);
                }
                match CORRELATION_KEYS.iter().find_map(|k| attr_str(&r.attributes, k)) {
                    Some(c) => correlation.push(c.as_bytes()),
                    None => correlation.close(false),
                }
                service.append_value(svc);
                node.append_value(nd);
                for (b, v) in [(&mut scope_name, sn), (&mut scope_version, sv)] {
                    if v.is_empty() {
                        b.append_null();
                    } else {
                        b.append_value(v);
                    }
                }
                source.append_value(attr_str(&r.attributes, FILE_PATH_KEY).as_deref().unwrap_or(SOURCE_OTLP));
                attrs.push(&r.attributes);
                dropped.push(r.dropped_attributes_count);
                fingerprints.push(fingerprint(&res_bytes, &scope_bytes, r, &mut scratch));
                rows += 1;
            }
        }
        resource.push(rows, &res_bytes);
    }
    let (attr_map, attr_types) = attrs.finish()?;
    let utc = |v: Vec<i64>| TimestampNanosecondArray::from(exact(v)).with_timezone("UTC");
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(utc(time)) as ArrayRef,
            Arc::new(utc(observed)),
            Arc::new(Int32Array::from(exact(sev_num))),
            Arc::new(sev_text.finish()),
            Arc::new(body.finish()?),
            Arc::new(trace_id.finish()),
            Arc::new(span_id.finish()),
            Arc::new(UInt32Array::from(exact(flags))),
            Arc::new(event_name.finish()),
            Arc::new(correlation.finish()?),
            Arc::new(service.finish()),
            Arc::new(node.finish()),
            Arc::new(resource.finish()?),
            Arc::new(attr_map),
            Arc::new(attr_types),
            Arc::new(scope_name.finish()),
            Arc::new(scope_version.finish()),
            Arc::new(UInt32Array::from(exact(dropped))),
            Arc::new(source.finish()),
            Arc::new(UInt64Array::from(exact(fingerprints))),
        ],
    )
}

/// The fingerprint column of a `logs` (or `metrics`) batch.
///
/// # Errors
/// The batch has no `fingerprint` column of type UInt64.
pub fn fingerprints(b: &RecordBatch) -> Result<&UInt64Array, ArrowError> {
    b.column_by_name("fingerprint")
        .and_then(|c| c.as_primitive_opt::<UInt64Type>())
        .ok_or_else(|| ArrowError::SchemaError("batch has no UInt64 fingerprint column".into()))
}

/// The `time` column of a `logs` or `metrics` batch.
///
/// # Errors
/// The batch has no `time` timestamp column.
pub fn times(b: &RecordBatch) -> Result<&TimestampNanosecondArray, ArrowError> {
    b.column_by_name("time")
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or_else(|| ArrowError::SchemaError("batch has no time column".into()))
}

/// Reads rows of a `logs` batch (of [`schema`]) as API JSON.
pub struct LogView<'a> {
    b: &'a RecordBatch,
    resource: ResourceDict<'a>,
}

impl<'a> LogView<'a> {
    /// A view of `b`.
    ///
    /// # Errors
    /// `b` does not have the `logs` schema.
    pub fn new(b: &'a RecordBatch) -> Result<Self, ArrowError> {
        let expected = schema();
        let same = b.num_columns() == expected.fields().len()
            && b.schema().fields().iter().zip(expected.fields()).all(|(a, e)| a.name() == e.name() && a.data_type() == e.data_type());
        if !same {
            return Err(ArrowError::SchemaError(format!("not a logs batch: {}", b.schema())));
        }
        Ok(Self { b, resource: ResourceDict::new(b.column(col::RESOURCE)) })
    }

    /// The record at `row` as the API's JSON object.
    pub fn json(&self, row: usize) -> Json {
        let c = |i: usize| self.b.column(i);
        let ts = |i: usize| c(i).as_primitive::<TimestampNanosecondType>().value(row);
        let dict = |i: usize| DictStr::new(c(i)).get(row).map(str::to_string);
        let hex = |i: usize| {
            let a = c(i).as_fixed_size_binary();
            a.is_valid(row).then(|| skein_core::ids::to_hex(a.value(row)))
        };
        let severity_number = c(col::SEVERITY_NUMBER).as_primitive::<Int32Type>().value(row);
        let body: &StringArray = c(col::BODY).as_string();
        let corr: &StringArray = c(col::CORRELATION_ID).as_string();
        let attrs = read_map(c(col::ATTRIBUTES).as_map(), c(col::ATTRIBUTE_TYPES).as_binary(), row);
        let attributes: Map<String, Json> = attrs.iter().map(|a| (a.key.clone(), a.value.to_json())).collect();
        let resource: Map<String, Json> = self.resource.get(row).iter().map(|(a, _)| (a.key.clone(), a.value.to_json())).collect();
        json!({
            "time_unix_nano": ts(col::TIME),
            "observed_time_unix_nano": ts(col::OBSERVED_TIME),
            "severity_number": severity_number,
            "severity_text": dict(col::SEVERITY_TEXT).unwrap_or_else(|| skein_otlp::validate_signals::severity_text(severity_number).to_string()),
            "body": body.value(row),
            "trace_id": hex(col::TRACE_ID),
            "span_id": hex(col::SPAN_ID),
            "event_name": dict(col::EVENT_NAME),
            "correlation_id": corr.is_valid(row).then(|| corr.value(row)),
            "service": dict(col::SERVICE_NAME),
            "node": dict(col::NODE),
            "source": dict(col::SOURCE),
            "scope": {"name": dict(col::SCOPE_NAME), "version": dict(col::SCOPE_VERSION)},
            "attributes": attributes,
            "resource": resource,
        })
    }
}

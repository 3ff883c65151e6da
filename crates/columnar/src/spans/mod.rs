//! The `spans` table: its Arrow schema, two builders that produce it, and a typed view for
//! reading rows back. One row per span; see ARCHITECTURE §3.
//!
//! - [`build()`] turns a decoded, validated `ExportTraceServiceRequest` into a batch (used on WAL
//!   replay and for OTLP/JSON);
//! - [`build_from_protobuf`] reads the OTLP protobuf bytes of a request straight into the same
//!   column buffers, validating as it goes, with no intermediate structs: the ingest hot path.
//!
//! Both write Arrow buffers directly (offsets and value bytes in plain `Vec`s, see
//! `build::Columns`) rather than through per-value `ArrayBuilder` calls, and both finish through
//! the same code, so they produce equal batches for the same request.
//!
//! **The `resource` column.** All the spans of one `ResourceSpans` share its resource, which
//! typically carries 10 to 20 attributes; stored as a map per row it was about half of a span's
//! memory in the head. So the resource is one `Dictionary<Int32, Binary>` column whose values
//! are the canonical protobuf encoding (`prost::Message::encode_to_vec`) of the
//! `opentelemetry.proto.resource.v1.Resource` *after* validation's limits: each distinct
//! resource is stored once per batch (deduplicated by its bytes) and each row holds a key.
//! A `ResourceSpans` without a resource gets the encoding of `Resource::default()`, the empty
//! value, never a null. Both builders encode the same message, so the column is identical
//! whichever built it: [`build()`] encodes the validated struct, [`build_from_protobuf`] decodes
//! the resource with prost once per `ResourceSpans`, applies the limits and encodes it again.
//! [`SpanView`] decodes each dictionary value at most once per view. `service_name` and `node`
//! stay plain dictionary columns, since search filters on them. SQL cannot see into the
//! resource bytes: access to resource attributes from SQL will need a `Map<Utf8, Utf8>` built
//! from the dictionary at query time (once per distinct resource) or at flush time.
//!
//! Modules: `build` (the columns and the builder from structs), `wire` (the decoder from
//! protobuf, with `kv` for attributes and `protobuf` for the wire format itself), `view`
//! (reading batches back).

pub(crate) mod build;
mod kv;
pub mod layout;
mod protobuf;
pub(crate) mod view;
mod wire;

#[cfg(test)]
mod layout_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use build::{build, node_of, service_of};
pub use protobuf::WireReason;
pub use view::{DictStr, SpanView, find_attr, resource_attributes};
pub use wire::{WireError, WireOutcome, build_from_protobuf};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use std::sync::{Arc, OnceLock};

/// Column positions in [`schema`].
pub mod col {
    #![allow(missing_docs)]
    pub const TRACE_ID: usize = 0;
    pub const SPAN_ID: usize = 1;
    pub const PARENT_SPAN_ID: usize = 2;
    pub const TRACE_STATE: usize = 3;
    pub const FLAGS: usize = 4;
    pub const NAME: usize = 5;
    pub const KIND: usize = 6;
    pub const START_TIME: usize = 7;
    pub const END_TIME: usize = 8;
    pub const DURATION_NS: usize = 9;
    pub const STATUS_CODE: usize = 10;
    pub const STATUS_MESSAGE: usize = 11;
    pub const SERVICE_NAME: usize = 12;
    pub const NODE: usize = 13;
    pub const RESOURCE: usize = 14;
    pub const ATTRIBUTES: usize = 15;
    pub const ATTRIBUTE_TYPES: usize = 16;
    pub const SCOPE_NAME: usize = 17;
    pub const SCOPE_VERSION: usize = 18;
    pub const EVENTS: usize = 19;
    pub const LINKS: usize = 20;
    pub const DROPPED_ATTRIBUTES_COUNT: usize = 21;
    pub const DROPPED_EVENTS_COUNT: usize = 22;
    pub const DROPPED_LINKS_COUNT: usize = 23;
}

/// Service name used when a resource has no `service.name` (the OTel SDK convention).
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// Node name used when a resource names no host or pod.
pub const UNKNOWN_NODE: &str = "unknown_node";

pub(crate) fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

pub(crate) fn dict() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// `Dictionary<Int32, Binary>`: the `resource` column, one protobuf `Resource` per distinct
/// resource of a batch.
pub fn resource_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Binary))
}

/// The entries field of [`map_type`].
pub fn map_entries() -> Arc<Field> {
    Arc::new(Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![Field::new("keys", DataType::Utf8, false), Field::new("values", DataType::Utf8, true)])),
        false,
    ))
}

/// `Map<Utf8, Utf8>` as used for every attribute map.
pub fn map_type() -> DataType {
    DataType::Map(map_entries(), false)
}

fn event_fields() -> Fields {
    Fields::from(vec![
        Field::new("time", ts(), false),
        Field::new("name", DataType::Utf8, false),
        Field::new("attributes", map_type(), false),
        Field::new("attribute_types", DataType::Binary, false),
        Field::new("dropped_attributes_count", DataType::UInt32, false),
    ])
}

fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("trace_state", DataType::Utf8, true),
        Field::new("attributes", map_type(), false),
        Field::new("attribute_types", DataType::Binary, false),
        Field::new("dropped_attributes_count", DataType::UInt32, false),
    ])
}

/// The Arrow schema of the `spans` table.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("trace_id", DataType::FixedSizeBinary(16), false),
            Field::new("span_id", DataType::FixedSizeBinary(8), false),
            Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
            Field::new("trace_state", DataType::Utf8, true),
            Field::new("flags", DataType::UInt32, false),
            Field::new("name", dict(), false),
            Field::new("kind", DataType::Int8, false),
            Field::new("start_time", ts(), false),
            Field::new("end_time", ts(), false),
            Field::new("duration_ns", DataType::Int64, false),
            Field::new("status_code", DataType::Int8, false),
            Field::new("status_message", DataType::Utf8, true),
            Field::new("service_name", dict(), false),
            Field::new("node", dict(), false),
            Field::new("resource", resource_type(), false),
            Field::new("attributes", map_type(), false),
            Field::new("attribute_types", DataType::Binary, false),
            Field::new("scope_name", dict(), true),
            Field::new("scope_version", dict(), true),
            Field::new("events", DataType::List(Arc::new(Field::new_struct("item", event_fields(), false))), false),
            Field::new("links", DataType::List(Arc::new(Field::new_struct("item", link_fields(), false))), false),
            Field::new("dropped_attributes_count", DataType::UInt32, false),
            Field::new("dropped_events_count", DataType::UInt32, false),
            Field::new("dropped_links_count", DataType::UInt32, false),
        ]))
    }))
}

/// Column positions of [`schema`] kept in [`stored_schema`]: all but `end_time`.
pub fn stored_columns() -> &'static [usize] {
    static COLS: OnceLock<Vec<usize>> = OnceLock::new();
    COLS.get_or_init(|| (0..schema().fields().len()).filter(|&i| i != col::END_TIME).collect())
}

/// The schema spans are stored with in blocks: [`schema`] without `end_time`, which is
/// `start_time + duration_ns` exactly (both builders compute the duration as end − start) and
/// would cost about 3.6 bytes a span on disk. [`with_end_time`] puts it back.
pub fn stored_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| Arc::new(schema().project(stored_columns()).expect("the stored columns exist"))))
}

/// A batch of [`stored_schema`] as a batch of [`schema`], with `end_time` computed from
/// `start_time + duration_ns`. A batch that already has every column (a block written before
/// `end_time` was dropped) is returned as it is.
///
/// # Errors
/// The batch has neither schema.
pub fn with_end_time(b: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::{Array, AsArray, TimestampNanosecondArray};
    use arrow::datatypes::{Int64Type, TimestampNanosecondType};
    if b.num_columns() == schema().fields().len() {
        return Ok(b.clone());
    }
    let missing = |c: &str| arrow::error::ArrowError::SchemaError(format!("a stored spans batch has no {c} column"));
    let start = b
        .column_by_name("start_time")
        .ok_or_else(|| missing("start_time"))?
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or_else(|| missing("start_time"))?;
    let duration = b
        .column_by_name("duration_ns")
        .ok_or_else(|| missing("duration_ns"))?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| missing("duration_ns"))?;
    let end: TimestampNanosecondArray =
        start.values().iter().zip(duration.values().iter()).map(|(s, d)| Some(s.wrapping_add(*d))).collect::<TimestampNanosecondArray>();
    let end = end.with_timezone("UTC");
    debug_assert_eq!(end.null_count(), 0);
    let mut cols = b.columns().to_vec();
    cols.insert(col::END_TIME, Arc::new(end));
    RecordBatch::try_new(schema(), cols)
}

//! The `spans` table: its Arrow schema, a builder from OTLP requests, and a typed view for
//! reading rows back. One row per span; see ARCHITECTURE §3.
//!
//! The builder writes Arrow buffers directly (offsets and value bytes in plain `Vec`s) rather
//! than through per-value `ArrayBuilder` calls: this is the ingest hot path and every span
//! passes through it once.

use crate::record::{Attr, EventRecord, LinkRecord, SpanRecord};
use crate::value::{self, TypedValue};
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, DictionaryArray, FixedSizeBinaryArray, Int8Array, Int64Array, ListArray, MapArray, RecordBatch,
    StringArray, StringDictionaryBuilder, StructArray, TimestampNanosecondArray, UInt32Array,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Fields, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use skein_core::{SpanId, TraceId};
use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::proto::common::v1::KeyValue;
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
    pub const RESOURCE_ATTRIBUTES: usize = 14;
    pub const RESOURCE_ATTRIBUTE_TYPES: usize = 15;
    pub const ATTRIBUTES: usize = 16;
    pub const ATTRIBUTE_TYPES: usize = 17;
    pub const SCOPE_NAME: usize = 18;
    pub const SCOPE_VERSION: usize = 19;
    pub const EVENTS: usize = 20;
    pub const LINKS: usize = 21;
    pub const DROPPED_ATTRIBUTES_COUNT: usize = 22;
    pub const DROPPED_EVENTS_COUNT: usize = 23;
    pub const DROPPED_LINKS_COUNT: usize = 24;
}

/// Service name used when a resource has no `service.name` (the OTel SDK convention).
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// Node name used when a resource names no host or pod.
pub const UNKNOWN_NODE: &str = "unknown_node";

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn dict() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

fn map_entries() -> Arc<Field> {
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
            Field::new("resource_attributes", map_type(), false),
            Field::new("resource_attribute_types", DataType::Binary, false),
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

/// A growing Utf8 column: offsets plus bytes, with an optional validity bitmap.
#[derive(Default)]
struct StrCol {
    offsets: Vec<i32>,
    data: String,
    valid: Vec<bool>,
    any_null: bool,
}

impl StrCol {
    fn new() -> Self {
        Self { offsets: vec![0], ..Default::default() }
    }
    fn push(&mut self, s: &str) {
        self.data.push_str(s);
        self.close(true);
    }
    fn push_opt(&mut self, s: &str) {
        if s.is_empty() {
            self.close(false);
        } else {
            self.push(s);
        }
    }
    fn close(&mut self, valid: bool) {
        self.offsets.push(self.data.len() as i32);
        self.valid.push(valid);
        self.any_null |= !valid;
    }
    fn finish(self) -> StringArray {
        let nulls = self.any_null.then(|| NullBuffer::from(self.valid));
        StringArray::new(OffsetBuffer::new(ScalarBuffer::from(exact(self.offsets))), Buffer::from(exact(self.data.into_bytes())), nulls)
    }
}

/// A growing attribute map column plus its parallel type-tag column.
struct MapCol {
    offsets: Vec<i32>,
    keys: StrCol,
    values: StrCol,
    tags: Vec<u8>,
}

impl MapCol {
    fn new() -> Self {
        Self { offsets: vec![0], keys: StrCol::new(), values: StrCol::new(), tags: Vec::new() }
    }

    fn push(&mut self, attrs: &[KeyValue]) {
        for kv in attrs {
            self.keys.push(&kv.key);
            let t = value::render(kv.value.as_ref(), &mut self.values.data);
            self.values.close(true);
            self.tags.push(t);
        }
        self.offsets.push(self.tags.len() as i32);
    }

    fn finish(self) -> (MapArray, BinaryArray) {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(exact(self.offsets)));
        let entries = StructArray::new(
            match map_entries().data_type() {
                DataType::Struct(f) => f.clone(),
                _ => unreachable!("map entries are a struct"),
            },
            vec![Arc::new(self.keys.finish()) as ArrayRef, Arc::new(self.values.finish())],
            None,
        );
        let map = MapArray::new(map_entries(), offsets.clone(), entries, None, false);
        let tags = BinaryArray::new(offsets, Buffer::from(exact(self.tags)), None);
        (map, tags)
    }
}

fn fsb(size: i32, data: Vec<u8>, nulls: Option<NullBuffer>) -> Result<FixedSizeBinaryArray, ArrowError> {
    FixedSizeBinaryArray::try_new(size, Buffer::from(data), nulls)
}

/// A dictionary builder sized for `rows` rows of a low-cardinality column: the default
/// capacity (1024 values) would cost more than the column itself for small batches.
fn dict_builder(rows: usize) -> StringDictionaryBuilder<Int32Type> {
    StringDictionaryBuilder::with_capacity(rows, 8, 256)
}

/// `v` without spare capacity: a batch lives in the head for a long time, and the memory limit
/// counts what buffers hold, not what they use.
fn exact<T>(mut v: Vec<T>) -> Vec<T> {
    v.shrink_to_fit();
    v
}

fn first_str<'a>(attrs: &'a [KeyValue], keys: &[&str]) -> Option<&'a str> {
    use skein_otlp::proto::common::v1::any_value::Value;
    keys.iter().find_map(|k| {
        let kv = attrs.iter().find(|kv| kv.key == *k)?;
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        }
    })
}

/// The node identity of a resource: `host.name`, else `k8s.pod.name`, else `host.id`.
pub fn node_of(resource_attrs: &[KeyValue]) -> &str {
    first_str(resource_attrs, &["host.name", "k8s.pod.name", "host.id"]).unwrap_or(UNKNOWN_NODE)
}

/// The service of a resource: `service.name`, else `unknown_service`.
pub fn service_of(resource_attrs: &[KeyValue]) -> &str {
    first_str(resource_attrs, &["service.name"]).unwrap_or(UNKNOWN_SERVICE)
}

/// Builds one `RecordBatch` of the `spans` schema from a validated request. The request must
/// have passed [`skein_otlp::validate_traces`] (ids of the right length, sane timestamps).
///
/// # Errors
/// Only if the request was not validated (an id of the wrong length).
pub fn build(req: &ExportTraceServiceRequest) -> Result<RecordBatch, ArrowError> {
    let n: usize = req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
    let mut trace_ids = Vec::with_capacity(n * 16);
    let mut span_ids = Vec::with_capacity(n * 8);
    let mut parent_ids = Vec::with_capacity(n * 8);
    let mut parent_valid = Vec::with_capacity(n);
    let mut trace_state = StrCol::new();
    let mut flags = Vec::with_capacity(n);
    let mut names = dict_builder(n);
    let mut kinds = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut ends = Vec::with_capacity(n);
    let mut durations = Vec::with_capacity(n);
    let mut status_codes = Vec::with_capacity(n);
    let mut status_msgs = StrCol::new();
    let mut services = dict_builder(n);
    let mut nodes = dict_builder(n);
    let mut res_attrs = MapCol::new();
    let mut attrs = MapCol::new();
    let mut scope_names = dict_builder(n);
    let mut scope_versions = dict_builder(n);
    let mut dropped = [Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n)];
    // events
    let mut ev_offsets = vec![0i32];
    let mut ev_time = Vec::new();
    let mut ev_name = StrCol::new();
    let mut ev_attrs = MapCol::new();
    let mut ev_dropped = Vec::new();
    // links
    let mut ln_offsets = vec![0i32];
    let mut ln_trace = Vec::new();
    let mut ln_span = Vec::new();
    let mut ln_state = StrCol::new();
    let mut ln_attrs = MapCol::new();
    let mut ln_dropped = Vec::new();

    for rs in &req.resource_spans {
        let empty = Vec::new();
        let rattrs = rs.resource.as_ref().map(|r| &r.attributes).unwrap_or(&empty);
        let service = service_of(rattrs);
        let node = node_of(rattrs);
        for ss in &rs.scope_spans {
            let scope = ss.scope.as_ref();
            for s in &ss.spans {
                trace_ids.extend_from_slice(&s.trace_id);
                span_ids.extend_from_slice(&s.span_id);
                if s.parent_span_id.len() == 8 {
                    parent_ids.extend_from_slice(&s.parent_span_id);
                    parent_valid.push(true);
                } else {
                    parent_ids.extend_from_slice(&[0; 8]);
                    parent_valid.push(false);
                }
                trace_state.push_opt(&s.trace_state);
                flags.push(s.flags);
                names.append_value(&s.name);
                kinds.push(s.kind.clamp(0, 127) as i8);
                let (st, en) = (s.start_time_unix_nano as i64, s.end_time_unix_nano as i64);
                starts.push(st);
                ends.push(en);
                durations.push(en - st);
                let (code, msg) = s.status.as_ref().map(|st| (st.code, st.message.as_str())).unwrap_or((0, ""));
                status_codes.push(code.clamp(0, 127) as i8);
                status_msgs.push_opt(msg);
                services.append_value(service);
                nodes.append_value(node);
                res_attrs.push(rattrs);
                attrs.push(&s.attributes);
                match scope.map(|s| s.name.as_str()).filter(|s| !s.is_empty()) {
                    Some(v) => scope_names.append_value(v),
                    None => scope_names.append_null(),
                }
                match scope.map(|s| s.version.as_str()).filter(|s| !s.is_empty()) {
                    Some(v) => scope_versions.append_value(v),
                    None => scope_versions.append_null(),
                }
                dropped[0].push(s.dropped_attributes_count);
                dropped[1].push(s.dropped_events_count);
                dropped[2].push(s.dropped_links_count);
                for e in &s.events {
                    ev_time.push(e.time_unix_nano as i64);
                    ev_name.push(&e.name);
                    ev_attrs.push(&e.attributes);
                    ev_dropped.push(e.dropped_attributes_count);
                }
                ev_offsets.push(ev_time.len() as i32);
                for l in &s.links {
                    ln_trace.extend_from_slice(&l.trace_id);
                    ln_span.extend_from_slice(&l.span_id);
                    ln_state.push_opt(&l.trace_state);
                    ln_attrs.push(&l.attributes);
                    ln_dropped.push(l.dropped_attributes_count);
                }
                ln_offsets.push(ln_dropped.len() as i32);
            }
        }
    }

    let (res_map, res_tags) = res_attrs.finish();
    let (attr_map, attr_tags) = attrs.finish();
    let (ev_map, ev_tags) = ev_attrs.finish();
    let events_struct = StructArray::try_new(
        event_fields(),
        vec![
            Arc::new(TimestampNanosecondArray::from(ev_time).with_timezone("UTC")) as ArrayRef,
            Arc::new(ev_name.finish()),
            Arc::new(ev_map),
            Arc::new(ev_tags),
            Arc::new(UInt32Array::from(ev_dropped)),
        ],
        None,
    )?;
    let events = ListArray::try_new(
        Arc::new(Field::new_struct("item", event_fields(), false)),
        OffsetBuffer::new(ScalarBuffer::from(ev_offsets)),
        Arc::new(events_struct),
        None,
    )?;
    let (ln_map, ln_tags) = ln_attrs.finish();
    let links_struct = StructArray::try_new(
        link_fields(),
        vec![
            Arc::new(fsb(16, ln_trace, None)?) as ArrayRef,
            Arc::new(fsb(8, ln_span, None)?),
            Arc::new(ln_state.finish()),
            Arc::new(ln_map),
            Arc::new(ln_tags),
            Arc::new(UInt32Array::from(ln_dropped)),
        ],
        None,
    )?;
    let links = ListArray::try_new(
        Arc::new(Field::new_struct("item", link_fields(), false)),
        OffsetBuffer::new(ScalarBuffer::from(ln_offsets)),
        Arc::new(links_struct),
        None,
    )?;

    let parent_nulls = if parent_valid.iter().all(|v| *v) { None } else { Some(NullBuffer::from(parent_valid)) };
    let [d0, d1, d2] = dropped;
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(fsb(16, trace_ids, None)?),
            Arc::new(fsb(8, span_ids, None)?),
            Arc::new(fsb(8, parent_ids, parent_nulls)?),
            Arc::new(trace_state.finish()),
            Arc::new(UInt32Array::from(flags)),
            Arc::new(names.finish()),
            Arc::new(Int8Array::from(kinds)),
            Arc::new(TimestampNanosecondArray::from(starts).with_timezone("UTC")),
            Arc::new(TimestampNanosecondArray::from(ends).with_timezone("UTC")),
            Arc::new(Int64Array::from(durations)),
            Arc::new(Int8Array::from(status_codes)),
            Arc::new(status_msgs.finish()),
            Arc::new(services.finish()),
            Arc::new(nodes.finish()),
            Arc::new(res_map),
            Arc::new(res_tags),
            Arc::new(attr_map),
            Arc::new(attr_tags),
            Arc::new(scope_names.finish()),
            Arc::new(scope_versions.finish()),
            Arc::new(events),
            Arc::new(links),
            Arc::new(UInt32Array::from(d0)),
            Arc::new(UInt32Array::from(d1)),
            Arc::new(UInt32Array::from(d2)),
        ],
    )
}

/// A dictionary-encoded string column, read by row.
pub struct DictStr<'a> {
    keys: &'a arrow::array::PrimitiveArray<Int32Type>,
    values: &'a StringArray,
}

impl<'a> DictStr<'a> {
    fn new(a: &'a ArrayRef) -> Self {
        let d: &DictionaryArray<Int32Type> = a.as_dictionary();
        Self { keys: d.keys(), values: d.values().as_string::<i32>() }
    }
    /// The value at `row`, `None` when null.
    pub fn get(&self, row: usize) -> Option<&'a str> {
        if self.keys.is_null(row) {
            return None;
        }
        Some(self.values.value(self.keys.value(row) as usize))
    }
    /// The distinct values of the column (the dictionary).
    pub fn dictionary(&self) -> &'a StringArray {
        self.values
    }
    /// The dictionary key at `row` (index into [`Self::dictionary`]).
    pub fn key(&self, row: usize) -> i32 {
        self.keys.value(row)
    }
}

/// Typed access to the columns of one `spans` batch.
pub struct SpanView<'a> {
    /// The batch being read.
    pub batch: &'a RecordBatch,
    trace_id: &'a FixedSizeBinaryArray,
    span_id: &'a FixedSizeBinaryArray,
    parent: &'a FixedSizeBinaryArray,
    trace_state: &'a StringArray,
    flags: &'a UInt32Array,
    /// Operation names.
    pub name: DictStr<'a>,
    kind: &'a Int8Array,
    start: &'a TimestampNanosecondArray,
    end: &'a TimestampNanosecondArray,
    duration: &'a Int64Array,
    status: &'a Int8Array,
    status_msg: &'a StringArray,
    /// Service names.
    pub service: DictStr<'a>,
    /// Node names.
    pub node: DictStr<'a>,
    res_attrs: &'a MapArray,
    res_types: &'a BinaryArray,
    attrs: &'a MapArray,
    attr_types: &'a BinaryArray,
    scope_name: DictStr<'a>,
    scope_version: DictStr<'a>,
    events: &'a ListArray,
    links: &'a ListArray,
    dropped: [&'a UInt32Array; 3],
}

fn read_map(map: &MapArray, types: &BinaryArray, row: usize) -> Vec<Attr> {
    let entries = map.value(row);
    let keys = entries.column(0).as_string::<i32>();
    let vals = entries.column(1).as_string::<i32>();
    let tags = types.value(row);
    (0..entries.len())
        .map(|i| Attr {
            key: keys.value(i).to_string(),
            value: value::parse(tags.get(i).copied().unwrap_or(value::tag::STRING), vals.value(i)),
        })
        .collect()
}

impl<'a> SpanView<'a> {
    /// Wraps a batch that has the [`schema`] of the `spans` table.
    ///
    /// # Panics
    /// If the batch has another schema; batches only come from [`build`] or from blocks
    /// written with this schema.
    pub fn new(batch: &'a RecordBatch) -> Self {
        let c = |i: usize| batch.column(i);
        Self {
            batch,
            trace_id: c(col::TRACE_ID).as_fixed_size_binary(),
            span_id: c(col::SPAN_ID).as_fixed_size_binary(),
            parent: c(col::PARENT_SPAN_ID).as_fixed_size_binary(),
            trace_state: c(col::TRACE_STATE).as_string::<i32>(),
            flags: c(col::FLAGS).as_primitive(),
            name: DictStr::new(c(col::NAME)),
            kind: c(col::KIND).as_primitive(),
            start: c(col::START_TIME).as_primitive(),
            end: c(col::END_TIME).as_primitive(),
            duration: c(col::DURATION_NS).as_primitive(),
            status: c(col::STATUS_CODE).as_primitive(),
            status_msg: c(col::STATUS_MESSAGE).as_string::<i32>(),
            service: DictStr::new(c(col::SERVICE_NAME)),
            node: DictStr::new(c(col::NODE)),
            res_attrs: c(col::RESOURCE_ATTRIBUTES).as_map(),
            res_types: c(col::RESOURCE_ATTRIBUTE_TYPES).as_binary::<i32>(),
            attrs: c(col::ATTRIBUTES).as_map(),
            attr_types: c(col::ATTRIBUTE_TYPES).as_binary::<i32>(),
            scope_name: DictStr::new(c(col::SCOPE_NAME)),
            scope_version: DictStr::new(c(col::SCOPE_VERSION)),
            events: c(col::EVENTS).as_list::<i32>(),
            links: c(col::LINKS).as_list::<i32>(),
            dropped: [
                c(col::DROPPED_ATTRIBUTES_COUNT).as_primitive(),
                c(col::DROPPED_EVENTS_COUNT).as_primitive(),
                c(col::DROPPED_LINKS_COUNT).as_primitive(),
            ],
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Trace id bytes at `row`.
    pub fn trace_id(&self, row: usize) -> [u8; 16] {
        self.trace_id.value(row).try_into().unwrap_or([0; 16])
    }

    /// Span id bytes at `row`.
    pub fn span_id(&self, row: usize) -> [u8; 8] {
        self.span_id.value(row).try_into().unwrap_or([0; 8])
    }

    /// Start time (Unix ns) at `row`.
    pub fn start(&self, row: usize) -> i64 {
        self.start.value(row)
    }

    /// End time (Unix ns) at `row`.
    pub fn end(&self, row: usize) -> i64 {
        self.end.value(row)
    }

    /// Duration (ns) at `row`.
    pub fn duration(&self, row: usize) -> i64 {
        self.duration.value(row)
    }

    /// Status code at `row`.
    pub fn status(&self, row: usize) -> i8 {
        self.status.value(row)
    }

    /// Span kind at `row`.
    pub fn kind(&self, row: usize) -> i8 {
        self.kind.value(row)
    }

    /// Whether the span at `row` has a parent.
    pub fn has_parent(&self, row: usize) -> bool {
        self.parent.is_valid(row)
    }

    /// The display string of span attribute `key` at `row`, if present.
    pub fn attribute(&self, row: usize, key: &str) -> Option<&'a str> {
        map_lookup(self.attrs, row, key)
    }

    /// The display string of resource attribute `key` at `row`, if present.
    pub fn resource_attribute(&self, row: usize, key: &str) -> Option<&'a str> {
        map_lookup(self.res_attrs, row, key)
    }

    /// The whole span at `row` as an owned record.
    pub fn record(&self, row: usize) -> SpanRecord {
        let opt_str = |a: &StringArray| a.is_valid(row).then(|| a.value(row).to_string());
        let events = {
            let (s, e) = (self.events.value_offsets()[row] as usize, self.events.value_offsets()[row + 1] as usize);
            let st = self.events.values().as_struct();
            let time: &TimestampNanosecondArray = st.column(0).as_primitive();
            let name = st.column(1).as_string::<i32>();
            let map = st.column(2).as_map();
            let types = st.column(3).as_binary::<i32>();
            (s..e)
                .map(|i| EventRecord {
                    time_unix_nano: time.value(i),
                    name: name.value(i).to_string(),
                    attributes: read_map(map, types, i),
                })
                .collect()
        };
        let links = {
            let (s, e) = (self.links.value_offsets()[row] as usize, self.links.value_offsets()[row + 1] as usize);
            let st = self.links.values().as_struct();
            let tid = st.column(0).as_fixed_size_binary();
            let sid = st.column(1).as_fixed_size_binary();
            let state = st.column(2).as_string::<i32>();
            let map = st.column(3).as_map();
            let types = st.column(4).as_binary::<i32>();
            (s..e)
                .filter_map(|i| {
                    Some(LinkRecord {
                        trace_id: TraceId::from_slice(tid.value(i)).ok()?,
                        span_id: SpanId::from_slice(sid.value(i)).ok()?,
                        trace_state: state.is_valid(i).then(|| state.value(i).to_string()),
                        attributes: read_map(map, types, i),
                    })
                })
                .collect()
        };
        SpanRecord {
            trace_id: TraceId(self.trace_id(row)),
            span_id: SpanId(self.span_id(row)),
            parent_span_id: self.parent.is_valid(row).then(|| SpanId(self.parent.value(row).try_into().unwrap_or([0; 8]))),
            trace_state: opt_str(self.trace_state),
            flags: self.flags.value(row),
            name: self.name.get(row).unwrap_or_default().to_string(),
            kind: self.kind.value(row),
            start_time_unix_nano: self.start.value(row),
            end_time_unix_nano: self.end.value(row),
            status_code: self.status.value(row),
            status_message: opt_str(self.status_msg),
            service: self.service.get(row).unwrap_or(UNKNOWN_SERVICE).to_string(),
            node: self.node.get(row).unwrap_or(UNKNOWN_NODE).to_string(),
            resource: read_map(self.res_attrs, self.res_types, row),
            attributes: read_map(self.attrs, self.attr_types, row),
            scope_name: self.scope_name.get(row).map(str::to_string),
            scope_version: self.scope_version.get(row).map(str::to_string),
            events,
            links,
            dropped_attributes_count: self.dropped[0].value(row),
            dropped_events_count: self.dropped[1].value(row),
            dropped_links_count: self.dropped[2].value(row),
        }
    }
}

fn map_lookup<'a>(map: &'a MapArray, row: usize, key: &str) -> Option<&'a str> {
    let offsets = map.value_offsets();
    let (s, e) = (offsets[row] as usize, offsets[row + 1] as usize);
    let keys = map.keys().as_string::<i32>();
    let vals = map.values().as_string::<i32>();
    (s..e).find(|&i| keys.value(i) == key).map(|i| vals.value(i))
}

/// Reads a typed value of the attribute `key` in a record's attribute list.
pub fn find_attr<'r>(attrs: &'r [Attr], key: &str) -> Option<&'r TypedValue> {
    attrs.iter().find(|a| a.key == key).map(|a| &a.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_otlp::proto::common::v1::{AnyValue, ArrayValue, InstrumentationScope, any_value::Value};
    use skein_otlp::proto::resource::v1::Resource;
    use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
    }

    fn request() -> ExportTraceServiceRequest {
        let root = Span {
            trace_id: vec![7; 16],
            span_id: vec![1; 8],
            name: "GET /cart".into(),
            kind: 2,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 5_000,
            attributes: vec![
                kv("http.response.status_code", Value::IntValue(200)),
                kv("ok", Value::BoolValue(true)),
                kv("ratio", Value::DoubleValue(0.5)),
                kv("tags", Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(Value::StringValue("a".into())) }] })),
            ],
            events: vec![span::Event {
                time_unix_nano: 2_000,
                name: "exception".into(),
                attributes: vec![kv("exception.type", Value::StringValue("Boom".into()))],
                dropped_attributes_count: 0,
            }],
            status: Some(Status { message: "bad".into(), code: 2 }),
            ..Default::default()
        };
        let child = Span {
            trace_id: vec![7; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![1; 8],
            name: "SELECT".into(),
            kind: 3,
            start_time_unix_nano: 2_000,
            end_time_unix_nano: 3_000,
            links: vec![span::Link { trace_id: vec![9; 16], span_id: vec![9; 8], ..Default::default() }],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", Value::StringValue("cart".into())),
                        kv("host.name", Value::StringValue("web-1".into())),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "lib".into(), version: "1.0".into(), ..Default::default() }),
                    spans: vec![root, child],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn builds_and_reads_back() {
        let batch = build(&request()).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let v = SpanView::new(&batch);
        let r = v.record(0);
        assert_eq!(r.service, "cart");
        assert_eq!(r.node, "web-1");
        assert_eq!(r.parent_span_id, None);
        assert_eq!(r.duration_ns(), 4_000);
        assert_eq!(r.status_code, 2);
        assert_eq!(r.status_message.as_deref(), Some("bad"));
        assert_eq!(find_attr(&r.attributes, "http.response.status_code"), Some(&TypedValue::Int(200)));
        assert_eq!(find_attr(&r.attributes, "ok"), Some(&TypedValue::Bool(true)));
        assert_eq!(find_attr(&r.attributes, "ratio"), Some(&TypedValue::Double(0.5)));
        assert_eq!(find_attr(&r.attributes, "tags"), Some(&TypedValue::Json(serde_json::json!(["a"]))));
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].attributes[0].key, "exception.type");
        assert_eq!(r.scope_name.as_deref(), Some("lib"));
        let c = v.record(1);
        assert_eq!(c.parent_span_id, Some(SpanId([1; 8])));
        assert_eq!(c.links.len(), 1);
        assert_eq!(c.links[0].trace_id, TraceId([9; 16]));
        assert_eq!(v.attribute(0, "http.response.status_code"), Some("200"));
        assert_eq!(v.resource_attribute(1, "host.name"), Some("web-1"));
        assert_eq!(v.service.get(1), Some("cart"));
    }

    #[test]
    fn empty_request_builds_empty_batch() {
        let b = build(&ExportTraceServiceRequest::default()).unwrap();
        assert_eq!(b.num_rows(), 0);
    }
}

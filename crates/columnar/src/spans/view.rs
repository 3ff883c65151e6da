//! Reading `spans` batches back: [`SpanView`] gives typed access to the columns of one batch
//! and turns rows into owned [`SpanRecord`]s for the query layer.
//!
//! The `resource` column holds protobuf-encoded resources (see the `spans` module
//! documentation); a view decodes each distinct resource at most once, when a row first needs
//! it, so the rows of one resource share one decoding.

use super::{UNKNOWN_NODE, UNKNOWN_SERVICE, col};
use crate::record::{Attr, EventRecord, LinkRecord, SpanRecord};
use crate::value::{self, TypedValue};
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, DictionaryArray, FixedSizeBinaryArray, Int8Array, Int64Array, ListArray, MapArray, RecordBatch,
    StringArray, TimestampNanosecondArray, UInt32Array,
};
use arrow::datatypes::Int32Type;
use prost::Message;
use skein_core::{SpanId, TraceId};
use skein_otlp::proto::resource::v1::Resource;
use std::sync::OnceLock;

/// A dictionary-encoded string column, read by row.
pub struct DictStr<'a> {
    keys: &'a arrow::array::PrimitiveArray<Int32Type>,
    values: &'a StringArray,
}

impl<'a> DictStr<'a> {
    pub(crate) fn new(a: &'a ArrayRef) -> Self {
        let d: &DictionaryArray<Int32Type> = a.as_dictionary();
        Self { keys: d.keys(), values: d.values().as_string::<i32>() }
    }
    /// A view of `a`, `None` unless it is a `Dictionary<Int32, Utf8>` column.
    pub fn try_new(a: &'a ArrayRef) -> Option<Self> {
        let d: &DictionaryArray<Int32Type> = a.as_dictionary_opt()?;
        Some(Self { keys: d.keys(), values: d.values().as_string_opt::<i32>()? })
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

/// The `resource` column, read by row, each distinct resource decoded once.
pub(crate) struct ResourceDict<'a> {
    keys: &'a arrow::array::PrimitiveArray<Int32Type>,
    values: &'a BinaryArray,
    /// Per dictionary key: each attribute with its display string.
    decoded: Vec<OnceLock<Vec<(Attr, String)>>>,
}

impl<'a> ResourceDict<'a> {
    pub(crate) fn new(a: &'a ArrayRef) -> Self {
        let d: &DictionaryArray<Int32Type> = a.as_dictionary();
        let values = d.values().as_binary::<i32>();
        Self { keys: d.keys(), values, decoded: (0..values.len()).map(|_| OnceLock::new()).collect() }
    }

    /// The attributes of the resource at `row`, with their display strings.
    pub(crate) fn get(&self, row: usize) -> &[(Attr, String)] {
        let key = self.keys.value(row) as usize;
        let Some(cell) = self.decoded.get(key) else { return &[] };
        cell.get_or_init(|| {
            // The bytes were encoded by `build`; a value that does not decode is a bug, and
            // reads as a resource without attributes rather than a panic.
            let res = Resource::decode(self.values.value(key)).unwrap_or_default();
            res.attributes
                .into_iter()
                .map(|kv| {
                    let mut text = Vec::new();
                    let tag = value::render(kv.value.as_ref(), &mut text);
                    let text = String::from_utf8(text).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                    (Attr { key: kv.key, value: value::parse(tag, &text) }, text)
                })
                .collect()
        })
    }
}

/// The attributes of an encoded resource (a value of the `resource` column) with their
/// display strings, as the `attributes` map holds them. Bytes that do not decode read as a
/// resource without attributes.
pub fn resource_attributes(bytes: &[u8]) -> Vec<(String, String)> {
    Resource::decode(bytes)
        .unwrap_or_default()
        .attributes
        .into_iter()
        .map(|kv| {
            let mut text = Vec::new();
            value::render(kv.value.as_ref(), &mut text);
            (kv.key, String::from_utf8(text).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
        })
        .collect()
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
    resource: ResourceDict<'a>,
    attrs: &'a MapArray,
    attr_types: &'a BinaryArray,
    scope_name: DictStr<'a>,
    scope_version: DictStr<'a>,
    events: &'a ListArray,
    links: &'a ListArray,
    dropped: [&'a UInt32Array; 3],
}

pub(crate) fn read_map(map: &MapArray, types: &BinaryArray, row: usize) -> Vec<Attr> {
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
    /// Wraps a batch that has the [`schema`](super::schema) of the `spans` table.
    ///
    /// # Panics
    /// If the batch has another schema; batches only come from [`build`](super::build()) or from blocks
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
            resource: ResourceDict::new(c(col::RESOURCE)),
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

    /// Parent span id bytes at `row`, `None` for a root span.
    pub fn parent_span_id(&self, row: usize) -> Option<[u8; 8]> {
        self.parent.is_valid(row).then(|| self.parent.value(row).try_into().unwrap_or([0; 8]))
    }

    /// The display string of span attribute `key` at `row`, if present.
    pub fn attribute(&self, row: usize, key: &str) -> Option<&'a str> {
        map_lookup(self.attrs, row, key)
    }

    /// The display string of resource attribute `key` at `row`, if present. The resource is
    /// decoded at the first call for a row of it; later calls for its rows only compare keys.
    pub fn resource_attribute(&self, row: usize, key: &str) -> Option<&str> {
        self.resource.get(row).iter().find(|(a, _)| a.key == key).map(|(_, text)| text.as_str())
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
            resource: self.resource.get(row).iter().map(|(a, _)| a.clone()).collect(),
            attributes: sorted_by_key(read_map(self.attrs, self.attr_types, row)),
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

/// A span's attributes in key order (a stable sort, so a repeated key keeps its order): blocks
/// store common keys as columns of their own (see [`super::layout`]) and cannot keep the order the
/// app sent them in, so spans read the same from the head and from blocks.
fn sorted_by_key(mut attrs: Vec<Attr>) -> Vec<Attr> {
    attrs.sort_by(|a, b| a.key.cmp(&b.key));
    attrs
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

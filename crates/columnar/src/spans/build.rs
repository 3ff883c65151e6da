//! The column buffers of a `spans` batch ([`Columns`], with the [`StrCol`], [`MapCol`] and
//! [`ResourceCol`] helpers) and the builder from a decoded request ([`build`]). The wire decoder
//! (`super::wire`) fills the same buffers, so both builders finish through
//! [`Columns::finish`] and produce the same batch for the same request.

use super::{UNKNOWN_NODE, UNKNOWN_SERVICE, event_fields, link_fields, map_entries, schema};
use crate::value;
use arrow::array::{
    ArrayRef, BinaryArray, DictionaryArray, FixedSizeBinaryArray, Int8Array, Int32Array, Int64Array, ListArray, MapArray, RecordBatch,
    StringArray, StringDictionaryBuilder, StructArray, TimestampNanosecondArray, UInt32Array,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Int32Type};
use arrow::error::ArrowError;
use prost::Message;
use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::proto::common::v1::KeyValue;
use std::collections::HashMap;
use std::sync::Arc;

/// A growing Utf8 column: offsets plus bytes, with a validity bitmap once a null is pushed.
///
/// The bytes are not checked as they are appended: [`Self::finish`] checks the whole column at
/// once (all UTF-8, every offset on a char boundary, which is what Arrow checks anyway), which
/// costs a fraction of checking each value (see `super::wire`).
pub(crate) struct StrCol {
    offsets: Vec<i32>,
    /// The value bytes; a caller may append to it directly and then [`Self::close`] the value.
    pub(crate) data: Vec<u8>,
    /// Validity, materialised at the first null: most columns (every map key and value) never
    /// hold one, and a `bool` per value is not free on the hot path.
    valid: Option<Vec<bool>>,
}

impl StrCol {
    pub(crate) fn new() -> Self {
        Self { offsets: vec![0], data: Vec::new(), valid: None }
    }
    pub(crate) fn push(&mut self, s: &[u8]) {
        self.data.extend_from_slice(s);
        self.close(true);
    }
    /// Pushes `s`, or a null when it is empty (OTLP has no null strings, only empty ones).
    pub(crate) fn push_opt(&mut self, s: &[u8]) {
        if s.is_empty() {
            self.close(false);
        } else {
            self.push(s);
        }
    }
    /// Ends the value made of the bytes appended to [`Self::data`] since the last close.
    pub(crate) fn close(&mut self, valid: bool) {
        self.offsets.push(self.data.len() as i32);
        match &mut self.valid {
            Some(v) => v.push(valid),
            None if !valid => {
                let mut v = vec![true; self.offsets.len() - 2];
                v.push(false);
                self.valid = Some(v);
            }
            None => {}
        }
    }
    /// The values as strings.
    ///
    /// # Errors
    /// If the column is not UTF-8 or a value boundary splits a character.
    fn strs(&self) -> Result<impl Iterator<Item = &str>, ArrowError> {
        let all = std::str::from_utf8(&self.data).map_err(|e| ArrowError::InvalidArgumentError(format!("non UTF-8 string: {e}")))?;
        if let Some(o) = self.offsets.iter().find(|&&o| !all.is_char_boundary(o as usize)) {
            return Err(ArrowError::InvalidArgumentError(format!("split UTF-8 character at offset {o}")));
        }
        Ok(self.offsets.windows(2).map(|w| all.get(w[0] as usize..w[1] as usize).unwrap_or_default()))
    }
    /// # Errors
    /// If the column is not UTF-8 or a value boundary splits a character.
    pub(crate) fn finish(self) -> Result<StringArray, ArrowError> {
        let nulls = self.valid.map(NullBuffer::from);
        StringArray::try_new(OffsetBuffer::new(ScalarBuffer::from(exact(self.offsets))), Buffer::from(exact(self.data)), nulls)
    }
}

/// A growing attribute map column plus its parallel type-tag column.
pub(crate) struct MapCol {
    offsets: Vec<i32>,
    keys: StrCol,
    values: StrCol,
    tags: Vec<u8>,
}

impl MapCol {
    pub(crate) fn new() -> Self {
        Self { offsets: vec![0], keys: StrCol::new(), values: StrCol::new(), tags: Vec::new() }
    }

    /// Appends one row holding `attrs`.
    pub(crate) fn push(&mut self, attrs: &[KeyValue]) {
        for kv in attrs {
            let out = self.begin_entry(kv.key.as_bytes());
            let t = value::render(kv.value.as_ref(), out);
            self.end_entry(t);
        }
        self.close_row();
    }

    /// Starts an entry of the current row: appends `key` and returns the buffer the value is
    /// rendered into. [`Self::end_entry`] must follow.
    pub(crate) fn begin_entry(&mut self, key: &[u8]) -> &mut Vec<u8> {
        self.keys.push(key);
        &mut self.values.data
    }

    /// Ends the entry started by [`Self::begin_entry`], with the value's type tag.
    pub(crate) fn end_entry(&mut self, tag: u8) {
        self.values.close(true);
        self.tags.push(tag);
    }

    /// Ends the current row (which may be empty).
    pub(crate) fn close_row(&mut self) {
        self.offsets.push(self.tags.len() as i32);
    }

    /// # Errors
    /// If a key or value is not UTF-8.
    pub(crate) fn finish(self) -> Result<(MapArray, BinaryArray), ArrowError> {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(exact(self.offsets)));
        let entries = StructArray::new(
            match map_entries().data_type() {
                DataType::Struct(f) => f.clone(),
                _ => unreachable!("map entries are a struct"),
            },
            vec![Arc::new(self.keys.finish()?) as ArrayRef, Arc::new(self.values.finish()?)],
            None,
        );
        let map = MapArray::new(map_entries(), offsets.clone(), entries, None, false);
        let tags = BinaryArray::new(offsets, Buffer::from(exact(self.tags)), None);
        Ok((map, tags))
    }
}

/// The growing `resource` column: a key per row into the distinct resource encodings of the
/// batch, each stored once (see the `spans` module documentation).
pub(crate) struct ResourceCol {
    keys: Vec<i32>,
    offsets: Vec<i32>,
    values: Vec<u8>,
    /// The key of each encoding stored so far.
    index: HashMap<Vec<u8>, i32>,
}

impl ResourceCol {
    pub(crate) fn new(n: usize) -> Self {
        Self { keys: Vec::with_capacity(n), offsets: vec![0], values: Vec::new(), index: HashMap::new() }
    }

    /// Appends `rows` rows holding the resource encoded as `encoded`.
    pub(crate) fn push(&mut self, rows: usize, encoded: &[u8]) {
        // A value appended zero times would still enter the dictionary.
        if rows == 0 {
            return;
        }
        let key = match self.index.get(encoded) {
            Some(&k) => k,
            None => {
                let k = (self.offsets.len() - 1) as i32;
                self.values.extend_from_slice(encoded);
                self.offsets.push(self.values.len() as i32);
                self.index.insert(encoded.to_vec(), k);
                k
            }
        };
        self.keys.extend(std::iter::repeat_n(key, rows));
    }

    pub(crate) fn finish(self) -> Result<DictionaryArray<Int32Type>, ArrowError> {
        let values = BinaryArray::new(OffsetBuffer::new(ScalarBuffer::from(exact(self.offsets))), Buffer::from(exact(self.values)), None);
        DictionaryArray::try_new(Int32Array::from(exact(self.keys)), Arc::new(values))
    }
}

pub(crate) fn fsb(size: i32, data: Vec<u8>, nulls: Option<NullBuffer>) -> Result<FixedSizeBinaryArray, ArrowError> {
    FixedSizeBinaryArray::try_new(size, Buffer::from(data), nulls)
}

/// A dictionary builder sized for `rows` rows of a low-cardinality column: the default
/// capacity (1024 values) would cost more than the column itself for small batches.
pub(crate) fn dict_builder(rows: usize) -> StringDictionaryBuilder<Int32Type> {
    StringDictionaryBuilder::with_capacity(rows, 8, 256)
}

/// `v` without spare capacity: a batch lives in the head for a long time, and the memory limit
/// counts what buffers hold, not what they use.
pub(crate) fn exact<T>(mut v: Vec<T>) -> Vec<T> {
    v.shrink_to_fit();
    v
}

/// The scalar fields of one span row, borrowed from wherever the span was read.
/// Strings are UTF-8 bytes, checked when the columns are finished.
pub(super) struct SpanRow<'a> {
    pub(super) trace_id: &'a [u8],
    pub(super) span_id: &'a [u8],
    pub(super) parent_span_id: &'a [u8],
    pub(super) trace_state: &'a [u8],
    pub(super) flags: u32,
    pub(super) name: &'a [u8],
    pub(super) kind: i32,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) status_code: i32,
    pub(super) status_message: &'a [u8],
    /// Attributes, events and links dropped.
    pub(super) dropped: [u32; 3],
}

/// The growing columns of one `spans` batch.
///
/// A span is appended in this order: its events (each: `ev_attrs` row, then
/// [`Self::push_event`]), its links (each: `ln_attrs` row, then [`Self::push_link`]), its
/// `attrs` row, then [`Self::push_span`]; after the spans of a scope, [`Self::push_scope_rows`]
/// fills the per-scope columns for them, and after those of a resource,
/// [`Self::push_resource_rows`] fills the `resource` column. The dictionary columns are
/// encoded by [`Self::finish`], which knows the number of rows and so sizes them exactly.
pub(super) struct Columns {
    trace_ids: Vec<u8>,
    span_ids: Vec<u8>,
    parent_ids: Vec<u8>,
    parent_valid: Vec<bool>,
    trace_state: StrCol,
    flags: Vec<u32>,
    names: StrCol,
    kinds: Vec<i8>,
    starts: Vec<i64>,
    ends: Vec<i64>,
    durations: Vec<i64>,
    status_codes: Vec<i8>,
    status_msgs: StrCol,
    resource: ResourceCol,
    pub(super) attrs: MapCol,
    /// Rows of each run of spans that share a service, node and scope.
    run_rows: Vec<usize>,
    /// Service, node, scope name and scope version of each run.
    run_strs: StrCol,
    dropped: [Vec<u32>; 3],
    ev_offsets: Vec<i32>,
    ev_time: Vec<i64>,
    ev_name: StrCol,
    pub(super) ev_attrs: MapCol,
    ev_dropped: Vec<u32>,
    ln_offsets: Vec<i32>,
    ln_trace: Vec<u8>,
    ln_span: Vec<u8>,
    ln_state: StrCol,
    pub(super) ln_attrs: MapCol,
    ln_dropped: Vec<u32>,
}

impl Columns {
    /// Empty columns with room for `n` spans (a hint: they grow past it, and are trimmed to
    /// size by [`Self::finish`]).
    pub(super) fn new(n: usize) -> Self {
        Self {
            trace_ids: Vec::with_capacity(n * 16),
            span_ids: Vec::with_capacity(n * 8),
            parent_ids: Vec::with_capacity(n * 8),
            parent_valid: Vec::with_capacity(n),
            trace_state: StrCol::new(),
            flags: Vec::with_capacity(n),
            names: StrCol::new(),
            kinds: Vec::with_capacity(n),
            starts: Vec::with_capacity(n),
            ends: Vec::with_capacity(n),
            durations: Vec::with_capacity(n),
            status_codes: Vec::with_capacity(n),
            status_msgs: StrCol::new(),
            resource: ResourceCol::new(n),
            attrs: MapCol::new(),
            run_rows: Vec::new(),
            run_strs: StrCol::new(),
            dropped: [Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n)],
            ev_offsets: vec![0],
            ev_time: Vec::new(),
            ev_name: StrCol::new(),
            ev_attrs: MapCol::new(),
            ev_dropped: Vec::new(),
            ln_offsets: vec![0],
            ln_trace: Vec::new(),
            ln_span: Vec::new(),
            ln_state: StrCol::new(),
            ln_attrs: MapCol::new(),
            ln_dropped: Vec::new(),
        }
    }

    /// Appends an event of the current span; its `ev_attrs` row must be closed already.
    pub(super) fn push_event(&mut self, time_unix_nano: u64, name: &[u8], dropped_attributes: u32) {
        // A time past i64 (year 2262) would wrap negative in the nanosecond timestamp column.
        self.ev_time.push(i64::try_from(time_unix_nano).unwrap_or(i64::MAX));
        self.ev_name.push(name);
        self.ev_dropped.push(dropped_attributes);
    }

    /// Appends a link of the current span; its `ln_attrs` row must be closed already. The ids
    /// must have been validated (16 and 8 bytes).
    pub(super) fn push_link(&mut self, trace_id: &[u8], span_id: &[u8], trace_state: &[u8], dropped_attributes: u32) {
        self.ln_trace.extend_from_slice(trace_id);
        self.ln_span.extend_from_slice(span_id);
        self.ln_state.push_opt(trace_state);
        self.ln_dropped.push(dropped_attributes);
    }

    /// Appends the scalar columns of a validated span and closes its event and link lists.
    pub(super) fn push_span(&mut self, s: &SpanRow<'_>) {
        self.trace_ids.extend_from_slice(s.trace_id);
        self.span_ids.extend_from_slice(s.span_id);
        if s.parent_span_id.len() == 8 {
            self.parent_ids.extend_from_slice(s.parent_span_id);
            self.parent_valid.push(true);
        } else {
            self.parent_ids.extend_from_slice(&[0; 8]);
            self.parent_valid.push(false);
        }
        self.trace_state.push_opt(s.trace_state);
        self.flags.push(s.flags);
        self.names.push(s.name);
        self.kinds.push(s.kind.clamp(0, 127) as i8);
        let (st, en) = (s.start as i64, s.end as i64);
        self.starts.push(st);
        self.ends.push(en);
        self.durations.push(en - st);
        self.status_codes.push(s.status_code.clamp(0, 127) as i8);
        self.status_msgs.push_opt(s.status_message);
        for (col, v) in self.dropped.iter_mut().zip(s.dropped) {
            col.push(v);
        }
        self.ev_offsets.push(self.ev_time.len() as i32);
        self.ln_offsets.push(self.ln_dropped.len() as i32);
    }

    /// Fills the service, node and scope columns of the last `rows` spans, which share them.
    pub(super) fn push_scope_rows(&mut self, rows: usize, service: &str, node: &str, scope_name: &str, scope_version: &str) {
        // A value appended zero times would still enter the dictionary.
        if rows == 0 {
            return;
        }
        self.run_rows.push(rows);
        for v in [service, node, scope_name, scope_version] {
            self.run_strs.push(v.as_bytes());
        }
    }

    /// Fills the `resource` column of the last `rows` spans, which share the resource whose
    /// protobuf encoding (after validation's limits) is `encoded`.
    pub(super) fn push_resource_rows(&mut self, rows: usize, encoded: &[u8]) {
        self.resource.push(rows, encoded);
    }

    /// The dictionary columns: name, then service, node, scope name and scope version.
    fn dictionaries(&self) -> Result<[DictionaryArray<Int32Type>; 5], ArrowError> {
        let n = self.kinds.len();
        let mut names = dict_builder(n);
        for name in self.names.strs()? {
            names.append_value(name);
        }
        let mut per_run = [dict_builder(n), dict_builder(n), dict_builder(n), dict_builder(n)];
        let mut strs = self.run_strs.strs()?;
        for &rows in &self.run_rows {
            for (j, col) in per_run.iter_mut().enumerate() {
                let v = strs.next().unwrap_or_default();
                // Scope name and version are null when empty (OTLP has no null strings).
                if j >= 2 && v.is_empty() {
                    col.append_nulls(rows);
                } else {
                    col.append_values(v, rows);
                }
            }
        }
        let [services, nodes, scope_names, scope_versions] = per_run.map(|mut b| b.finish());
        Ok([names.finish(), services, nodes, scope_names, scope_versions])
    }

    /// The finished batch.
    ///
    /// # Errors
    /// If an id of the wrong length was pushed (a span that was not validated), or a string
    /// that is not UTF-8.
    pub(super) fn finish(self) -> Result<RecordBatch, ArrowError> {
        let [names, services, nodes, scope_names, scope_versions] = self.dictionaries()?;
        let resource = self.resource.finish()?;
        let (attr_map, attr_tags) = self.attrs.finish()?;
        let (ev_map, ev_tags) = self.ev_attrs.finish()?;
        let events_struct = StructArray::try_new(
            event_fields(),
            vec![
                Arc::new(TimestampNanosecondArray::from(exact(self.ev_time)).with_timezone("UTC")) as ArrayRef,
                Arc::new(self.ev_name.finish()?),
                Arc::new(ev_map),
                Arc::new(ev_tags),
                Arc::new(UInt32Array::from(exact(self.ev_dropped))),
            ],
            None,
        )?;
        let events = ListArray::try_new(
            Arc::new(Field::new_struct("item", event_fields(), false)),
            OffsetBuffer::new(ScalarBuffer::from(exact(self.ev_offsets))),
            Arc::new(events_struct),
            None,
        )?;
        let (ln_map, ln_tags) = self.ln_attrs.finish()?;
        let links_struct = StructArray::try_new(
            link_fields(),
            vec![
                Arc::new(fsb(16, exact(self.ln_trace), None)?) as ArrayRef,
                Arc::new(fsb(8, exact(self.ln_span), None)?),
                Arc::new(self.ln_state.finish()?),
                Arc::new(ln_map),
                Arc::new(ln_tags),
                Arc::new(UInt32Array::from(exact(self.ln_dropped))),
            ],
            None,
        )?;
        let links = ListArray::try_new(
            Arc::new(Field::new_struct("item", link_fields(), false)),
            OffsetBuffer::new(ScalarBuffer::from(exact(self.ln_offsets))),
            Arc::new(links_struct),
            None,
        )?;

        let parent_nulls = if self.parent_valid.iter().all(|v| *v) { None } else { Some(NullBuffer::from(self.parent_valid)) };
        let [d0, d1, d2] = self.dropped.map(exact);
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(fsb(16, exact(self.trace_ids), None)?),
                Arc::new(fsb(8, exact(self.span_ids), None)?),
                Arc::new(fsb(8, exact(self.parent_ids), parent_nulls)?),
                Arc::new(self.trace_state.finish()?),
                Arc::new(UInt32Array::from(exact(self.flags))),
                Arc::new(names),
                Arc::new(Int8Array::from(exact(self.kinds))),
                Arc::new(TimestampNanosecondArray::from(exact(self.starts)).with_timezone("UTC")),
                Arc::new(TimestampNanosecondArray::from(exact(self.ends)).with_timezone("UTC")),
                Arc::new(Int64Array::from(exact(self.durations))),
                Arc::new(Int8Array::from(exact(self.status_codes))),
                Arc::new(self.status_msgs.finish()?),
                Arc::new(services),
                Arc::new(nodes),
                Arc::new(resource),
                Arc::new(attr_map),
                Arc::new(attr_tags),
                Arc::new(scope_names),
                Arc::new(scope_versions),
                Arc::new(events),
                Arc::new(links),
                Arc::new(UInt32Array::from(d0)),
                Arc::new(UInt32Array::from(d1)),
                Arc::new(UInt32Array::from(d2)),
            ],
        )
    }
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

/// The attribute keys [`node_of`] tries, in order.
pub(super) const NODE_KEYS: [&str; 3] = ["host.name", "k8s.pod.name", "host.id"];
/// The attribute key [`service_of`] reads.
pub(super) const SERVICE_KEY: &str = "service.name";

/// The node identity of a resource: `host.name`, else `k8s.pod.name`, else `host.id`.
pub fn node_of(resource_attrs: &[KeyValue]) -> &str {
    first_str(resource_attrs, &NODE_KEYS).unwrap_or(UNKNOWN_NODE)
}

/// The service of a resource: `service.name`, else `unknown_service`.
pub fn service_of(resource_attrs: &[KeyValue]) -> &str {
    first_str(resource_attrs, &[SERVICE_KEY]).unwrap_or(UNKNOWN_SERVICE)
}

/// Builds one `RecordBatch` of the `spans` schema from a validated request. The request must
/// have passed [`skein_otlp::validate_traces`] (ids of the right length, sane timestamps).
///
/// # Errors
/// Only if the request was not validated (an id of the wrong length).
pub fn build(req: &ExportTraceServiceRequest) -> Result<RecordBatch, ArrowError> {
    let n: usize = req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
    let mut c = Columns::new(n);
    let mut encoded = Vec::new();
    for rs in &req.resource_spans {
        let rattrs = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes);
        let (service, node) = (service_of(rattrs), node_of(rattrs));
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                for e in &s.events {
                    c.ev_attrs.push(&e.attributes);
                    c.push_event(e.time_unix_nano, e.name.as_bytes(), e.dropped_attributes_count);
                }
                for l in &s.links {
                    c.ln_attrs.push(&l.attributes);
                    c.push_link(&l.trace_id, &l.span_id, l.trace_state.as_bytes(), l.dropped_attributes_count);
                }
                c.attrs.push(&s.attributes);
                let (status_code, status_message) = s.status.as_ref().map_or((0, &b""[..]), |st| (st.code, st.message.as_bytes()));
                c.push_span(&SpanRow {
                    trace_id: &s.trace_id,
                    span_id: &s.span_id,
                    parent_span_id: &s.parent_span_id,
                    trace_state: s.trace_state.as_bytes(),
                    flags: s.flags,
                    name: s.name.as_bytes(),
                    kind: s.kind,
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano,
                    status_code,
                    status_message,
                    dropped: [s.dropped_attributes_count, s.dropped_events_count, s.dropped_links_count],
                });
            }
            let scope = ss.scope.as_ref();
            let (name, version) = scope.map_or(("", ""), |s| (s.name.as_str(), s.version.as_str()));
            c.push_scope_rows(ss.spans.len(), service, node, name, version);
        }
        encoded.clear();
        if let Some(r) = &rs.resource {
            r.encode(&mut encoded).map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        }
        c.push_resource_rows(rs.scope_spans.iter().map(|s| s.spans.len()).sum(), &encoded);
    }
    c.finish()
}

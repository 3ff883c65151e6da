//! Single-pass ingest: the OTLP/protobuf bytes of an `ExportTraceServiceRequest` read straight
//! into the columns of a `spans` batch, validated on the way, with no intermediate structs and
//! no allocation per span or attribute (strings stay borrowed from the body until they are
//! copied into their column).
//!
//! The result is, by contract, what `prost` decoding, [`skein_otlp::validate_traces`] and
//! [`super::build()`] make of the same bytes: the same batch and the same [`Validated`] counts,
//! or an error exactly when `prost` would fail. In detail:
//!
//! - **Wire format** (`super::protobuf`). A key above 32 bits, wire type 6 or 7, field number 0,
//!   a known field with another wire type, truncated input, a length past the end of its
//!   enclosing message, a varint over 64 bits, invalid UTF-8 in any `string` field (even one
//!   Skein ignores, like `schema_url`), a stray end-group tag and nesting past prost's recursion
//!   limit (100, groups included) are errors, as they are for prost. Unknown fields of every wire
//!   type are skipped, groups included.
//! - **Proto3 merging.** A scalar field that appears twice keeps its last value; a message field
//!   that appears twice (`resource`, `scope`, `status`, an attribute's `value`) is merged, which
//!   is the same as decoding its occurrences one after the other into one state. A
//!   `ResourceSpans` may carry its `resource` after its `scope_spans`: the columns that depend
//!   on the resource (service, node, resource) are filled when the `ResourceSpans` ends, for
//!   all its kept spans.
//! - **The resource** is checked here like every other message (so an error names its field),
//!   and also merged into a prost `Resource`, once per `ResourceSpans`: when it ends, the
//!   resource gets validation's limits ([`limit_resource`]), `service_name` and `node` are read
//!   from it by the functions [`super::build()`] uses, and it is encoded for the `resource`
//!   column. One decode and one encode per resource, not per span, and the same bytes as
//!   [`super::build()`] encodes.
//! - **One pass per span.** Whether a span (or link) is kept decides whether its attributes,
//!   events and links are stored and counted against the limits, and the ids and times that
//!   decide it normally come first (SDKs write fields in order). So the verdict is taken at the
//!   first nested message and checked again at the end of the span; if a later field changed
//!   it, the request is decoded again reading each span twice, scalars first ([`Pass`]).
//! - **UTF-8.** A string that ends up in the batch is checked with its whole column when the
//!   column is finished (Arrow checks it there anyway, and one check of a column costs a fraction
//!   of one check per value); every other string (under a rejected span, past the attribute
//!   limit, truncated, replaced by a later occurrence, not stored at all) is checked where it is
//!   read. If a column fails its check, the request is decoded again checking every string where
//!   it is read, to name the field and byte offset of the bad one.
//! - **Values** (`super::kv`). Scalar attribute values stay borrowed from the body ([`ValueRef`](crate::value::ValueRef)) and are
//!   rendered by [`value::render_ref`](crate::value::render_ref), the same function [`value::render`](crate::value::render) uses. Array and
//!   kvlist values are checked here like every other message, then decoded by prost (their
//!   `value` occurrences merged in order) and rendered by [`value::render`](crate::value::render): they are rare, and
//!   their JSON rendering is not worth a second implementation.
//! - **Validation.** Span rejection, link dropping, attribute limits and value truncation follow
//!   `skein_otlp::validate` rule for rule (see [`check_span`]); attributes past the limit and
//!   everything under a rejected span or dropped link are still decoded, as prost would, and
//!   then discarded.
//!
//! If prost refuses an array or kvlist value that passed the checks here (which would be a
//! bug), the whole request falls back to prost, validation and [`super::build()`].

use super::build::{Columns, SpanRow, node_of, service_of};
use super::kv::{key_value, render_attr, set_text, utf8};
use super::protobuf::{At, Cur, R, RECURSION_LIMIT, Stop, WireReason, render_path};
use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use prost::Message;
use skein_core::{ErrorCode, SpanId, TraceId};
use skein_otlp::proto::resource::v1::Resource;
use skein_otlp::{ExportTraceServiceRequest, Limits, Validated};

/// What [`build_from_protobuf`] made of a request.
#[derive(Debug)]
pub struct WireOutcome {
    /// The accepted spans, equal to what validation and [`super::build()`] produce.
    pub batch: RecordBatch,
    /// Accepted and rejected spans, reasons and limit counters, as [`skein_otlp::validate_traces`]
    /// reports them.
    pub validated: Validated,
    /// Whether validation changed the request (a span rejected, an attribute dropped, a value
    /// truncated or a link dropped). When false, the received bytes decode and build to the same
    /// batch and may be logged as they are; when true, the validated request must be re-encoded.
    pub modified: bool,
}

/// Why a body could not be decoded as an `ExportTraceServiceRequest`.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The protobuf is malformed; `path` names the field being read (for example
    /// `resource_spans[0].scope_spans[1].spans[7].attributes[2]`).
    #[error("malformed protobuf at byte {offset} in {path}: {reason}")]
    Malformed {
        /// Byte offset in the body where the bad field, key or length starts.
        offset: usize,
        /// Field path from the request down to the bad field.
        path: String,
        /// What was wrong.
        reason: WireReason,
    },
    /// Prost rejected the body on the fallback path.
    #[error("malformed protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The Arrow batch could not be assembled (a bug: validated spans always build).
    #[error("building the spans batch failed: {0}")]
    Arrow(#[from] ArrowError),
}

impl WireError {
    /// The error code, from which HTTP and gRPC statuses follow.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed { .. } | Self::Decode(_) => ErrorCode::BadRequest,
            Self::Arrow(_) => ErrorCode::Internal,
        }
    }
}

/// Decodes, validates and builds a request in one pass; see the module documentation.
///
/// # Errors
/// [`WireError::Malformed`] where prost would fail to decode the body, naming the field and
/// byte offset.
pub fn build_from_protobuf(body: &[u8], limits: &Limits) -> Result<WireOutcome, WireError> {
    let (mut strict, mut speculate) = (false, true);
    let out = loop {
        match decode(body, limits, strict, speculate) {
            Err(stop) if !strict && matches!(*stop, Stop::Recheck) => strict = true,
            Err(stop) if speculate && matches!(*stop, Stop::TwoPass) => speculate = false,
            out => break out,
        }
    };
    out.or_else(|stop| match *stop {
        Stop::Malformed { offset, reason, path } => Err(WireError::Malformed { offset, path: render_path(&path), reason }),
        // The last run never asks for another; if it did, prost decides.
        Stop::Fallback | Stop::Recheck | Stop::TwoPass => via_prost(body, limits),
        Stop::Arrow(e) => Err(WireError::Arrow(e)),
    })
}

/// One decoding run. Unless `strict`, strings that end up in the batch are checked as UTF-8
/// only when their columns are finished; a failure there asks for a strict run, which checks
/// each string where it is read and so can say where the bad one is. With `speculate`, spans
/// and links are read in one pass (see [`Pass::All`]).
fn decode(body: &[u8], limits: &Limits, strict: bool, speculate: bool) -> R<WireOutcome> {
    let mut d = Decoder {
        lazy: !strict,
        speculate,
        max_attrs: limits.max_attributes_per_span,
        max_len: limits.max_attribute_value_len,
        // A first guess at the number of spans (OTLP spans take a few hundred bytes); the
        // columns grow past it and are trimmed to size at the end. Counting the spans first
        // would cost a pass that hops from span to span through memory not yet in cache.
        cols: Columns::new(body.len() / 256),
        v: Validated::default(),
        links_dropped: false,
        resource: Resource::default(),
        encoded: Vec::new(),
        scopes: Vec::new(),
    };
    d.request(Cur::new(body))?;
    let v = d.v;
    let modified = v.rejected > 0 || v.attributes_dropped > 0 || v.values_truncated > 0 || d.links_dropped;
    let batch = d.cols.finish().map_err(|e| Box::new(if strict { Stop::Arrow(e) } else { Stop::Recheck }))?;
    Ok(WireOutcome { batch, validated: v, modified })
}

/// The reference path: prost, validation, [`super::build()`]. `modified` is always true: without
/// tracking the links validation drops, re-encoding is the safe answer.
pub(super) fn via_prost(body: &[u8], limits: &Limits) -> Result<WireOutcome, WireError> {
    let mut req = ExportTraceServiceRequest::decode(body)?;
    let validated = skein_otlp::validate_traces(&mut req, limits);
    Ok(WireOutcome { batch: super::build(&req)?, validated, modified: true })
}

/// The scalar fields of a span, from the first pass.
#[derive(Default)]
struct SpanHead<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    trace_state: &'a [u8],
    name: &'a [u8],
    kind: i32,
    start: u64,
    end: u64,
    flags: u32,
    dropped: [u32; 3],
}

/// Which fields one read of a span (or link) covers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// All of them, deciding whether the span is kept at its first nested message: the ids and
    /// times normally come first (SDKs write fields in order). The verdict is checked at the end,
    /// and a request where a later field changed it is decoded again, in two passes.
    All,
    /// The scalar fields, nested messages only delimited: the first of two passes.
    Head,
    /// The nested messages, once the verdict is known: the second of two passes.
    Children,
}

/// What a span's nested messages amount to.
#[derive(Default)]
struct SpanBody<'a> {
    /// Whether the span is kept, once decided.
    keep: Option<bool>,
    attrs: usize,
    events: usize,
    links: usize,
    links_dropped: u32,
    status_code: i32,
    status_message: &'a [u8],
}

/// The fields of a link.
#[derive(Default)]
struct LinkFields<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a [u8],
    dropped: u32,
    attrs: usize,
    /// Whether the link is kept, once decided.
    keep: Option<bool>,
}

impl LinkFields<'_> {
    /// Validation keeps a link whose ids are valid.
    fn valid(&self) -> bool {
        TraceId::from_slice(self.trace_id).is_ok() && SpanId::from_slice(self.span_id).is_ok()
    }
}

/// `skein_otlp::validate`'s span rules, on the span's wire fields.
fn check_span(s: &SpanHead<'_>) -> Result<(), (&'static str, String)> {
    skein_otlp::validate::check_span_fields(s.trace_id, s.span_id, s.parent_span_id, s.start, s.end)
}

/// The decoder's state: the growing columns and the validation outcome.
struct Decoder<'a> {
    /// Whether strings stored in the batch are left to the column-wide UTF-8 check.
    lazy: bool,
    /// Whether spans and links are read in one pass ([`Pass::All`]) rather than two.
    speculate: bool,
    max_attrs: usize,
    max_len: usize,
    cols: Columns,
    v: Validated,
    links_dropped: bool,
    /// The current resource, merged from its occurrences.
    resource: Resource,
    /// The current resource's encoding, for the `resource` column.
    encoded: Vec<u8>,
    /// The scopes of the current resource: spans kept, name and version.
    scopes: Vec<(usize, &'a str, &'a str)>,
}

impl<'a> Decoder<'a> {
    fn request(&mut self, mut c: Cur<'a>) -> R<()> {
        let mut ri = 0;
        while c.more() {
            let k = c.key()?;
            if k.tag() == 1 {
                let (m, ctx) = c.read_msg(k, RECURSION_LIMIT).at_i("resource_spans", ri)?;
                self.resource_spans(m, ctx, ri).at_i("resource_spans", ri)?;
                ri += 1;
            } else {
                c.skip(k, RECURSION_LIMIT)?;
            }
        }
        Ok(())
    }

    /// One pass: the resource may come after the spans it applies to, so the columns that
    /// depend on it (service, node, resource) are filled at the end, for all the spans kept.
    fn resource_spans(&mut self, mut c: Cur<'a>, ctx: u32, ri: usize) -> R<()> {
        self.resource.clear();
        self.scopes.clear();
        // Attributes seen so far, over every occurrence of `resource`.
        let mut res_attrs = 0;
        let mut si = 0;
        while c.more() {
            let k = c.key()?;
            match k.tag() {
                1 => {
                    let (m, ctx) = c.read_msg(k, ctx).at("resource")?;
                    self.resource(m, ctx, &mut res_attrs).at("resource")?;
                }
                2 => {
                    let (m, ctx) = c.read_msg(k, ctx).at_i("scope_spans", si)?;
                    self.scope_spans(m, ctx, ri, si).at_i("scope_spans", si)?;
                    si += 1;
                }
                3 => {
                    c.read_str(k).at("schema_url")?;
                }
                _ => c.skip(k, ctx)?,
            }
        }
        limit_resource(&mut self.resource, self.max_attrs, self.max_len, &mut self.v);
        let (service, node) = (service_of(&self.resource.attributes), node_of(&self.resource.attributes));
        let mut kept = 0;
        for &(rows, name, version) in &self.scopes {
            self.cols.push_scope_rows(rows, service, node, name, version);
            kept += rows;
        }
        if kept > 0 {
            self.encoded.clear();
            self.resource.encode(&mut self.encoded).map_err(|_| Box::new(Stop::Fallback))?;
            self.cols.push_resource_rows(kept, &self.encoded);
        }
        Ok(())
    }

    /// Checks one occurrence of the resource and merges it into [`Self::resource`].
    fn resource(&mut self, mut c: Cur<'a>, ctx: u32, attrs: &mut usize) -> R<()> {
        let whole = c.rest();
        while c.more() {
            let k = c.key()?;
            match k.tag() {
                1 => {
                    let i = *attrs;
                    *attrs += 1;
                    // Checked now: the resource is decoded again by prost.
                    let (m, ctx) = c.read_msg(k, ctx).at_i("attributes", i)?;
                    key_value(m, ctx, false).at_i("attributes", i)?;
                }
                2 => {
                    c.read_varint(k).at("dropped_attributes_count")?;
                }
                3 => {
                    let (m, ctx) = c.read_msg(k, ctx).at("entity_refs")?;
                    entity_ref(m, ctx).at("entity_refs")?;
                }
                _ => c.skip(k, ctx)?,
            }
        }
        // Merging occurrences one after the other is what prost does with a repeated message
        // field. Prost refusing what passed the checks above would be a bug: let prost decide.
        self.resource.merge(whole).map_err(|_| Box::new(Stop::Fallback))?;
        Ok(())
    }

    /// One pass: the scope's name and version are needed only once its spans are counted.
    fn scope_spans(&mut self, mut c: Cur<'a>, ctx: u32, ri: usize, ssi: usize) -> R<()> {
        let (mut name, mut version) = ("", "");
        let (mut si, mut kept) = (0, 0);
        while c.more() {
            let k = c.key()?;
            match k.tag() {
                1 => {
                    let (m, ctx) = c.read_msg(k, ctx).at("scope")?;
                    scope(m, ctx, &mut name, &mut version).at("scope")?;
                }
                2 => {
                    let (m, ctx) = c.read_msg(k, ctx).at_i("spans", si)?;
                    kept += usize::from(self.span(m, ctx, ri, ssi, si).at_i("spans", si)?);
                    si += 1;
                }
                3 => {
                    c.read_str(k).at("schema_url")?;
                }
                _ => c.skip(k, ctx)?,
            }
        }
        self.scopes.push((kept, name, version));
        Ok(())
    }

    /// Decodes one span; returns whether it was accepted (and appended).
    fn span(&mut self, msg: Cur<'a>, ctx: u32, ri: usize, ssi: usize, si: usize) -> R<bool> {
        let (mut s, mut b) = (SpanHead::default(), SpanBody::default());
        if self.speculate {
            self.span_fields(msg, ctx, Pass::All, &mut s, &mut b)?;
        } else {
            self.span_fields(msg, ctx, Pass::Head, &mut s, &mut b)?;
            b.keep = Some(check_span(&s).is_ok());
            self.span_fields(msg, ctx, Pass::Children, &mut s, &mut b)?;
        }
        let verdict = check_span(&s);
        if b.keep.is_some_and(|keep| keep != verdict.is_ok()) {
            // An id or a time after the nested messages changed the verdict.
            return Err(Box::new(Stop::TwoPass));
        }
        if let Err((label, why)) = verdict {
            // Not stored, so checked now.
            utf8(s.trace_state)?;
            let name = utf8(s.name)?;
            let id = if s.span_id.is_empty() { String::new() } else { format!(" {}", skein_core::ids::to_hex(s.span_id)) };
            self.reject(label, format!("resource_spans[{ri}].scope_spans[{ssi}].spans[{si}]{id} {name:?}: {why}"));
            return Ok(false);
        }
        let excess = self.excess(b.attrs);
        self.cols.attrs.close_row();
        self.links_dropped |= b.links_dropped > 0;
        self.cols.push_span(&SpanRow {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            trace_state: s.trace_state,
            flags: s.flags,
            name: s.name,
            kind: s.kind,
            start: s.start,
            end: s.end,
            status_code: b.status_code,
            status_message: b.status_message,
            dropped: [s.dropped[0].saturating_add(excess), s.dropped[1], s.dropped[2].saturating_add(b.links_dropped)],
        });
        self.v.accepted += 1;
        Ok(true)
    }

    /// Reads the fields of a span that `pass` covers. Nested messages are decoded (and checked)
    /// even under a rejected span, since prost would fail on them.
    fn span_fields(&mut self, mut c: Cur<'a>, ctx: u32, pass: Pass, s: &mut SpanHead<'a>, b: &mut SpanBody<'a>) -> R<()> {
        while c.more() {
            let k = c.key()?;
            let tag = k.tag();
            if matches!(tag, 9 | 11 | 13 | 15) {
                let field = ["attributes", "events", "links", "status"][(tag as usize - 9) / 2];
                if pass == Pass::Head {
                    c.read_msg(k, ctx).at(field)?;
                    continue;
                }
                let keep = *b.keep.get_or_insert_with(|| check_span(s).is_ok());
                match tag {
                    9 => {
                        let stored = keep && b.attrs < self.max_attrs;
                        let (m, ctx) = c.read_msg(k, ctx).at_i(field, b.attrs)?;
                        let kv = key_value(m, ctx, stored && self.lazy).at_i(field, b.attrs)?;
                        if stored {
                            render_attr(&kv, self.max_len, &mut self.cols.attrs, &mut self.v)?;
                        }
                        b.attrs += 1;
                    }
                    11 => {
                        let (m, ctx) = c.read_msg(k, ctx).at_i(field, b.events)?;
                        self.event(m, ctx, keep).at_i(field, b.events)?;
                        b.events += 1;
                    }
                    13 => {
                        let (m, ctx) = c.read_msg(k, ctx).at_i(field, b.links)?;
                        b.links_dropped += u32::from(self.link(m, ctx, keep).at_i(field, b.links)?);
                        b.links += 1;
                    }
                    _ => {
                        let (m, ctx) = c.read_msg(k, ctx).at(field)?;
                        status(m, ctx, &mut b.status_code, &mut b.status_message, keep && self.lazy).at(field)?;
                    }
                }
                continue;
            }
            if pass == Pass::Children {
                c.skip(k, ctx)?;
                continue;
            }
            match tag {
                1 => s.trace_id = c.read_bytes(k).at("trace_id")?,
                2 => s.span_id = c.read_bytes(k).at("span_id")?,
                3 => set_text(&mut s.trace_state, c.read_text(k, self.lazy).at("trace_state")?)?,
                4 => s.parent_span_id = c.read_bytes(k).at("parent_span_id")?,
                5 => set_text(&mut s.name, c.read_text(k, self.lazy).at("name")?)?,
                6 => s.kind = c.read_varint(k).at("kind")? as i32,
                7 => s.start = c.read_fixed64(k).at("start_time_unix_nano")?,
                8 => s.end = c.read_fixed64(k).at("end_time_unix_nano")?,
                10 => s.dropped[0] = c.read_varint(k).at("dropped_attributes_count")? as u32,
                12 => s.dropped[1] = c.read_varint(k).at("dropped_events_count")? as u32,
                14 => s.dropped[2] = c.read_varint(k).at("dropped_links_count")? as u32,
                16 => s.flags = c.read_fixed32(k).at("flags")?,
                _ => c.skip(k, ctx)?,
            }
        }
        Ok(())
    }

    /// Counts the attributes past the limit out of `n` as dropped; returns how many.
    fn excess(&mut self, n: usize) -> u32 {
        let excess = n.saturating_sub(self.max_attrs);
        self.v.attributes_dropped += excess as u64;
        excess as u32
    }

    fn event(&mut self, mut c: Cur<'a>, ctx: u32, keep: bool) -> R<()> {
        let (mut time, mut name, mut dropped, mut attrs) = (0, &b""[..], 0, 0);
        while c.more() {
            let k = c.key()?;
            match k.tag() {
                1 => time = c.read_fixed64(k).at("time_unix_nano")?,
                2 => set_text(&mut name, c.read_text(k, keep && self.lazy).at("name")?)?,
                3 => {
                    let stored = keep && attrs < self.max_attrs;
                    let (m, ctx) = c.read_msg(k, ctx).at_i("attributes", attrs)?;
                    let kv = key_value(m, ctx, stored && self.lazy).at_i("attributes", attrs)?;
                    if stored {
                        render_attr(&kv, self.max_len, &mut self.cols.ev_attrs, &mut self.v)?;
                    }
                    attrs += 1;
                }
                4 => dropped = c.read_varint(k).at("dropped_attributes_count")? as u32,
                _ => c.skip(k, ctx)?,
            }
        }
        if keep {
            let excess = self.excess(attrs);
            self.cols.ev_attrs.close_row();
            self.cols.push_event(time, name, dropped.saturating_add(excess));
        }
        Ok(())
    }

    /// Decodes one link of a span; returns whether the span is kept and the link dropped for
    /// an invalid id. Like a span, a link is read in one pass that decides at its first
    /// attribute whether it is kept, or in two passes.
    fn link(&mut self, msg: Cur<'a>, ctx: u32, span_kept: bool) -> R<bool> {
        let mut l = LinkFields::default();
        if self.speculate {
            self.link_fields(msg, ctx, Pass::All, span_kept, &mut l)?;
        } else {
            self.link_fields(msg, ctx, Pass::Head, span_kept, &mut l)?;
            l.keep = Some(span_kept && l.valid());
            self.link_fields(msg, ctx, Pass::Children, span_kept, &mut l)?;
        }
        let valid = l.valid();
        let keep = span_kept && valid;
        if l.keep.is_some_and(|k| k != keep) {
            return Err(Box::new(Stop::TwoPass));
        }
        if keep {
            let excess = self.excess(l.attrs);
            self.cols.ln_attrs.close_row();
            self.cols.push_link(l.trace_id, l.span_id, l.trace_state, l.dropped.saturating_add(excess));
        } else {
            utf8(l.trace_state)?;
        }
        Ok(span_kept && !valid)
    }

    fn link_fields(&mut self, mut c: Cur<'a>, ctx: u32, pass: Pass, span_kept: bool, l: &mut LinkFields<'a>) -> R<()> {
        while c.more() {
            let k = c.key()?;
            match k.tag() {
                4 if pass == Pass::Head => {
                    c.read_msg(k, ctx).at("attributes")?;
                }
                4 => {
                    let keep = match l.keep {
                        Some(keep) => keep,
                        None => *l.keep.insert(span_kept && l.valid()),
                    };
                    let stored = keep && l.attrs < self.max_attrs;
                    let (m, ctx) = c.read_msg(k, ctx).at_i("attributes", l.attrs)?;
                    let kv = key_value(m, ctx, stored && self.lazy).at_i("attributes", l.attrs)?;
                    if stored {
                        render_attr(&kv, self.max_len, &mut self.cols.ln_attrs, &mut self.v)?;
                    }
                    l.attrs += 1;
                }
                _ if pass == Pass::Children => c.skip(k, ctx)?,
                1 => l.trace_id = c.read_bytes(k).at("trace_id")?,
                2 => l.span_id = c.read_bytes(k).at("span_id")?,
                3 => set_text(&mut l.trace_state, c.read_text(k, self.lazy).at("trace_state")?)?,
                5 => l.dropped = c.read_varint(k).at("dropped_attributes_count")? as u32,
                6 => {
                    c.read_fixed32(k).at("flags")?;
                }
                _ => c.skip(k, ctx)?,
            }
        }
        Ok(())
    }

    fn reject(&mut self, label: &'static str, reason: String) {
        self.v.reject(label, reason);
    }
}

/// `skein_otlp::validate`'s limits on a resource: attributes past the limit dropped and
/// counted in its `dropped_attributes_count`, long values truncated.
fn limit_resource(res: &mut Resource, max_attrs: usize, max_len: usize, v: &mut Validated) {
    let limits = skein_otlp::Limits { max_attributes_per_span: max_attrs, max_attribute_value_len: max_len };
    skein_otlp::validate::limit_attrs(&mut res.attributes, &limits, &mut res.dropped_attributes_count, v);
}

fn scope<'a>(mut c: Cur<'a>, ctx: u32, name: &mut &'a str, version: &mut &'a str) -> R<()> {
    let mut attrs = 0;
    while c.more() {
        let k = c.key()?;
        match k.tag() {
            1 => *name = c.read_str(k).at("name")?,
            2 => *version = c.read_str(k).at("version")?,
            3 => {
                // Not stored, and not limited by validation, but prost decodes them.
                let (m, ctx) = c.read_msg(k, ctx).at_i("attributes", attrs)?;
                key_value(m, ctx, false).at_i("attributes", attrs)?;
                attrs += 1;
            }
            4 => {
                c.read_varint(k).at("dropped_attributes_count")?;
            }
            _ => c.skip(k, ctx)?,
        }
    }
    Ok(())
}

fn status<'a>(mut c: Cur<'a>, ctx: u32, code: &mut i32, message: &mut &'a [u8], lazy: bool) -> R<()> {
    while c.more() {
        let k = c.key()?;
        match k.tag() {
            2 => set_text(message, c.read_text(k, lazy).at("message")?)?,
            3 => *code = c.read_varint(k).at("code")? as i32,
            _ => c.skip(k, ctx)?,
        }
    }
    Ok(())
}

/// An `EntityRef` of a resource: not stored, but its strings must be UTF-8 for prost.
fn entity_ref(mut c: Cur<'_>, ctx: u32) -> R<()> {
    const FIELDS: [&str; 4] = ["schema_url", "type", "id_keys", "description_keys"];
    while c.more() {
        let k = c.key()?;
        match k.tag() {
            1..=4 => {
                c.read_str(k).at(FIELDS[k.tag() as usize - 1])?;
            }
            _ => c.skip(k, ctx)?,
        }
    }
    Ok(())
}

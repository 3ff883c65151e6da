//! Validation of incoming spans: ids of the right length, sane timestamps, and Skein's limits
//! on attributes. A span that breaks a rule is rejected alone (the rest of the request is
//! kept, as OTLP's partial success allows); a limit that is hit trims the span and counts it.

use crate::ExportTraceServiceRequest;
use crate::proto::common::v1::{AnyValue, KeyValue, any_value::Value};
use crate::proto::trace::v1::Span;
use skein_core::{SpanId, TraceId};
use std::fmt::Write;

/// Limits applied to every span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Attributes kept per span, event and link; the rest are dropped and counted in the
    /// span's `dropped_attributes_count`.
    pub max_attributes_per_span: usize,
    /// String and bytes values longer than this are truncated (at a char boundary).
    pub max_attribute_value_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_attributes_per_span: 128, max_attribute_value_len: 4096 }
    }
}

/// How many reasons a partial-success message lists before summarising.
const MAX_REASONS: usize = 5;

/// The outcome of validating one request.
#[derive(Debug, Default)]
pub struct Validated {
    /// Spans that passed.
    pub accepted: usize,
    /// Spans that were rejected.
    pub rejected: usize,
    /// Human-readable reasons for the first few rejections, naming the span.
    pub reasons: Vec<String>,
    /// Attributes dropped because a span had too many.
    pub attributes_dropped: u64,
    /// Attribute values truncated because they were too long.
    pub values_truncated: u64,
    /// Rejections by reason, for metrics: (reason label, count).
    pub rejected_by_reason: Vec<(&'static str, u64)>,
    /// What the counted items are (`spans`, `log records`, `data points`); `spans` when empty.
    pub items: &'static str,
}

impl Validated {
    /// The `error_message` for a partial success, empty when nothing was rejected.
    pub fn message(&self) -> String {
        if self.rejected == 0 {
            return String::new();
        }
        let items = if self.items.is_empty() { "spans" } else { self.items };
        let mut m = format!("rejected {} of {} {items}: ", self.rejected, self.rejected + self.accepted);
        m.push_str(&self.reasons.join("; "));
        if self.rejected > self.reasons.len() {
            let _ = write!(m, "; and {} more", self.rejected - self.reasons.len());
        }
        m
    }

    /// Counts one rejected span with its metrics label and (for the first few) its reason.
    pub fn reject(&mut self, label: &'static str, reason: String) {
        self.rejected += 1;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(reason);
        }
        match self.rejected_by_reason.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => self.rejected_by_reason.push((label, 1)),
        }
    }
}

fn check_span(span: &Span) -> Result<(), (&'static str, String)> {
    check_span_fields(&span.trace_id, &span.span_id, &span.parent_span_id, span.start_time_unix_nano, span.end_time_unix_nano)
}

/// The span rules, on the fields they read: ids of the right length and not zero, a start
/// time, an end not before the start, and times that fit Arrow's nanosecond timestamps.
/// Returns the metrics label and the reason of the first rule broken. Shared with the
/// wire decoder in `skein-columnar`, so both reject the same spans with the same words.
///
/// # Errors
/// `(label, reason)` of the first rule the span breaks.
pub fn check_span_fields(
    trace_id: &[u8],
    span_id: &[u8],
    parent_span_id: &[u8],
    start: u64,
    end: u64,
) -> Result<(), (&'static str, String)> {
    TraceId::from_slice(trace_id).map_err(|e| ("invalid_trace_id", e.to_string()))?;
    SpanId::from_slice(span_id).map_err(|e| ("invalid_span_id", e.to_string()))?;
    if !parent_span_id.is_empty() {
        SpanId::from_slice(parent_span_id).map_err(|e| ("invalid_parent_span_id", format!("parent {e}")))?;
    }
    if start == 0 {
        return Err(("invalid_timestamp", "start_time_unix_nano is missing".into()));
    }
    if end < start {
        return Err(("invalid_timestamp", format!("end_time_unix_nano {end} is before start_time_unix_nano {start}")));
    }
    if start > i64::MAX as u64 || end > i64::MAX as u64 {
        return Err(("invalid_timestamp", "timestamp is past the year 2262".into()));
    }
    Ok(())
}

/// Applies the attribute limits to one attribute list: attributes past the count limit are
/// dropped (and added to `dropped`), long values truncated; both counted in `v`.
pub fn limit_attrs(attrs: &mut Vec<KeyValue>, limits: &Limits, dropped: &mut u32, v: &mut Validated) {
    if attrs.len() > limits.max_attributes_per_span {
        let n = attrs.len() - limits.max_attributes_per_span;
        attrs.truncate(limits.max_attributes_per_span);
        *dropped = dropped.saturating_add(n as u32);
        v.attributes_dropped += n as u64;
    }
    for kv in attrs.iter_mut() {
        if let Some(value) = kv.value.as_mut() {
            truncate_value(value, limits.max_attribute_value_len, v);
        }
    }
}

/// Truncates a string or bytes value longer than `max` (at a char boundary), inside arrays
/// and kvlists too, counting each truncation in `v`.
pub fn truncate_value(value: &mut AnyValue, max: usize, v: &mut Validated) {
    match value.value.as_mut() {
        Some(Value::StringValue(s)) if s.len() > max => {
            let mut cut = max;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            v.values_truncated += 1;
        }
        Some(Value::BytesValue(b)) if b.len() > max => {
            b.truncate(max);
            v.values_truncated += 1;
        }
        Some(Value::ArrayValue(a)) => a.values.iter_mut().for_each(|x| truncate_value(x, max, v)),
        Some(Value::KvlistValue(kv)) => kv.values.iter_mut().filter_map(|kv| kv.value.as_mut()).for_each(|x| truncate_value(x, max, v)),
        _ => {}
    }
}

/// Removes invalid spans from `req` (in place) and applies `limits` to the rest.
pub fn validate_traces(req: &mut ExportTraceServiceRequest, limits: &Limits) -> Validated {
    let mut v = Validated::default();
    for (ri, rs) in req.resource_spans.iter_mut().enumerate() {
        if let Some(res) = rs.resource.as_mut() {
            let mut d = res.dropped_attributes_count;
            limit_attrs(&mut res.attributes, limits, &mut d, &mut v);
            res.dropped_attributes_count = d;
        }
        for (ssi, ss) in rs.scope_spans.iter_mut().enumerate() {
            let mut si = 0usize;
            ss.spans.retain_mut(|span| {
                si += 1;
                match check_span(span) {
                    Ok(()) => {
                        limit_attrs(&mut span.attributes, limits, &mut span.dropped_attributes_count, &mut v);
                        for e in span.events.iter_mut() {
                            limit_attrs(&mut e.attributes, limits, &mut e.dropped_attributes_count, &mut v);
                        }
                        let links_before = span.links.len();
                        span.links.retain(|l| TraceId::from_slice(&l.trace_id).is_ok() && SpanId::from_slice(&l.span_id).is_ok());
                        span.dropped_links_count = span.dropped_links_count.saturating_add((links_before - span.links.len()) as u32);
                        for l in span.links.iter_mut() {
                            limit_attrs(&mut l.attributes, limits, &mut l.dropped_attributes_count, &mut v);
                        }
                        v.accepted += 1;
                        true
                    }
                    Err((label, why)) => {
                        let id =
                            if span.span_id.is_empty() { String::new() } else { format!(" {}", skein_core::ids::to_hex(&span.span_id)) };
                        v.reject(label, format!("resource_spans[{ri}].scope_spans[{ssi}].spans[{}]{id} {:?}: {why}", si - 1, span.name));
                        false
                    }
                }
            });
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    req.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::trace::v1::{ResourceSpans, ScopeSpans};

    fn span(tid: Vec<u8>, sid: Vec<u8>) -> Span {
        Span { trace_id: tid, span_id: sid, name: "op".into(), start_time_unix_nano: 10, end_time_unix_nano: 20, ..Default::default() }
    }

    fn kv(k: &str, s: &str) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(Value::StringValue(s.into())) }), ..Default::default() }
    }

    #[test]
    fn rejects_bad_spans_and_keeps_good_ones() {
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(vec![1; 16], vec![2; 8]), span(vec![1; 8], vec![3; 8]), span(vec![1; 16], vec![0; 8])],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let v = validate_traces(&mut req, &Limits::default());
        assert_eq!((v.accepted, v.rejected), (1, 2));
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 1);
        let m = v.message();
        assert!(m.contains("rejected 2 of 3 spans"), "{m}");
        assert!(m.contains("trace id must be 16 bytes"), "{m}");
        assert!(m.contains("span id must not be all zeroes"), "{m}");
    }

    #[test]
    fn limits_trim_and_count() {
        let mut s = span(vec![1; 16], vec![2; 8]);
        s.attributes = vec![kv("a", "ééééé"), kv("b", "x"), kv("c", "y")];
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![s], ..Default::default() }],
                ..Default::default()
            }],
        };
        let v = validate_traces(&mut req, &Limits { max_attributes_per_span: 2, max_attribute_value_len: 3 });
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.attributes.len(), 2);
        assert_eq!(s.dropped_attributes_count, 1);
        assert_eq!(s.attributes[0].value.as_ref().unwrap().value, Some(Value::StringValue("é".into())));
        assert_eq!((v.attributes_dropped, v.values_truncated), (1, 1));
    }
}

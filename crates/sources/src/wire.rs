//! The agent's fast path for spans: checks an OTLP trace export on the wire and stamps the
//! node's identity without decoding the spans into structs or encoding them again.
//!
//! Protobuf merges an embedded message field that appears twice, appending its repeated
//! fields; so appending one more `resource` field holding only the missing attributes to a
//! `ResourceSpans` adds them to its resource, and every span stays the bytes the app sent.
//! The checks are those of `skein_otlp::validate_traces` (ids, times, attribute limits, link
//! ids). Whenever that function would change anything (reject a span, trim an attribute, drop
//! a link or an empty scope), or the bytes are not plain well-formed protobuf, this returns
//! `None` and the caller takes the full decode path, so both paths answer alike.

use prost::Message;
use skein_core::{SpanId, TraceId};
use skein_otlp::Limits;
use skein_otlp::proto::common::v1::{AnyValue, KeyValue, any_value::Value};
use skein_otlp::proto::resource::v1::Resource;

/// Deepest nesting of arrays and kvlists checked here; deeper values take the slow path.
const MAX_DEPTH: u32 = 16;

use skein_otlp::wire::{Cur, FIXED64, LEN};

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An `AnyValue` within the limits (strings and bytes no longer than the maximum, nested
/// values too).
fn any_ok(b: &[u8], max_len: usize, depth: u32) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut c = Cur::new(b);
    while !c.done() {
        match c.key()? {
            (1 | 7, LEN) => (c.len_delimited()?.len() <= max_len).then_some(())?,
            (5, LEN) => {
                // ArrayValue { repeated AnyValue values = 1 }
                let mut a = Cur::new(c.len_delimited()?);
                while !a.done() {
                    match a.key()? {
                        (1, LEN) => any_ok(a.len_delimited()?, max_len, depth + 1)?,
                        (_, wt) => a.skip(wt)?,
                    }
                }
            }
            (6, LEN) => attrs_ok(c.len_delimited()?, 1, usize::MAX, max_len, depth + 1, &mut |_| {})?,
            (1 | 5 | 6 | 7, _) => return None,
            (_, wt) => c.skip(wt)?,
        }
    }
    Some(())
}

/// The `KeyValue`s at field `field` of message `b`: no more than `max_count`, each value within
/// the limits; `on_key` sees each key.
fn attrs_ok<'a>(b: &'a [u8], field: u64, max_count: usize, max_len: usize, depth: u32, on_key: &mut dyn FnMut(&'a [u8])) -> Option<()> {
    let mut c = Cur::new(b);
    let mut n = 0usize;
    while !c.done() {
        match c.key()? {
            (f, LEN) if f == field => {
                n += 1;
                if n > max_count {
                    return None;
                }
                let mut kv = Cur::new(c.len_delimited()?);
                while !kv.done() {
                    match kv.key()? {
                        (1, LEN) => on_key(kv.len_delimited()?),
                        (2, LEN) => any_ok(kv.len_delimited()?, max_len, depth)?,
                        (1 | 2, _) => return None,
                        (_, wt) => kv.skip(wt)?,
                    }
                }
            }
            (f, _) if f == field => return None,
            (_, wt) => c.skip(wt)?,
        }
    }
    Some(())
}

/// A span that `validate_traces` keeps unchanged.
fn span_ok(b: &[u8], limits: &Limits) -> Option<()> {
    let (mut trace_id, mut span_id, mut parent): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let (mut start, mut end) = (0u64, 0u64);
    let mut c = Cur::new(b);
    while !c.done() {
        match c.key()? {
            (1, LEN) => trace_id = c.len_delimited()?,
            (2, LEN) => span_id = c.len_delimited()?,
            (4, LEN) => parent = c.len_delimited()?,
            (7, FIXED64) => start = c.fixed64()?,
            (8, FIXED64) => end = c.fixed64()?,
            (11, LEN) => {
                // Event { attributes = 3 }
                attrs_ok(c.len_delimited()?, 3, limits.max_attributes_per_span, limits.max_attribute_value_len, 0, &mut |_| {})?;
            }
            (13, LEN) => {
                // Link { trace_id = 1, span_id = 2, attributes = 4 }: bad ids would be dropped
                let link = c.len_delimited()?;
                let (mut t, mut s): (&[u8], &[u8]) = (&[], &[]);
                let mut l = Cur::new(link);
                while !l.done() {
                    match l.key()? {
                        (1, LEN) => t = l.len_delimited()?,
                        (2, LEN) => s = l.len_delimited()?,
                        (1 | 2, _) => return None,
                        (_, wt) => l.skip(wt)?,
                    }
                }
                TraceId::from_slice(t).ok()?;
                SpanId::from_slice(s).ok()?;
                attrs_ok(link, 4, limits.max_attributes_per_span, limits.max_attribute_value_len, 0, &mut |_| {})?;
            }
            (1 | 2 | 4 | 7 | 8 | 11 | 13, _) => return None,
            (_, wt) => c.skip(wt)?,
        }
    }
    attrs_ok(b, 9, limits.max_attributes_per_span, limits.max_attribute_value_len, 0, &mut |_| {})?;
    skein_otlp::validate::check_span_fields(trace_id, span_id, parent, start, end).ok()
}

/// Checks `body` (an `ExportTraceServiceRequest`) and returns it with `identity` added to every
/// resource where missing, and the number of spans; `None` when the full decode path must
/// handle it (see the module docs).
pub fn stamp_traces(body: &[u8], identity: &[(&'static str, String)], limits: &Limits) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(body.len() + 256);
    let mut spans = 0usize;
    let mut c = Cur::new(body);
    while !c.done() {
        let start = c.pos();
        match c.key()? {
            (1, LEN) => {
                let rs = c.len_delimited()?;
                let mut present: Vec<&[u8]> = Vec::new();
                let mut scopes = 0usize;
                let mut r = Cur::new(rs);
                while !r.done() {
                    match r.key()? {
                        (1, LEN) => {
                            let res = r.len_delimited()?;
                            attrs_ok(res, 1, limits.max_attributes_per_span, limits.max_attribute_value_len, 0, &mut |k| present.push(k))?;
                        }
                        (2, LEN) => {
                            // ScopeSpans { spans = 2 }
                            let mut n = 0usize;
                            let mut ss = Cur::new(r.len_delimited()?);
                            while !ss.done() {
                                match ss.key()? {
                                    (2, LEN) => {
                                        span_ok(ss.len_delimited()?, limits)?;
                                        n += 1;
                                    }
                                    (2, _) => return None,
                                    (_, wt) => ss.skip(wt)?,
                                }
                            }
                            if n == 0 {
                                return None; // an empty scope is removed by validation
                            }
                            spans += n;
                            scopes += 1;
                        }
                        (1 | 2, _) => return None,
                        (_, wt) => r.skip(wt)?,
                    }
                }
                if scopes == 0 {
                    return None;
                }
                let missing: Vec<KeyValue> = identity
                    .iter()
                    .filter(|(k, _)| !present.contains(&k.as_bytes()))
                    .map(|(k, v)| KeyValue {
                        key: (*k).to_string(),
                        value: Some(AnyValue { value: Some(Value::StringValue(v.clone())) }),
                        ..Default::default()
                    })
                    .collect();
                let extra =
                    if missing.is_empty() { Vec::new() } else { Resource { attributes: missing, ..Default::default() }.encode_to_vec() };
                let mut tail = Vec::with_capacity(extra.len() + 6);
                if !extra.is_empty() {
                    put_varint(&mut tail, (1 << 3) | u64::from(LEN));
                    put_varint(&mut tail, extra.len() as u64);
                    tail.extend_from_slice(&extra);
                }
                put_varint(&mut out, (1 << 3) | u64::from(LEN));
                put_varint(&mut out, (rs.len() + tail.len()) as u64);
                out.extend_from_slice(rs);
                out.extend_from_slice(&tail);
            }
            (1, _) => return None,
            (_, wt) => {
                c.skip(wt)?;
                out.extend_from_slice(&body[start..c.pos()]);
            }
        }
    }
    Some((out, spans))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_otlp::ExportTraceServiceRequest;
    use skein_otlp::synth::{Synth, SynthConfig};

    fn identity() -> Vec<(&'static str, String)> {
        vec![("host.name", "node-a".into()), ("k8s.pod.name", "pod-1".into()), ("skein.agent.version", "0.1.0".into())]
    }

    /// The full path: decode, validate, stamp.
    fn slow(body: &[u8]) -> ExportTraceServiceRequest {
        let mut r = ExportTraceServiceRequest::decode(body).unwrap();
        skein_otlp::validate_traces(&mut r, &Limits::default());
        for rs in &mut r.resource_spans {
            let res = rs.resource.get_or_insert_with(Resource::default);
            for (k, v) in identity() {
                if !res.attributes.iter().any(|a| a.key == k) {
                    res.attributes.push(KeyValue {
                        key: k.into(),
                        value: Some(AnyValue { value: Some(Value::StringValue(v)) }),
                        ..Default::default()
                    });
                }
            }
        }
        r
    }

    #[test]
    fn realistic_exports_stamp_exactly_as_the_full_path_does() {
        let mut synth = Synth::new(SynthConfig::default());
        for i in 0..50 {
            let (mut req, _) = synth.batch(1 + i % 20, 1_800_000_000_000_000_000);
            if i % 3 == 0 {
                // some resources without one: the stamp creates it
                req.resource_spans[0].resource = None;
            }
            let body = req.encode_to_vec();
            let (fast, n) = stamp_traces(&body, &identity(), &Limits::default()).expect("a valid export takes the fast path");
            assert_eq!(n, req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum::<usize>());
            assert_eq!(ExportTraceServiceRequest::decode(&fast[..]).unwrap(), slow(&body), "export {i}");
        }
    }

    #[test]
    fn anything_validation_would_change_takes_the_full_path() {
        let mut synth = Synth::new(SynthConfig::default());
        let (req, _) = synth.batch(3, 1_800_000_000_000_000_000);
        let fast = |r: &ExportTraceServiceRequest, l: &Limits| stamp_traces(&r.encode_to_vec(), &identity(), l);
        assert!(fast(&req, &Limits::default()).is_some());
        let mut bad = req.clone();
        bad.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1; 3];
        assert!(fast(&bad, &Limits::default()).is_none(), "a bad trace id is rejected by validation");
        let mut bad = req.clone();
        bad.resource_spans[0].scope_spans[0].spans[0].end_time_unix_nano = 1;
        assert!(fast(&bad, &Limits::default()).is_none(), "end before start");
        let mut bad = req.clone();
        bad.resource_spans[0].scope_spans[0].spans.clear();
        assert!(fast(&bad, &Limits::default()).is_none(), "an empty scope is removed");
        assert!(fast(&req, &Limits { max_attributes_per_span: 2, ..Default::default() }).is_none(), "attributes would be dropped");
        assert!(fast(&req, &Limits { max_attribute_value_len: 3, ..Default::default() }).is_none(), "values would be truncated");
        assert!(stamp_traces(b"\x0a\xff\xff", &identity(), &Limits::default()).is_none(), "malformed bytes");
        assert!(stamp_traces(b"\x0b", &identity(), &Limits::default()).is_none(), "a group");
    }
}

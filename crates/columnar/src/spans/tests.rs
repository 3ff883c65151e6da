//! Tests of the `spans` builders. The wire decoder is held to its contract by comparing it with
//! the reference path (prost, `validate_traces`, `build`) on synthetic traffic, hand-made edge
//! cases at the wire level, and random requests and random damage to their encodings.

use super::wire::via_prost;
use super::*;
use crate::value::TypedValue;
use arrow::array::RecordBatch;
use prost::Message;
use skein_core::{ErrorCode, SpanId, TraceId};
use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::proto::common::v1::{AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value::Value};
use skein_otlp::proto::resource::v1::Resource;
use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use skein_otlp::synth::{Synth, SynthConfig};
use skein_otlp::{Limits, Validated, validate_traces};

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
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
fn a_resource_is_stored_once_per_batch_and_reads_back_typed() {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int32Type;
    let attrs = vec![kv("service.name", s("cart")), kv("pid", Value::IntValue(42)), kv("debug", Value::BoolValue(true))];
    let spans: Vec<Span> = (1..=50).map(|i| span(1, i)).collect();
    let mut r = req(attrs.clone(), spans[..30].to_vec());
    // The same resource again, then one without a resource: two distinct values in all.
    r.resource_spans.push(req(attrs, spans[30..40].to_vec()).resource_spans.remove(0));
    let mut bare = req(vec![], spans[40..].to_vec()).resource_spans.remove(0);
    bare.resource = None;
    r.resource_spans.push(bare);
    let body = r.encode_to_vec();
    for batch in [build(&r).unwrap(), ok(&body, &Limits::default()).batch] {
        assert_eq!(batch.num_rows(), 50);
        let dict = batch.column(col::RESOURCE).as_dictionary::<Int32Type>();
        assert_eq!(dict.values().len(), 2, "one value per distinct resource");
        assert_eq!(dict.null_count(), 0);
        let values = dict.values().as_binary::<i32>();
        assert_eq!(Resource::decode(values.value(0)).unwrap(), r.resource_spans[0].resource.clone().unwrap());
        assert_eq!(values.value(1), b"");
        let v = SpanView::new(&batch);
        for row in [0, 29, 39] {
            let rec = v.record(row);
            assert_eq!(find_attr(&rec.resource, "pid"), Some(&TypedValue::Int(42)));
            assert_eq!(find_attr(&rec.resource, "debug"), Some(&TypedValue::Bool(true)));
            assert_eq!(v.resource_attribute(row, "pid"), Some("42"));
        }
        assert!(v.record(45).resource.is_empty());
        assert_eq!((v.resource_attribute(45, "pid"), v.service.get(45)), (None, Some(UNKNOWN_SERVICE)));
    }
}

#[test]
fn empty_request_builds_empty_batch() {
    let b = build(&ExportTraceServiceRequest::default()).unwrap();
    assert_eq!(b.num_rows(), 0);
}

// ---- the reference and the comparison -------------------------------------------------------

/// Whether validation dropped a link of an accepted span: accepted spans keep their order, and
/// two spans with the same ids and times are accepted or rejected alike.
fn links_dropped(orig: &ExportTraceServiceRequest, validated: &ExportTraceServiceRequest) -> bool {
    let flat = |r: &ExportTraceServiceRequest| -> Vec<Span> {
        r.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| s.spans.clone()).collect()
    };
    let id = |s: &Span| (s.trace_id.clone(), s.span_id.clone(), s.parent_span_id.clone(), s.start_time_unix_nano, s.end_time_unix_nano);
    let mut kept = flat(validated).into_iter().peekable();
    flat(orig).iter().any(|o| match kept.peek() {
        Some(k) if id(k) == id(o) => kept.next().is_some_and(|k| k.links.len() != o.links.len()),
        _ => false,
    })
}

/// The reference path: the batch, the validation outcome and whether validation changed the
/// request; `None` when prost cannot decode the body.
fn reference(body: &[u8], limits: &Limits) -> Option<(RecordBatch, Validated, bool)> {
    let orig = ExportTraceServiceRequest::decode(body).ok()?;
    let mut req = orig.clone();
    let v = validate_traces(&mut req, limits);
    let batch = build(&req).expect("a validated request builds");
    let modified = v.rejected > 0 || v.attributes_dropped > 0 || v.values_truncated > 0 || links_dropped(&orig, &req);
    Some((batch, v, modified))
}

fn assert_same_validation(a: &Validated, b: &Validated) {
    assert_eq!((a.accepted, a.rejected), (b.accepted, b.rejected));
    assert_eq!(a.reasons, b.reasons);
    assert_eq!((a.attributes_dropped, a.values_truncated), (b.attributes_dropped, b.values_truncated));
    assert_eq!(a.rejected_by_reason, b.rejected_by_reason);
}

/// Asserts that the wire path agrees with the reference on `body`; returns the outcome.
pub(super) fn check(body: &[u8], limits: &Limits) -> Result<WireOutcome, WireError> {
    let fast = build_from_protobuf(body, limits);
    match (reference(body, limits), &fast) {
        (None, Err(e)) => assert_eq!(e.code(), ErrorCode::BadRequest, "{e}"),
        (Some((batch, v, modified)), Ok(out)) => {
            assert_eq!(out.batch, batch, "batches differ");
            assert_same_validation(&out.validated, &v);
            assert_eq!(out.modified, modified, "modified");
            if !out.modified {
                // What the WAL relies on: the raw bytes replay to the same batch, unvalidated.
                let raw = ExportTraceServiceRequest::decode(body).expect("decoded above");
                assert_eq!(build(&raw).expect("unmodified requests build"), out.batch);
            }
        }
        (r, f) => panic!("paths disagree on {body:02x?}: prost decodes: {}, wire: {:?}", r.is_some(), f.as_ref().err()),
    }
    fast
}

fn ok(body: &[u8], limits: &Limits) -> WireOutcome {
    check(body, limits).expect("decodes")
}

fn err(body: &[u8]) -> String {
    check(body, &Limits::default()).expect_err("fails").to_string()
}

// ---- a protobuf writer for hand-made encodings ------------------------------------------------

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn key(tag: u32, wt: u8) -> Vec<u8> {
    varint(u64::from(tag) << 3 | u64::from(wt))
}

/// A length-delimited field.
fn ld(tag: u32, payload: &[u8]) -> Vec<u8> {
    [key(tag, 2), varint(payload.len() as u64), payload.to_vec()].concat()
}

fn vi(tag: u32, v: u64) -> Vec<u8> {
    [key(tag, 0), varint(v)].concat()
}

fn fx64(tag: u32, v: u64) -> Vec<u8> {
    [key(tag, 1), v.to_le_bytes().to_vec()].concat()
}

fn fx32(tag: u32, v: u32) -> Vec<u8> {
    [key(tag, 5), v.to_le_bytes().to_vec()].concat()
}

fn group(tag: u32, inner: &[u8]) -> Vec<u8> {
    [key(tag, 3), inner.to_vec(), key(tag, 4)].concat()
}

/// Unknown fields of every wire type, a nested group included.
fn unknowns() -> Vec<u8> {
    let inner = [vi(1, 5), ld(2, b"\xffnot utf-8 but unknown"), group(3, &fx32(1, 7))].concat();
    [vi(1000, 300), fx64(1001, 9), ld(1002, b"junk"), group(1003, &inner), fx32(1004, 1)].concat()
}

fn enc_any(v: Value) -> Vec<u8> {
    AnyValue { value: Some(v) }.encode_to_vec()
}

/// A request holding one span (already encoded) in one scope of one resource.
fn wrap_span(span: &[u8]) -> Vec<u8> {
    ld(1, &ld(2, &ld(2, span)))
}

fn span(trace: u8, id: u8) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: "op".into(),
        start_time_unix_nano: 10,
        end_time_unix_nano: 20,
        ..Default::default()
    }
}

fn req(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: resource, ..Default::default() }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "lib".into(), version: "2".into(), ..Default::default() }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub(super) fn tight(max_attributes_per_span: usize, max_attribute_value_len: usize) -> Limits {
    Limits { max_attributes_per_span, max_attribute_value_len }
}

// ---- synthetic traffic ------------------------------------------------------------------------

const NOW: u64 = 1_700_000_000_000_000_000;

#[test]
fn synthetic_requests_match_the_reference() {
    let mut spans = 0;
    for seed in 0..24 {
        let mut synth = Synth::new(SynthConfig { seed, error_ratio: 0.3, ..Default::default() });
        let (batch, _) = synth.batch(1 + seed as usize % 4, NOW);
        let body = batch.encode_to_vec();
        let out = ok(&body, &Limits::default());
        assert!(!out.modified);
        assert!(out.batch.num_rows() > 0);
        spans += out.batch.num_rows();
        // Tight limits truncate and drop; concatenated requests repeat `resource_spans`.
        ok(&body, &tight(3, 5));
        // Damage: flipped bits (in lengths, ids, strings...) and truncations.
        for i in 0..24 {
            let at = (i * 7919 + seed as usize * 104_729) % body.len();
            let mut flipped = body.clone();
            flipped[at] ^= 1 << (i % 8);
            check(&flipped, &Limits::default()).ok();
            check(&body[..at], &tight(3, 5)).ok();
        }
        let per_node: Vec<u8> = synth.next_requests(NOW).iter().flat_map(|(_, r)| r.encode_to_vec()).collect();
        ok(&per_node, &Limits::default());
        ok(&per_node, &tight(1, 2));
    }
    assert!(spans > 500, "{spans}");
}

#[test]
fn fallback_path_matches_the_fast_path() {
    let (r, _) = Synth::new(SynthConfig::default()).batch(3, NOW);
    let body = r.encode_to_vec();
    let (fast, slow) = (build_from_protobuf(&body, &tight(4, 8)).unwrap(), via_prost(&body, &tight(4, 8)).unwrap());
    assert_eq!(fast.batch, slow.batch);
    assert_same_validation(&fast.validated, &slow.validated);
    assert!(slow.modified);
    assert!(via_prost(&[0x0a, 0x05], &Limits::default()).unwrap_err().to_string().starts_with("malformed protobuf"));
}

// ---- validation edge cases --------------------------------------------------------------------

#[test]
fn invalid_spans_are_rejected_as_validation_does() {
    let mut spans = vec![span(1, 1)];
    let bad: [fn(&mut Span); 9] = [
        |s| s.trace_id = vec![1; 8],
        |s| s.trace_id = vec![0; 16],
        |s| s.span_id = vec![],
        |s| s.span_id = vec![0; 8],
        |s| s.parent_span_id = vec![3; 3],
        |s| s.parent_span_id = vec![0; 8],
        |s| s.start_time_unix_nano = 0,
        |s| s.end_time_unix_nano = 9,
        |s| (s.start_time_unix_nano, s.end_time_unix_nano) = (u64::MAX - 1, u64::MAX),
    ];
    for (i, f) in bad.iter().enumerate() {
        let mut s = span(1, i as u8 + 2);
        s.name = format!("bad \"{i}\" é");
        s.attributes = vec![kv("a", s_long())];
        s.links = vec![span::Link { trace_id: vec![1; 8], ..Default::default() }];
        f(&mut s);
        spans.push(s);
    }
    spans.push(span(1, 99));
    let out = ok(&req(vec![kv("service.name", s("svc"))], spans).encode_to_vec(), &tight(4, 3));
    assert_eq!((out.validated.accepted, out.validated.rejected), (2, 9));
    assert_eq!(out.validated.reasons.len(), 5);
    // Nothing under a rejected span counts against the limits.
    assert_eq!((out.validated.values_truncated, out.validated.attributes_dropped), (0, 0));
    assert!(out.modified);
    assert!(out.validated.message().contains(r#"spans[3] "bad \"2\" é": span id must be 8 bytes"#), "{}", out.validated.message());
    let all_bad = req(vec![], vec![Span { trace_id: vec![], ..span(1, 1) }]);
    assert_eq!(ok(&all_bad.encode_to_vec(), &Limits::default()).batch.num_rows(), 0);
}

fn array(values: Vec<Value>) -> Value {
    Value::ArrayValue(ArrayValue { values: values.into_iter().map(|v| AnyValue { value: Some(v) }).collect() })
}

fn s_long() -> Value {
    s("a long value")
}

#[test]
fn limits_drop_and_truncate_as_validation_does() {
    let multi = "aé𝄞€b"; // 1, 2, 4, 3 and 1 bytes: every cut point is exercised below
    let nested = Value::ArrayValue(ArrayValue {
        values: vec![
            AnyValue { value: Some(s(multi)) },
            AnyValue { value: Some(Value::BytesValue(vec![1; 9])) },
            AnyValue { value: Some(Value::KvlistValue(KeyValueList { values: vec![kv("deep", s(multi))] })) },
        ],
    });
    let attrs = vec![
        kv("str", s(multi)),
        kv("bytes", Value::BytesValue((0..9).collect())),
        kv("arr", nested),
        kv("int", Value::IntValue(-7)),
        kv("empty", s("")),
        kv("dbl", Value::DoubleValue(f64::NAN)),
    ];
    let mut sp = span(1, 1);
    sp.attributes.clone_from(&attrs);
    sp.events = vec![span::Event { time_unix_nano: 12, name: "e".into(), attributes: attrs.clone(), dropped_attributes_count: 1 }];
    sp.links = vec![span::Link { trace_id: vec![2; 16], span_id: vec![2; 8], attributes: attrs.clone(), ..Default::default() }];
    sp.dropped_attributes_count = u32::MAX - 1;
    let mut resource = attrs;
    resource.insert(0, kv("service.name", s(multi)));
    let body = req(resource, vec![sp]).encode_to_vec();
    for max_len in 0..12 {
        for max_attrs in [0, 1, 2, 3, 6, 7] {
            let out = ok(&body, &tight(max_attrs, max_len));
            assert_eq!(out.modified, max_attrs < 7 || max_len < 11, "{max_attrs} {max_len}");
        }
    }
    let out = ok(&body, &tight(1, 3));
    assert_eq!(SpanView::new(&out.batch).service.get(0), Some("aé"));
}

#[test]
fn service_and_node_follow_the_first_kept_attribute() {
    let cases = [
        vec![kv("service.name", Value::IntValue(1)), kv("service.name", s("late"))],
        vec![kv("service.name", s("")), kv("host.id", s("h")), kv("k8s.pod.name", s("pod"))],
        vec![kv("host.name", s("")), kv("host.id", s("hid"))],
        vec![kv("x", s("y")), kv("service.name", s("dropped by the limit"))],
        vec![KeyValue { key: "service.name".into(), value: None, ..Default::default() }, kv("host.name", Value::StringValueStrindex(3))],
    ];
    for attrs in cases {
        ok(&req(attrs.clone(), vec![span(1, 1)]).encode_to_vec(), &tight(1, 100));
        ok(&req(attrs, vec![span(1, 1)]).encode_to_vec(), &Limits::default());
    }
}

#[test]
fn empty_and_missing_fields_match() {
    let mut sp = span(1, 1);
    sp.name = String::new();
    sp.status = Some(Status::default());
    sp.events = vec![span::Event::default()];
    sp.attributes = vec![KeyValue::default(), KeyValue { key: "k".into(), value: Some(AnyValue::default()), key_strindex: 4 }];
    let mut r = req(vec![], vec![sp.clone(), span(1, 2)]);
    r.resource_spans[0].resource = None;
    r.resource_spans[0].scope_spans[0].scope = None;
    r.resource_spans.push(ResourceSpans::default());
    r.resource_spans.push(ResourceSpans { scope_spans: vec![ScopeSpans::default()], ..Default::default() });
    let out = ok(&r.encode_to_vec(), &Limits::default());
    assert!(!out.modified);
    let v = SpanView::new(&out.batch);
    assert_eq!((v.len(), v.service.get(0), v.node.get(0)), (2, Some(UNKNOWN_SERVICE), Some(UNKNOWN_NODE)));
    assert!(ok(&[], &Limits::default()).batch.num_rows() == 0);
}

#[test]
fn links_with_bad_ids_are_dropped_and_events_keep_their_attributes() {
    let mut sp = span(1, 1);
    let link = |t: Vec<u8>, s: Vec<u8>| span::Link { trace_id: t, span_id: s, attributes: vec![kv("l", s_long())], ..Default::default() };
    sp.links = vec![link(vec![2; 16], vec![2; 8]), link(vec![2; 8], vec![2; 8]), link(vec![2; 16], vec![0; 8]), link(vec![], vec![])];
    sp.dropped_links_count = 3;
    sp.events = vec![
        span::Event {
            time_unix_nano: 11,
            name: "exception".into(),
            attributes: vec![kv("exception.type", s("Boom"))],
            dropped_attributes_count: 2,
        },
        span::Event { time_unix_nano: 12, ..Default::default() },
    ];
    let out = ok(&req(vec![], vec![sp]).encode_to_vec(), &tight(10, 4));
    assert!(out.modified);
    let r = SpanView::new(&out.batch).record(0);
    assert_eq!((r.links.len(), r.dropped_links_count, r.events.len()), (1, 6, 2));
    assert_eq!(r.events[0].attributes[0].value, TypedValue::String("Boom".into()));
    // Attributes of dropped links are not truncated (so not counted).
    assert_eq!(out.validated.values_truncated, 1);
}

// ---- wire-level edge cases --------------------------------------------------------------------

#[test]
fn resource_after_scope_spans_applies_to_its_spans() {
    let ss = ScopeSpans { spans: vec![span(1, 1)], ..Default::default() }.encode_to_vec();
    let res = Resource { attributes: vec![kv("service.name", s("late")), kv("host.name", s("n1"))], ..Default::default() }.encode_to_vec();
    let body = ld(1, &[ld(2, &ss), ld(1, &res), ld(2, &ss)].concat());
    let out = ok(&body, &Limits::default());
    let v = SpanView::new(&out.batch);
    assert_eq!((v.len(), v.service.get(1), v.node.get(0)), (2, Some("late"), Some("n1")));
    assert_eq!(v.resource_attribute(1, "host.name"), Some("n1"));
}

#[test]
fn unknown_fields_of_every_wire_type_are_skipped_at_every_level() {
    let encode = |u: &[u8]| {
        let value = [enc_any(s("v")), u.to_vec()].concat();
        let attr = [ld(1, b"k"), ld(2, &value), u.to_vec()].concat();
        let kvlist = [ld(1, &attr), u.to_vec()].concat();
        let complex =
            [ld(1, b"c"), ld(2, &[ld(5, &[ld(1, &[ld(6, &kvlist), u.to_vec()].concat()), ld(1, &value)].concat()), u.to_vec()].concat())]
                .concat();
        let status = [Status { message: "m".into(), code: 2 }.encode_to_vec(), u.to_vec()].concat();
        let event =
            [span::Event { time_unix_nano: 11, name: "e".into(), ..Default::default() }.encode_to_vec(), ld(3, &attr), u.to_vec()].concat();
        let link = [
            span::Link { trace_id: vec![2; 16], span_id: vec![2; 8], flags: 1, ..Default::default() }.encode_to_vec(),
            ld(4, &attr),
            u.to_vec(),
        ]
        .concat();
        let mut base = span(1, 1);
        base.flags = 0x301;
        let sp = [base.encode_to_vec(), ld(9, &attr), ld(9, &complex), ld(11, &event), ld(13, &link), ld(15, &status), u.to_vec()].concat();
        let scope = [InstrumentationScope { name: "lib".into(), ..Default::default() }.encode_to_vec(), ld(3, &attr), u.to_vec()].concat();
        let ss = [ld(1, &scope), ld(2, &sp), ld(3, b"https://schema"), u.to_vec()].concat();
        let entity =
            [EntityRef { r#type: "host".into(), id_keys: vec!["host.id".into()], ..Default::default() }.encode_to_vec(), u.to_vec()]
                .concat();
        let res = [ld(1, &[ld(1, b"service.name"), ld(2, &enc_any(s("svc")))].concat()), ld(3, &entity), vi(2, 1), u.to_vec()].concat();
        let rs = [ld(1, &res), ld(2, &ss), ld(3, b"https://schema"), u.to_vec()].concat();
        [u.to_vec(), ld(1, &rs), u.to_vec()].concat()
    };
    let plain = ok(&encode(&[]), &Limits::default());
    let with = ok(&encode(&unknowns()), &Limits::default());
    assert!(!with.modified);
    assert_eq!(plain.batch, with.batch);
    assert_eq!(SpanView::new(&with.batch).attribute(0, "c"), Some(r#"[{"k":"v"},"v"]"#));
}

#[test]
fn repeated_singular_fields_keep_the_last_value_and_messages_merge() {
    let status2 = ld(2, b"second message");
    let sp = [
        span(1, 1).encode_to_vec(),
        ld(5, b"renamed"),
        ld(1, &[9; 16]),
        fx64(8, 40),
        vi(6, 3),
        vi(6, u64::MAX), // kind -1 as int32, clamped to 0
        ld(15, &Status { code: 2, message: "first".into() }.encode_to_vec()),
        ld(15, &status2),
        ld(9, &[ld(1, b"twice"), ld(2, &enc_any(s("a"))), ld(2, &enc_any(Value::IntValue(5)))].concat()),
        ld(9, &[ld(1, b"arrays"), ld(2, &enc_any(array(vec![s("x")]))), ld(2, &enc_any(array(vec![Value::BoolValue(true)])))].concat()),
        ld(
            9,
            &[ld(1, b"arr-then-int"), ld(2, &enc_any(Value::ArrayValue(ArrayValue::default()))), ld(2, &enc_any(Value::IntValue(1)))]
                .concat(),
        ),
        ld(
            9,
            &[ld(1, b"int-then-arr"), ld(2, &enc_any(Value::IntValue(1))), ld(2, &enc_any(Value::ArrayValue(ArrayValue::default())))]
                .concat(),
        ),
        ld(9, &[ld(1, b"no value"), ld(2, &[]), ld(2, &enc_any(s("kept"))), ld(2, &[])].concat()),
        vi(10, 1),
        vi(10, 2),
    ]
    .concat();
    let scope = [ld(1, b"first"), ld(2, b"v1")].concat();
    let ss = [ld(1, &scope), ld(2, &sp), ld(1, &ld(1, b"second"))].concat();
    let res1 =
        Resource { attributes: vec![kv("service.name", s("svc"))], dropped_attributes_count: 1, ..Default::default() }.encode_to_vec();
    let res2 = Resource { attributes: vec![kv("host.name", s("h"))], ..Default::default() }.encode_to_vec();
    let body = ld(1, &[ld(1, &res1), ld(2, &ss), ld(1, &res2)].concat());
    let out = ok(&body, &Limits::default());
    let v = SpanView::new(&out.batch);
    let r = v.record(0);
    assert_eq!((r.name.as_str(), r.trace_id, r.end_time_unix_nano, r.kind), ("renamed", TraceId([9; 16]), 40, 0));
    assert_eq!((r.status_code, r.status_message.as_deref()), (2, Some("second message")));
    assert_eq!(
        (r.service.as_str(), r.node.as_str(), r.scope_name.as_deref(), r.scope_version.as_deref()),
        ("svc", "h", Some("second"), Some("v1"))
    );
    assert_eq!(v.attribute(0, "twice"), Some("5"));
    assert_eq!(v.attribute(0, "arrays"), Some(r#"["x",true]"#));
    assert_eq!((v.attribute(0, "arr-then-int"), v.attribute(0, "int-then-arr")), (Some("1"), Some("[]")));
    assert_eq!((v.attribute(0, "no value"), r.dropped_attributes_count), (Some("kept"), 2));
}

#[test]
fn ids_after_nested_messages_that_change_the_verdict_are_honoured() {
    let attr = ld(9, &[ld(1, b"k"), ld(2, &enc_any(s("a long value")))].concat());
    let event = ld(11, &[fx64(1, 11), ld(2, b"e"), ld(3, &[ld(1, b"ek"), ld(2, &enc_any(s("v")))].concat())].concat());
    let link = |fields: &[Vec<u8>]| ld(13, &fields.concat());
    let lattr = ld(4, &[ld(1, b"lk"), ld(2, &enc_any(s("lv")))].concat());
    let ids = [ld(1, &[1; 16]), ld(2, &[1; 8]), fx64(7, 10), fx64(8, 20)].concat();
    let cases = [
        // a kept span whose ids come last
        [attr.clone(), event.clone(), link(&[lattr.clone(), ld(1, &[2; 16]), ld(2, &[2; 8])]), ids.clone()].concat(),
        // a span that looks valid at its first attribute, then gets a bad trace id
        [ids.clone(), attr.clone(), event.clone(), ld(1, &[1; 3])].concat(),
        // links whose verdict changes after their attributes
        [ids.clone(), link(&[ld(1, &[2; 16]), ld(2, &[2; 8]), lattr.clone(), ld(2, &[0; 8])]), attr.clone()].concat(),
        [ids.clone(), link(&[lattr.clone(), ld(1, &[2; 16]), ld(2, &[2; 8])]), link(&[lattr, ld(2, &[3; 8])])].concat(),
    ];
    let accepted: Vec<usize> = cases.iter().map(|sp| ok(&wrap_span(sp), &tight(4, 4)).validated.accepted).collect();
    assert_eq!(accepted, [1, 0, 1, 1]);
}

// ---- malformed input --------------------------------------------------------------------------

#[test]
fn malformed_input_fails_naming_the_field_and_offset() {
    let good_attr = ld(9, &[ld(1, b"k"), ld(2, &enc_any(s("v")))].concat());
    // The third attribute's key announces a length but the varint stops short.
    let body = wrap_span(&[span(1, 1).encode_to_vec(), good_attr.clone(), good_attr, ld(9, &[key(1, 2), vec![0x80]].concat())].concat());
    assert_eq!(
        err(&body),
        format!(
            "malformed protobuf at byte {} in resource_spans[0].scope_spans[0].spans[0].attributes[2].key: truncated varint",
            body.len() - 1
        )
    );
    let e = err(&wrap_span(&[span(1, 1).encode_to_vec(), vi(7, 5)].concat()));
    assert!(e.ends_with("spans[0].start_time_unix_nano: wire type varint, expected 64-bit"), "{e}");
    let e = err(&ld(1, &[ld(2, &[key(2, 2), varint(1000), vec![0; 4]].concat())].concat()));
    assert!(
        e.ends_with("resource_spans[0].scope_spans[0].spans[0]: length 1000 runs past the end of the enclosing message (4 bytes left)"),
        "{e}"
    );
    // in a rejected span (checked where read) and in a kept one (checked with its column,
    // then located by a strict second run)
    let e = err(&wrap_span(&[ld(5, b"\xc3\x28")].concat()));
    assert!(e.ends_with("spans[0].name: string is not valid UTF-8"), "{e}");
    let e = err(&wrap_span(&[span(1, 1).encode_to_vec(), ld(9, &[ld(1, b"k"), ld(2, &ld(1, b"\xc3\x28"))].concat())].concat()));
    assert!(e.ends_with("spans[0].attributes[0].value.string_value: string is not valid UTF-8"), "{e}");
    assert!(err(&[0x0a]).ends_with("in resource_spans[0]: truncated varint"));
    assert!(err(&[0x00]).ends_with("in request: invalid field number 0"));
}

#[test]
fn malformed_input_fails_wherever_prost_fails() {
    let bad_utf8 = b"\xff\xfe".as_slice();
    let in_attr = |v: &[u8]| wrap_span(&[span(1, 1).encode_to_vec(), ld(9, v)].concat());
    let cases: Vec<Vec<u8>> = vec![
        // invalid UTF-8 in every string field, stored or not
        wrap_span(&ld(3, bad_utf8)),
        in_attr(&ld(1, bad_utf8)),
        in_attr(&ld(2, &ld(1, bad_utf8))),
        in_attr(&ld(2, &ld(5, &ld(1, &ld(6, &ld(1, &ld(1, bad_utf8))))))),
        wrap_span(&ld(15, &ld(2, bad_utf8))),
        wrap_span(&ld(11, &ld(2, bad_utf8))),
        wrap_span(&ld(13, &ld(3, bad_utf8))),
        ld(1, &ld(2, &ld(1, &ld(2, bad_utf8)))),
        ld(1, &ld(2, &ld(1, &ld(3, &ld(1, bad_utf8))))),
        ld(1, &ld(2, &ld(3, bad_utf8))),
        ld(1, &ld(3, bad_utf8)),
        ld(1, &ld(1, &ld(3, &ld(4, bad_utf8)))),
        // in a resource without spans
        ld(1, &ld(1, &ld(1, &ld(1, bad_utf8)))),
        ld(1, &ld(1, &ld(1, &[ld(1, b"service.name"), ld(2, &ld(1, bad_utf8))].concat()))),
        // under a rejected span and a dropped link, and past the attribute limit
        wrap_span(&[ld(1, &[1; 3]), ld(9, &ld(1, bad_utf8))].concat()),
        wrap_span(&[span(1, 1).encode_to_vec(), ld(13, &[ld(1, &[1; 3]), ld(4, &ld(1, bad_utf8))].concat())].concat()),
        wrap_span(&[span(1, 1).encode_to_vec(), ld(9, &ld(1, b"k")).repeat(200), ld(9, &ld(1, bad_utf8))].concat()),
        // an invalid string replaced by a later occurrence of its field
        wrap_span(&[span(1, 1).encode_to_vec(), ld(5, bad_utf8), ld(5, b"op")].concat()),
        wrap_span(&[span(1, 1).encode_to_vec(), ld(3, bad_utf8), ld(3, b"k=v")].concat()),
        in_attr(&[ld(1, bad_utf8), ld(1, b"k")].concat()),
        in_attr(&[ld(1, b"k"), ld(2, &[ld(1, bad_utf8), vi(3, 1)].concat())].concat()),
        in_attr(&[ld(1, b"k"), ld(2, &ld(1, bad_utf8)), ld(2, &enc_any(s("ok")))].concat()),
        in_attr(&[ld(1, b"k"), ld(2, &ld(1, bad_utf8)), ld(2, &enc_any(array(vec![])))].concat()),
        wrap_span(&[span(1, 1).encode_to_vec(), ld(15, &[ld(2, bad_utf8), ld(2, b"m")].concat())].concat()),
        wrap_span(&[span(1, 1).encode_to_vec(), ld(11, &[ld(2, bad_utf8), ld(2, b"e")].concat())].concat()),
        wrap_span(&[span(1, 1).encode_to_vec(), ld(13, &[ld(1, &[2; 16]), ld(2, &[2; 8]), ld(3, bad_utf8), ld(3, b"")].concat())].concat()),
        // invalid strings that would be stored, and a character split between two values
        wrap_span(&[span(1, 1).encode_to_vec(), ld(5, bad_utf8)].concat()),
        in_attr(&[ld(1, b"k\xc3"), ld(2, &ld(1, b"\xa9"))].concat()),
        in_attr(&[ld(1, b"k"), ld(2, &ld(1, b"long \xff value"))].concat()),
        [wrap_span(&span(1, 1).encode_to_vec()), wrap_span(&[span(1, 2).encode_to_vec(), ld(11, &ld(2, bad_utf8))].concat())].concat(),
        // keys and varints
        vec![0x0f],                                        // wire type 7
        vec![0x0e],                                        // wire type 6
        [vec![0x80; 5], vec![0x10]].concat(),              // key over 32 bits
        [vec![0x10], vec![0xff; 9], vec![0x02]].concat(),  // tenth byte carries bits past 64
        [vec![0x10], vec![0xff; 10], vec![0x01]].concat(), // 11 bytes
        [vec![0x10], vec![0xff; 3]].concat(),
        // wire types of known fields
        wrap_span(&fx32(1, 0)),
        wrap_span(&vi(16, 1)),
        wrap_span(&vi(9, 1)),
        in_attr(&fx64(2, 1)),
        in_attr(&ld(3, b"key_strindex is an int32")),
        in_attr(&ld(2, &vi(4, 1))),
        in_attr(&ld(2, &vi(5, 1))),
        ld(1, &vi(1, 1)),
        // truncated fixed values and bad groups
        wrap_span(&[key(7, 1), vec![0; 7]].concat()),
        wrap_span(&[key(16, 5), vec![0; 3]].concat()),
        wrap_span(&key(1000, 4)),
        wrap_span(&[key(1000, 3), vi(1, 1)].concat()),
        wrap_span(&[key(1000, 3), key(1001, 4)].concat()),
        // a group whose end tag lies past the end of its message
        [ld(1, &ld(2, &key(1000, 3))), key(1000, 4)].concat(),
        // a sub-message longer than its parent
        ld(1, &[key(2, 2), varint(3), vec![0x0a, 0x05]].concat()),
    ];
    for (i, body) in cases.iter().enumerate() {
        assert!(check(body, &Limits::default()).is_err(), "case {i}");
    }
    // A ten-byte varint whose last byte carries only bit 63 is fine.
    check(&[vec![0x10], vec![0xff; 9], vec![0x01]].concat(), &Limits::default()).expect("decodes");
}

#[test]
fn recursion_limit_matches_prost() {
    let mut results = Vec::new();
    // An array costs two levels (ArrayValue, AnyValue), a kvlist three; groups one each.
    for depth in 30..=45 {
        let mut v = AnyValue { value: Some(s("leaf")) };
        for i in 0..depth {
            v = AnyValue {
                value: Some(if i % 2 == 0 {
                    Value::ArrayValue(ArrayValue { values: vec![v] })
                } else {
                    Value::KvlistValue(KeyValueList { values: vec![KeyValue { key: "k".into(), value: Some(v), ..Default::default() }] })
                }),
            };
        }
        let mut sp = span(1, 1);
        sp.attributes = vec![KeyValue { key: "deep".into(), value: Some(v), ..Default::default() }];
        results.push(check(&req(vec![], vec![sp]).encode_to_vec(), &Limits::default()).is_ok());
    }
    assert!(results.contains(&true) && results.contains(&false), "{results:?}");
    results.clear();
    for depth in 90..=100 {
        let mut g = vi(1, 1);
        for _ in 0..depth {
            g = group(1000, &g);
        }
        results.push(check(&wrap_span(&[span(1, 1).encode_to_vec(), g].concat()), &Limits::default()).is_ok());
    }
    assert!(results.contains(&true) && results.contains(&false), "{results:?}");
}

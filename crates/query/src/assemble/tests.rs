//! Tests of trace assembly, and the span builder the other modules' tests share.

use super::*;
use serde_json::json;
use skein_columnar::TypedValue;
use skein_columnar::record::{EventRecord, LinkRecord};

pub(crate) const MS: i64 = 1_000_000;
/// A start time far from zero, so that offsets are not confused with absolute times.
pub(crate) const T0: i64 = 1_700_000_000_000_000_000;

pub(crate) fn trace_id() -> TraceId {
    TraceId([0xab; 16])
}

pub(crate) fn sid(n: u8) -> SpanId {
    SpanId([0, 0, 0, 0, 0, 0, 0, n])
}

pub(crate) fn hex(n: u8) -> String {
    sid(n).to_hex()
}

pub(crate) fn attr(key: &str, value: TypedValue) -> Attr {
    Attr { key: key.to_string(), value }
}

/// A span with id `n`, times in milliseconds after [`T0`].
pub(crate) fn span(n: u8, parent: Option<u8>, service: &str, node: &str, start_ms: i64, end_ms: i64) -> SpanRecord {
    SpanRecord {
        trace_id: trace_id(),
        span_id: sid(n),
        parent_span_id: parent.map(sid),
        trace_state: None,
        flags: 1,
        name: format!("op-{n}"),
        kind: 2,
        start_time_unix_nano: T0 + start_ms * MS,
        end_time_unix_nano: T0 + end_ms * MS,
        status_code: 0,
        status_message: None,
        service: service.to_string(),
        node: node.to_string(),
        resource: vec![
            attr("service.name", TypedValue::String(service.to_string())),
            attr("host.name", TypedValue::String(node.to_string())),
        ],
        attributes: Vec::new(),
        scope_name: None,
        scope_version: None,
        events: Vec::new(),
        links: Vec::new(),
        dropped_attributes_count: 0,
        dropped_events_count: 0,
        dropped_links_count: 0,
    }
}

fn run(spans: Vec<SpanRecord>) -> AssembledTrace {
    assemble(trace_id(), spans, &AssembleOptions::default())
}

fn adjusted(spans: Vec<SpanRecord>, max_ms: i64) -> AssembledTrace {
    let opts = AssembleOptions { adjust_skew: true, max_skew_adjustment_ns: max_ms * MS };
    assemble(trace_id(), spans, &opts)
}

fn order(t: &AssembledTrace) -> Vec<(String, usize)> {
    t.spans.iter().map(|s| (s.span_id.clone(), s.depth)).collect()
}

fn find(t: &AssembledTrace, n: u8) -> &AssembledSpan {
    let id = hex(n);
    t.spans.iter().find(|s| s.span_id == id).expect("span in trace")
}

/// frontend on node-a calls the API on node-b, which queries the database on node-c twice.
fn three_nodes() -> Vec<SpanRecord> {
    let mut client = span(2, Some(1), "frontend", "node-a", 10, 90);
    client.kind = 3;
    vec![
        span(5, Some(3), "db", "node-c", 50, 70),
        span(3, Some(2), "api", "node-b", 15, 85),
        span(1, None, "frontend", "node-a", 0, 100),
        span(4, Some(3), "db", "node-c", 20, 40),
        client,
    ]
}

#[test]
fn three_node_trace_assembles_as_a_tree() {
    let t = run(three_nodes());
    assert_eq!(t.trace_id, "ab".repeat(16));
    assert_eq!(order(&t), vec![(hex(1), 0), (hex(2), 1), (hex(3), 2), (hex(4), 3), (hex(5), 3)]);
    assert_eq!(t.span_count, 5);
    assert_eq!(t.nodes, ["node-a", "node-b", "node-c"]);
    assert_eq!(t.services, ["api", "db", "frontend"]);
    assert_eq!(t.root, Some(hex(1)));
    assert!(t.complete);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert!(t.clock_skew.is_empty());
    assert_eq!(t.start_time_unix_nano, T0);
    assert_eq!(t.duration_ns, 100 * MS);
    let client = find(&t, 2);
    assert_eq!(client.kind, "client");
    assert_eq!(client.parent_span_id, Some(hex(1)));
    assert_eq!(client.duration_ns, 80 * MS);
    assert_eq!(find(&t, 4).node, "node-c");
}

#[test]
fn duplicate_span_is_counted_once() {
    let mut spans = three_nodes();
    spans.push(span(3, Some(2), "api", "node-b", 15, 85));
    let t = run(spans);
    assert_eq!(t.span_count, 5);
    assert_eq!(t.spans.iter().filter(|s| s.span_id == hex(3)).count(), 1);
    assert!(t.complete);
    assert!(t.warnings.is_empty(), "identical retries are not news: {:?}", t.warnings);
}

#[test]
fn differing_duplicate_keeps_the_first_and_warns() {
    let mut spans = three_nodes();
    spans.push(span(3, Some(2), "api", "node-b", 15, 86));
    let t = run(spans);
    assert_eq!(t.span_count, 5);
    assert_eq!(find(&t, 3).end_time_unix_nano, T0 + 85 * MS);
    assert_eq!(t.warnings.len(), 1);
    assert!(t.warnings[0].contains(&hex(3)), "{}", t.warnings[0]);
}

#[test]
fn orphan_is_reported_and_becomes_a_subtree_root() {
    let mut spans = three_nodes();
    spans.retain(|s| s.span_id != sid(3));
    let t = run(spans);
    assert_eq!(t.root, Some(hex(1)));
    assert!(!t.complete);
    assert_eq!(order(&t), vec![(hex(1), 0), (hex(2), 1), (hex(4), 0), (hex(5), 0)]);
    let orphan_warnings: Vec<&String> = t.warnings.iter().filter(|w| w.contains("orphan")).collect();
    assert_eq!(orphan_warnings.len(), 2, "{:?}", t.warnings);
    assert!(orphan_warnings[0].contains(&hex(4)) && orphan_warnings[0].contains(&hex(3)));
    assert_eq!(find(&t, 4).warnings, [format!("parent {} is not in the trace", hex(3))]);
}

#[test]
fn missing_root_is_reported() {
    let mut spans = three_nodes();
    spans.retain(|s| s.span_id != sid(1));
    let t = run(spans);
    assert_eq!(t.root, None);
    assert!(!t.complete);
    assert!(t.critical_path.is_empty());
    assert_eq!(order(&t)[0], (hex(2), 0));
    assert_eq!(order(&t)[1], (hex(3), 1));
    assert!(t.warnings[0].starts_with("root span missing"), "{:?}", t.warnings);
    assert!(t.warnings[0].contains(&hex(1)));
    let json = serde_json::to_value(&t).expect("serializes");
    assert_eq!(json["root"], Json::Null);
}

#[test]
fn parent_cycles_are_cut_without_hanging() {
    let spans = vec![
        span(1, None, "svc", "node-a", 0, 100),
        span(2, Some(3), "svc", "node-a", 10, 20),
        span(3, Some(2), "svc", "node-a", 12, 18),
        span(4, Some(4), "svc", "node-a", 30, 40),
        span(5, Some(3), "svc", "node-a", 13, 14),
    ];
    let t = run(spans);
    assert_eq!(t.span_count, 5);
    assert!(!t.complete);
    assert_eq!(order(&t), vec![(hex(1), 0), (hex(2), 0), (hex(3), 1), (hex(5), 2), (hex(4), 0)]);
    assert_eq!(t.warnings.iter().filter(|w| w.contains("cycle")).count(), 2, "{:?}", t.warnings);
}

/// frontend (node-a) → client (node-a) → api server on node-b whose clock runs 50 ms behind,
/// → a same-node child on node-b.
fn skewed() -> Vec<SpanRecord> {
    let mut client = span(2, Some(1), "frontend", "node-a", 10, 90);
    client.kind = 3;
    let mut server = span(3, Some(2), "api", "node-b", -35, 35);
    server.events.push(EventRecord { time_unix_nano: T0, name: "cache miss".into(), attributes: Vec::new() });
    vec![span(1, None, "frontend", "node-a", 0, 100), client, server, span(4, Some(3), "api", "node-b", -30, 30)]
}

#[test]
fn skew_is_detected_without_moving_anything() {
    let t = run(skewed());
    assert_eq!(
        t.clock_skew,
        [ClockSkew { parent_node: "node-a".into(), child_node: "node-b".into(), estimated_offset_ns: 50 * MS, spans: vec![hex(3)] }]
    );
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    let w = &t.warnings[0];
    assert!(w.contains("node-a") && w.contains("node-b") && w.contains("+50.000 ms"), "{w}");
    let server = find(&t, 3);
    assert_eq!(server.start_time_unix_nano, T0 - 35 * MS);
    assert_eq!(server.events[0].time_unix_nano, T0);
    assert_eq!(server.warnings.len(), 1);
    assert!(server.warnings[0].contains("starts 45.000 ms before"), "{:?}", server.warnings);
    assert_eq!(find(&t, 4).start_time_unix_nano, T0 - 30 * MS);
    assert!(find(&t, 4).warnings.is_empty());
    // The trace starts with the skewed span: nothing was moved.
    assert_eq!(t.start_time_unix_nano, T0 - 35 * MS);
}

#[test]
fn adjust_centres_the_child_and_carries_the_delta_to_its_node() {
    let t = adjusted(skewed(), 1_000);
    let server = find(&t, 3);
    // Parent 10..90 (80 ms), child 70 ms long: centred at 15..85.
    assert_eq!(server.start_time_unix_nano, T0 + 15 * MS);
    assert_eq!(server.end_time_unix_nano, T0 + 85 * MS);
    assert_eq!(server.duration_ns, 70 * MS);
    assert_eq!(server.events[0].time_unix_nano, T0 + 50 * MS);
    assert!(server.warnings.iter().any(|w| w.contains("adjusted by +50.000 ms")), "{:?}", server.warnings);
    let same_node = find(&t, 4);
    assert_eq!(same_node.start_time_unix_nano, T0 + 20 * MS);
    assert_eq!(same_node.end_time_unix_nano, T0 + 80 * MS);
    assert_eq!(same_node.warnings.len(), 1);
    assert!(same_node.warnings[0].contains(&hex(3)), "{:?}", same_node.warnings);
    // Spans of the root's node are never moved.
    assert_eq!(find(&t, 1).start_time_unix_nano, T0);
    assert!(find(&t, 1).warnings.is_empty() && find(&t, 2).warnings.is_empty());
    assert_eq!(t.start_time_unix_nano, T0);
    assert_eq!(t.duration_ns, 100 * MS);
    // Detection still reports what the stored data says.
    assert_eq!(t.clock_skew.len(), 1);
}

#[test]
fn adjust_does_not_apply_a_delta_above_the_maximum() {
    let t = adjusted(skewed(), 10);
    let server = find(&t, 3);
    assert_eq!(server.start_time_unix_nano, T0 - 35 * MS);
    assert_eq!(find(&t, 4).start_time_unix_nano, T0 - 30 * MS);
    assert!(find(&t, 4).warnings.is_empty());
    assert!(server.warnings.iter().any(|w| w.contains("+50.000 ms exceeds the maximum of 10.000 ms")), "{:?}", server.warnings);
    assert!(t.warnings.iter().any(|w| w.contains("not applied") && w.contains(&hex(3))));
}

#[test]
fn async_consumer_after_its_producer_is_not_skew() {
    let mut producer = span(2, Some(1), "shop", "node-a", 10, 12);
    producer.kind = 4;
    let mut consumer = span(3, Some(2), "worker", "node-b", 500, 600);
    consumer.kind = 5;
    let t = adjusted(vec![span(1, None, "shop", "node-a", 0, 20), producer, consumer], 1_000);
    assert!(t.clock_skew.is_empty());
    assert_eq!(find(&t, 3).start_time_unix_nano, T0 + 500 * MS);
    assert_eq!(t.duration_ns, 600 * MS);
}

#[test]
fn critical_path_of_a_fan_out() {
    // Root 0..100 calls A (10..50) and B (10..80) in parallel; B calls C (20..60).
    let spans = vec![
        span(1, None, "svc", "n", 0, 100),
        span(2, Some(1), "svc", "n", 10, 50),
        span(3, Some(1), "svc", "n", 10, 80),
        span(4, Some(3), "svc", "n", 20, 60),
    ];
    let t = run(spans);
    let path: Vec<(String, i64, i64)> =
        t.critical_path.iter().map(|s| (s.span_id.clone(), (s.start_time_unix_nano - T0) / MS, (s.end_time_unix_nano - T0) / MS)).collect();
    assert_eq!(path, [(hex(1), 0, 10), (hex(3), 10, 20), (hex(4), 20, 60), (hex(3), 60, 80), (hex(1), 80, 100),]);
}

#[test]
fn critical_path_follows_sequential_calls_and_clips_overflow() {
    // A (10..30) then B (30..120, overflowing the root's end at 100).
    let spans = vec![span(1, None, "svc", "n", 0, 100), span(2, Some(1), "svc", "n", 10, 30), span(3, Some(1), "svc", "n", 30, 120)];
    let t = run(spans);
    let path: Vec<(String, i64, i64)> =
        t.critical_path.iter().map(|s| (s.span_id.clone(), (s.start_time_unix_nano - T0) / MS, (s.end_time_unix_nano - T0) / MS)).collect();
    assert_eq!(path, [(hex(1), 0, 10), (hex(2), 10, 30), (hex(3), 30, 100)]);
}

#[test]
fn serializes_to_the_native_api_shape() {
    let mut root = span(1, None, "frontend", "node-a", 0, 100);
    root.status_code = 2;
    root.status_message = Some("boom".into());
    root.scope_name = Some("io.opentelemetry.http".into());
    root.scope_version = Some("1.2".into());
    root.attributes = vec![
        attr("http.response.status_code", TypedValue::Int(500)),
        attr("retry", TypedValue::Bool(false)),
        attr("ratio", TypedValue::Double(0.25)),
    ];
    root.events.push(EventRecord {
        time_unix_nano: T0 + 5,
        name: "exception".into(),
        attributes: vec![attr("exception.type", TypedValue::String("Boom".into()))],
    });
    root.links.push(LinkRecord { trace_id: TraceId([1; 16]), span_id: SpanId([2; 8]), trace_state: None, attributes: Vec::new() });
    let t = run(vec![root, span(2, Some(1), "frontend", "node-a", 10, 20)]);
    let v = serde_json::to_value(&t).expect("serializes");
    assert_eq!(v["root"], json!(hex(1)));
    assert_eq!(v["complete"], json!(true));
    assert_eq!(v["warnings"], json!([]));
    assert_eq!(v["clock_skew"], json!([]));
    let s = &v["spans"][0];
    assert_eq!(s["parent_span_id"], Json::Null);
    assert_eq!(s["kind"], json!("server"));
    assert_eq!(s["status"], json!({"code": "error", "message": "boom"}));
    assert_eq!(s["attributes"], json!({"http.response.status_code": 500, "retry": false, "ratio": 0.25}));
    assert!(s["attributes"]["http.response.status_code"].is_i64());
    assert_eq!(s["resource"]["host.name"], json!("node-a"));
    assert_eq!(s["scope"], json!({"name": "io.opentelemetry.http", "version": "1.2"}));
    assert_eq!(s["events"], json!([{"time_unix_nano": T0 + 5, "name": "exception", "attributes": {"exception.type": "Boom"}}]));
    assert_eq!(s["links"], json!([{"trace_id": "01".repeat(16), "span_id": "02".repeat(8), "attributes": {}}]));
    assert_eq!(s["depth"], json!(0));
    assert!(s.get("warnings").is_none(), "empty per-span warnings are omitted");
    assert_eq!(v["spans"][1]["scope"], Json::Null);
    assert_eq!(v["spans"][1]["status"], json!({"code": "unset", "message": null}));
    assert_eq!(v["spans"][1]["depth"], json!(1));
}

#[test]
fn no_spans_gives_an_empty_incomplete_trace() {
    let t = run(Vec::new());
    assert_eq!(t.span_count, 0);
    assert_eq!(t.root, None);
    assert!(!t.complete);
    assert_eq!(t.warnings, ["trace has no spans"]);
}

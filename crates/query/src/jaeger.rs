//! The Jaeger query API's JSON shapes (Jaeger `model/json` and
//! `cmd/query/app/http_handler.go`), so that Grafana's Jaeger data source and the Jaeger UI
//! work against Skein.
//!
//! OTLP spans map onto Jaeger spans the way Jaeger's own OTLP translator maps them: the
//! resource becomes the process (`service.name` is the service name, the other resource
//! attributes its tags), span kind, status and scope become tags (`span.kind`,
//! `otel.status_code`, `otel.status_description`, `error`, `otel.scope.name`,
//! `otel.scope.version`), events become logs with an `event` field, the parent becomes a
//! `CHILD_OF` reference and links `FOLLOWS_FROM` references. Times are integer microseconds.

use crate::assemble::dedup_by_span_id;
use serde_json::{Map, Value as Json, json};
use skein_columnar::record::kind_name;
use skein_columnar::{Attr, SpanRecord, TypedValue};
use skein_core::TraceId;

/// Largest integer a JavaScript number holds exactly; Jaeger sends larger int64 tag values as
/// strings so that the UI does not round them.
const JS_MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// One Jaeger trace object (`{"traceID", "spans", "processes", "warnings"}`) for the spans of
/// `trace_id`. Duplicate spans are dropped; spans are ordered by start time.
pub fn to_jaeger(trace_id: TraceId, spans: &[SpanRecord]) -> Json {
    let (mut spans, _) = dedup_by_span_id(spans);
    spans.sort_by_key(|s| (s.start_time_unix_nano, s.span_id));
    let mut processes: Vec<(&str, &[Attr])> = Vec::new();
    let mut out = Vec::with_capacity(spans.len());
    for s in spans {
        let existing = processes.iter().position(|&(service, resource)| service == s.service && resource == s.resource.as_slice());
        let index = existing.unwrap_or_else(|| {
            processes.push((&s.service, &s.resource));
            processes.len() - 1
        });
        out.push(span(s, format!("p{}", index + 1)));
    }
    let processes: Map<String, Json> = processes
        .into_iter()
        .enumerate()
        .map(|(i, (service, resource))| {
            let tags: Vec<Json> = resource.iter().filter(|a| a.key != "service.name").map(|a| tag(&a.key, &a.value)).collect();
            (format!("p{}", i + 1), json!({"serviceName": service, "tags": tags}))
        })
        .collect();
    json!({
        "traceID": trace_id.to_hex(),
        "spans": out,
        "processes": processes,
        "warnings": null,
    })
}

fn span(s: &SpanRecord, process_id: String) -> Json {
    let trace_id = s.trace_id.to_hex();
    let mut references = Vec::with_capacity(s.links.len() + 1);
    if let Some(parent) = s.parent_span_id {
        references.push(json!({"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent.to_hex()}));
    }
    for l in &s.links {
        references.push(json!({
            "refType": "FOLLOWS_FROM",
            "traceID": l.trace_id.to_hex(),
            "spanID": l.span_id.to_hex(),
        }));
    }
    let logs: Vec<Json> = s
        .events
        .iter()
        .map(|e| {
            let mut fields = Vec::with_capacity(e.attributes.len() + 1);
            if !e.name.is_empty() && !e.attributes.iter().any(|a| a.key == "event") {
                fields.push(string_tag("event", &e.name));
            }
            fields.extend(e.attributes.iter().map(|a| tag(&a.key, &a.value)));
            json!({"timestamp": micros(e.time_unix_nano), "fields": fields})
        })
        .collect();
    let mut o = Map::new();
    o.insert("traceID".into(), Json::String(trace_id));
    o.insert("spanID".into(), Json::String(s.span_id.to_hex()));
    // Jaeger's flags: 1 sampled, 2 debug, 4 firehose. Only the W3C sampled bit (0x01) means
    // the same thing; W3C's 0x02 is the "random trace id" bit, not debug.
    let flags = s.flags & 0x01;
    if flags != 0 {
        o.insert("flags".into(), json!(flags));
    }
    o.insert("operationName".into(), Json::String(s.name.clone()));
    o.insert("references".into(), Json::Array(references));
    o.insert("startTime".into(), json!(micros(s.start_time_unix_nano)));
    o.insert("duration".into(), json!(micros(s.duration_ns())));
    o.insert("tags".into(), Json::Array(span_tags(s)));
    o.insert("logs".into(), Json::Array(logs));
    o.insert("processID".into(), Json::String(process_id));
    o.insert("warnings".into(), Json::Null);
    Json::Object(o)
}

/// The span's attributes, then what Jaeger carries as tags: kind, status, scope, trace state.
/// A derived tag whose key the span already has as an attribute is not added twice.
fn span_tags(s: &SpanRecord) -> Vec<Json> {
    let mut tags: Vec<Json> = s.attributes.iter().map(|a| tag(&a.key, &a.value)).collect();
    let mut extra: Vec<(&str, Json)> = Vec::new();
    if let Some(name) = &s.scope_name {
        extra.push(("otel.scope.name", string_tag("otel.scope.name", name)));
    }
    if let Some(version) = &s.scope_version {
        extra.push(("otel.scope.version", string_tag("otel.scope.version", version)));
    }
    if s.kind != 0 {
        extra.push(("span.kind", string_tag("span.kind", kind_name(s.kind))));
    }
    match s.status_code {
        1 => extra.push(("otel.status_code", string_tag("otel.status_code", "OK"))),
        2 => {
            extra.push(("otel.status_code", string_tag("otel.status_code", "ERROR")));
            extra.push(("error", json!({"key": "error", "type": "bool", "value": true})));
        }
        _ => {}
    }
    if let Some(message) = s.status_message.as_deref().filter(|m| !m.is_empty()) {
        extra.push(("otel.status_description", string_tag("otel.status_description", message)));
    }
    if let Some(state) = s.trace_state.as_deref().filter(|t| !t.is_empty()) {
        extra.push(("w3c.tracestate", string_tag("w3c.tracestate", state)));
    }
    for (key, t) in extra {
        if !s.attributes.iter().any(|a| a.key == key) {
            tags.push(t);
        }
    }
    tags
}

fn string_tag(key: &str, value: &str) -> Json {
    json!({"key": key, "type": "string", "value": value})
}

/// A Jaeger tag with the type of the OTLP value. Arrays and kvlists have no Jaeger type and
/// travel as their JSON text; bytes as base64 with type `binary`.
fn tag(key: &str, value: &TypedValue) -> Json {
    let (kind, v) = match value {
        TypedValue::String(s) => ("string", Json::String(s.clone())),
        TypedValue::Bool(b) => ("bool", Json::Bool(*b)),
        TypedValue::Int(i) if (-JS_MAX_SAFE_INTEGER..=JS_MAX_SAFE_INTEGER).contains(i) => ("int64", json!(i)),
        TypedValue::Int(i) => ("int64", Json::String(i.to_string())),
        TypedValue::Double(d) if d.is_finite() => ("float64", json!(d)),
        // NaN and infinities have no JSON number: send the text.
        TypedValue::Double(_) => ("string", Json::String(value.to_display())),
        TypedValue::Bytes(_) => ("binary", value.to_json()),
        TypedValue::Json(j) => ("string", Json::String(j.to_string())),
        TypedValue::Empty => ("string", Json::String(String::new())),
    };
    json!({"key": key, "type": kind, "value": v})
}

/// Unix nanoseconds (or a nanosecond duration) as Jaeger's integer microseconds.
fn micros(ns: i64) -> u64 {
    u64::try_from(ns / 1_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tests::{MS, T0, attr, hex, span as record, trace_id};
    use skein_columnar::{EventRecord, LinkRecord};
    use skein_core::SpanId;

    fn tag_of<'a>(span: &'a Json, key: &str) -> Option<&'a Json> {
        span["tags"].as_array().and_then(|tags| tags.iter().find(|t| t["key"] == key))
    }

    fn fixture() -> Vec<SpanRecord> {
        let mut root = record(1, None, "frontend", "node-a", 0, 100);
        root.start_time_unix_nano += 1_999; // sub-microsecond part is dropped
        root.attributes = vec![
            attr("http.response.status_code", TypedValue::Int(200)),
            attr("cache.hit", TypedValue::Bool(true)),
            attr("ratio", TypedValue::Double(0.5)),
            attr("tags", TypedValue::Json(json!(["a", 2]))),
            attr("blob", TypedValue::Bytes(vec![1])),
            attr("big", TypedValue::Int(i64::MAX)),
        ];
        root.scope_name = Some("io.opentelemetry.http".into());
        root.scope_version = Some("1.2".into());
        root.events.push(EventRecord {
            time_unix_nano: T0 + 5 * MS,
            name: "exception".into(),
            attributes: vec![attr("exception.type", TypedValue::String("Boom".into()))],
        });
        let mut child = record(2, Some(1), "api", "node-b", 10, 90);
        child.kind = 3;
        child.status_code = 2;
        child.status_message = Some("timeout".into());
        child.links.push(LinkRecord { trace_id: TraceId([1; 16]), span_id: SpanId([2; 8]), trace_state: None, attributes: Vec::new() });
        let same_process = record(3, Some(2), "api", "node-b", 20, 30);
        // Same service on another node: another process.
        let other_node = record(4, Some(1), "api", "node-c", 40, 50);
        vec![other_node, child.clone(), same_process, root, child]
    }

    #[test]
    fn trace_has_processes_per_service_and_resource() {
        let t = to_jaeger(trace_id(), &fixture());
        assert_eq!(t["traceID"], json!("ab".repeat(16)));
        assert_eq!(t["warnings"], Json::Null);
        let spans = t["spans"].as_array().expect("spans");
        assert_eq!(spans.len(), 4, "the duplicate is dropped");
        let ids: Vec<&str> = spans.iter().filter_map(|s| s["spanID"].as_str()).collect();
        assert_eq!(ids, [hex(1), hex(2), hex(3), hex(4)]);
        let pids: Vec<&str> = spans.iter().filter_map(|s| s["processID"].as_str()).collect();
        assert_eq!(pids, ["p1", "p2", "p2", "p3"]);
        assert_eq!(
            t["processes"]["p1"],
            json!({"serviceName": "frontend", "tags": [{"key": "host.name", "type": "string", "value": "node-a"}]})
        );
        assert_eq!(t["processes"]["p2"]["serviceName"], json!("api"));
        assert_eq!(t["processes"]["p3"]["tags"][0]["value"], json!("node-c"));
        assert_eq!(t["processes"].as_object().map(Map::len), Some(3));
    }

    #[test]
    fn tags_keep_their_types() {
        let t = to_jaeger(trace_id(), &fixture());
        let root = &t["spans"][0];
        let expect = [
            ("http.response.status_code", json!({"key": "http.response.status_code", "type": "int64", "value": 200})),
            ("cache.hit", json!({"key": "cache.hit", "type": "bool", "value": true})),
            ("ratio", json!({"key": "ratio", "type": "float64", "value": 0.5})),
            ("tags", json!({"key": "tags", "type": "string", "value": "[\"a\",2]"})),
            ("blob", json!({"key": "blob", "type": "binary", "value": "AQ=="})),
            ("big", json!({"key": "big", "type": "int64", "value": i64::MAX.to_string()})),
            ("otel.scope.name", json!({"key": "otel.scope.name", "type": "string", "value": "io.opentelemetry.http"})),
            ("otel.scope.version", json!({"key": "otel.scope.version", "type": "string", "value": "1.2"})),
            ("span.kind", json!({"key": "span.kind", "type": "string", "value": "server"})),
        ];
        for (key, want) in expect {
            assert_eq!(tag_of(root, key), Some(&want), "tag {key}");
        }
        assert!(tag_of(root, "otel.status_code").is_none(), "unset status has no tag");
        assert!(tag_of(root, "error").is_none());
        let child = &t["spans"][1];
        assert_eq!(tag_of(child, "span.kind").map(|t| &t["value"]), Some(&json!("client")));
        assert_eq!(tag_of(child, "otel.status_code").map(|t| &t["value"]), Some(&json!("ERROR")));
        assert_eq!(tag_of(child, "otel.status_description").map(|t| &t["value"]), Some(&json!("timeout")));
        assert_eq!(tag_of(child, "error"), Some(&json!({"key": "error", "type": "bool", "value": true})));
    }

    #[test]
    fn references_times_and_logs() {
        let t = to_jaeger(trace_id(), &fixture());
        let root = &t["spans"][0];
        assert_eq!(root["references"], json!([]));
        assert_eq!(root["flags"], json!(1));
        assert_eq!(root["operationName"], json!("op-1"));
        // Integer microseconds: T0 + 1_999 ns → T0 / 1000 + 1.
        assert_eq!(root["startTime"], json!(T0 / 1_000 + 1));
        assert!(root["startTime"].is_u64());
        assert_eq!(root["duration"], json!(99_998));
        assert_eq!(
            root["logs"],
            json!([{"timestamp": (T0 + 5 * MS) / 1_000, "fields": [
                {"key": "event", "type": "string", "value": "exception"},
                {"key": "exception.type", "type": "string", "value": "Boom"},
            ]}])
        );
        assert_eq!(root["warnings"], Json::Null);
        let child = &t["spans"][1];
        assert_eq!(
            child["references"],
            json!([
                {"refType": "CHILD_OF", "traceID": "ab".repeat(16), "spanID": hex(1)},
                {"refType": "FOLLOWS_FROM", "traceID": "01".repeat(16), "spanID": "02".repeat(8)},
            ])
        );
        assert_eq!(child["startTime"], json!((T0 + 10 * MS) / 1_000));
        assert_eq!(child["duration"], json!(80_000));
        assert_eq!(child["logs"], json!([]));
    }
}

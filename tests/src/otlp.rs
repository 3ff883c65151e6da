//! Small builders for OTLP trace requests: random ids, typed attribute values, a span builder,
//! resources with `service.name` / `host.name`, and the request that wraps them.

use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::proto::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
use skein_otlp::proto::resource::v1::Resource;
use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use skein_otlp::proto::trace::v1::span::SpanKind;

/// A random `u64` (SipHash with a fresh random key over a process-wide counter).
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A random, non-zero 16-byte trace id.
pub fn random_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64().to_be_bytes());
    id[8..].copy_from_slice(&(random_u64() | 1).to_be_bytes());
    id
}

/// A random, non-zero 8-byte span id.
pub fn random_span_id() -> [u8; 8] {
    (random_u64() | 1).to_be_bytes()
}

/// Lowercase hex of `bytes`, as the query API prints ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A string attribute value.
pub fn string(s: impl Into<String>) -> AnyValue {
    value(any_value::Value::StringValue(s.into()))
}

/// An int attribute value.
pub fn int(i: i64) -> AnyValue {
    value(any_value::Value::IntValue(i))
}

/// A double attribute value.
pub fn double(d: f64) -> AnyValue {
    value(any_value::Value::DoubleValue(d))
}

/// A bool attribute value.
pub fn boolean(b: bool) -> AnyValue {
    value(any_value::Value::BoolValue(b))
}

/// An array attribute value.
pub fn array(values: Vec<AnyValue>) -> AnyValue {
    value(any_value::Value::ArrayValue(ArrayValue { values }))
}

fn value(v: any_value::Value) -> AnyValue {
    AnyValue { value: Some(v) }
}

/// A key-value attribute.
pub fn kv(key: impl Into<String>, value: AnyValue) -> KeyValue {
    KeyValue { key: key.into(), value: Some(value), ..Default::default() }
}

/// Builds one span; by default a 1 ms `SERVER` span that ended just now, with no parent.
#[derive(Debug, Clone)]
pub struct SpanBuilder {
    span: Span,
}

impl SpanBuilder {
    /// A span with the given ids and name.
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], name: impl Into<String>) -> Self {
        let end = now_ns();
        Self {
            span: Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                name: name.into(),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: end - 1_000_000,
                end_time_unix_nano: end,
                ..Default::default()
            },
        }
    }

    /// Sets the parent span id.
    pub fn parent(mut self, parent: [u8; 8]) -> Self {
        self.span.parent_span_id = parent.to_vec();
        self
    }

    /// Sets the span kind.
    pub fn kind(mut self, kind: SpanKind) -> Self {
        self.span.kind = kind as i32;
        self
    }

    /// Sets start and end (Unix nanoseconds).
    pub fn times(mut self, start_ns: u64, end_ns: u64) -> Self {
        self.span.start_time_unix_nano = start_ns;
        self.span.end_time_unix_nano = end_ns;
        self
    }

    /// Adds an attribute.
    pub fn attr(mut self, key: impl Into<String>, value: AnyValue) -> Self {
        self.span.attributes.push(kv(key, value));
        self
    }

    /// Marks the span as failed with a message.
    pub fn error(mut self, message: impl Into<String>) -> Self {
        self.span.status = Some(Status { message: message.into(), code: status::StatusCode::Error as i32 });
        self
    }

    /// Adds an event at `time_ns`.
    pub fn event(mut self, time_ns: u64, name: impl Into<String>, attrs: Vec<KeyValue>) -> Self {
        self.span.events.push(span::Event { time_unix_nano: time_ns, name: name.into(), attributes: attrs, dropped_attributes_count: 0 });
        self
    }

    /// The span, for sending as is or for changing raw fields (e.g. an invalid id).
    pub fn build(self) -> Span {
        self.span
    }
}

/// A resource with `service.name` and `host.name` (the node identity) and extra attributes.
pub fn resource(service: &str, host: &str, extra: Vec<KeyValue>) -> Resource {
    let mut attributes = vec![kv("service.name", string(service)), kv("host.name", string(host))];
    attributes.extend(extra);
    Resource { attributes, ..Default::default() }
}

/// Spans of one service on one node, under a `skein-tests` instrumentation scope.
pub fn resource_spans(service: &str, host: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(resource(service, host, Vec::new())),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "skein-tests".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// A request carrying the given resource spans.
pub fn request(resource_spans: Vec<ResourceSpans>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest { resource_spans }
}

/// Every span id (hex) in a request.
pub fn span_ids(req: &ExportTraceServiceRequest) -> Vec<String> {
    req.resource_spans.iter().flat_map(|rs| &rs.scope_spans).flat_map(|ss| &ss.spans).map(|s| hex(&s.span_id)).collect()
}

/// A small multi-node trace: a root on `frontend`, `fanout` children on `api`, and one
/// grandchild on `db` under the first child; `spans = 2 + fanout`. Returns the request and
/// the trace id.
pub fn sample_trace(prefix: &str, fanout: usize) -> (ExportTraceServiceRequest, [u8; 16]) {
    let tid = random_trace_id();
    let end = now_ns();
    let start = end - 50_000_000;
    let root_id = random_span_id();
    let root = SpanBuilder::new(tid, root_id, format!("GET /{prefix}"))
        .times(start, end)
        .attr("http.route", string(format!("/{prefix}")))
        .attr("http.response.status_code", int(200))
        .build();
    let mut api = Vec::new();
    let mut first_child = None;
    for i in 0..fanout {
        let id = random_span_id();
        first_child.get_or_insert(id);
        api.push(
            SpanBuilder::new(tid, id, format!("{prefix} step {i}"))
                .parent(root_id)
                .times(start + 1_000_000, end - 1_000_000)
                .attr("step", int(i as i64))
                .build(),
        );
    }
    let db = SpanBuilder::new(tid, random_span_id(), "SELECT")
        .parent(first_child.unwrap_or(root_id))
        .kind(SpanKind::Client)
        .times(start + 2_000_000, start + 3_000_000)
        .attr("db.system", string("postgresql"))
        .build();
    let req = request(vec![
        resource_spans(&format!("{prefix}-frontend"), "node-frontend", vec![root]),
        resource_spans(&format!("{prefix}-api"), "node-api", api),
        resource_spans(&format!("{prefix}-db"), "node-db", vec![db]),
    ]);
    (req, tid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_non_zero() {
        let a = random_trace_id();
        let b = random_trace_id();
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }

    #[test]
    fn sample_trace_has_the_announced_shape() {
        let (req, tid) = sample_trace("t", 3);
        assert_eq!(span_ids(&req).len(), 5);
        assert_eq!(req.resource_spans.len(), 3);
        let spans: Vec<_> = req.resource_spans.iter().flat_map(|r| &r.scope_spans[0].spans).collect();
        assert!(spans.iter().all(|s| s.trace_id == tid));
        assert_eq!(spans.iter().filter(|s| s.parent_span_id.is_empty()).count(), 1);
    }
}

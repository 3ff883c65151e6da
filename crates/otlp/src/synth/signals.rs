//! Small builders for OTLP logs and metrics requests from one node: what tests across the
//! crates send, and what the demo's nodes report besides their spans.

use crate::proto::common::v1::{AnyValue, KeyValue, any_value::Value};
use crate::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use crate::proto::metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point};
use crate::proto::resource::v1::Resource;
use crate::{ExportLogsServiceRequest, ExportMetricsServiceRequest};

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }), ..Default::default() }
}

/// The resource of `service` on host `node`.
pub fn node_resource(node: &str, service: &str) -> Resource {
    Resource { attributes: vec![kv("service.name", service), kv("host.name", node)], ..Default::default() }
}

/// One log line: time (Unix ns), severity number, body, and the trace and span it belongs to.
#[derive(Debug, Clone, Default)]
pub struct Line {
    /// Unix ns.
    pub time: u64,
    /// OTLP severity number (9 = INFO, 17 = ERROR).
    pub severity: i32,
    /// The body (a string).
    pub body: String,
    /// Trace id, or empty.
    pub trace_id: Vec<u8>,
    /// Span id, or empty.
    pub span_id: Vec<u8>,
    /// Attributes.
    pub attributes: Vec<KeyValue>,
}

/// A logs export of `lines` from `service` on `node`.
pub fn logs_request(node: &str, service: &str, lines: &[Line]) -> ExportLogsServiceRequest {
    let severity_text = crate::validate_signals::severity_text;
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(node_resource(node, service)),
            scope_logs: vec![ScopeLogs {
                log_records: lines
                    .iter()
                    .map(|l| LogRecord {
                        time_unix_nano: l.time,
                        observed_time_unix_nano: l.time,
                        severity_number: l.severity,
                        severity_text: severity_text(l.severity).into(),
                        body: Some(AnyValue { value: Some(Value::StringValue(l.body.clone())) }),
                        trace_id: l.trace_id.clone(),
                        span_id: l.span_id.clone(),
                        attributes: l.attributes.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A metrics export of one metric of `node`: a gauge, or a monotonic cumulative sum when
/// `counter`, with one data point per `(time, value)`, each with `attributes`.
pub fn metrics_request(
    node: &str,
    name: &str,
    counter: bool,
    points: &[(u64, f64)],
    attributes: &[KeyValue],
) -> ExportMetricsServiceRequest {
    let data_points: Vec<NumberDataPoint> = points
        .iter()
        .map(|&(t, v)| NumberDataPoint {
            time_unix_nano: t,
            start_time_unix_nano: if counter { points[0].0.saturating_sub(1) } else { 0 },
            value: Some(number_data_point::Value::AsDouble(v)),
            attributes: attributes.to_vec(),
            ..Default::default()
        })
        .collect();
    let data = if counter {
        Data::Sum(Sum { data_points, aggregation_temporality: 2, is_monotonic: true })
    } else {
        Data::Gauge(Gauge { data_points })
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(node_resource(node, "skein-agent")),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric { name: name.into(), unit: "1".into(), data: Some(data), ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The log lines an app would write for the spans of `req`, with their trace context: an
/// access line (INFO, or WARN for a 4xx/slow one) for every SERVER span, and an ERROR line
/// with the status message for every failed span. Each `ResourceSpans` gives one
/// `ResourceLogs` with the same resource, so the lines land on the spans' node.
pub fn logs_for_spans(req: &crate::ExportTraceServiceRequest) -> ExportLogsServiceRequest {
    let mut out = ExportLogsServiceRequest::default();
    for rs in &req.resource_spans {
        let mut records = Vec::new();
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            let ms = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e6;
            let status =
                s.attributes.iter().find(|kv| kv.key == "http.response.status_code").and_then(|kv| match kv.value.as_ref()?.value {
                    Some(Value::IntValue(c)) => Some(c),
                    _ => None,
                });
            let record = |severity: i32, text: &str, body: String| LogRecord {
                time_unix_nano: s.end_time_unix_nano,
                observed_time_unix_nano: s.end_time_unix_nano,
                severity_number: severity,
                severity_text: text.into(),
                body: Some(AnyValue { value: Some(Value::StringValue(body)) }),
                trace_id: s.trace_id.clone(),
                span_id: s.span_id.clone(),
                flags: 1,
                attributes: vec![kv("request_id", &format!("req-{}", &skein_core::ids::to_hex(&s.span_id)[..8]))],
                ..Default::default()
            };
            if s.kind == 2 {
                let (sev, text) = if status.is_some_and(|c| c >= 400) || ms > 1000.0 { (13, "WARN") } else { (9, "INFO") };
                let code = status.map_or_else(|| "-".to_string(), |c| c.to_string());
                records.push(record(sev, text, format!("{} {code} in {ms:.1} ms", s.name)));
            }
            if let Some(st) = s.status.as_ref().filter(|st| st.code == 2) {
                let why = if st.message.is_empty() { "failed" } else { st.message.as_str() };
                records.push(record(17, "ERROR", format!("{}: {why}", s.name)));
            }
        }
        if !records.is_empty() {
            out.resource_logs.push(ResourceLogs {
                resource: rs.resource.clone(),
                scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
                ..Default::default()
            });
        }
    }
    out
}

/// Metrics an app would report for the spans of `req`: per resource, the cumulative count of
/// its SERVER spans by operation (`http.server.request.count`, a monotonic sum; `totals` carries
/// the counts from call to call, keyed by node, service and operation) and the duration of the
/// latest one (`http.server.request.duration`, a gauge in ms), all at `now`.
pub fn metrics_for_spans(
    req: &crate::ExportTraceServiceRequest,
    totals: &mut std::collections::BTreeMap<(String, String, String), u64>,
    started: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    let mut out = ExportMetricsServiceRequest::default();
    for rs in &req.resource_spans {
        let attrs = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let get = |k: &str| {
            attrs.iter().find(|kv| kv.key == k).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
        };
        let (node, service) = (get("host.name").unwrap_or_default(), get("service.name").unwrap_or_default());
        let (mut counts, mut durations) = (Vec::new(), Vec::new());
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans).filter(|s| s.kind == 2) {
            let n = totals.entry((node.clone(), service.clone(), s.name.clone())).or_default();
            *n += 1;
            let op = [kv("operation", &s.name)];
            counts.push(NumberDataPoint {
                time_unix_nano: now,
                start_time_unix_nano: started,
                value: Some(number_data_point::Value::AsInt(*n as i64)),
                attributes: op.to_vec(),
                ..Default::default()
            });
            let ms = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e6;
            durations.push(NumberDataPoint {
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsDouble(ms)),
                attributes: op.to_vec(),
                ..Default::default()
            });
        }
        if counts.is_empty() {
            continue;
        }
        let metrics = vec![
            Metric {
                name: "http.server.request.count".into(),
                unit: "{request}".into(),
                data: Some(Data::Sum(Sum { data_points: counts, aggregation_temporality: 2, is_monotonic: true })),
                ..Default::default()
            },
            Metric {
                name: "http.server.request.duration".into(),
                unit: "ms".into(),
                data: Some(Data::Gauge(Gauge { data_points: durations })),
                ..Default::default()
            },
        ];
        out.resource_metrics.push(ResourceMetrics {
            resource: rs.resource.clone(),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            ..Default::default()
        });
    }
    out
}

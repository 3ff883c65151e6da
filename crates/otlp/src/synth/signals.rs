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
    let severity_text = |n: i32| match n {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        _ => "FATAL",
    };
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

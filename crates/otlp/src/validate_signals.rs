//! Validation of incoming log records and metric data points, with the same shape as
//! [`crate::validate_traces`]: a record that breaks a rule is rejected alone and named in the
//! partial-success message; a limit that is hit trims the record and is counted.

use crate::proto::common::v1::{AnyValue, any_value::Value};
use crate::proto::logs::v1::LogRecord;
use crate::proto::metrics::v1::metric::Data;
use crate::proto::metrics::v1::{HistogramDataPoint, Metric};
use crate::validate::{Limits, Validated, limit_attrs, truncate_value};
use crate::{ExportLogsServiceRequest, ExportMetricsServiceRequest};

/// Log bodies longer than this are truncated (at a char boundary) and counted as a truncated
/// value. A log line is often longer than an attribute value, so this is not
/// `max_attribute_value_len`.
pub const MAX_LOG_BODY_BYTES: usize = 64 * 1024;

/// Latest timestamp Arrow's nanosecond timestamps hold.
const MAX_NS: u64 = i64::MAX as u64;

fn check_log(r: &mut LogRecord, now_ns: u64) -> Result<(), (&'static str, String)> {
    match r.trace_id.len() {
        0 => {}
        16 if r.trace_id.iter().all(|&b| b == 0) => r.trace_id.clear(),
        16 => {}
        n => return Err(("invalid_trace_id", format!("trace id must be 16 bytes or empty, got {n}"))),
    }
    match r.span_id.len() {
        0 => {}
        8 if r.span_id.iter().all(|&b| b == 0) => r.span_id.clear(),
        8 => {}
        n => return Err(("invalid_span_id", format!("span id must be 8 bytes or empty, got {n}"))),
    }
    if r.time_unix_nano > MAX_NS || r.observed_time_unix_nano > MAX_NS {
        return Err(("invalid_timestamp", "timestamp is past the year 2262".into()));
    }
    // The data model: a receiver sets the observed time of a record that has none.
    if r.observed_time_unix_nano == 0 {
        r.observed_time_unix_nano = now_ns;
    }
    Ok(())
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64).min(MAX_NS)
}

/// Removes invalid log records from `req` (in place) and applies `limits` to the rest:
/// attribute limits as for spans, and [`MAX_LOG_BODY_BYTES`] for the body. An all-zero trace
/// or span id means "none" (as the OTLP spec says) and is cleared; a missing observed time is
/// set to now.
pub fn validate_logs(req: &mut ExportLogsServiceRequest, limits: &Limits) -> Validated {
    let mut v = Validated { items: "log records", ..Validated::default() };
    let now = now_ns();
    for (ri, rl) in req.resource_logs.iter_mut().enumerate() {
        if let Some(res) = rl.resource.as_mut() {
            let mut d = res.dropped_attributes_count;
            limit_attrs(&mut res.attributes, limits, &mut d, &mut v);
            res.dropped_attributes_count = d;
        }
        for (si, sl) in rl.scope_logs.iter_mut().enumerate() {
            let mut i = 0usize;
            sl.log_records.retain_mut(|r| {
                i += 1;
                match check_log(r, now) {
                    Ok(()) => {
                        limit_attrs(&mut r.attributes, limits, &mut r.dropped_attributes_count, &mut v);
                        if let Some(body) = r.body.as_mut() {
                            truncate_value(body, MAX_LOG_BODY_BYTES, &mut v);
                        }
                        v.accepted += 1;
                        true
                    }
                    Err((label, why)) => {
                        v.reject(label, format!("resource_logs[{ri}].scope_logs[{si}].log_records[{}]: {why}", i - 1));
                        false
                    }
                }
            });
        }
        rl.scope_logs.retain(|s| !s.log_records.is_empty());
    }
    req.resource_logs.retain(|r| !r.scope_logs.is_empty());
    v
}

fn check_time(time: u64, start: u64) -> Result<(), (&'static str, String)> {
    if time == 0 {
        return Err(("invalid_timestamp", "time_unix_nano is missing".into()));
    }
    if time > MAX_NS || start > MAX_NS {
        return Err(("invalid_timestamp", "timestamp is past the year 2262".into()));
    }
    Ok(())
}

fn check_histogram(p: &HistogramDataPoint) -> Result<(), (&'static str, String)> {
    check_time(p.time_unix_nano, p.start_time_unix_nano)?;
    if !p.bucket_counts.is_empty() && p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
        return Err((
            "invalid_histogram",
            format!("{} bucket counts for {} explicit bounds (must be one more)", p.bucket_counts.len(), p.explicit_bounds.len()),
        ));
    }
    Ok(())
}

/// The data points of one metric (of every point type).
pub fn data_points(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Keeps the elements of `points` that pass `check`, applying the attribute limits to them.
macro_rules! keep_points {
    ($points:expr, $check:expr, $v:expr, $limits:expr, $at:expr) => {{
        let mut i = 0usize;
        $points.retain_mut(|p| {
            i += 1;
            match $check(&*p) {
                Ok(()) => {
                    let mut dropped = 0u32;
                    limit_attrs(&mut p.attributes, $limits, &mut dropped, $v);
                    $v.accepted += 1;
                    true
                }
                Err((label, why)) => {
                    $v.reject(label, format!("{}.data_points[{}]: {why}", $at, i - 1));
                    false
                }
            }
        });
    }};
}

/// Removes invalid data points (and metrics left without any) from `req` in place and applies
/// the attribute limits to the rest. A metric without a name or without data is rejected with
/// all its points (one rejection when it has none).
pub fn validate_metrics(req: &mut ExportMetricsServiceRequest, limits: &Limits) -> Validated {
    let mut v = Validated { items: "data points", ..Validated::default() };
    for (ri, rm) in req.resource_metrics.iter_mut().enumerate() {
        if let Some(res) = rm.resource.as_mut() {
            let mut d = res.dropped_attributes_count;
            limit_attrs(&mut res.attributes, limits, &mut d, &mut v);
            res.dropped_attributes_count = d;
        }
        for (si, sm) in rm.scope_metrics.iter_mut().enumerate() {
            let mut mi = 0usize;
            sm.metrics.retain_mut(|m| {
                mi += 1;
                let at = format!("resource_metrics[{ri}].scope_metrics[{si}].metrics[{}] {:?}", mi - 1, m.name);
                let problem = if m.name.is_empty() {
                    Some(("invalid_metric", "metric name is empty"))
                } else if m.data.is_none() {
                    Some(("invalid_metric", "metric has no data (gauge, sum, histogram, exponential histogram or summary)"))
                } else {
                    None
                };
                if let Some((label, why)) = problem {
                    for _ in 0..data_points(m).max(1) {
                        v.reject(label, format!("{at}: {why}"));
                    }
                    return false;
                }
                match m.data.as_mut() {
                    Some(Data::Gauge(g)) => keep_points!(
                        g.data_points,
                        |p: &crate::proto::metrics::v1::NumberDataPoint| check_time(p.time_unix_nano, p.start_time_unix_nano),
                        &mut v,
                        limits,
                        at
                    ),
                    Some(Data::Sum(s)) => keep_points!(
                        s.data_points,
                        |p: &crate::proto::metrics::v1::NumberDataPoint| check_time(p.time_unix_nano, p.start_time_unix_nano),
                        &mut v,
                        limits,
                        at
                    ),
                    Some(Data::Histogram(h)) => keep_points!(h.data_points, check_histogram, &mut v, limits, at),
                    Some(Data::ExponentialHistogram(h)) => keep_points!(
                        h.data_points,
                        |p: &crate::proto::metrics::v1::ExponentialHistogramDataPoint| check_time(p.time_unix_nano, p.start_time_unix_nano),
                        &mut v,
                        limits,
                        at
                    ),
                    Some(Data::Summary(s)) => keep_points!(
                        s.data_points,
                        |p: &crate::proto::metrics::v1::SummaryDataPoint| check_time(p.time_unix_nano, p.start_time_unix_nano),
                        &mut v,
                        limits,
                        at
                    ),
                    None => {}
                }
                data_points(m) > 0
            });
        }
        rm.scope_metrics.retain(|s| !s.metrics.is_empty());
    }
    req.resource_metrics.retain(|r| !r.scope_metrics.is_empty());
    v
}

/// The OTLP severity text of a severity number (`INFO` for 9–12, …), for records without one.
pub fn severity_text(n: i32) -> &'static str {
    match n {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => "UNSPECIFIED",
    }
}

/// The string of an `AnyValue` that is a string, else `None`.
pub fn string_value(v: Option<&AnyValue>) -> Option<&str> {
    match v?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::logs::v1::{ResourceLogs, ScopeLogs};
    use crate::proto::metrics::v1::{Gauge, Histogram, NumberDataPoint, ResourceMetrics, ScopeMetrics, number_data_point};

    fn logs(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn log_ids_of_the_wrong_length_are_rejected_and_zero_ids_cleared() {
        let mut req = logs(vec![
            LogRecord { trace_id: vec![1; 16], span_id: vec![2; 8], time_unix_nano: 5, ..Default::default() },
            LogRecord { trace_id: vec![1; 5], ..Default::default() },
            LogRecord { trace_id: vec![0; 16], span_id: vec![0; 8], ..Default::default() },
            LogRecord {
                body: Some(AnyValue { value: Some(Value::StringValue("x".repeat(MAX_LOG_BODY_BYTES + 10))) }),
                ..Default::default()
            },
        ]);
        let v = validate_logs(&mut req, &Limits::default());
        assert_eq!((v.accepted, v.rejected), (3, 1));
        assert!(v.message().contains("rejected 1 of 4 log records"), "{}", v.message());
        assert!(v.message().contains("log_records[1]: trace id must be 16 bytes or empty, got 5"), "{}", v.message());
        let kept = &req.resource_logs[0].scope_logs[0].log_records;
        assert!(kept[1].trace_id.is_empty() && kept[1].span_id.is_empty());
        assert!(kept.iter().all(|r| r.observed_time_unix_nano > 0));
        assert_eq!(string_value(kept[2].body.as_ref()).unwrap().len(), MAX_LOG_BODY_BYTES);
        assert_eq!(v.values_truncated, 1);
    }

    #[test]
    fn metrics_without_name_data_or_time_are_rejected() {
        let point = |t| NumberDataPoint { time_unix_nano: t, value: Some(number_data_point::Value::AsDouble(1.0)), ..Default::default() };
        let gauge =
            |name: &str, pts| Metric { name: name.into(), data: Some(Data::Gauge(Gauge { data_points: pts })), ..Default::default() };
        let mut req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        gauge("ok", vec![point(1), point(0)]),
                        gauge("", vec![point(1), point(2)]),
                        Metric { name: "empty".into(), ..Default::default() },
                        Metric {
                            name: "h".into(),
                            data: Some(Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    time_unix_nano: 3,
                                    bucket_counts: vec![1, 2],
                                    explicit_bounds: vec![1.0, 2.0],
                                    ..Default::default()
                                }],
                                aggregation_temporality: 2,
                            })),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let v = validate_metrics(&mut req, &Limits::default());
        assert_eq!((v.accepted, v.rejected), (1, 5), "{}", v.message());
        let m = v.message();
        assert!(m.contains("rejected 5 of 6 data points"), "{m}");
        assert!(m.contains("time_unix_nano is missing"), "{m}");
        assert!(m.contains("metric name is empty"), "{m}");
        assert!(m.contains("metric has no data"), "{m}");
        let kept = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].name, "ok");
    }
}

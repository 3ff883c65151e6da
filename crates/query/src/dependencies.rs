//! The service dependency graph: for every span whose parent span is stored and belongs to
//! another service, one call from the parent's service to the span's service. This is what
//! Jaeger's dependency job computes, answered here from the head directly.

use arrow::array::RecordBatch;
use skein_columnar::spans::SpanView;
use skein_core::query::Dependency;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// (trace id, span id).
type SpanKey = ([u8; 16], [u8; 8]);
/// (batch, row) in a head snapshot.
type Location = (u32, u32);

/// Dependency edges among spans that start within `[start_ns, end_ns]`, sorted by parent and
/// child. A parent span outside the window still names its service, so calls at the window's
/// edge are counted.
pub fn dependencies(batches: &[Arc<RecordBatch>], start_ns: i64, end_ns: i64) -> Vec<Dependency> {
    let views: Vec<SpanView<'_>> = batches.iter().map(|b| SpanView::new(b)).collect();
    let in_window = |v: &SpanView<'_>, row: usize| (start_ns..=end_ns).contains(&v.start(row));
    // First the parents that in-window spans name, then where those parents are stored: the
    // map holds only the spans that matter, not the whole head.
    let mut where_is: HashMap<SpanKey, Option<Location>> = HashMap::new();
    for v in &views {
        for row in (0..v.len()).filter(|&r| in_window(v, r)) {
            if let Some(parent) = v.parent_span_id(row) {
                where_is.insert((v.trace_id(row), parent), None);
            }
        }
    }
    for (b, v) in views.iter().enumerate() {
        for row in 0..v.len() {
            if let Some(slot) = where_is.get_mut(&(v.trace_id(row), v.span_id(row))) {
                *slot = Some((b as u32, row as u32));
            }
        }
    }
    let mut edges: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for v in &views {
        for row in 0..v.len() {
            if !in_window(v, row) {
                continue;
            }
            let Some(parent) = v.parent_span_id(row) else { continue };
            let Some(&Some((pb, prow))) = where_is.get(&(v.trace_id(row), parent)) else { continue };
            let (Some(parent_service), Some(child_service)) = (views[pb as usize].service.get(prow as usize), v.service.get(row)) else {
                continue;
            };
            if parent_service == child_service {
                continue;
            }
            let e = edges.entry((parent_service, child_service)).or_default();
            e.0 += 1;
            e.1 += u64::from(v.status(row) == 2);
        }
    }
    edges
        .into_iter()
        .map(|((p, c), (calls, errors))| Dependency { parent: p.to_string(), child: c.to_string(), call_count: calls, error_count: errors })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_otlp::ExportTraceServiceRequest;
    use skein_otlp::proto::common::v1::{AnyValue, KeyValue, any_value::Value};
    use skein_otlp::proto::resource::v1::Resource;
    use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn batch(service: &str, spans: Vec<Span>) -> Arc<RecordBatch> {
        let kv = KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue { value: Some(Value::StringValue(service.into())) }),
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![kv], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        };
        Arc::new(skein_columnar::spans::build(&req).unwrap())
    }

    fn span(t: u8, s: u8, parent: Option<u8>, start: u64, error: bool) -> Span {
        Span {
            trace_id: vec![t; 16],
            span_id: vec![s; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: "op".into(),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 10,
            status: error.then(|| Status { code: 2, message: String::new() }),
            ..Default::default()
        }
    }

    #[test]
    fn counts_calls_across_services_and_batches() {
        let batches = vec![
            batch("frontend", vec![span(1, 1, None, 100, false), span(2, 1, None, 100, false), span(1, 9, Some(1), 105, false)]),
            batch("api", vec![span(1, 2, Some(1), 110, false), span(2, 2, Some(1), 110, true), span(1, 3, Some(2), 120, false)]),
            batch("db", vec![span(1, 4, Some(3), 130, false), span(1, 5, Some(7), 130, false)]),
        ];
        let d = dependencies(&batches, 0, 1_000);
        let got: Vec<_> = d.iter().map(|e| (e.parent.as_str(), e.child.as_str(), e.call_count, e.error_count)).collect();
        // frontend→frontend (span 9) is not an edge, db span 5's parent was never stored
        assert_eq!(got, vec![("api", "db", 1, 0), ("frontend", "api", 2, 1)]);
        // the window applies to the child's start
        let d = dependencies(&batches, 125, 1_000);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].parent.as_str(), d[0].child.as_str()), ("api", "db"));
    }
}

//! Trace search over the head: a scan of the span batches that finds the traces with at
//! least one span satisfying every span-level filter at once (Jaeger's semantics), newest
//! first.
//!
//! Filters on `service`, `operation` and `node` are resolved against each batch's
//! dictionary first, so a batch that cannot match is skipped without touching its rows.

use arrow::array::{Array, RecordBatch};
use skein_columnar::spans::{DictStr, SpanView};
use skein_core::TraceId;
use skein_core::query::SearchParams;
use std::collections::HashMap;
use std::sync::Arc;

/// A filter on a pseudo-tag that Jaeger clients send for fields that are not attributes.
pub(crate) enum TagFilter<'a> {
    Status(i8, bool),
    Kind(i8),
    Attr(&'a str, &'a str),
}

pub(crate) fn tag_filter<'a>(k: &'a str, v: &'a str) -> TagFilter<'a> {
    match (k, v.to_ascii_lowercase().as_str()) {
        ("error", "true") => TagFilter::Status(2, true),
        ("error", "false") => TagFilter::Status(2, false),
        ("otel.status_code", "error") => TagFilter::Status(2, true),
        ("otel.status_code", "ok") => TagFilter::Status(1, true),
        ("otel.status_code", "unset") => TagFilter::Status(0, true),
        ("span.kind", kind) => match skein_columnar::record::kind_from_name(kind) {
            Some(k) => TagFilter::Kind(k),
            None => TagFilter::Attr(k, v),
        },
        _ => TagFilter::Attr(k, v),
    }
}

/// Resolves a string filter against a dictionary column: `Ok(None)` for no filter,
/// `Ok(Some(key))` to compare keys, `Err(())` when the batch holds no such value.
fn dict_key(col: &DictStr<'_>, want: Option<&str>) -> Result<Option<i32>, ()> {
    let Some(want) = want else { return Ok(None) };
    let dict = col.dictionary();
    (0..dict.len()).find(|&i| dict.value(i) == want).map(|i| Some(i as i32)).ok_or(())
}

/// Trace ids matching `q`, newest first, at most `q.limit` of them. `batches` is a head
/// snapshot (oldest first).
pub fn matching_traces(batches: &[Arc<RecordBatch>], q: &SearchParams) -> Vec<TraceId> {
    matching_traces_with_time(batches, q).into_iter().map(|(t, _)| TraceId(t)).collect()
}

/// As [`matching_traces`], each with the start time of its latest matching span.
pub fn matching_traces_with_time(batches: &[Arc<RecordBatch>], q: &SearchParams) -> Vec<([u8; 16], i64)> {
    let tags: Vec<TagFilter<'_>> = q.attributes.iter().map(|(k, v)| tag_filter(k, v)).collect();
    let mut found: HashMap<[u8; 16], i64> = HashMap::new();
    for batch in batches.iter().rev() {
        let v = SpanView::new(batch);
        let (Ok(service), Ok(name), Ok(node)) =
            (dict_key(&v.service, q.service.as_deref()), dict_key(&v.name, q.operation.as_deref()), dict_key(&v.node, q.node.as_deref()))
        else {
            continue;
        };
        for row in 0..v.len() {
            if service.is_some_and(|k| v.service.key(row) != k)
                || name.is_some_and(|k| v.name.key(row) != k)
                || node.is_some_and(|k| v.node.key(row) != k)
            {
                continue;
            }
            let start = v.start(row);
            if q.start_ns.is_some_and(|s| start < s) || q.end_ns.is_some_and(|e| start > e) {
                continue;
            }
            let d = v.duration(row);
            if q.min_duration_ns.is_some_and(|m| d < m) || q.max_duration_ns.is_some_and(|m| d > m) {
                continue;
            }
            if q.status.is_some_and(|s| v.status(row) != s) || q.span_kind.is_some_and(|k| v.kind(row) != k) {
                continue;
            }
            let tags_ok = tags.iter().all(|t| match t {
                TagFilter::Status(code, eq) => (v.status(row) == *code) == *eq,
                TagFilter::Kind(k) => v.kind(row) == *k,
                TagFilter::Attr(k, want) => v.attribute(row, k).or_else(|| v.resource_attribute(row, k)) == Some(*want),
            });
            if !tags_ok {
                continue;
            }
            let e = found.entry(v.trace_id(row)).or_insert(start);
            *e = (*e).max(start);
        }
    }
    let mut list: Vec<([u8; 16], i64)> = found.into_iter().collect();
    list.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    list.truncate(q.limit);
    list
}

/// Merges the matches of the heads and of the blocks: a trace in both keeps its latest
/// time; newest first, at most `limit`.
pub fn merge_matches(a: Vec<([u8; 16], i64)>, b: Vec<([u8; 16], i64)>, limit: usize) -> Vec<TraceId> {
    let mut all: HashMap<[u8; 16], i64> = HashMap::with_capacity(a.len() + b.len());
    for (t, s) in a.into_iter().chain(b) {
        let e = all.entry(t).or_insert(s);
        *e = (*e).max(s);
    }
    let mut list: Vec<([u8; 16], i64)> = all.into_iter().collect();
    list.sort_unstable_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    list.truncate(limit);
    list.into_iter().map(|(t, _)| TraceId(t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_otlp::ExportTraceServiceRequest;
    use skein_otlp::proto::common::v1::{AnyValue, KeyValue, any_value::Value};
    use skein_otlp::proto::resource::v1::Resource;
    use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }), ..Default::default() }
    }

    fn batch(service: &str, spans: Vec<Span>) -> Arc<RecordBatch> {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", service), kv("host.name", "n1")], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        };
        Arc::new(skein_columnar::spans::build(&req).unwrap())
    }

    fn span(t: u8, s: u8, name: &str, start: u64, dur: u64, error: bool, route: &str) -> Span {
        Span {
            trace_id: vec![t; 16],
            span_id: vec![s; 8],
            name: name.into(),
            kind: 2,
            start_time_unix_nano: start,
            end_time_unix_nano: start + dur,
            attributes: vec![kv("http.route", route)],
            status: error.then(|| Status { code: 2, message: String::new() }),
            ..Default::default()
        }
    }

    #[test]
    fn filters_apply_to_one_span_and_order_newest_first() {
        let batches = vec![
            batch("api", vec![span(1, 1, "GET", 100, 2_000, false, "/a"), span(2, 1, "GET", 300, 10, true, "/b")]),
            batch("db", vec![span(1, 2, "SELECT", 150, 5_000, false, "/x")]),
            batch("api", vec![span(3, 1, "POST", 200, 3_000, false, "/a")]),
        ];
        let q = |f: &dyn Fn(&mut SearchParams)| {
            let mut p = SearchParams { limit: 10, ..Default::default() };
            f(&mut p);
            matching_traces(&batches, &p).into_iter().map(|t| t.0[0]).collect::<Vec<_>>()
        };
        assert_eq!(q(&|_| {}), vec![2, 3, 1]);
        assert_eq!(q(&|p| p.service = Some("api".into())), vec![2, 3, 1]);
        assert_eq!(q(&|p| p.service = Some("nope".into())), Vec::<u8>::new());
        assert_eq!(q(&|p| p.min_duration_ns = Some(1_000)), vec![3, 1]);
        // service=api with duration >= 4000 must not match trace 1 through its db span
        assert_eq!(
            q(&|p| {
                p.service = Some("api".into());
                p.min_duration_ns = Some(4_000)
            }),
            Vec::<u8>::new()
        );
        assert_eq!(q(&|p| p.attributes = vec![("error".into(), "true".into())]), vec![2]);
        assert_eq!(q(&|p| p.attributes = vec![("http.route".into(), "/a".into())]), vec![3, 1]);
        assert_eq!(q(&|p| p.attributes = vec![("host.name".into(), "n1".into()), ("http.route".into(), "/x".into())]), vec![1]);
        assert_eq!(q(&|p| p.operation = Some("POST".into())), vec![3]);
        assert_eq!(
            q(&|p| {
                p.start_ns = Some(120);
                p.end_ns = Some(250)
            }),
            vec![3, 1]
        );
        assert_eq!(q(&|p| p.limit = 1), vec![2]);
    }
}

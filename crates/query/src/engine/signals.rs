//! Typed queries over the `logs` and `metrics` tables: log search and a trace's logs, metric
//! series, and the node list. Each runs a DataFusion plan over one snapshot (time and id
//! filters pushed into the scan) and removes retried duplicates by fingerprint.

use super::{Engine, QueryError, datafusion_error};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampNanosecondType, UInt64Type};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{col, lit};
use serde_json::{Value as Json, json};
use skein_core::ErrorCode;
use skein_core::query::{LogQuery, MetricAgg, MetricQuery};
use std::collections::{BTreeMap, HashSet};

/// The metric name under which agents report their queue depth in bytes.
pub const AGENT_QUEUE_METRIC: &str = "skein.agent.queue.bytes";

/// Buckets a metric query may return per series at most (as Prometheus' 11,000 points).
pub const MAX_BUCKETS: i64 = 11_000;

/// A dictionary string column, or an internal error naming the column's type.
pub(super) fn dict(a: &arrow::array::ArrayRef) -> Result<skein_columnar::spans::DictStr<'_>, QueryError> {
    skein_columnar::spans::DictStr::try_new(a)
        .ok_or_else(|| QueryError::new(ErrorCode::Internal, format!("expected a dictionary column, got {}", a.data_type())))
}

fn ts(v: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(Some(v), Some("UTC".into())))
}

/// `s` as a LIKE pattern matching it literally anywhere.
fn contains_pattern(s: &str) -> String {
    let mut p = String::with_capacity(s.len() + 2);
    p.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

fn time_filters(f: &mut Vec<Expr>, start: Option<i64>, end: Option<i64>) {
    if let Some(s) = start {
        f.push(col("time").gt_eq(ts(s)));
    }
    if let Some(e) = end {
        f.push(col("time").lt_eq(ts(e)));
    }
}

/// Runs `df` with `filters`, sorted by time, at most `limit` rows.
async fn collect(
    ctx: &datafusion::prelude::SessionContext,
    table: &str,
    filters: Vec<Expr>,
    oldest_first: bool,
    limit: usize,
) -> Result<Vec<RecordBatch>, QueryError> {
    let mut df = ctx.table(table).await.map_err(datafusion_error)?;
    for f in filters {
        df = df.filter(f).map_err(datafusion_error)?;
    }
    df.sort(vec![col("time").sort(oldest_first, true)])
        .map_err(datafusion_error)?
        .limit(0, Some(limit))
        .map_err(datafusion_error)?
        .collect()
        .await
        .map_err(datafusion_error)
}

/// A series window: a positive step, an end not before the start, at most [`MAX_BUCKETS`] steps.
///
/// # Errors
/// `BadRequest` naming what is wrong.
pub(super) fn check_window(start_ns: i64, end_ns: i64, step_ns: i64) -> Result<(), QueryError> {
    if step_ns <= 0 || end_ns < start_ns {
        return Err(QueryError::new(ErrorCode::BadRequest, "step must be positive and end not before start"));
    }
    if end_ns.checked_sub(start_ns).is_none() {
        return Err(QueryError::new(ErrorCode::BadRequest, format!("the window from {start_ns} to {end_ns} (Unix ns) is too large")));
    }
    // i128: a window from a negative start to a large end does not fit an i64.
    let buckets = (i128::from(end_ns) - i128::from(start_ns)) / i128::from(step_ns) + 1;
    if buckets > i128::from(MAX_BUCKETS) {
        return Err(QueryError::new(
            ErrorCode::BadRequest,
            format!("{buckets} steps in the window; at most {MAX_BUCKETS} are allowed: use a larger step or a shorter window"),
        ));
    }
    Ok(())
}

impl Engine {
    /// Log records matching `q`, newest first (oldest first when `q.oldest_first`), each once.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn logs(&self, q: &LogQuery) -> Result<Vec<Json>, QueryError> {
        let ctx = self.context(self.store.snapshot(), super::table::Part::All).await?;
        let mut f = Vec::new();
        if let Some(s) = &q.service {
            f.push(col("service_name").eq(lit(s.as_str())));
        }
        if let Some(n) = &q.node {
            f.push(col("node").eq(lit(n.as_str())));
        }
        if let Some(sev) = q.min_severity {
            f.push(col("severity_number").gt_eq(lit(sev)));
        }
        if let Some(t) = &q.trace_id {
            f.push(col("trace_id").eq(lit(ScalarValue::FixedSizeBinary(16, Some(t.0.to_vec())))));
        }
        if let Some(s) = &q.span_id {
            f.push(col("span_id").eq(lit(ScalarValue::FixedSizeBinary(8, Some(s.0.to_vec())))));
        }
        if let Some(c) = &q.correlation_id {
            f.push(col("correlation_id").eq(lit(c.as_str())));
        }
        if let Some(text) = &q.text {
            f.push(col("body").ilike(lit(contains_pattern(text))));
        }
        time_filters(&mut f, q.start_ns, q.end_ns);
        // Retried duplicates are rare; ask for a few more rows than needed so that removing
        // them still leaves `limit`.
        let fetch = q.limit.saturating_add(q.limit / 4 + 16);
        let batches = collect(&ctx, "logs_raw", f, q.oldest_first, fetch).await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for b in &batches {
            let view = skein_columnar::logs::LogView::new(b)
                .map_err(|e| QueryError::new(ErrorCode::Internal, format!("reading log rows: {e}")))?;
            let fps = b.column(skein_columnar::logs::col::FINGERPRINT).as_primitive::<UInt64Type>();
            for r in 0..b.num_rows() {
                if out.len() < q.limit && seen.insert(fps.value(r)) {
                    out.push(view.json(r));
                }
            }
        }
        Ok(out)
    }

    /// The series of one metric over `[start, end]` in buckets of `step`, one per node and
    /// attribute set, combined by `agg`.
    ///
    /// # Errors
    /// `BadRequest` for a window of more than [`MAX_BUCKETS`] steps; engine failures.
    pub async fn metric_series(&self, q: &MetricQuery) -> Result<Json, QueryError> {
        check_window(q.start_ns, q.end_ns, q.step_ns)?;
        let ctx = self.context(self.store.snapshot(), super::table::Part::All).await?;
        let mut f = vec![col("name").eq(lit(q.name.as_str()))];
        if let Some(n) = &q.node {
            f.push(col("node").eq(lit(n.as_str())));
        }
        // A cumulative counter's rate needs the point before the window's first bucket.
        let lookback = if q.agg == MetricAgg::Rate { q.step_ns } else { 0 };
        time_filters(&mut f, Some(q.start_ns.saturating_sub(lookback)), Some(q.end_ns));
        let batches = collect(&ctx, "metrics_raw", f, true, super::MAX_SERIES_POINTS).await?;
        // Points are read oldest first up to the limit: past it the series end early, and the
        // answer says so instead of looking complete.
        let truncated = batches.iter().map(RecordBatch::num_rows).sum::<usize>() >= super::MAX_SERIES_POINTS;
        let mut series: BTreeMap<(String, String), Series> = BTreeMap::new();
        let (mut unit, mut kind) = (None, None);
        let mut seen = HashSet::new();
        for b in &batches {
            let c = |name: &str| b.column_by_name(name).ok_or_else(|| QueryError::new(ErrorCode::Internal, format!("no column {name}")));
            let time = c("time")?.as_primitive::<TimestampNanosecondType>();
            let value = c("value")?.as_primitive::<Float64Type>();
            let count = c("count")?.as_primitive::<UInt64Type>();
            let sum = c("sum")?.as_primitive::<Float64Type>();
            let fps = c("fingerprint")?.as_primitive::<UInt64Type>();
            let node = dict(c("node")?)?;
            let service = dict(c("service_name")?)?;
            let kinds = dict(c("kind")?)?;
            let units = dict(c("unit")?)?;
            let temporality = dict(c("temporality")?)?;
            let attrs = c("attributes")?.as_map();
            for r in 0..b.num_rows() {
                if !seen.insert(fps.value(r)) {
                    continue;
                }
                let k = kinds.get(r).unwrap_or_default();
                kind.get_or_insert_with(|| k.to_string());
                if unit.is_none() {
                    unit = units.get(r).map(str::to_string);
                }
                // Histograms and summaries: the mean of the point, or its count for a rate.
                let v = if value.is_valid(r) {
                    value.value(r)
                } else if q.agg == MetricAgg::Rate {
                    count.value(r) as f64
                } else if count.is_valid(r) && count.value(r) > 0 {
                    sum.value(r) / count.value(r) as f64
                } else {
                    continue;
                };
                let mut labels: BTreeMap<String, String> = BTreeMap::new();
                let (s, e) = (attrs.value_offsets()[r] as usize, attrs.value_offsets()[r + 1] as usize);
                let (keys, vals) = (attrs.keys().as_string::<i32>(), attrs.values().as_string::<i32>());
                for i in s..e {
                    labels.insert(keys.value(i).to_string(), vals.value(i).to_string());
                }
                let node = node.get(r).unwrap_or_default().to_string();
                let key = (node.clone(), serde_json::to_string(&labels).unwrap_or_default());
                let entry = series.entry(key).or_insert_with(|| Series {
                    node,
                    service: service.get(r).unwrap_or_default().to_string(),
                    labels,
                    delta: temporality.get(r) == Some("delta"),
                    points: Vec::new(),
                });
                entry.points.push((time.value(r), v));
            }
        }
        let out: Vec<Json> = series
            .into_values()
            .map(|mut s| {
                let points = s.buckets(q);
                json!({"node": s.node, "service": s.service, "attributes": s.labels, "points": points})
            })
            .filter(|s| s["points"].as_array().is_some_and(|p| !p.is_empty()))
            .collect();
        Ok(json!({
            "name": q.name,
            "unit": unit,
            "kind": kind,
            "agg": q.agg.name(),
            "start_unix_nano": q.start_ns,
            "end_unix_nano": q.end_ns,
            "step_ns": q.step_ns,
            "series": out,
            "truncated": truncated,
        }))
    }

    /// Every node that has sent data, with its statistics and the latest queue depth its agent
    /// reported ([`AGENT_QUEUE_METRIC`]) in the last hour.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn nodes(&self) -> Result<Vec<Json>, QueryError> {
        let nodes = self.store.nodes();
        let ctx = self.context(self.store.snapshot(), super::table::Part::All).await?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
        let mut f = vec![col("name").eq(lit(AGENT_QUEUE_METRIC))];
        time_filters(&mut f, Some(now - 3_600_000_000_000), None);
        let batches = collect(&ctx, "metrics_raw", f, false, super::MAX_SERIES_POINTS).await?;
        let mut queue: BTreeMap<String, (i64, f64)> = BTreeMap::new();
        for b in &batches {
            let (Some(t), Some(v), Some(n)) = (b.column_by_name("time"), b.column_by_name("value"), b.column_by_name("node")) else {
                continue;
            };
            let (t, v) = (t.as_primitive::<TimestampNanosecondType>(), v.as_primitive::<Float64Type>());
            let n = dict(n)?;
            for r in 0..b.num_rows() {
                let node = n.get(r).unwrap_or_default();
                // Newest first: the first point of a node is its latest.
                if v.is_valid(r) && !queue.contains_key(node) {
                    queue.insert(node.to_string(), (t.value(r), v.value(r)));
                }
            }
        }
        Ok(nodes
            .into_iter()
            .map(|(name, s)| {
                let q = queue.get(&name);
                json!({
                    "node": name,
                    "identity": s.identity,
                    "agent_version": s.agent_version,
                    "first_seen_unix_nano": s.first_seen_ns,
                    "last_seen_unix_nano": s.last_seen_ns,
                    "records": {"spans": s.spans, "logs": s.logs, "metrics": s.metrics},
                    "services": s.services,
                    "agent_queue_bytes": q.map(|q| q.1),
                    "agent_queue_observed_unix_nano": q.map(|q| q.0),
                })
            })
            .collect())
    }
}

/// The points of one series before bucketing.
struct Series {
    node: String,
    service: String,
    labels: BTreeMap<String, String>,
    /// Delta temporality: each value is an increase already.
    delta: bool,
    /// (time, value), oldest first.
    points: Vec<(i64, f64)>,
}

impl Series {
    /// `[[bucket start, value], ...]` for the buckets holding points.
    /// Sorts the points by time first.
    fn buckets(&mut self, q: &MetricQuery) -> Vec<[Json; 2]> {
        let mut acc: BTreeMap<i64, (f64, f64, f64, u64)> = BTreeMap::new(); // sum, min, max, n
        let bucket = |t: i64| q.start_ns + (t - q.start_ns).div_euclid(q.step_ns) * q.step_ns;
        let mut prev: Option<f64> = None;
        self.points.sort_by_key(|p| p.0);
        for &(t, v) in &self.points {
            let x = if q.agg == MetricAgg::Rate && !self.delta {
                // Increase since the previous point of a cumulative series; a drop is a reset.
                let inc = match prev {
                    Some(p) if v >= p => v - p,
                    Some(_) => v,
                    None => {
                        prev = Some(v);
                        continue;
                    }
                };
                prev = Some(v);
                inc
            } else {
                v
            };
            if t < q.start_ns {
                continue;
            }
            let e = acc.entry(bucket(t)).or_insert((0.0, f64::INFINITY, f64::NEG_INFINITY, 0));
            e.0 += x;
            e.1 = e.1.min(x);
            e.2 = e.2.max(x);
            e.3 += 1;
        }
        let secs = q.step_ns as f64 / 1e9;
        acc.into_iter()
            .map(|(b, (sum, min, max, n))| {
                let v = match q.agg {
                    MetricAgg::Avg => sum / n as f64,
                    MetricAgg::Min => min,
                    MetricAgg::Max => max,
                    MetricAgg::Sum => sum,
                    MetricAgg::Rate => sum / secs,
                };
                [json!(b), json!(v)]
            })
            .collect()
    }
}

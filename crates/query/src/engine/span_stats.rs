//! What the alert rules measure besides replica lag: the requests a service handled over a
//! window (how many, how many failed, their 99th-percentile duration) and when each node was
//! last heard from.

use super::json::value;
use super::table::Part;
use super::{Engine, QueryError, datafusion_error};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::{count, percentile_cont, sum};
use datafusion::logical_expr::{cast, col, lit, when};

/// The requests of a service over a window: its SERVER and CONSUMER spans.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpanStats {
    /// Spans counted.
    pub requests: u64,
    /// Of those, spans with status error.
    pub errors: u64,
    /// The 99th percentile of their durations (ns, interpolated), `None` without spans.
    pub p99_ns: Option<f64>,
}

impl Engine {
    /// The SERVER and CONSUMER spans of `service` (named `operation`, when given) that started
    /// within `[start_ns, end_ns]`: the requests the service handled.
    ///
    /// # Errors
    /// Engine failures.
    pub async fn span_stats(&self, service: &str, operation: Option<&str>, start_ns: i64, end_ns: i64) -> Result<SpanStats, QueryError> {
        let ctx = self.context(self.store.snapshot(), Part::All).await?;
        let ts = |v: i64| lit(ScalarValue::TimestampNanosecond(Some(v), Some("UTC".into())));
        let mut filter = col("service_name")
            .eq(lit(service))
            .and(col("kind").in_list(vec![lit(2i8), lit(5i8)], false))
            .and(col("start_time").gt_eq(ts(start_ns)))
            .and(col("start_time").lt_eq(ts(end_ns)));
        if let Some(op) = operation {
            filter = filter.and(col("name").eq(lit(op)));
        }
        let failed = when(col("status_code").eq(lit(2i8)), lit(1i64)).otherwise(lit(0i64)).map_err(datafusion_error)?;
        let p99 = percentile_cont(cast(col("duration_ns"), DataType::Float64).sort(true, false), lit(0.99));
        let batches = ctx
            .table("spans_raw")
            .await
            .and_then(|df| df.filter(filter))
            .and_then(|df| df.aggregate(vec![], vec![count(lit(1i64)), sum(failed), p99]))
            .map_err(datafusion_error)?
            .collect()
            .await
            .map_err(datafusion_error)?;
        let Some(b) = batches.iter().find(|b| b.num_rows() > 0 && b.num_columns() == 3) else {
            return Ok(SpanStats::default());
        };
        let int = |i: usize| value(b.column(i).as_ref(), 0).as_u64().unwrap_or(0);
        Ok(SpanStats { requests: int(0), errors: int(1), p99_ns: value(b.column(2).as_ref(), 0).as_f64() })
    }

    /// Every node that has sent data, with the time of its latest record (Unix ns).
    pub fn nodes_last_seen(&self) -> Vec<(String, i64)> {
        self.store.nodes().into_iter().map(|(name, s)| (name, s.last_seen_ns)).collect()
    }
}

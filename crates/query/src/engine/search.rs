//! Trace search over blocks: the same span-level filters as [`crate::search`] (one span must
//! satisfy all of them), as a DataFusion plan over the blocks of a snapshot, so the filter
//! columns are decoded first and pages, row groups and whole blocks that cannot match are
//! skipped.

use super::table::ResourceAttributes;
use super::{Engine, QueryError, datafusion_error};
use crate::search::{TagFilter, tag_filter};
use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampNanosecondType;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::logical_expr::{Expr, ScalarUDF, col, lit};
use skein_core::query::SearchParams;
use skein_storage::Snapshot;
use skein_storage::block::Block;
use std::collections::HashMap;
use std::sync::Arc;

fn ts(v: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(Some(v), Some("UTC".into())))
}

/// The span-level predicate of `q`, or `None` when it has no filter.
fn predicate(q: &SearchParams) -> Option<Expr> {
    let mut all: Vec<Expr> = Vec::new();
    if let Some(s) = &q.service {
        all.push(col("service_name").eq(lit(s.as_str())));
    }
    if let Some(s) = &q.operation {
        all.push(col("name").eq(lit(s.as_str())));
    }
    if let Some(s) = &q.node {
        all.push(col("node").eq(lit(s.as_str())));
    }
    if let Some(k) = q.span_kind {
        all.push(col("kind").eq(lit(k)));
    }
    if let Some(d) = q.min_duration_ns {
        all.push(col("duration_ns").gt_eq(lit(d)));
    }
    if let Some(d) = q.max_duration_ns {
        all.push(col("duration_ns").lt_eq(lit(d)));
    }
    if let Some(s) = q.status {
        all.push(col("status_code").eq(lit(s)));
    }
    if let Some(v) = q.start_ns {
        all.push(col("start_time").gt_eq(ts(v)));
    }
    if let Some(v) = q.end_ns {
        all.push(col("start_time").lt_eq(ts(v)));
    }
    for (k, v) in &q.attributes {
        all.push(match tag_filter(k, v) {
            TagFilter::Status(code, true) => col("status_code").eq(lit(code)),
            TagFilter::Status(code, false) => col("status_code").not_eq(lit(code)),
            TagFilter::Kind(kind) => col("kind").eq(lit(kind)),
            TagFilter::Attr(k, v) => {
                let resource = ScalarUDF::from(ResourceAttributes::default()).call(vec![col("resource")]);
                get_field(col("attributes"), k).eq(lit(v)).or(get_field(resource, k).eq(lit(v)))
            }
        });
    }
    all.into_iter().reduce(Expr::and)
}

impl Engine {
    /// The DataFrame that [`Engine::search_blocks`] runs over the blocks of `snapshot`:
    /// matching trace ids with the start of their latest matching span, newest first.
    ///
    /// # Errors
    /// Building the plan failed.
    pub async fn search_frame(&self, snapshot: Snapshot, q: &SearchParams) -> Result<DataFrame, QueryError> {
        let ctx = self.blocks_context(snapshot).await?;
        let mut df = ctx.table("spans_raw").await.map_err(datafusion_error)?;
        if let Some(p) = predicate(q) {
            df = df.filter(p).map_err(datafusion_error)?;
        }
        df.aggregate(vec![col("trace_id")], vec![max(col("start_time")).alias("latest")])
            .and_then(|df| df.sort(vec![col("latest").sort(false, true), col("trace_id").sort(true, true)]))
            .and_then(|df| df.limit(0, Some(q.limit)))
            .map_err(datafusion_error)
    }

    /// Trace ids in the blocks of `snapshot` with a span matching `q`, each with the start
    /// of its latest matching span, newest first, at most `q.limit`.
    ///
    /// Blocks are read newest first (by the latest span start the manifest records), one
    /// block, then two, then four at a time, and the search stops as soon as `q.limit` traces
    /// are found whose latest matching span is newer than anything the remaining blocks hold:
    /// those blocks cannot change the answer. Blocks cut at flush time cover successive time
    /// ranges, so a search for recent traces usually reads one block. Blocks that lie wholly
    /// inside the time range are read without the time filter.
    ///
    /// # Errors
    /// A block could not be read.
    pub async fn search_blocks(&self, snapshot: Snapshot, q: &SearchParams) -> Result<Vec<([u8; 16], i64)>, QueryError> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let (lo, hi) = (q.start_ns.unwrap_or(i64::MIN), q.end_ns.unwrap_or(i64::MAX));
        let mut blocks: Vec<Arc<Block>> =
            snapshot.blocks.iter().filter(|b| b.meta.max_start_ns >= lo && b.meta.min_start_ns <= hi).cloned().collect();
        blocks.sort_by_key(|b| std::cmp::Reverse(b.meta.max_start_ns));
        let mut found: HashMap<[u8; 16], i64> = HashMap::new();
        let (mut next, mut round) = (0, 1);
        while next < blocks.len() {
            let part = &blocks[next..(next + round).min(blocks.len())];
            next += part.len();
            round *= 2;
            let inside = part.iter().all(|b| b.meta.min_start_ns >= lo && b.meta.max_start_ns <= hi);
            let mut pq = q.clone();
            if inside {
                (pq.start_ns, pq.end_ns) = (None, None);
            }
            let snap =
                Snapshot { head: Vec::new(), blocks: Arc::new(part.to_vec()), logs: Default::default(), metrics: Default::default() };
            let batches = self.search_frame(snap, &pq).await?.collect().await.map_err(datafusion_error)?;
            for b in batches {
                let ids = b.column(0).as_fixed_size_binary();
                let latest = b.column(1).as_primitive::<TimestampNanosecondType>();
                for r in 0..b.num_rows() {
                    if let Ok(id) = <[u8; 16]>::try_from(ids.value(r)) {
                        let t = if latest.is_null(r) { 0 } else { latest.value(r) };
                        let e = found.entry(id).or_insert(t);
                        *e = (*e).max(t);
                    }
                }
            }
            if let Some(rest) = blocks.get(next)
                && found.len() >= q.limit
            {
                let mut times: Vec<i64> = found.values().copied().collect();
                let (_, kth, _) = times.select_nth_unstable_by(q.limit - 1, |a, b| b.cmp(a));
                // Strictly newer: a tie could still let a remaining trace in by trace id.
                if *kth > rest.meta.max_start_ns {
                    break;
                }
            }
        }
        let mut out: Vec<([u8; 16], i64)> = found.into_iter().collect();
        out.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(q.limit);
        Ok(out)
    }
}

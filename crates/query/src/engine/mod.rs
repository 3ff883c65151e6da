//! DataFusion over the store: SQL (`POST /api/v1/sql`) and the part of trace search that reads
//! blocks.
//!
//! Each query gets its own `SessionContext` over one [`skein_storage::Snapshot`], so a flush or
//! a compaction during the query changes nothing it sees (the files of compacted blocks stay
//! for `storage.compaction.delete_delay`), and its own memory pool, so one query's memory limit
//! is not shared with another's. Building a context costs well under a millisecond.
//!
//! Tables:
//! - `spans_raw`: the stored schema, heads and blocks together ([`table::SpansTable`]);
//! - `spans`: a view of it with `resource` decoded into `resource_attributes` (a map, like
//!   `attributes`) and the internal `attribute_types` column left out;
//! - `logs_raw`, `metrics_raw` ([`table::SignalTable`]) and their views `logs`, `metrics`, which
//!   decode the resource the same way and leave out `attribute_types` and `fingerprint`.
//!
//! SQL is read-only: DDL, DML and statements (`SET`, transactions) are refused, no URL or file
//! table is registered, and `generate_series`/`range` are removed.

mod json;
pub mod replica_lag;
mod restore;
mod search;
pub mod signals;
pub mod span_stats;
pub mod table;

pub use json::to_json;

#[cfg(test)]
mod replica_lag_tests;
#[cfg(test)]
mod signal_tests;
#[cfg(test)]
pub(crate) mod tests;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use skein_core::ErrorCode;
use skein_storage::{Snapshot, Store};
use std::sync::Arc;
use std::time::Duration;
use table::{Part, ResourceAttributes, SignalTable, SpansTable};

/// Limits on one SQL query.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    /// Wall-clock time from parsing to the last row.
    pub timeout: Duration,
    /// Memory of the query's operators (sorts, aggregations, joins).
    pub memory: usize,
    /// Rows returned at most; the answer says when it was cut.
    pub max_rows: usize,
}

/// A failed query: what kind, and a message naming the problem.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    /// How it maps to an HTTP status.
    pub code: ErrorCode,
    /// What went wrong, with the position in the statement when the parser knows it.
    pub message: String,
}

impl QueryError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// The rows of a SQL answer.
#[derive(Debug)]
pub struct SqlAnswer {
    /// The result schema.
    pub schema: SchemaRef,
    /// The rows, at most `max_rows` of them.
    pub batches: Vec<RecordBatch>,
    /// Whether rows past `max_rows` were left out.
    pub truncated: bool,
}

const SPANS_VIEW: &str = "CREATE VIEW spans AS SELECT trace_id, span_id, parent_span_id, trace_state, flags, name, kind, \
    start_time, arrow_cast(arrow_cast(start_time, 'Int64') + duration_ns, 'Timestamp(Nanosecond, Some(\"UTC\"))') AS end_time, duration_ns, status_code, status_message, service_name, node, \
    resource_attributes(resource) AS resource_attributes, attributes, scope_name, scope_version, events, links, \
    dropped_attributes_count, dropped_events_count, dropped_links_count FROM spans_raw";

const LOGS_VIEW: &str = "CREATE VIEW logs AS SELECT time, observed_time, severity_number, severity_text, body, trace_id, span_id, \
    flags, event_name, correlation_id, service_name, node, resource_attributes(resource) AS resource_attributes, attributes, \
    scope_name, scope_version, dropped_attributes_count, source FROM logs_raw";

const METRICS_VIEW: &str = "CREATE VIEW metrics AS SELECT time, start_time, name, description, unit, kind, temporality, is_monotonic, \
    value, count, sum, min, max, bucket_counts, explicit_bounds, exp_scale, exp_zero_count, exp_positive_offset, \
    exp_positive_bucket_counts, exp_negative_offset, exp_negative_bucket_counts, quantiles, quantile_values, flags, \
    service_name, node, resource_attributes(resource) AS resource_attributes, attributes, scope_name, scope_version FROM metrics_raw";

/// Rows a metric query reads at most (points of all its series together).
pub const MAX_SERIES_POINTS: usize = 1_000_000;

/// The object-store URL blocks are registered under in each context.
const STORE_URL: &str = "skein://blocks";

/// Runs SQL and block searches over a store.
pub struct Engine {
    store: Arc<Store>,
    limits: SqlLimits,
}

fn datafusion_error(e: DataFusionError) -> QueryError {
    let code = match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => ErrorCode::ResourceExhausted,
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) | DataFusionError::NotImplemented(_) => {
            ErrorCode::BadRequest
        }
        DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    };
    let mut message = e.find_root().to_string();
    if let Some(d) = e.diagnostic()
        && let Some(span) = d.span
    {
        message = format!("{message} (at line {}, column {})", span.start.line, span.start.column);
    }
    QueryError::new(code, message)
}

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Arc<Store>, limits: SqlLimits) -> Self {
        Self { store, limits }
    }

    /// A context over `snapshot`, with `spans_raw` reading `part` of it and the `spans` view.
    async fn context(&self, snapshot: Snapshot, part: Part) -> Result<SessionContext, QueryError> {
        let mut cfg = SessionConfig::new()
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .with_information_schema(true);
        let o = cfg.options_mut();
        // Decode the filter columns first and the others only for matching rows.
        o.execution.parquet.pushdown_filters = true;
        o.execution.parquet.reorder_filters = true;
        // Positions for errors about names (unknown column, table).
        o.sql_parser.collect_spans = true;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory, 1.0)
            // Past the memory limit a query fails with a clear error instead of spilling to an
            // unbounded temporary directory.
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()
            .map_err(datafusion_error)?;
        let ctx = SessionContext::new_with_config_rt(cfg, runtime);
        let url = ObjectStoreUrl::parse(STORE_URL).map_err(datafusion_error)?;
        ctx.register_object_store(url.as_ref(), Arc::clone(&self.store.objects().store));
        ctx.register_udf(ScalarUDF::from(ResourceAttributes::default()));
        ctx.deregister_udtf("generate_series");
        ctx.deregister_udtf("range");
        let (logs, metrics) = (snapshot.logs.clone(), snapshot.metrics.clone());
        ctx.register_table("spans_raw", Arc::new(SpansTable::new(snapshot, url.clone(), part))).map_err(datafusion_error)?;
        ctx.register_table("logs_raw", Arc::new(SignalTable::new(skein_columnar::logs::schema(), logs, url.clone())))
            .map_err(datafusion_error)?;
        ctx.register_table("metrics_raw", Arc::new(SignalTable::new(skein_columnar::metrics::schema(), metrics, url)))
            .map_err(datafusion_error)?;
        for view in [SPANS_VIEW, LOGS_VIEW, METRICS_VIEW] {
            ctx.sql(view).await.map_err(datafusion_error)?;
        }
        Ok(ctx)
    }

    /// Runs one read-only SQL statement over everything stored.
    ///
    /// # Errors
    /// `BadRequest` for syntax errors, unknown names and refused statements (naming the
    /// problem and its position); `Timeout` past the time limit; `ResourceExhausted` past the
    /// memory limit.
    pub async fn sql(&self, query: &str) -> Result<SqlAnswer, QueryError> {
        let limits = self.limits;
        let run = async {
            let ctx = self.context(self.store.snapshot(), Part::All).await?;
            let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
            let df = ctx.sql_with_options(query, options).await.map_err(|e| read_only_error(query, e))?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await.map_err(datafusion_error)?;
            let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
            while let Some(b) = stream.next().await {
                let b = b.map_err(datafusion_error)?;
                let room = limits.max_rows - rows;
                if b.num_rows() > room {
                    batches.push(b.slice(0, room));
                    truncated = true;
                    break;
                }
                rows += b.num_rows();
                batches.push(b);
            }
            Ok(SqlAnswer { schema, batches, truncated })
        };
        tokio::time::timeout(limits.timeout, run).await.unwrap_or_else(|_| {
            Err(QueryError::new(ErrorCode::Timeout, format!("query ran past its time limit of {:?} (query.sql_timeout)", limits.timeout)))
        })
    }

    /// A context whose `spans_raw` holds only the blocks of `snapshot`, for trace search.
    ///
    /// # Errors
    /// Building the context failed.
    pub async fn blocks_context(&self, snapshot: Snapshot) -> Result<SessionContext, QueryError> {
        self.context(snapshot, Part::Blocks).await
    }
}

/// An SQL answer as an Arrow IPC stream.
///
/// # Errors
/// Encoding failed (a bug).
pub fn to_ipc(answer: &SqlAnswer) -> Result<Vec<u8>, QueryError> {
    let err = |e: arrow::error::ArrowError| QueryError::new(ErrorCode::Internal, format!("encoding Arrow IPC: {e}"));
    let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &answer.schema).map_err(err)?;
    for b in &answer.batches {
        w.write(b).map_err(err)?;
    }
    w.finish().map_err(err)?;
    w.into_inner().map_err(err)
}

/// Names a refused statement type plainly; other errors as [`datafusion_error`].
fn read_only_error(query: &str, e: DataFusionError) -> QueryError {
    let root = e.find_root().to_string();
    for (marker, what) in [("DDL not supported", "DDL"), ("DML not supported", "DML"), ("Statement not supported", "this statement")] {
        if root.contains(marker) {
            return QueryError::new(
                ErrorCode::BadRequest,
                format!("SQL is read-only: {what} is not allowed ({root}); only SELECT, WITH, EXPLAIN and SHOW queries are"),
            );
        }
    }
    let mut err = datafusion_error(e);
    if err.message.contains("found: EOF") {
        let line = query.lines().count().max(1);
        let column = query.lines().last().map_or(0, |l| l.chars().count()) + 1;
        err.message = format!("{} at the end of the statement (line {line}, column {column})", err.message);
    }
    if err.message.contains("table function") || err.message.contains("table '") && query.contains('\'') {
        err.message
            .push_str(" (SQL reads only the tables spans, logs, metrics and their *_raw forms; file and URL tables are not available)");
    }
    err
}

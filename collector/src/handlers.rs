//! The server's handler traits implemented over the store and the query engine.

use crate::config::CollectorConfig;
use serde_json::Value;
use skein_core::query::{LogQuery, MetricQuery, SearchParams, TraceOptions};
use skein_core::{ErrorCode, TraceId};
use skein_otlp::Signal;
use skein_query::alerts::{AlertState, Evaluator};
use skein_query::assemble::{AssembleOptions, assemble};
use skein_query::engine::replica_lag::ReplicaLagQuery;
use skein_query::engine::{Engine, QueryError, SqlLimits};
use skein_server::{ApiError, BoxFuture, Export, ExportOutcome, Ops, OtlpIngest, QueryService, SqlOutput, Webhook};
use skein_storage::Store;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// How long a client is told to wait when the head is full.
const HEAD_FULL_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The collector's engine behind the HTTP and gRPC front.
pub struct Collector {
    store: OnceLock<Arc<Store>>,
    engine: OnceLock<Engine>,
    sql_limits: SqlLimits,
    failed: OnceLock<String>,
    max_skew_ns: i64,
    alerts: Evaluator,
    webhook: Option<Arc<Webhook>>,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl Collector {
    /// A collector whose alert rules are `alerts`; transitions go to `webhook` when there is one.
    pub fn new(cfg: &CollectorConfig, alerts: Evaluator, webhook: Option<Arc<Webhook>>) -> Self {
        let max_skew_ns = i64::try_from(cfg.query.max_clock_skew_adjustment.0.as_nanos()).unwrap_or(i64::MAX);
        let sql_limits = SqlLimits {
            timeout: cfg.query.sql_timeout.into(),
            memory: usize::try_from(cfg.query.sql_memory_limit.bytes()).unwrap_or(usize::MAX),
            max_rows: cfg.query.sql_max_rows,
        };
        Self { store: OnceLock::new(), engine: OnceLock::new(), sql_limits, failed: OnceLock::new(), max_skew_ns, alerts, webhook }
    }

    /// Whether any alert rule is configured.
    pub fn has_alert_rules(&self) -> bool {
        !self.alerts.rules().is_empty()
    }

    /// Evaluates the alert rules every `interval` until `stop` turns true, logging each
    /// transition and queueing it for the webhook. An evaluation gets the SQL time limit.
    pub async fn run_alerts(self: Arc<Self>, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            let limit = self.sql_limits.timeout;
            // On the blocking pool, like the API's queries: an evaluation over many rows must
            // not hold one of the runtime's workers (which serve ingest).
            let (this, handle) = (Arc::clone(&self), tokio::runtime::Handle::current());
            let evaluated = tokio::task::spawn_blocking(move || {
                let engine = this.engine().ok()?;
                Some(handle.block_on(tokio::time::timeout(limit, this.alerts.evaluate(engine, now_ns()))))
            })
            .await;
            let transitions = match evaluated {
                Ok(Some(Ok(t))) => t,
                Ok(None) => continue,
                Ok(Some(Err(_))) => {
                    tracing::warn!(
                        limit_ms = limit.as_millis() as u64,
                        "alert evaluation ran past its time limit (query.sql_timeout); alerts left as they were"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the alert evaluation task failed");
                    continue;
                }
            };
            for a in transitions {
                match a.state {
                    AlertState::Firing => tracing::warn!(rule = %a.rule, labels = ?a.labels, message = %a.message, "alert firing"),
                    AlertState::Resolved => tracing::info!(rule = %a.rule, labels = ?a.labels, "alert resolved"),
                }
                if let Some(w) = &self.webhook {
                    w.send(serde_json::json!({"status": a.state, "alert": a}));
                }
            }
        }
    }

    /// Marks the store as opened (WAL replayed): from now on the collector is ready.
    pub fn set_store(&self, store: Arc<Store>) {
        let _ = self.engine.set(Engine::new(Arc::clone(&store), self.sql_limits));
        let _ = self.store.set(store);
    }

    fn engine(&self) -> Result<&Engine, ApiError> {
        self.ready_store()?;
        self.engine.get().ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "collector is starting"))
    }

    /// Trace ids matching `q` in the heads and the blocks, newest first.
    fn matching(&self, q: &SearchParams) -> Result<Vec<TraceId>, ApiError> {
        let store = self.ready_store()?;
        let snapshot = store.snapshot();
        let head = skein_query::search::matching_traces_with_time(&snapshot.head, q);
        let blocks = block_on(self.engine()?.search_blocks(snapshot, q)).map_err(query_error)?;
        Ok(skein_query::search::merge_matches(head, blocks, q.limit))
    }

    /// Records that opening the store failed, so /readyz says why.
    pub fn set_failed(&self, why: String) {
        let _ = self.failed.set(why);
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.get()
    }

    fn ready_store(&self) -> Result<&Arc<Store>, ApiError> {
        self.store.get().ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, "collector is starting: replaying the write-ahead log")
                .with_retry_after(Duration::from_secs(1))
        })
    }
}

fn api_error(e: skein_storage::Error) -> ApiError {
    let err = ApiError::new(e.code(), e.to_string());
    match e {
        skein_storage::Error::HeadFull { .. } => err.with_retry_after(HEAD_FULL_RETRY_AFTER),
        _ if e.code().retryable() => err.with_retry_after(Duration::from_secs(1)),
        _ => err,
    }
}

/// Runs an engine future from a query method, which the server calls on the blocking pool.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

fn spans_of(store: &Store, id: &TraceId) -> Result<Vec<skein_columnar::SpanRecord>, ApiError> {
    block_on(store.trace(id)).map_err(api_error)
}

fn query_error(e: QueryError) -> ApiError {
    ApiError::new(e.code, e.message)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::new(ErrorCode::Internal, format!("encoding answer: {e}")))
}

impl OtlpIngest for Collector {
    fn export(&self, req: Export) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(async move {
            let store = self.ready_store()?;
            let o = match req {
                Export::Traces(req) => store.ingest_traces(req).await,
                Export::Logs(req) => store.ingest_logs(req).await,
                Export::Metrics(req) => store.ingest_metrics(req).await,
            }
            .map_err(api_error)?;
            Ok(ExportOutcome { rejected: o.rejected as i64, message: o.message })
        })
    }

    fn export_protobuf(&self, signal: Signal, body: bytes::Bytes) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(async move {
            let store = self.ready_store()?;
            let o = match signal {
                Signal::Traces => store.ingest_traces_protobuf(body).await,
                Signal::Logs => store.ingest_logs_protobuf(body).await,
                Signal::Metrics => store.ingest_metrics_protobuf(body).await,
            }
            .map_err(api_error)?;
            Ok(ExportOutcome { rejected: o.rejected as i64, message: o.message })
        })
    }
}

impl QueryService for Collector {
    fn trace(&self, id: TraceId, opts: TraceOptions) -> Result<Option<Value>, ApiError> {
        let spans = spans_of(self.ready_store()?, &id)?;
        if spans.is_empty() {
            return Ok(None);
        }
        let t = assemble(id, spans, &AssembleOptions { adjust_skew: opts.adjust_skew, max_skew_adjustment_ns: self.max_skew_ns });
        to_json(&t).map(Some)
    }

    fn search(&self, q: &SearchParams) -> Result<Vec<Value>, ApiError> {
        let store = self.ready_store()?;
        let ids = self.matching(q)?;
        let spans = block_on(store.traces(&ids)).map_err(api_error)?;
        let mut out: Vec<_> = ids.into_iter().zip(spans).map(|(id, spans)| skein_query::summary::summarize(id, &spans)).collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.start_time_unix_nano));
        out.iter().map(to_json).collect()
    }

    fn services(&self) -> Result<Vec<String>, ApiError> {
        Ok(self.ready_store()?.services())
    }

    fn operations(&self, service: &str) -> Result<Vec<(String, i8)>, ApiError> {
        Ok(self.ready_store()?.operations(service))
    }

    fn jaeger_trace(&self, id: TraceId) -> Result<Option<Value>, ApiError> {
        let spans = spans_of(self.ready_store()?, &id)?;
        Ok((!spans.is_empty()).then(|| skein_query::jaeger::to_jaeger(id, &spans)))
    }

    fn sql(&self, query: &str, arrow: bool) -> Result<SqlOutput, ApiError> {
        self.run_sql(query, arrow)
    }

    fn dependencies(&self, start_ns: i64, end_ns: i64) -> Result<Vec<skein_core::query::Dependency>, ApiError> {
        Ok(skein_query::dependencies::dependencies(&self.ready_store()?.snapshot().head, start_ns, end_ns))
    }

    fn logs(&self, q: &LogQuery) -> Result<Vec<Value>, ApiError> {
        block_on(self.engine()?.logs(q)).map_err(query_error)
    }

    fn metrics(&self, q: &MetricQuery) -> Result<Value, ApiError> {
        block_on(self.engine()?.metric_series(q)).map_err(query_error)
    }

    fn nodes(&self) -> Result<Vec<Value>, ApiError> {
        block_on(self.engine()?.nodes()).map_err(query_error)
    }

    fn replica_lag(&self, start_ns: i64, end_ns: i64, step_ns: i64) -> Result<Vec<Value>, ApiError> {
        let q = ReplicaLagQuery { start_ns, end_ns, step_ns };
        block_on(self.engine()?.replica_lag(&q, now_ns())).map_err(query_error)?.iter().map(to_json).collect()
    }

    fn alerts(&self) -> Result<Vec<Value>, ApiError> {
        self.alerts.alerts().iter().map(to_json).collect()
    }

    fn jaeger_search(&self, q: &SearchParams) -> Result<Vec<Value>, ApiError> {
        let store = self.ready_store()?;
        let ids = self.matching(q)?;
        let spans = block_on(store.traces(&ids)).map_err(api_error)?;
        Ok(ids.into_iter().zip(spans).map(|(id, spans)| skein_query::jaeger::to_jaeger(id, &spans)).collect())
    }
}

impl Collector {
    fn run_sql(&self, query: &str, arrow: bool) -> Result<SqlOutput, ApiError> {
        let answer = block_on(self.engine()?.sql(query)).map_err(query_error)?;
        if arrow {
            return skein_query::engine::to_ipc(&answer).map(SqlOutput::Arrow).map_err(query_error);
        }
        Ok(SqlOutput::Json(skein_query::engine::to_json(&answer)))
    }
}

impl Ops for Collector {
    fn ready(&self) -> Result<(), String> {
        if let Some(why) = self.failed.get() {
            return Err(format!("opening the store failed: {why}"));
        }
        self.store.get().map(|_| ()).ok_or_else(|| "replaying the write-ahead log".to_string())
    }

    fn render_metrics(&self, out: &mut String) {
        skein_core::metrics::header(out, "skein_ready", "gauge", "1 once the WAL is replayed and the collector serves.");
        skein_core::metrics::sample(out, "skein_ready", "", u8::from(self.store.get().is_some()));
        if let Some(s) = self.store.get() {
            s.render_metrics(out);
        }
        self.alerts.render_metrics(out);
        if let Some(w) = &self.webhook {
            w.render_metrics(out);
        }
    }
}

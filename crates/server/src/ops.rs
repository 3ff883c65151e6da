//! `/healthz`, `/readyz`, `/metrics`, and the server's own request metrics.

use crate::Ops;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::Mutex;
use skein_core::metrics::{self, Histogram};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Request counts and latency per endpoint group and status.
#[derive(Default)]
pub struct ServerMetrics {
    latency: Mutex<BTreeMap<&'static str, Arc<Histogram>>>,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    busy: std::sync::atomic::AtomicU64,
}

impl ServerMetrics {
    /// Records one request of `group` that answered `status` after `d`.
    pub fn observe(&self, group: &'static str, status: u16, d: Duration) {
        let h = Arc::clone(self.latency.lock().entry(group).or_default());
        h.observe(d);
        *self.requests.lock().entry((group, status)).or_default() += 1;
    }

    /// Counts `e` if it is a refusal for want of in-flight budget (`otlp.max_inflight_bytes`).
    pub(crate) fn count_busy(&self, e: &ApiError) {
        if e.code == skein_core::ErrorCode::ResourceExhausted {
            self.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// OTLP requests refused because `otlp.max_inflight_bytes` were in progress already.
    pub fn busy_refusals(&self) -> u64 {
        self.busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends the Prometheus text of these metrics.
    pub fn render(&self, out: &mut String) {
        metrics::family(
            out,
            "skein_otlp_refused_busy_total",
            "counter",
            "OTLP requests refused with 429 / RESOURCE_EXHAUSTED because otlp.max_inflight_bytes were in progress.",
            "",
            self.busy_refusals(),
        );
        metrics::header(out, "skein_http_requests_total", "counter", "Requests by endpoint group and status code.");
        for ((g, s), n) in self.requests.lock().iter() {
            metrics::sample(out, "skein_http_requests_total", &format!("endpoint=\"{g}\",code=\"{s}\""), n);
        }
        metrics::header(out, "skein_request_duration_seconds", "histogram", "Request latency by endpoint group.");
        for (g, h) in self.latency.lock().iter() {
            h.render(out, "skein_request_duration_seconds", &format!("endpoint=\"{g}\""));
        }
    }
}

#[derive(Clone)]
struct OpsState {
    ops: Arc<dyn Ops>,
    metrics: Arc<ServerMetrics>,
}

pub(crate) fn router(ops: Arc<dyn Ops>, metrics: Arc<ServerMetrics>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(OpsState { ops, metrics })
}

async fn readyz(State(st): State<OpsState>) -> impl IntoResponse {
    match st.ops.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn render(State(st): State<OpsState>) -> impl IntoResponse {
    let mut out = String::with_capacity(8192);
    st.ops.render_metrics(&mut out);
    st.metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

//! The admin port: `/healthz` (the process answers), `/readyz` (queues open, listeners bound),
//! `/metrics` (Prometheus text) and `/status` (JSON for people and scripts).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use skein_core::metrics;
use skein_exporter::Exporter;
use skein_server::ServerMetrics;
use skein_sources::enrich::{AGENT_VERSION, NodeIdentity};
use skein_sources::otlp::AgentIngest;
use skein_wal::Queue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A queue's counters by record kind (the agent's signal tags).
type KindCounters = fn(&skein_wal::QueueStats) -> &[skein_core::metrics::Counter; 4];

/// What the admin endpoints read.
pub struct Admin {
    identity: NodeIdentity,
    ingest: Arc<AgentIngest>,
    exporters: Vec<Arc<Exporter>>,
    metrics: Arc<ServerMetrics>,
    ready: AtomicBool,
    started: Instant,
    tail: std::sync::OnceLock<Arc<skein_sources::file_tail::TailStats>>,
}

impl Admin {
    pub fn new(identity: NodeIdentity, ingest: Arc<AgentIngest>, exporters: Vec<Arc<Exporter>>, metrics: Arc<ServerMetrics>) -> Self {
        Self {
            identity,
            ingest,
            exporters,
            metrics,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            tail: std::sync::OnceLock::new(),
        }
    }

    /// The file tailer's counters, shown on `/metrics`.
    pub fn set_tail_stats(&self, stats: Arc<skein_sources::file_tail::TailStats>) {
        let _ = self.tail.set(stats);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Records not yet delivered, over every collector's queue.
    pub fn queued_records(&self) -> i64 {
        self.exporters.iter().map(|e| e.queue().stats().depth.get()).sum()
    }

    fn render_metrics(&self) -> String {
        let mut out = String::new();
        let labels = format!("version=\"{AGENT_VERSION}\",node=\"{}\"", self.identity.node());
        metrics::family(&mut out, "skein_agent_info", "gauge", "The agent's version and node.", &labels, 1);
        metrics::family(
            &mut out,
            "skein_agent_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            "",
            self.started.elapsed().as_secs(),
        );
        self.ingest.stats.render(&mut out);
        if let Some(t) = self.tail.get() {
            t.render(&mut out);
        }
        let labels: Vec<String> = self.exporters.iter().map(|e| format!("endpoint=\"{}\"", e.endpoint())).collect();
        let queues: Vec<(&str, &Queue)> = self.exporters.iter().zip(&labels).map(|(e, l)| (l.as_str(), e.queue().as_ref())).collect();
        Queue::render_metrics(&queues, &mut out, "skein_agent_queue");
        let by_signal: [(&str, &str, KindCounters); 2] = [
            (
                "skein_agent_queue_dropped_signal_records_total",
                "Undelivered queue records dropped because the queue reached its disk cap, by signal.",
                |s| &s.dropped_by_kind,
            ),
            (
                "skein_agent_queue_dropped_items_total",
                "Spans, log records and data points in the records the disk cap dropped, by signal.",
                |s| &s.dropped_items_by_kind,
            ),
        ];
        for (name, help, counters) in by_signal {
            metrics::header(&mut out, name, "counter", help);
            for (l, q) in &queues {
                let c = counters(q.stats());
                for s in skein_otlp::Signal::ALL {
                    metrics::sample(&mut out, name, &format!("{l},signal=\"{s}\""), c[usize::from(s.tag())].get());
                }
                // records whose kind could not be read before the cap deleted them
                metrics::sample(&mut out, name, &format!("{l},signal=\"unknown\""), c[0].get());
            }
        }
        for e in &self.exporters {
            e.stats.render(&mut out, e.endpoint());
        }
        self.metrics.render(&mut out);
        out
    }

    /// The agent's own gauges as an OTLP metrics export, to push to the collector like any
    /// app's metrics (the collector's `GET /api/v1/nodes` shows the queue depth from it):
    /// `skein.agent.queue.bytes`, `skein.agent.queue.records` (over every collector's queue),
    /// `skein.agent.queue.dropped_records` and `skein.agent.dropped_records` (cumulative).
    pub fn self_report(&self, now_unix_ns: u64) -> skein_otlp::ExportMetricsServiceRequest {
        use skein_otlp::proto::metrics::v1::{
            Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
        };
        let start = now_unix_ns.saturating_sub(self.started.elapsed().as_nanos() as u64);
        let point = |v: f64, cumulative: bool| NumberDataPoint {
            time_unix_nano: now_unix_ns,
            start_time_unix_nano: if cumulative { start } else { 0 },
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        let gauge = |name: &str, unit: &str, v: f64| Metric {
            name: name.into(),
            unit: unit.into(),
            data: Some(Data::Gauge(Gauge { data_points: vec![point(v, false)] })),
            ..Default::default()
        };
        let counter = |name: &str, v: f64| Metric {
            name: name.into(),
            unit: "1".into(),
            data: Some(Data::Sum(Sum { data_points: vec![point(v, true)], aggregation_temporality: 2, is_monotonic: true })),
            ..Default::default()
        };
        let queues = self.exporters.iter().map(|e| e.queue().stats());
        let (bytes, records, cap_dropped) =
            queues.fold((0i64, 0i64, 0u64), |(b, r, d), q| (b + q.disk_bytes.get(), r + q.depth.get(), d + q.dropped_records.get()));
        let refused: u64 = self.exporters.iter().flat_map(|e| e.stats.dropped_records.iter()).map(|c| c.get()).sum();
        skein_otlp::ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(skein_otlp::proto::resource::v1::Resource {
                    attributes: vec![skein_otlp::synth::signals::kv("service.name", "skein-agent")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        gauge("skein.agent.queue.bytes", "By", bytes as f64),
                        gauge("skein.agent.queue.records", "1", records as f64),
                        counter("skein.agent.queue.dropped_records", cap_dropped as f64),
                        counter("skein.agent.dropped_records", refused as f64),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn status(&self) -> Value {
        let node: serde_json::Map<String, Value> = self.identity.attributes().iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect();
        let collectors: Vec<Value> = self
            .exporters
            .iter()
            .map(|e| {
                let q = e.queue();
                let oldest = q.oldest_unix_ms().ok().flatten();
                let last = e.stats.last_success_unix_ms.load(Ordering::Relaxed);
                json!({
                    "endpoint": e.endpoint(),
                    "healthy": e.stats.healthy.load(Ordering::Relaxed),
                    "last_success_unix_ms": (last > 0).then_some(last),
                    "last_error": e.stats.last_error.lock().clone(),
                    "retries": e.stats.retries.get(),
                    "queue": {
                        "records": q.stats().depth.get(),
                        "disk_bytes": q.stats().disk_bytes.get(),
                        "oldest_record_unix_ms": oldest,
                        "dropped_records": q.stats().dropped_records.get(),
                    },
                })
            })
            .collect();
        let received: serde_json::Map<String, Value> = skein_otlp::Signal::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name().to_string(), json!(self.ingest.stats.accepted[i].get())))
            .collect();
        json!({
            "version": AGENT_VERSION,
            "node": self.identity.node(),
            "resource": node,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "ready": self.ready.load(Ordering::Relaxed),
            "received": received,
            "collectors": collectors,
        })
    }
}

pub fn router(admin: Arc<Admin>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(a): State<Arc<Admin>>| async move {
                if a.ready.load(Ordering::Relaxed) { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "starting\n") }
            }),
        )
        .route(
            "/metrics",
            get(|State(a): State<Arc<Admin>>| async move {
                let body = tokio::task::spawn_blocking(move || a.render_metrics()).await.unwrap_or_default();
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
            }),
        )
        .route(
            "/status",
            get(|State(a): State<Arc<Admin>>| async move {
                axum::Json(tokio::task::spawn_blocking(move || a.status()).await.unwrap_or_default())
            }),
        )
        .with_state(admin)
}

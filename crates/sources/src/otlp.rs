//! The agent's OTLP receiver: what apps send on `127.0.0.1:4317` (gRPC) and `:4318` (HTTP)
//! is decoded, checked like the collector checks it (spans with bad ids or times are rejected
//! alone, as a partial success; attribute limits apply), stamped with the node's identity,
//! split over the collectors' queues and appended to them before the app gets its answer.
//!
//! The HTTP and gRPC front (status codes, gzip, JSON, size limits) is the collector's own,
//! from `skein-server`; this module is the handler behind it.

use crate::enrich::NodeIdentity;
use prost::Message;
use skein_core::ErrorCode;
use skein_core::metrics::{self, Counter};
use skein_exporter::Ring;
use skein_otlp::{
    ExportLogsServiceRequest, ExportMetricsServiceRequest, ExportTraceServiceRequest, Limits, Signal, validate_logs, validate_metrics,
    validate_traces,
};
use skein_server::{ApiError, BoxFuture, Export, ExportOutcome, OtlpIngest};
use skein_wal::Queue;
use std::sync::Arc;
use tokio::sync::Notify;

/// One collector's queue and the exporter's wake-up.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The queue of records for this collector.
    pub queue: Arc<Queue>,
    /// Notified after each append.
    pub notify: Arc<Notify>,
}

/// What the receiver accepted and refused.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Items (spans, log records, data points) accepted, per signal.
    pub accepted: [Counter; 3],
    /// Items refused by validation (bad ids or times), per signal: answered as a partial
    /// success, or a 400 when every item of an export was bad.
    pub invalid: [Counter; 3],
    /// Exports refused because the queue could not be written.
    pub queue_failures: Counter,
}

impl ReceiverStats {
    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        metrics::header(out, "skein_agent_received_items_total", "counter", "Spans, log records and data points accepted from apps.");
        for (i, s) in Signal::ALL.iter().enumerate() {
            metrics::sample(out, "skein_agent_received_items_total", &format!("signal=\"{s}\""), self.accepted[i].get());
        }
        metrics::header(
            out,
            "skein_agent_invalid_items_total",
            "counter",
            "Spans, log records and data points refused by validation (bad ids or times), never queued.",
        );
        for (i, s) in Signal::ALL.iter().enumerate() {
            metrics::sample(out, "skein_agent_invalid_items_total", &format!("signal=\"{s}\""), self.invalid[i].get());
        }
        metrics::family(
            out,
            "skein_agent_queue_failures_total",
            "counter",
            "Exports refused because the queue could not be written.",
            "",
            self.queue_failures.get(),
        );
    }
}

/// The handler behind the agent's OTLP listeners.
pub struct AgentIngest {
    identity: NodeIdentity,
    ring: Ring,
    destinations: Vec<Destination>,
    limits: Limits,
    /// Counters.
    pub stats: ReceiverStats,
}

impl AgentIngest {
    /// A receiver stamping `identity`, splitting over `destinations` (one per collector, in
    /// the order of `endpoints`).
    ///
    /// The bytes of requests in progress are bounded by the listeners in front of it
    /// (`skein_server::BodyBudget`), as the request arrives.
    pub fn new(identity: NodeIdentity, endpoints: &[String], destinations: Vec<Destination>, limits: Limits) -> Self {
        Self { identity, ring: Ring::new(endpoints), destinations, limits, stats: ReceiverStats::default() }
    }

    /// Stamps, splits and queues one export.
    async fn accept(&self, req: Export) -> Result<ExportOutcome, ApiError> {
        let node = self.identity.node().to_string();
        let (signal, parts, v) = match req {
            Export::Traces(mut r) => {
                let v = validate_traces(&mut r, &self.limits);
                r.resource_spans.iter_mut().for_each(|rs| self.identity.stamp(&mut rs.resource));
                (Signal::Traces, self.ring.split_traces(r), v)
            }
            Export::Logs(mut r) => {
                let v = validate_logs(&mut r, &self.limits);
                r.resource_logs.iter_mut().for_each(|rl| self.identity.stamp(&mut rl.resource));
                (Signal::Logs, self.ring.split_logs(r, &node), v)
            }
            Export::Metrics(mut r) => {
                let v = validate_metrics(&mut r, &self.limits);
                r.resource_metrics.iter_mut().for_each(|rm| self.identity.stamp(&mut rm.resource));
                (Signal::Metrics, self.ring.split_metrics(&r, &node), v)
            }
        };
        self.stats.invalid[signal.tag() as usize - 1].add(v.rejected as u64);
        if v.accepted == 0 && v.rejected > 0 {
            // As the collector answers: every item invalid is a 400 naming them.
            return Err(ApiError::bad_request(v.message()));
        }
        let (items, outcome) = (v.accepted, ExportOutcome { rejected: v.rejected as i64, message: v.message() });
        self.enqueue(signal, parts, items, outcome).await
    }

    /// Appends each part to its collector's queue; the answer for the export.
    async fn enqueue(
        &self,
        signal: Signal,
        parts: Vec<(usize, Vec<u8>)>,
        items: usize,
        outcome: ExportOutcome,
    ) -> Result<ExportOutcome, ApiError> {
        let (mut queued, mut lost, mut why) = (0usize, 0usize, None);
        let whole = parts.len() == 1;
        for (e, body) in parts {
            let Some(dest) = self.destinations.get(e) else { continue };
            let queue = Arc::clone(&dest.queue);
            // The record: the signal and its item count, then the body (`skein_exporter::Record`).
            // One part holds every item; a share for one of several collectors is counted.
            let n = if whole { items } else { skein_otlp::count_items(signal, &body).unwrap_or(0) };
            let header = skein_exporter::record_header(signal, n);
            let appended = tokio::task::spawn_blocking(move || queue.append_parts(&[&header, &body])).await;
            let err = match appended {
                Ok(Ok(_)) => {
                    dest.notify.notify_one();
                    queued += 1;
                    continue;
                }
                Ok(Err(err)) => err.to_string(),
                Err(join) => format!("queue append task failed: {join}"),
            };
            self.stats.queue_failures.inc();
            tracing::error!(error = %err, collector = e, "cannot append to the queue");
            lost += n;
            why = Some(err);
        }
        let Some(why) = why else {
            self.stats.accepted[signal.tag() as usize - 1].add(items as u64);
            return Ok(outcome);
        };
        if queued == 0 {
            // Nothing was kept: the client may send it all again.
            return Err(ApiError::new(ErrorCode::Unavailable, format!("the agent cannot write its queue: {why}"))
                .with_retry_after(std::time::Duration::from_secs(1)));
        }
        // Part of the export is queued for one collector and part could not be: a retry of the
        // whole would store the queued part twice, so the rest is reported as rejected.
        self.stats.accepted[signal.tag() as usize - 1].add(items.saturating_sub(lost) as u64);
        let message = format!(
            "{}the agent could not queue {lost} {}: {why}",
            if outcome.message.is_empty() { String::new() } else { format!("{}; ", outcome.message) },
            signal.items()
        );
        Ok(ExportOutcome { rejected: outcome.rejected + lost as i64, message })
    }
}

fn malformed(signal: Signal, e: &prost::DecodeError) -> ApiError {
    ApiError::bad_request(format!("malformed OTLP {signal} protobuf: {e}"))
}

impl OtlpIngest for AgentIngest {
    fn export(&self, req: Export) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(self.accept(req))
    }

    fn export_protobuf(&self, signal: Signal, body: bytes::Bytes) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(async move {
            // Spans for one collector that need no change but the stamp: stamped on the wire.
            if signal == Signal::Traces
                && self.ring.len() <= 1
                && let Some((stamped, spans)) = crate::wire::stamp_traces(&body, self.identity.attributes(), &self.limits)
            {
                return self.enqueue(signal, vec![(0, stamped)], spans, ExportOutcome::default()).await;
            }
            let req = match signal {
                Signal::Traces => Export::Traces(ExportTraceServiceRequest::decode(&body[..]).map_err(|e| malformed(signal, &e))?),
                Signal::Logs => Export::Logs(ExportLogsServiceRequest::decode(&body[..]).map_err(|e| malformed(signal, &e))?),
                Signal::Metrics => Export::Metrics(ExportMetricsServiceRequest::decode(&body[..]).map_err(|e| malformed(signal, &e))?),
            };
            self.accept(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::NodeConfig;
    use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn ingest(dir: &std::path::Path, endpoints: usize) -> AgentIngest {
        let eps: Vec<String> = (0..endpoints).map(|i| format!("http://c{i}:4317")).collect();
        let dests = (0..endpoints)
            .map(|i| Destination {
                queue: Arc::new(Queue::open(&dir.join(i.to_string()), skein_wal::QueueOptions::default()).unwrap()),
                notify: Arc::new(Notify::new()),
            })
            .collect();
        let id = NodeIdentity::detect(&NodeConfig { host_name: "node-a".into(), ..Default::default() }, &|_| None);
        AgentIngest::new(id, &eps, dests, Limits::default())
    }

    fn spans(traces: u8) -> ExportTraceServiceRequest {
        let spans = (0..traces)
            .map(|t| Span {
                trace_id: vec![t + 1; 16],
                span_id: vec![1; 8],
                start_time_unix_nano: 1_000,
                end_time_unix_nano: 2_000,
                ..Default::default()
            })
            .chain(std::iter::once(Span { trace_id: vec![9; 3], span_id: vec![1; 8], ..Default::default() }))
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }],
        }
    }

    fn queued(a: &AgentIngest, e: usize) -> Vec<ExportTraceServiceRequest> {
        let q = &a.destinations[e].queue;
        q.read(q.cursor(), usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|en| {
                let r = skein_exporter::Record::parse(&en.data).unwrap();
                assert_eq!(r.signal, Signal::Traces);
                let req = ExportTraceServiceRequest::decode(r.body).unwrap();
                assert_eq!(r.items, Some(req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum()));
                req
            })
            .collect()
    }

    #[tokio::test]
    async fn spans_are_validated_stamped_and_queued_before_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let a = ingest(dir.path(), 1);
        let o = a.export_protobuf(Signal::Traces, spans(3).encode_to_vec().into()).await.unwrap();
        // the span with a 3-byte trace id is refused alone, as a partial success
        assert_eq!(o.rejected, 1);
        assert!(o.message.contains("trace"), "{}", o.message);
        let q = queued(&a, 0);
        assert_eq!(q.len(), 1);
        let rs = &q[0].resource_spans[0];
        assert_eq!(rs.scope_spans[0].spans.len(), 3);
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        assert!(attrs.iter().any(|kv| kv.key == "host.name"));
        assert!(attrs.iter().any(|kv| kv.key == "skein.agent.version"));
        assert_eq!(a.stats.accepted[0].get(), 3);
        assert_eq!(a.stats.invalid[0].get(), 1);
        let err = a.export_protobuf(Signal::Logs, bytes::Bytes::from_static(b"\xff\xff")).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("logs"), "{}", err.message);
        // log records are checked as the collector checks them: one bad one alone is a partial
        // success, all bad is a 400
        use skein_otlp::synth::signals::{Line, logs_request};
        let good = Line { time: 1, body: "ok".into(), ..Line::default() };
        let bad = Line { trace_id: vec![1; 3], ..good.clone() };
        let o = a.export(Export::Logs(logs_request("n", "s", &[good, bad.clone()]))).await.unwrap();
        assert_eq!(o.rejected, 1, "{}", o.message);
        assert!(o.message.contains("trace id must be 16 bytes or empty"), "{}", o.message);
        let err = a.export(Export::Logs(logs_request("n", "s", &[bad]))).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("rejected 1 of 1 log records"), "{}", err.message);
        assert_eq!((a.stats.accepted[1].get(), a.stats.invalid[1].get()), (1, 2));
        let mut text = String::new();
        a.stats.render(&mut text);
        assert!(text.contains("skein_agent_invalid_items_total{signal=\"logs\"} 2"), "{text}");
    }

    #[tokio::test]
    async fn with_two_collectors_each_trace_goes_to_one_queue() {
        let dir = tempfile::tempdir().unwrap();
        let a = ingest(dir.path(), 2);
        a.export(Export::Traces(spans(40))).await.unwrap();
        let (q0, q1) = (queued(&a, 0), queued(&a, 1));
        let ids = |q: &[ExportTraceServiceRequest]| -> Vec<Vec<u8>> {
            q.iter()
                .flat_map(|r| &r.resource_spans)
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .map(|s| s.trace_id.clone())
                .collect()
        };
        let (i0, i1) = (ids(&q0), ids(&q1));
        assert_eq!(i0.len() + i1.len(), 40);
        assert!(!i0.is_empty() && !i1.is_empty());
        assert!(i0.iter().all(|t| !i1.contains(t)));
    }
}

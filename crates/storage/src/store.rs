//! [`Store`]: the WAL and the head behind one ingest call, plus replay on open.

use crate::error::{Error, Result};
use crate::head::Head;
use bytes::Bytes;
use prost::Message;
use skein_core::metrics::{self, Counter, Histogram};
use skein_otlp::{ExportTraceServiceRequest, Limits, Validated, validate_traces};
use skein_wal::{ReplayReport, Wal, WalOptions};
use std::path::Path;
use std::time::Instant;

/// WAL record kind: an `ExportTraceServiceRequest` in protobuf, holding only accepted spans.
const RECORD_TRACES: u8 = 1;

/// Configuration of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Past this estimated size the head refuses ingest with `ResourceExhausted`.
    pub memory_limit: u64,
    /// Limits applied to incoming spans.
    pub limits: Limits,
    /// WAL options.
    pub wal: WalOptions,
    /// Request bytes being decoded or waiting for the WAL at once; past it ingest answers
    /// `ResourceExhausted`, so many concurrent large requests cannot exhaust memory before the
    /// head limit applies. Raised to at least one maximum-size request by the caller.
    pub max_inflight_bytes: u64,
}

/// Protobuf bodies from this size on are decoded on the blocking pool, not on an async
/// worker, so a few large requests do not stall every other connection.
const BLOCKING_DECODE_BYTES: usize = 256 * 1024;

/// What an accepted request amounted to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Spans stored (including duplicates of spans already stored, which are dropped silently).
    pub accepted: usize,
    /// Spans rejected as invalid.
    pub rejected: usize,
    /// Why spans were rejected; empty when none were.
    pub message: String,
}

#[derive(Default)]
struct StoreMetrics {
    spans_accepted: Counter,
    rejected: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    attributes_dropped: Counter,
    values_truncated: Counter,
    requests_refused_full: Counter,
    requests_refused_inflight: Counter,
    replay_quarantined: Counter,
    build_seconds: Histogram,
}

/// The WAL and the head of one collector.
pub struct Store {
    wal: Wal,
    head: Head,
    cfg: StoreConfig,
    metrics: StoreMetrics,
    /// In-flight request bytes, in KiB permits.
    inflight: tokio::sync::Semaphore,
}

impl Store {
    /// Opens the WAL under `dir/wal`, replays it into a new head, and returns the store with
    /// the replay report (corrupt tails are reported there and in the log).
    ///
    /// # Errors
    /// I/O errors opening the WAL, or a record that passed its checksum but does not decode.
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<(Self, ReplayReport)> {
        let head = Head::new();
        let metrics = StoreMetrics::default();
        // A record that passed its checksum but does not decode (a decoder bug, or a record of
        // a newer version) must not keep the collector from starting forever: it is set aside
        // in `wal-quarantine/` for inspection, reported, and counted; replay goes on.
        let quarantine = dir.join("wal-quarantine");
        let (wal, report) = Wal::open(&dir.join("wal"), cfg.wal.clone(), |lsn, payload| {
            if let Err(why) = replay_record(&head, payload) {
                let path = quarantine.join(format!("{:020}-{:012}.rec", lsn.segment, lsn.offset));
                let saved = std::fs::create_dir_all(&quarantine).and_then(|()| std::fs::write(&path, payload));
                tracing::error!(segment = lsn.segment, offset = lsn.offset, error = %why, quarantined = %path.display(), saved = saved.is_ok(), "WAL record does not decode; its spans are not loaded");
                metrics.replay_quarantined.inc();
            }
            Ok::<(), String>(())
        })?;
        let permits =
            usize::try_from(cfg.max_inflight_bytes.div_ceil(1024)).unwrap_or(usize::MAX).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Ok((Self { wal, head, cfg, metrics, inflight: tokio::sync::Semaphore::new(permits) }, report))
    }

    /// Validates, logs and stores a trace export. Returns once the spans are durable and
    /// queryable.
    ///
    /// # Errors
    /// `Invalid` when every span was rejected, `HeadFull` past the memory limit, `Wal` when the
    /// log could not be written (nothing is acknowledged then).
    pub async fn ingest_traces(&self, mut req: ExportTraceServiceRequest) -> Result<IngestOutcome> {
        self.check_memory()?;
        let _permit = self.admit(req.encoded_len())?;
        let v = validate_traces(&mut req, &self.cfg.limits);
        self.count_validation(&v);
        if v.accepted == 0 {
            return self.nothing_accepted(&v);
        }
        let t = Instant::now();
        let batch = skein_columnar::spans::build(&req)?;
        let mut payload = Vec::with_capacity(req.encoded_len() + 1);
        payload.push(RECORD_TRACES);
        // Encoding into a Vec with enough capacity cannot fail.
        let _ = req.encode(&mut payload);
        self.metrics.build_seconds.observe(t.elapsed());
        self.commit(payload, batch, &v).await
    }

    /// Stores a trace export given as protobuf bytes (a gRPC message or an OTLP/HTTP body).
    /// The bytes are decoded straight into Arrow, and when every span passed untouched they are
    /// also what the WAL stores; otherwise the accepted part is re-encoded as
    /// [`Store::ingest_traces`] does.
    ///
    /// # Errors
    /// `Malformed` for bytes that are not an `ExportTraceServiceRequest`, else as
    /// [`Store::ingest_traces`].
    pub async fn ingest_traces_protobuf(&self, body: Bytes) -> Result<IngestOutcome> {
        self.check_memory()?;
        // Held until the WAL has the request: the in-flight budget covers decoding and the wait.
        let _permit = self.admit(body.len())?;
        let t = Instant::now();
        let limits = self.cfg.limits;
        let out = if body.len() >= BLOCKING_DECODE_BYTES {
            let b = body.clone();
            tokio::task::spawn_blocking(move || skein_columnar::spans::build_from_protobuf(&b, &limits))
                .await
                .map_err(|e| Error::Task(e.to_string()))?
        } else {
            skein_columnar::spans::build_from_protobuf(&body, &limits)
        }
        .map_err(Error::Wire)?;
        self.count_validation(&out.validated);
        if out.validated.accepted == 0 {
            return self.nothing_accepted(&out.validated);
        }
        if out.modified {
            // Rare: something was rejected or trimmed, so the WAL must hold the corrected
            // request. The batch is already built (equal to what validate + build give, as the
            // columnar equivalence tests check); only the WAL record needs the prost path.
            let mut req = ExportTraceServiceRequest::decode(&body[..]).map_err(|e| Error::Malformed(format!("malformed protobuf: {e}")))?;
            validate_traces(&mut req, &limits);
            let mut payload = Vec::with_capacity(req.encoded_len() + 1);
            payload.push(RECORD_TRACES);
            // Encoding into a Vec with enough capacity cannot fail.
            let _ = req.encode(&mut payload);
            self.metrics.build_seconds.observe(t.elapsed());
            return self.commit(payload, out.batch, &out.validated).await;
        }
        self.metrics.build_seconds.observe(t.elapsed());
        if !self.head.all_present(&out.batch) {
            self.wal.append_prefixed(RECORD_TRACES, body).await?;
        }
        self.insert(out.batch, &out.validated)
    }

    /// Reserves `bytes` of the in-flight budget for one request.
    fn admit(&self, bytes: usize) -> Result<tokio::sync::SemaphorePermit<'_>> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        self.inflight.try_acquire_many(kib).map_err(|_| {
            self.metrics.requests_refused_inflight.inc();
            Error::Busy { limit: self.cfg.max_inflight_bytes }
        })
    }

    fn count_validation(&self, v: &Validated) {
        self.metrics.attributes_dropped.add(v.attributes_dropped);
        self.metrics.values_truncated.add(v.values_truncated);
        if v.rejected > 0 {
            let mut r = self.metrics.rejected.lock();
            for (reason, n) in &v.rejected_by_reason {
                *r.entry(reason).or_default() += n;
            }
        }
    }

    fn nothing_accepted(&self, v: &Validated) -> Result<IngestOutcome> {
        if v.rejected > 0 {
            return Err(Error::Invalid(v.message()));
        }
        Ok(IngestOutcome::default())
    }

    fn check_memory(&self) -> Result<()> {
        let used = self.head.stats().bytes as u64;
        if used >= self.cfg.memory_limit {
            self.metrics.requests_refused_full.inc();
            return Err(Error::HeadFull { used, limit: self.cfg.memory_limit });
        }
        Ok(())
    }

    /// Appends to the WAL, waits for durability, then makes the spans queryable. A retry of
    /// spans that are all stored already is acknowledged without logging them again: they are
    /// durable since their first delivery.
    async fn commit(&self, payload: Vec<u8>, batch: arrow::array::RecordBatch, v: &Validated) -> Result<IngestOutcome> {
        if !self.head.all_present(&batch) {
            self.wal.append(payload).await?;
        }
        self.insert(batch, v)
    }

    /// Makes durable spans queryable.
    fn insert(&self, batch: arrow::array::RecordBatch, v: &Validated) -> Result<IngestOutcome> {
        self.head.insert(batch)?;
        self.metrics.spans_accepted.add(v.accepted as u64);
        Ok(IngestOutcome { accepted: v.accepted, rejected: v.rejected, message: v.message() })
    }

    /// The head, for queries.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Stops the WAL writer after the queued appends.
    pub fn close(&self) {
        self.wal.close();
    }

    /// Prometheus text for the store, the head and the WAL.
    pub fn render_metrics(&self, out: &mut String) {
        let m = &self.metrics;
        metrics::header(out, "skein_spans_accepted_total", "counter", "Spans accepted and stored.");
        metrics::sample(out, "skein_spans_accepted_total", "", m.spans_accepted.get());
        metrics::header(out, "skein_spans_rejected_total", "counter", "Spans rejected, by reason.");
        for (reason, n) in m.rejected.lock().iter() {
            metrics::sample(out, "skein_spans_rejected_total", &format!("reason=\"{reason}\""), n);
        }
        metrics::header(out, "skein_attributes_dropped_total", "counter", "Attributes dropped by the per-span attribute limit.");
        metrics::sample(out, "skein_attributes_dropped_total", "", m.attributes_dropped.get());
        metrics::header(out, "skein_attribute_values_truncated_total", "counter", "Attribute values truncated by the value length limit.");
        metrics::sample(out, "skein_attribute_values_truncated_total", "", m.values_truncated.get());
        metrics::header(
            out,
            "skein_ingest_refused_head_full_total",
            "counter",
            "Requests refused because the head was at its memory limit.",
        );
        metrics::sample(out, "skein_ingest_refused_head_full_total", "", m.requests_refused_full.get());
        metrics::header(
            out,
            "skein_ingest_build_duration_seconds",
            "histogram",
            "Time to build the Arrow batch and WAL record of a request.",
        );
        m.build_seconds.render(out, "skein_ingest_build_duration_seconds", "");
        metrics::header(
            out,
            "skein_ingest_refused_inflight_total",
            "counter",
            "Requests refused because too many request bytes were in flight.",
        );
        metrics::sample(out, "skein_ingest_refused_inflight_total", "", m.requests_refused_inflight.get());
        metrics::header(
            out,
            "skein_wal_replay_quarantined_records_total",
            "counter",
            "WAL records that passed their checksum but did not decode at start-up (set aside in wal-quarantine/).",
        );
        metrics::sample(out, "skein_wal_replay_quarantined_records_total", "", m.replay_quarantined.get());
        let h = self.head.stats();
        metrics::header(out, "skein_head_rows", "gauge", "Spans in the head.");
        metrics::sample(out, "skein_head_rows", "", h.rows);
        metrics::header(out, "skein_head_traces", "gauge", "Distinct traces in the head.");
        metrics::sample(out, "skein_head_traces", "", h.traces);
        metrics::header(out, "skein_head_bytes", "gauge", "Estimated memory of the head in bytes.");
        metrics::sample(out, "skein_head_bytes", "", h.bytes);
        metrics::header(out, "skein_head_memory_limit_bytes", "gauge", "Configured head memory limit.");
        metrics::sample(out, "skein_head_memory_limit_bytes", "", self.cfg.memory_limit);
        metrics::header(out, "skein_head_duplicate_spans_total", "counter", "Duplicate spans (retries) dropped on insert.");
        metrics::sample(out, "skein_head_duplicate_spans_total", "", h.duplicates);
        self.wal.render_metrics(out);
    }
}

fn replay_record(head: &Head, payload: &[u8]) -> std::result::Result<(), String> {
    match payload.split_first() {
        Some((&RECORD_TRACES, body)) => {
            let req = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
            let batch = skein_columnar::spans::build(&req).map_err(|e| e.to_string())?;
            head.insert(batch).map_err(|e| e.to_string())?;
            Ok(())
        }
        Some((kind, _)) => Err(format!("unknown record kind {kind}")),
        None => Err("empty record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_core::TraceId;
    use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn cfg(limit: u64) -> StoreConfig {
        StoreConfig { memory_limit: limit, limits: Limits::default(), wal: WalOptions::default(), max_inflight_bytes: 64 << 20 }
    }

    fn req(t: u8, ids: &[u8], bad: usize) -> ExportTraceServiceRequest {
        let mut spans: Vec<Span> = ids
            .iter()
            .map(|s| Span {
                trace_id: vec![t; 16],
                span_id: vec![*s; 8],
                name: "op".into(),
                start_time_unix_nano: 1,
                end_time_unix_nano: 2,
                ..Default::default()
            })
            .collect();
        spans.extend((0..bad).map(|_| Span {
            trace_id: vec![t; 5],
            span_id: vec![9; 8],
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        }));
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }],
        }
    }

    #[tokio::test]
    async fn acked_spans_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = Store::open(dir.path(), cfg(1 << 30)).unwrap();
            let o = s.ingest_traces(req(1, &[1, 2, 3], 1)).await.unwrap();
            assert_eq!((o.accepted, o.rejected), (3, 1));
            assert!(o.message.contains("trace id must be 16 bytes"), "{}", o.message);
            s.ingest_traces(req(1, &[3, 4], 0)).await.unwrap();
            assert_eq!(s.head().trace(&TraceId([1; 16])).len(), 4);
            s.close();
        }
        let (s, report) = Store::open(dir.path(), cfg(1 << 30)).unwrap();
        assert_eq!(report.records, 2);
        assert_eq!(s.head().trace(&TraceId([1; 16])).len(), 4);
        let mut text = String::new();
        s.render_metrics(&mut text);
        assert!(text.contains("skein_head_rows 4"), "{text}");
    }

    #[tokio::test]
    async fn an_undecodable_record_is_quarantined_and_replay_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = Store::open(dir.path(), cfg(1 << 30)).unwrap();
            s.ingest_traces(req(1, &[1], 0)).await.unwrap();
            // a record with a valid checksum whose body is not a request (as a decoder bug would leave)
            s.wal.append(vec![RECORD_TRACES, 0x0a, 0xff]).await.unwrap();
            s.ingest_traces(req(2, &[1], 0)).await.unwrap();
            s.close();
        }
        let (s, report) = Store::open(dir.path(), cfg(1 << 30)).unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(s.head().trace(&TraceId([1; 16])).len(), 1);
        assert_eq!(s.head().trace(&TraceId([2; 16])).len(), 1);
        let saved: Vec<_> = std::fs::read_dir(dir.path().join("wal-quarantine")).unwrap().collect();
        assert_eq!(saved.len(), 1);
        let mut text = String::new();
        s.render_metrics(&mut text);
        assert!(text.contains("skein_wal_replay_quarantined_records_total 1"), "{text}");
    }

    #[tokio::test]
    async fn all_invalid_is_an_error_and_full_head_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path(), cfg(1)).unwrap();
        let e = s.ingest_traces(req(1, &[], 2)).await.unwrap_err();
        assert_eq!(e.code(), skein_core::ErrorCode::BadRequest);
        // the first request fits (the head was empty), the second finds it over the 1-byte limit
        s.ingest_traces(req(1, &[1], 0)).await.unwrap();
        let e = s.ingest_traces(req(2, &[1], 0)).await.unwrap_err();
        assert_eq!(e.code(), skein_core::ErrorCode::ResourceExhausted);
        assert!(s.head().trace(&TraceId([2; 16])).is_empty());
    }
}

//! The agent's exporter: drains a disk-backed [`Queue`] to one collector over OTLP/gRPC.
//!
//! Each queue record is one OTLP export of one signal ([`Record`]): a [`Signal::tag`] byte
//! (with [`COUNTED`] set, followed by the number of items), then the protobuf
//! `Export*ServiceRequest`. The exporter reads records in order, merges consecutive
//! records of one signal into one request (protobuf concatenation of messages appends their
//! repeated fields) up to a size, waits up to an age for a batch to fill, pushes it compressed,
//! and acknowledges the queue only after the collector answered OK. So a record leaves the
//! disk only once the collector has it.
//!
//! Failures follow OTLP: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `ABORTED`, `CANCELLED`,
//! `OUT_OF_RANGE`, `DATA_LOSS` and a connection failure are retried, as is
//! `RESOURCE_EXHAUSTED` when it carries `RetryInfo`; the delay is the larger of the server's
//! `RetryInfo` (or a proxy's HTTP `Retry-After`, at most [`MAX_SERVER_DELAY`]) and an
//! exponential backoff, jittered to between half and all of it. Any other status (400-like
//! `INVALID_ARGUMENT` above all) is permanent, and so is a message refused as too large
//! (retrying the same bytes cannot succeed): the batch is logged with the collector's
//! message, counted as dropped and acknowledged, so one bad record never blocks the queue.
//! A partial success is not retried either (OTLP says so); its rejected count is recorded.
//! A record larger than `batch_max_bytes` (an app's large export, plus the node's stamp) is
//! sent as several requests of whole resources, so it fits a collector whose limit it was
//! received under.
//!
//! With several collectors, the agent keeps one queue and one exporter per collector and
//! splits each export over them with [`Ring`] at ingest, so a collector that is down only
//! holds back its own share.

pub mod call;
mod ring;

pub use ring::Ring;

use bytes::{BufMut, Bytes};
use parking_lot::Mutex;
use prost::Message;
use serde::{Deserialize, Serialize};
use skein_core::metrics::{self, Counter, Histogram};
use skein_core::{ByteSize, Duration};
use skein_otlp::{ExportTraceServiceResponse, Signal};
use skein_wal::{Entry, Queue, QueuePos};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, watch};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Endpoint;

/// How the exporter batches, pushes and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExporterConfig {
    /// Collector OTLP/gRPC endpoints, e.g. `["http://collector:4317"]`. With more than one,
    /// spans and logs are routed by trace id on a consistent-hash ring, metrics by node.
    pub endpoints: Vec<String>,
    /// Most bytes of records merged into one request (before compression).
    pub batch_max_bytes: ByteSize,
    /// How long a record may wait for more to fill its batch.
    pub batch_max_age: Duration,
    /// `zstd`, `gzip` or `none`.
    pub compression: Compression,
    /// Time limit of one push.
    pub timeout: Duration,
    /// First retry delay; it doubles per failure (with full jitter) up to `retry_max_delay`.
    pub retry_initial_delay: Duration,
    /// Longest delay between retries.
    pub retry_max_delay: Duration,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:4317".into()],
            batch_max_bytes: ByteSize::mib(2),
            batch_max_age: Duration::millis(200),
            compression: Compression::Zstd,
            timeout: Duration::secs(10),
            retry_initial_delay: Duration::millis(200),
            retry_max_delay: Duration::secs(30),
        }
    }
}

/// Compression of pushed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd: several times cheaper than gzip for a similar ratio; Skein's collector and the
    /// OpenTelemetry Collector accept it.
    Zstd,
    /// gzip, which every OTLP receiver accepts.
    Gzip,
    /// No compression.
    None,
}

/// What one exporter did, for `/metrics` and `/status`.
#[derive(Debug, Default)]
pub struct ExporterStats {
    /// Records (queue entries) delivered, per signal (traces, logs, metrics).
    pub sent_records: [Counter; 3],
    /// Items (spans, log records, data points) delivered, per signal.
    pub sent_items: [Counter; 3],
    /// Items dropped after a permanent failure, per signal.
    pub dropped_items: [Counter; 3],
    /// Items (spans, log records, data points) the collector rejected in a partial success.
    pub rejected_items: [Counter; 3],
    /// Records dropped after a permanent failure, per signal.
    pub dropped_records: [Counter; 3],
    /// Queue records with an unknown signal tag, dropped (a bug or a damaged queue).
    pub unknown_records: Counter,
    /// Requests pushed successfully.
    pub requests: Counter,
    /// Failed pushes that were retried.
    pub retries: Counter,
    /// Push latency.
    pub latency: Histogram,
    /// Unix ms of the last successful push (0: none yet).
    pub last_success_unix_ms: AtomicU64,
    /// Whether the last push succeeded.
    pub healthy: AtomicBool,
    /// The last failure, for `/status`.
    pub last_error: Mutex<Option<String>>,
}

const LATENCY_BOUNDS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn signal_index(s: Signal) -> usize {
    match s {
        Signal::Traces => 0,
        Signal::Logs => 1,
        Signal::Metrics => 2,
    }
}

impl ExporterStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self { latency: Histogram::new(LATENCY_BOUNDS), ..Default::default() }
    }

    /// Prometheus text for this exporter, labelled with its endpoint.
    pub fn render(&self, out: &mut String, endpoint: &str) {
        let l = |s: Signal| format!("endpoint=\"{endpoint}\",signal=\"{s}\"");
        for (name, help, c) in [
            ("skein_agent_sent_records_total", "Queue records the collector acknowledged.", &self.sent_records),
            ("skein_agent_sent_items_total", "Spans, log records or data points the collector acknowledged.", &self.sent_items),
            ("skein_agent_dropped_records_total", "Queue records dropped after a permanent push failure.", &self.dropped_records),
            (
                "skein_agent_dropped_items_total",
                "Spans, log records or data points dropped after a permanent push failure.",
                &self.dropped_items,
            ),
            (
                "skein_agent_rejected_items_total",
                "Spans, log records or data points the collector rejected in a partial success.",
                &self.rejected_items,
            ),
        ] {
            metrics::header(out, name, "counter", help);
            for s in Signal::ALL {
                metrics::sample(out, name, &l(s), c[signal_index(s)].get());
            }
        }
        let e = format!("endpoint=\"{endpoint}\"");
        metrics::family(out, "skein_agent_push_requests_total", "counter", "Successful pushes.", &e, self.requests.get());
        metrics::family(out, "skein_agent_push_retries_total", "counter", "Failed pushes that were retried.", &e, self.retries.get());
        metrics::family(
            out,
            "skein_agent_collector_up",
            "gauge",
            "1 if the last push succeeded.",
            &e,
            u8::from(self.healthy.load(Ordering::Relaxed)),
        );
        metrics::header(out, "skein_agent_push_seconds", "histogram", "Push latency.");
        self.latency.render(out, "skein_agent_push_seconds", &e);
    }
}

/// A gRPC codec sending pre-encoded request bytes as they are and decoding the answer as an
/// `ExportTraceServiceResponse`: the three services' responses share one wire layout (field 1:
/// partial success with field 1 the rejected count, field 2 the message).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        ExportTraceServiceResponse::decode(src).map(Some).map_err(|e| tonic::Status::internal(format!("decoding the response: {e}")))
    }
}

/// How a push ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Accepted; the number of items rejected in a partial success and its message.
    Ok { rejected: i64, message: String },
    /// Retry, no sooner than the delay the server asked for (if any).
    Retry { after: Option<std::time::Duration>, reason: String },
    /// Never retry this batch.
    Permanent(String),
}

/// The longest pause a server's `RetryInfo` or `Retry-After` may impose; longer asks are
/// taken as this, so a misconfigured proxy cannot stall delivery for hours.
pub const MAX_SERVER_DELAY: std::time::Duration = std::time::Duration::from_secs(300);

/// Classifies a gRPC failure the OTLP way.
pub fn classify(status: &tonic::Status) -> Outcome {
    use tonic::Code;
    use tonic_types::StatusExt;
    let after = status.get_details_retry_info().and_then(|r| r.retry_delay).map(|d| d.min(MAX_SERVER_DELAY));
    let reason = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        // tonic's answer to a message over the server's limit: the same bytes fail every time.
        Code::OutOfRange | Code::ResourceExhausted if status.message().contains("message length too large") => Outcome::Permanent(reason),
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled | Code::OutOfRange | Code::DataLoss => {
            Outcome::Retry { after, reason }
        }
        Code::ResourceExhausted if after.is_some() => Outcome::Retry { after, reason },
        _ => Outcome::Permanent(reason),
    }
}

/// The exponential backoff delay for the `attempt`-th consecutive failure, jittered to a
/// random point between half and all of it: agents that lost the same collector at once do
/// not come back in step, and none retries sooner than half the delay.
pub fn backoff(cfg: &ExporterConfig, attempt: u32) -> std::time::Duration {
    let base = cfg.retry_initial_delay.0.saturating_mul(1u32 << attempt.min(16));
    let cap = base.min(cfg.retry_max_delay.0);
    cap.mul_f64(0.5 + random_unit() / 2.0)
}

/// A pseudo-random number in [0, 1): xorshift64* seeded once per process from the standard
/// library's random hash keys (no dependency for a jitter).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = std::collections::hash_map::RandomState::new().build_hasher().finish() | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    STATE.store(x, Ordering::Relaxed);
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

/// Pushes one queue's records to one collector.
pub struct Exporter {
    endpoint: String,
    cfg: ExporterConfig,
    queue: Arc<Queue>,
    /// Woken by the receiver after each append.
    pub notify: Arc<Notify>,
    /// What it did.
    pub stats: Arc<ExporterStats>,
}

impl Exporter {
    /// An exporter draining `queue` to `endpoint`.
    pub fn new(endpoint: String, cfg: ExporterConfig, queue: Arc<Queue>) -> Self {
        Self { endpoint, cfg, queue, notify: Arc::new(Notify::new()), stats: Arc::new(ExporterStats::new()) }
    }

    /// The collector address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The queue it drains.
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// Runs until `shutdown` names a deadline, then goes on pushing what is queued until the
    /// queue is empty or the deadline has passed (a push in flight then may take up to
    /// `exporter.timeout`); what is left stays in the queue for the next start.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<Option<Instant>>) {
        let channel = match Endpoint::from_shared(self.endpoint.clone()) {
            Ok(e) => e.connect_timeout(self.cfg.timeout.0).timeout(self.cfg.timeout.0).tcp_nodelay(true).connect_lazy(),
            Err(e) => {
                tracing::error!(endpoint = %self.endpoint, error = %e, "invalid collector endpoint; nothing will be exported to it");
                return;
            }
        };
        let mut grpc = match call::Caller::new(channel, self.cfg.compression) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(endpoint = %self.endpoint, error = %e, "cannot create the compression context; nothing will be exported to it");
                return;
            }
        };
        let mut pos = self.queue.cursor();
        let mut drain_deadline: Option<Instant> = None;
        let mut attempt = 0u32;
        let mut first_seen: Option<(QueuePos, Instant)> = None;
        loop {
            if drain_deadline.is_none() {
                drain_deadline = *shutdown.borrow_and_update();
            }
            if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let batch = match self.read_batch(pos).await {
                Ok(b) => b,
                Err(skein_wal::Error::Corrupt { segment, .. }) => {
                    let queue = Arc::clone(&self.queue);
                    match tokio::task::spawn_blocking(move || queue.skip_damaged(segment)).await {
                        Ok(Ok(_)) => pos = self.queue.cursor(),
                        failed => {
                            let e = failed.map_or_else(|e| e.to_string(), |r| r.err().map(|e| e.to_string()).unwrap_or_default());
                            tracing::error!(endpoint = %self.endpoint, error = %e, "cannot skip a damaged queue segment");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(endpoint = %self.endpoint, error = %e, "reading the queue failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if drain_deadline.is_some() {
                    return;
                }
                tokio::select! {
                    () = self.notify.notified() => {}
                    _ = shutdown.changed() => {}
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                continue;
            }
            // Let a small batch fill up, unless its oldest record has waited long enough: by the
            // append time it carries (which covers time before a restart), or by how long this
            // exporter has seen it (which holds if the wall clock steps back).
            let bytes: usize = batch.iter().map(|e| e.data.len()).sum();
            if first_seen.is_none_or(|(p, _)| p != batch[0].pos) {
                first_seen = Some((batch[0].pos, Instant::now()));
            }
            let seen_ms = first_seen.map_or(0, |(_, t)| t.elapsed().as_millis() as u64);
            let age_ms = now_ms().saturating_sub(batch[0].appended_unix_ms).max(seen_ms);
            let max_age_ms = self.cfg.batch_max_age.0.as_millis() as u64;
            if drain_deadline.is_none() && bytes < self.cfg.batch_max_bytes.bytes() as usize && age_ms < max_age_ms {
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(max_age_ms - age_ms)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            match self.push(&mut grpc, &batch).await {
                Ok(next) => {
                    attempt = 0;
                    pos = next;
                    self.ack(next).await;
                }
                Err((next, after)) => {
                    // Records before `next` were delivered; go on from there after a pause.
                    if next != pos {
                        pos = next;
                        self.ack(next).await;
                    }
                    self.stats.retries.inc();
                    let mut delay = backoff(&self.cfg, attempt).max(after.unwrap_or_default());
                    attempt = attempt.saturating_add(1);
                    // While draining, `shutdown` no longer changes: the deadline bounds the pause.
                    if let Some(d) = drain_deadline {
                        delay = delay.min(d.saturating_duration_since(Instant::now()));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Reads from `pos` on the blocking pool (file I/O; the agent has two async workers).
    async fn read_batch(&self, pos: QueuePos) -> skein_wal::Result<Vec<Entry>> {
        let (queue, max) = (Arc::clone(&self.queue), self.cfg.batch_max_bytes.bytes() as usize);
        tokio::task::spawn_blocking(move || queue.read(pos, usize::MAX, max)).await.unwrap_or_else(|e| {
            Err(skein_wal::Error::Read { segment: pos.lsn.segment, path: "(queue)".into(), source: std::io::Error::other(e) })
        })
    }

    /// Acknowledges up to `next` on the blocking pool (cursor write and fsync, segment deletes).
    async fn ack(&self, next: QueuePos) {
        let queue = Arc::clone(&self.queue);
        match tokio::task::spawn_blocking(move || queue.ack(next)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(endpoint = %self.endpoint, error = %e, "cannot record the delivery in the queue; these records may be sent again after a restart");
            }
            Err(e) => tracing::error!(endpoint = %self.endpoint, error = %e, "the queue's ack task failed"),
        }
    }

    /// Pushes `batch` as one request per run of records of one signal (at most
    /// `batch_max_bytes`, or a single larger record); when the collector refuses a merged run
    /// for good, its records are sent again one at a time, so only the bad ones are dropped. `Ok(next)` when all
    /// were delivered (or dropped as permanent failures); `Err((next, after))` with the
    /// position of the first record not delivered when a retryable failure stopped it.
    async fn push(&self, grpc: &mut call::Caller, batch: &[Entry]) -> Result<QueuePos, (QueuePos, Option<std::time::Duration>)> {
        let max = self.cfg.batch_max_bytes.bytes() as usize;
        let mut i = 0;
        // Records before this index go one per request: a merged run was refused for good, so
        // each record gets its own verdict and one bad record does not take the others along.
        let mut single_until = 0;
        while i < batch.len() {
            let Some(first) = Record::parse(&batch[i].data) else {
                let tag = batch[i].data.first().copied();
                tracing::error!(endpoint = %self.endpoint, ?tag, seq = batch[i].pos.seq, "queue record has an unknown signal tag; dropping it");
                self.stats.unknown_records.inc();
                i += 1;
                continue;
            };
            let signal = first.signal;
            // A run of one signal, at most `batch_max_bytes` (a larger record goes alone).
            let mut j = i;
            let mut body = bytes::BytesMut::new();
            let mut items = Some(0usize);
            while j < batch.len()
                && let Some(r) = Record::parse(&batch[j].data).filter(|r| r.signal == signal)
                && (j == i || (i >= single_until && body.len() + r.body.len() <= max))
            {
                body.extend_from_slice(r.body);
                items = items.zip(r.items).map(|(a, b)| a + b);
                j += 1;
            }
            let n = (j - i) as u64;
            let si = signal_index(signal);
            if j == i + 1 && body.len() > max {
                // One record over the batch size (an app's large export): sent as requests of
                // whole resources, so it fits the collector's limit it was received under. A
                // retry sends it all again; the collector removes the pieces it already has.
                // Counted once the whole record is through, so a retry counts nothing twice.
                let (mut sent, mut refused) = (0usize, Vec::new());
                for piece in skein_otlp::split_request(&body, max) {
                    match self.send(grpc, signal, piece).await {
                        Outcome::Ok { .. } => sent += items_of(signal, None, piece),
                        Outcome::Permanent(reason) => refused.push((piece, reason)),
                        Outcome::Retry { after, .. } => return Err((batch[i].pos, after)),
                    }
                }
                self.stats.sent_items[si].add(sent as u64);
                for (piece, reason) in &refused {
                    self.drop_refused(signal, piece, 0, None, reason);
                }
                let records = if refused.is_empty() { &self.stats.sent_records } else { &self.stats.dropped_records };
                records[si].inc();
                i = j;
                continue;
            }
            match self.send(grpc, signal, &body).await {
                Outcome::Ok { .. } => {
                    self.stats.sent_records[si].add(n);
                    self.stats.sent_items[si].add(items_of(signal, items, &body) as u64);
                }
                // A merged run refused for good: each record gets its own verdict, so one bad
                // record does not take the others along.
                Outcome::Permanent(_) if n > 1 => {
                    single_until = j;
                    continue;
                }
                Outcome::Permanent(reason) => self.drop_refused(signal, &body, n, items, &reason),
                Outcome::Retry { after, .. } => return Err((batch[i].pos, after)),
            }
            i = j;
        }
        Ok(batch.last().map_or_else(|| self.queue.cursor(), |e| e.next))
    }

    /// Counts and logs `body` (`records` queue records of `signal`, with `items` items when
    /// known) as dropped after the collector refused it for good.
    fn drop_refused(&self, signal: Signal, body: &[u8], records: u64, items: Option<usize>, reason: &str) {
        let si = signal_index(signal);
        let items = items_of(signal, items, body);
        self.stats.dropped_records[si].add(records);
        self.stats.dropped_items[si].add(items as u64);
        tracing::error!(endpoint = %self.endpoint, %signal, records, items, bytes = body.len(), %reason, "collector refused the export for good; dropping it");
    }

    /// One request of `signal` with the export `body`, its success (but for the items, which
    /// the caller counts) or retryable failure recorded and logged (a permanent refusal is the
    /// caller's to handle).
    async fn send(&self, grpc: &mut call::Caller, signal: Signal, body: &[u8]) -> Outcome {
        let t = Instant::now();
        let outcome = match tokio::time::timeout(self.cfg.timeout.0, grpc.unary(signal.grpc_path(), body)).await {
            Err(_) => Outcome::Retry { after: None, reason: format!("no answer within {:?} (exporter.timeout)", self.cfg.timeout.0) },
            Ok(Err(call::CallError::Transport(why))) => Outcome::Retry { after: None, reason: why },
            Ok(Err(call::CallError::Status(status))) => classify(&status),
            Ok(Ok(resp)) => {
                let p = resp.partial_success.unwrap_or_default();
                Outcome::Ok { rejected: p.rejected_spans, message: p.error_message }
            }
        };
        let si = signal_index(signal);
        match &outcome {
            Outcome::Ok { rejected, message } => {
                self.stats.latency.observe(t.elapsed());
                self.stats.requests.inc();
                self.stats.healthy.store(true, Ordering::Relaxed);
                self.stats.last_success_unix_ms.store(now_ms(), Ordering::Relaxed);
                if *rejected > 0 || !message.is_empty() {
                    self.stats.rejected_items[si].add(u64::try_from(*rejected).unwrap_or(0));
                    tracing::warn!(endpoint = %self.endpoint, %signal, rejected, %message, "collector accepted the export partly");
                }
            }
            Outcome::Permanent(reason) => *self.stats.last_error.lock() = Some(reason.clone()),
            Outcome::Retry { reason, .. } => {
                self.stats.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(endpoint = %self.endpoint, %signal, bytes = body.len(), %reason, "push failed; will retry");
                *self.stats.last_error.lock() = Some(reason.clone());
            }
        }
        outcome
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The flag of a record's first byte saying that the item count (u32, little-endian)
/// follows the signal tag: `COUNTED | tag`, count, body. Records written before it have the
/// tag alone; their items are counted on the wire when needed.
pub const COUNTED: u8 = 0x80;

/// A queue record: an OTLP export of one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its signal.
    pub signal: Signal,
    /// Spans, log records or data points in it, when the record says.
    pub items: Option<usize>,
    /// The protobuf `Export*ServiceRequest`.
    pub body: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record in `data`; `None` for an unknown tag or a short header.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&first, rest) = data.split_first()?;
        let signal = Signal::from_tag(first & !COUNTED)?;
        if first & COUNTED == 0 {
            return Some(Self { signal, items: None, body: rest });
        }
        let (count, body) = rest.split_first_chunk::<4>()?;
        Some(Self { signal, items: Some(u32::from_le_bytes(*count) as usize), body })
    }

    /// Its items, counted on the wire if the record does not say.
    pub fn items(&self) -> usize {
        items_of(self.signal, self.items, self.body)
    }
}

/// `items` when known, else the items of the export `body` of `signal` counted on the wire.
fn items_of(signal: Signal, items: Option<usize>, body: &[u8]) -> usize {
    items.unwrap_or_else(|| skein_otlp::count_items(signal, body).unwrap_or(0))
}

/// The header of a record of `items` items of `signal`: append the body after it.
pub fn record_header(signal: Signal, items: usize) -> [u8; 5] {
    let n = u32::try_from(items).unwrap_or(u32::MAX).to_le_bytes();
    [COUNTED | signal.tag(), n[0], n[1], n[2], n[3]]
}

/// A queue record for an export of `signal` whose protobuf encoding is `body`.
pub fn record(signal: Signal, body: &[u8]) -> Vec<u8> {
    let items = skein_otlp::count_items(signal, body).unwrap_or(0);
    let mut r = Vec::with_capacity(5 + body.len());
    r.extend_from_slice(&record_header(signal, items));
    r.extend_from_slice(body);
    r
}

#[cfg(test)]
mod tests;

//! [`Store`]: the WAL, the heads and the blocks behind one ingest call; replay on open; the
//! consistent snapshot queries read.

use crate::block::Block;
use crate::config::StorageConfig;
use crate::error::{Error, Result};
use crate::head::{Head, HeadStats};
use crate::manifest::Manifest;
use crate::objstore::Objects;
use crate::signal_head::{NodeMap, SignalHead, Table, merge_nodes};
use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use parking_lot::RwLock;
use prost::Message;
use skein_columnar::SpanRecord;
use skein_core::TraceId;
use skein_core::metrics::{self, Counter, Histogram};
use skein_otlp::{
    ExportLogsServiceRequest, ExportMetricsServiceRequest, ExportTraceServiceRequest, Limits, Validated, validate_logs, validate_metrics,
    validate_traces,
};
use skein_wal::{ReplayReport, Wal, WalOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// WAL record kind: an `ExportTraceServiceRequest` in protobuf, holding only accepted spans.
const RECORD_TRACES: u8 = 1;
/// WAL record kind: an `ExportLogsServiceRequest` in protobuf, holding only accepted records.
const RECORD_LOGS: u8 = 2;
/// WAL record kind: an `ExportMetricsServiceRequest` in protobuf, holding only accepted points.
const RECORD_METRICS: u8 = 3;

/// Configuration of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Past this estimated size of the heads (the active one and those being flushed) ingest
    /// is refused with `ResourceExhausted`.
    pub memory_limit: u64,
    /// Limits applied to incoming spans.
    pub limits: Limits,
    /// WAL options.
    pub wal: WalOptions,
    /// Request bytes being decoded or waiting for the WAL at once; past it ingest answers
    /// `ResourceExhausted`, so many concurrent large requests cannot exhaust memory before the
    /// head limit applies. Raised to at least one maximum-size request by the caller.
    pub max_inflight_bytes: u64,
    /// Blocks, flush, compaction, retention.
    pub storage: StorageConfig,
}

/// The tenant every span belongs to until authentication maps tokens to tenants.
pub const DEFAULT_TENANT: &str = "default";

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
pub(crate) struct StoreMetrics {
    spans_accepted: Counter,
    logs_accepted: Counter,
    logs_rejected: Counter,
    points_accepted: Counter,
    points_rejected: Counter,
    rejected: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    attributes_dropped: Counter,
    values_truncated: Counter,
    requests_refused_full: Counter,
    requests_refused_inflight: Counter,
    replay_quarantined: Counter,
    replay_skipped: Counter,
    build_seconds: Histogram,
    pub(crate) flushes: Counter,
    pub(crate) flush_failures: Counter,
    pub(crate) flush_seconds: Histogram,
    pub(crate) compactions: Counter,
    pub(crate) compaction_failures: Counter,
    pub(crate) compacted_blocks: Counter,
    pub(crate) expired_blocks: Counter,
    pub(crate) deleted_files: Counter,
    pub(crate) block_duplicates: Counter,
}

/// A head that no longer takes spans and is being written as a block.
#[derive(Clone)]
pub(crate) struct Frozen {
    pub(crate) head: Arc<Head>,
    /// Every WAL record of this head is in a segment below this one.
    pub(crate) wal_before: u64,
}

/// What queries see: the heads and the listed blocks, swapped atomically by a flush or a
/// compaction so that no span is seen twice or missed.
pub(crate) struct State {
    pub(crate) active: Arc<Head>,
    /// Oldest first.
    pub(crate) frozen: Vec<Frozen>,
    pub(crate) blocks: Arc<Vec<Arc<Block>>>,
    /// Listed `logs` blocks, oldest first.
    pub(crate) logs: Arc<Vec<Arc<Block>>>,
    /// Listed `metrics` blocks, oldest first.
    pub(crate) metrics: Arc<Vec<Arc<Block>>>,
    /// Nodes of the flushed blocks (the manifest's `nodes`).
    pub(crate) nodes: Arc<NodeMap>,
}

/// The head batches and listed blocks of the `logs` or the `metrics` table.
#[derive(Clone, Default)]
pub struct TableSnapshot {
    /// Head batches (frozen heads first, the active head last).
    pub head: Vec<Arc<RecordBatch>>,
    /// Listed blocks, oldest first.
    pub blocks: Arc<Vec<Arc<Block>>>,
}

/// A consistent view of everything stored at one moment, for queries.
#[derive(Clone)]
pub struct Snapshot {
    /// Head batches (frozen heads first, the active head last).
    pub head: Vec<Arc<RecordBatch>>,
    /// Listed blocks, oldest first.
    pub blocks: Arc<Vec<Arc<Block>>>,
    /// The `logs` table.
    pub logs: TableSnapshot,
    /// The `metrics` table.
    pub metrics: TableSnapshot,
}

/// Block reads one trace lookup, or one batch of lookups, runs at once.
const CONCURRENT_READS: usize = 8;

/// The WAL, the heads and the blocks of one collector.
pub struct Store {
    pub(crate) wal: Wal,
    pub(crate) state: RwLock<State>,
    /// Held shared by every ingest from its WAL append to its head insert, and exclusively by
    /// a freeze, so that a WAL segment boundary is also a head boundary.
    gate: tokio::sync::RwLock<()>,
    pub(crate) cfg: StoreConfig,
    pub(crate) objects: Objects,
    pub(crate) tenant: String,
    /// Held by the one flush writing frozen heads, so two callers never write the same head.
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
    /// The manifest as last written; held while it is being changed.
    pub(crate) manifest: tokio::sync::Mutex<Manifest>,
    pub(crate) wal_id: String,
    pub(crate) metrics: StoreMetrics,
    /// In-flight request bytes, in KiB permits.
    inflight: tokio::sync::Semaphore,
}

impl Store {
    /// Opens the object store and the tenant's manifest, deletes block files a crash left
    /// unlisted, opens the WAL under `dir/wal` and replays the records not yet in blocks into a
    /// new head. Returns the store with the replay report (corrupt tails are reported there and
    /// in the log). Block files are not read: queries load their metadata on first use.
    ///
    /// # Errors
    /// A bad storage setting, an unreachable object store, an unreadable manifest, or I/O
    /// errors opening the WAL.
    pub async fn open(dir: &Path, cfg: StoreConfig) -> Result<(Arc<Self>, ReplayReport)> {
        let objects = crate::objstore::open(&cfg.storage, dir)?;
        let tenant = DEFAULT_TENANT.to_string();
        let manifest = Manifest::load(&objects, &tenant).await?;
        crate::maintenance::remove_unlisted(&objects, &tenant, &manifest).await?;
        let wal_id = wal_id(dir)?;
        let skip_before = if manifest.wal_id == wal_id { manifest.wal_flushed_before } else { 0 };
        let head = Head::new();
        let metrics = StoreMetrics::default();
        // A record that passed its checksum but does not decode (a decoder bug, or a record of
        // a newer version) must not keep the collector from starting forever: it is set aside
        // in `wal-quarantine/` for inspection, reported, and counted; replay goes on.
        let quarantine = dir.join("wal-quarantine");
        let wal_dir = dir.join("wal");
        let wal_opts = cfg.wal.clone();
        let (wal, report, head, metrics) = tokio::task::spawn_blocking(move || {
            let opened = Wal::open(&wal_dir, wal_opts, |lsn, payload| {
                if lsn.segment < skip_before {
                    // Already in a listed block: the flush that wrote it crashed before it
                    // could truncate the WAL.
                    metrics.replay_skipped.inc();
                    return Ok(());
                }
                if let Err(why) = replay_record(&head, payload) {
                    let path = quarantine.join(format!("{:020}-{:012}.rec", lsn.segment, lsn.offset));
                    let saved = std::fs::create_dir_all(&quarantine).and_then(|()| std::fs::write(&path, payload));
                    tracing::error!(segment = lsn.segment, offset = lsn.offset, error = %why, quarantined = %path.display(), saved = saved.is_ok(), "WAL record does not decode; its spans are not loaded");
                    metrics.replay_quarantined.inc();
                }
                Ok::<(), String>(())
            });
            opened.map(|(wal, report)| (wal, report, head, metrics))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        if skip_before > 0 {
            wal.truncate_before(skip_before)?;
        }
        let listed = |metas: &[crate::manifest::BlockMeta]| -> Arc<Vec<Arc<Block>>> {
            Arc::new(metas.iter().cloned().map(|m| Arc::new(Block::new(m))).collect())
        };
        let (blocks, logs, metric_blocks, nodes) =
            (listed(&manifest.blocks), listed(&manifest.logs), listed(&manifest.metrics), Arc::new(manifest.nodes.clone()));
        let permits =
            usize::try_from(cfg.max_inflight_bytes.div_ceil(1024)).unwrap_or(usize::MAX).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let store = Self {
            wal,
            state: RwLock::new(State { active: Arc::new(head), frozen: Vec::new(), blocks, logs, metrics: metric_blocks, nodes }),
            gate: tokio::sync::RwLock::new(()),
            cfg,
            objects,
            tenant,
            flush_lock: tokio::sync::Mutex::new(()),
            manifest: tokio::sync::Mutex::new(manifest),
            wal_id,
            metrics,
            inflight: tokio::sync::Semaphore::new(permits),
        };
        Ok((Arc::new(store), report))
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
        let _gate = self.gate.read().await;
        if !self.all_present(&out.batch) {
            self.wal.append_prefixed(RECORD_TRACES, body).await?;
        }
        self.insert(out.batch, &out.validated)
    }

    /// Validates, logs and stores a logs export. Returns once the records are durable and
    /// queryable. A retry of records the head holds already is acknowledged without logging
    /// them again.
    ///
    /// # Errors
    /// As [`Store::ingest_traces`].
    pub async fn ingest_logs(&self, mut req: ExportLogsServiceRequest) -> Result<IngestOutcome> {
        self.check_memory()?;
        let _permit = self.admit(req.encoded_len())?;
        let v = validate_logs(&mut req, &self.cfg.limits);
        self.metrics.logs_rejected.add(v.rejected as u64);
        self.commit_table(&req, &v, Table::Logs, skein_columnar::logs::build).await
    }

    /// Validates, logs and stores a metrics export, as [`Store::ingest_logs`].
    ///
    /// # Errors
    /// As [`Store::ingest_traces`].
    pub async fn ingest_metrics(&self, mut req: ExportMetricsServiceRequest) -> Result<IngestOutcome> {
        self.check_memory()?;
        let _permit = self.admit(req.encoded_len())?;
        let v = validate_metrics(&mut req, &self.cfg.limits);
        self.metrics.points_rejected.add(v.rejected as u64);
        self.commit_table(&req, &v, Table::Metrics, skein_columnar::metrics::build).await
    }

    /// The rest of [`Store::ingest_logs`] and [`Store::ingest_metrics`] once `req` is validated:
    /// build the batch, log the request (unless the head holds every record already, a
    /// retry), insert what a head being flushed does not hold.
    async fn commit_table<M: Message + Sync>(
        &self,
        req: &M,
        v: &Validated,
        table: Table,
        build: fn(&M) -> std::result::Result<RecordBatch, arrow::error::ArrowError>,
    ) -> Result<IngestOutcome> {
        self.count_limits(v);
        if v.accepted == 0 {
            return self.nothing_accepted(v);
        }
        let (kind, part, accepted): (u8, fn(&Head) -> &SignalHead, &Counter) = match table {
            Table::Metrics => (RECORD_METRICS, |h| &h.metrics, &self.metrics.points_accepted),
            _ => (RECORD_LOGS, |h| &h.logs, &self.metrics.logs_accepted),
        };
        let t = Instant::now();
        let batch = build(req)?;
        let payload = prefixed(kind, req);
        self.metrics.build_seconds.observe(t.elapsed());
        let _gate = self.gate.read().await;
        if !self.all_present_in(&batch, part) {
            self.wal.append(payload).await?;
        }
        let active = Arc::clone(&self.state.read().active);
        let batch = self.not_frozen(batch, part)?;
        if table == Table::Metrics {
            active.insert_metrics(batch)?;
        } else {
            active.insert_logs(batch)?;
        }
        accepted.add(v.accepted as u64);
        Ok(IngestOutcome { accepted: v.accepted, rejected: v.rejected, message: v.message() })
    }

    /// Stores a logs export given as protobuf bytes.
    ///
    /// # Errors
    /// `Malformed` for bytes that are not an `ExportLogsServiceRequest`, else as
    /// [`Store::ingest_logs`].
    pub async fn ingest_logs_protobuf(&self, body: Bytes) -> Result<IngestOutcome> {
        let req = self.decode_blocking(body, |b| ExportLogsServiceRequest::decode(b)).await?;
        self.ingest_logs(req).await
    }

    /// Stores a metrics export given as protobuf bytes.
    ///
    /// # Errors
    /// `Malformed` for bytes that are not an `ExportMetricsServiceRequest`, else as
    /// [`Store::ingest_metrics`].
    pub async fn ingest_metrics_protobuf(&self, body: Bytes) -> Result<IngestOutcome> {
        let req = self.decode_blocking(body, |b| ExportMetricsServiceRequest::decode(b)).await?;
        self.ingest_metrics(req).await
    }

    /// Decodes a request, on the blocking pool when it is large.
    async fn decode_blocking<M: Send + 'static>(
        &self,
        body: Bytes,
        decode: fn(&[u8]) -> std::result::Result<M, prost::DecodeError>,
    ) -> Result<M> {
        let malformed = |e: prost::DecodeError| Error::Malformed(format!("malformed protobuf: {e}"));
        if body.len() >= BLOCKING_DECODE_BYTES {
            tokio::task::spawn_blocking(move || decode(&body)).await.map_err(|e| Error::Task(e.to_string()))?.map_err(malformed)
        } else {
            decode(&body).map_err(malformed)
        }
    }

    /// Whether every record of `batch` is in a head's `table` already (a retry).
    fn all_present_in(&self, batch: &RecordBatch, table: fn(&Head) -> &SignalHead) -> bool {
        let st = self.state.read();
        let Ok(fps) = skein_columnar::logs::fingerprints(batch) else { return false };
        fps.values().iter().all(|f| table(&st.active).contains(*f) || st.frozen.iter().any(|fr| table(&fr.head).contains(*f)))
    }

    /// `batch` without the records a head being flushed holds already.
    fn not_frozen(&self, batch: RecordBatch, table: fn(&Head) -> &SignalHead) -> Result<RecordBatch> {
        let frozen: Vec<Arc<Head>> = self.state.read().frozen.iter().map(|f| Arc::clone(&f.head)).collect();
        if frozen.is_empty() {
            return Ok(batch);
        }
        let fps = skein_columnar::logs::fingerprints(&batch)?;
        let keep: arrow::array::BooleanArray = fps.values().iter().map(|f| Some(!frozen.iter().any(|h| table(h).contains(*f)))).collect();
        Ok(arrow::compute::filter_record_batch(&batch, &keep)?)
    }

    /// Reserves `bytes` of the in-flight budget for one request.
    fn admit(&self, bytes: usize) -> Result<tokio::sync::SemaphorePermit<'_>> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        self.inflight.try_acquire_many(kib).map_err(|_| {
            self.metrics.requests_refused_inflight.inc();
            Error::Busy { limit: self.cfg.max_inflight_bytes }
        })
    }

    fn count_limits(&self, v: &Validated) {
        self.metrics.attributes_dropped.add(v.attributes_dropped);
        self.metrics.values_truncated.add(v.values_truncated);
    }

    fn count_validation(&self, v: &Validated) {
        self.count_limits(v);
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
        let used = self.head_stats().bytes as u64;
        if used >= self.cfg.memory_limit {
            self.metrics.requests_refused_full.inc();
            return Err(Error::HeadFull { used, limit: self.cfg.memory_limit });
        }
        Ok(())
    }

    /// Appends to the WAL, waits for durability, then makes the spans queryable. A retry of
    /// spans that are all stored already is acknowledged without logging them again: they are
    /// durable since their first delivery.
    async fn commit(&self, payload: Vec<u8>, batch: RecordBatch, v: &Validated) -> Result<IngestOutcome> {
        let _gate = self.gate.read().await;
        if !self.all_present(&batch) {
            self.wal.append(payload).await?;
        }
        self.insert(batch, v)
    }

    /// Whether every span of `batch` is in a head already (a retry of acknowledged spans).
    fn all_present(&self, batch: &RecordBatch) -> bool {
        let st = self.state.read();
        if st.frozen.is_empty() {
            return st.active.all_present(batch);
        }
        let v = skein_columnar::spans::SpanView::new(batch);
        (0..v.len()).all(|r| {
            let (t, s) = (v.trace_id(r), v.span_id(r));
            st.active.contains(&t, &s) || st.frozen.iter().any(|f| f.head.contains(&t, &s))
        })
    }

    /// Makes durable spans queryable: inserts them into the active head, leaving out spans
    /// that a head being flushed holds already. Called with the gate held.
    fn insert(&self, batch: RecordBatch, v: &Validated) -> Result<IngestOutcome> {
        let (active, frozen) = {
            let st = self.state.read();
            (Arc::clone(&st.active), st.frozen.iter().map(|f| Arc::clone(&f.head)).collect::<Vec<_>>())
        };
        let batch = if frozen.is_empty() {
            batch
        } else {
            let view = skein_columnar::spans::SpanView::new(&batch);
            let keep: arrow::array::BooleanArray =
                (0..view.len()).map(|r| Some(!frozen.iter().any(|h| h.contains(&view.trace_id(r), &view.span_id(r))))).collect();
            arrow::compute::filter_record_batch(&batch, &keep)?
        };
        active.insert(batch)?;
        self.metrics.spans_accepted.add(v.accepted as u64);
        Ok(IngestOutcome { accepted: v.accepted, rejected: v.rejected, message: v.message() })
    }

    /// Swaps in an empty active head and starts a new WAL segment, so the old head's records
    /// are exactly the segments before the new one. Waits for the ingests in flight (a WAL
    /// group commit at most). Does nothing when the active head is empty.
    ///
    /// # Errors
    /// The WAL could not start a new segment.
    pub(crate) async fn freeze(&self) -> Result<bool> {
        let _gate = self.gate.write().await;
        if self.state.read().active.is_empty() {
            return Ok(false);
        }
        let wal_before = self.wal.rotate()?;
        let mut st = self.state.write();
        let old = std::mem::replace(&mut st.active, Arc::new(Head::new()));
        st.frozen.push(Frozen { head: old, wal_before });
        Ok(true)
    }

    /// Everything stored now, as one consistent view.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.state.read();
        let mut head = Vec::new();
        for f in &st.frozen {
            head.extend(f.head.snapshot());
        }
        head.extend(st.active.snapshot());
        let table = |f: fn(&Head) -> &SignalHead, blocks: &Arc<Vec<Arc<Block>>>| {
            let mut head = Vec::new();
            for fr in &st.frozen {
                head.extend(f(&fr.head).snapshot());
            }
            head.extend(f(&st.active).snapshot());
            TableSnapshot { head, blocks: Arc::clone(blocks) }
        };
        Snapshot { head, blocks: Arc::clone(&st.blocks), logs: table(|h| &h.logs, &st.logs), metrics: table(|h| &h.metrics, &st.metrics) }
    }

    /// Every node that has sent records, with its statistics (flushed and in the heads).
    pub fn nodes(&self) -> NodeMap {
        let st = self.state.read();
        let mut out = st.nodes.as_ref().clone();
        for f in &st.frozen {
            merge_nodes(&mut out, &f.head.nodes());
        }
        merge_nodes(&mut out, &st.active.nodes());
        out
    }

    /// Every span of trace `id`, from the blocks and the heads, each span once.
    ///
    /// # Errors
    /// A block that should hold spans of the trace could not be read.
    pub async fn trace(&self, id: &TraceId) -> Result<Vec<SpanRecord>> {
        let (heads, blocks) = {
            let st = self.state.read();
            let mut heads: Vec<Arc<Head>> = st.frozen.iter().map(|f| Arc::clone(&f.head)).collect();
            heads.push(Arc::clone(&st.active));
            (heads, Arc::clone(&st.blocks))
        };
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // Blocks are read concurrently (a few at a time) and their spans taken in block order.
        let reads: Vec<_> = futures::stream::iter(blocks.iter().map(|b| b.read_trace(&self.objects, &id.0)))
            .buffered(CONCURRENT_READS)
            .try_collect()
            .await?;
        for batches in reads {
            for batch in batches {
                let v = skein_columnar::spans::SpanView::new(&batch);
                for r in 0..v.len() {
                    if seen.insert(v.span_id(r)) {
                        out.push(v.record(r));
                    }
                }
            }
        }
        for head in heads {
            for span in head.trace(id) {
                if seen.insert(span.span_id.0) {
                    out.push(span);
                }
            }
        }
        Ok(out)
    }

    /// The spans of each trace of `ids` (as [`Store::trace`]), in the order of `ids`; a few
    /// traces are read at once.
    ///
    /// # Errors
    /// As [`Store::trace`].
    pub async fn traces(&self, ids: &[TraceId]) -> Result<Vec<Vec<SpanRecord>>> {
        futures::stream::iter(ids.iter().map(|id| self.trace(id))).buffered(CONCURRENT_READS).try_collect().await
    }

    /// Service names in the heads and the blocks, sorted.
    pub fn services(&self) -> Vec<String> {
        self.operations_map().into_keys().collect()
    }

    /// (operation, span kind) pairs of a service, sorted.
    pub fn operations(&self, service: &str) -> Vec<(String, i8)> {
        self.operations_map().remove(service).map(|s| s.into_iter().collect()).unwrap_or_default()
    }

    fn operations_map(&self) -> BTreeMap<String, BTreeSet<(String, i8)>> {
        let st = self.state.read();
        let mut out: BTreeMap<String, BTreeSet<(String, i8)>> = BTreeMap::new();
        let heads = st.frozen.iter().map(|f| &f.head).chain(std::iter::once(&st.active));
        for ops in st.blocks.iter().map(|b| b.meta.operations.clone()).chain(heads.map(|h| h.operations_map())) {
            for (service, pairs) in ops {
                out.entry(service).or_default().extend(pairs);
            }
        }
        out
    }

    /// Counters of the heads together (the active one and those being flushed).
    pub fn head_stats(&self) -> HeadStats {
        let st = self.state.read();
        let mut total = st.active.stats();
        for f in &st.frozen {
            let s = f.head.stats();
            total.rows += s.rows;
            total.traces += s.traces;
            total.batches += s.batches;
            total.bytes += s.bytes;
            total.duplicates += s.duplicates;
        }
        total
    }

    /// The object store blocks are kept in.
    pub fn objects(&self) -> &Objects {
        &self.objects
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
        metrics::header(out, "skein_log_records_accepted_total", "counter", "Log records accepted and stored.");
        metrics::sample(out, "skein_log_records_accepted_total", "", m.logs_accepted.get());
        metrics::header(out, "skein_log_records_rejected_total", "counter", "Log records rejected as invalid.");
        metrics::sample(out, "skein_log_records_rejected_total", "", m.logs_rejected.get());
        metrics::header(out, "skein_metric_points_accepted_total", "counter", "Metric data points accepted and stored.");
        metrics::sample(out, "skein_metric_points_accepted_total", "", m.points_accepted.get());
        metrics::header(out, "skein_metric_points_rejected_total", "counter", "Metric data points rejected as invalid.");
        metrics::sample(out, "skein_metric_points_rejected_total", "", m.points_rejected.get());
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
        metrics::header(
            out,
            "skein_wal_replay_skipped_records_total",
            "counter",
            "WAL records skipped at start-up because a listed block already holds them.",
        );
        metrics::sample(out, "skein_wal_replay_skipped_records_total", "", m.replay_skipped.get());
        let h = self.head_stats();
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
        self.render_storage_metrics(out);
        self.wal.render_metrics(out);
    }
}

/// The identity of the WAL in `dir`, created with it: the manifest records which WAL its
/// `wal_flushed_before` refers to, so a new, empty WAL over an existing bucket skips nothing.
fn wal_id(dir: &Path) -> Result<String> {
    let path = dir.join("wal.id");
    let io = |op, source| Error::Io { op, path: path.display().to_string(), source };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", e)),
    }
    std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    let id = crate::maintenance::unique_id();
    let tmp = dir.join("wal.id.tmp");
    std::fs::write(&tmp, &id).and_then(|()| std::fs::File::open(&tmp)?.sync_all()).map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("writing", e))?;
    Ok(id)
}

/// `req` in protobuf behind the record kind byte.
fn prefixed(kind: u8, req: &impl Message) -> Vec<u8> {
    let mut payload = Vec::with_capacity(req.encoded_len() + 1);
    payload.push(kind);
    // Encoding into a Vec with enough capacity cannot fail.
    let _ = req.encode(&mut payload);
    payload
}

fn replay_record(head: &Head, payload: &[u8]) -> std::result::Result<(), String> {
    match payload.split_first() {
        Some((&RECORD_LOGS, body)) => {
            let req = ExportLogsServiceRequest::decode(body).map_err(|e| e.to_string())?;
            let batch = skein_columnar::logs::build(&req).map_err(|e| e.to_string())?;
            head.insert_logs(batch).map_err(|e| e.to_string())?;
            Ok(())
        }
        Some((&RECORD_METRICS, body)) => {
            let req = ExportMetricsServiceRequest::decode(body).map_err(|e| e.to_string())?;
            let batch = skein_columnar::metrics::build(&req).map_err(|e| e.to_string())?;
            head.insert_metrics(batch).map_err(|e| e.to_string())?;
            Ok(())
        }
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
        StoreConfig {
            memory_limit: limit,
            limits: Limits::default(),
            wal: WalOptions::default(),
            max_inflight_bytes: 64 << 20,
            storage: StorageConfig::default(),
        }
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
            let (s, _) = Store::open(dir.path(), cfg(1 << 30)).await.unwrap();
            let o = s.ingest_traces(req(1, &[1, 2, 3], 1)).await.unwrap();
            assert_eq!((o.accepted, o.rejected), (3, 1));
            assert!(o.message.contains("trace id must be 16 bytes"), "{}", o.message);
            s.ingest_traces(req(1, &[3, 4], 0)).await.unwrap();
            assert_eq!(s.trace(&TraceId([1; 16])).await.unwrap().len(), 4);
            s.close();
        }
        let (s, report) = Store::open(dir.path(), cfg(1 << 30)).await.unwrap();
        assert_eq!(report.records, 2);
        assert_eq!(s.trace(&TraceId([1; 16])).await.unwrap().len(), 4);
        let mut text = String::new();
        s.render_metrics(&mut text);
        assert!(text.contains("skein_head_rows 4"), "{text}");
    }

    #[tokio::test]
    async fn an_undecodable_record_is_quarantined_and_replay_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = Store::open(dir.path(), cfg(1 << 30)).await.unwrap();
            s.ingest_traces(req(1, &[1], 0)).await.unwrap();
            // a record with a valid checksum whose body is not a request (as a decoder bug would leave)
            s.wal.append(vec![RECORD_TRACES, 0x0a, 0xff]).await.unwrap();
            s.ingest_traces(req(2, &[1], 0)).await.unwrap();
            s.close();
        }
        let (s, report) = Store::open(dir.path(), cfg(1 << 30)).await.unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(s.trace(&TraceId([1; 16])).await.unwrap().len(), 1);
        assert_eq!(s.trace(&TraceId([2; 16])).await.unwrap().len(), 1);
        let saved: Vec<_> = std::fs::read_dir(dir.path().join("wal-quarantine")).unwrap().collect();
        assert_eq!(saved.len(), 1);
        let mut text = String::new();
        s.render_metrics(&mut text);
        assert!(text.contains("skein_wal_replay_quarantined_records_total 1"), "{text}");
    }

    #[tokio::test]
    async fn all_invalid_is_an_error_and_full_head_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path(), cfg(1)).await.unwrap();
        let e = s.ingest_traces(req(1, &[], 2)).await.unwrap_err();
        assert_eq!(e.code(), skein_core::ErrorCode::BadRequest);
        // the first request fits (the head was empty), the second finds it over the 1-byte limit
        s.ingest_traces(req(1, &[1], 0)).await.unwrap();
        let e = s.ingest_traces(req(2, &[1], 0)).await.unwrap_err();
        assert_eq!(e.code(), skein_core::ErrorCode::ResourceExhausted);
        assert!(s.trace(&TraceId([2; 16])).await.unwrap().is_empty());
    }
}

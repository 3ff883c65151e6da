//! The head: recent spans as Arrow record batches, queryable the moment they are acked.
//!
//! Batches are append-only and never move, so a location (batch, row) stays valid; a hash
//! index from trace id to its locations makes trace-by-id independent of the head's size.
//! Duplicate spans (same trace and span id, as retries deliver them) are dropped on insert,
//! so every reader sees each span once.

use crate::signal_head::{NodeMap, SignalHead, Table, observe_nodes};
use arrow::array::{BooleanArray, RecordBatch};
use parking_lot::RwLock;
use skein_columnar::SpanRecord;
use skein_columnar::spans::SpanView;
use skein_core::TraceId;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Hasher for random 128-bit trace ids: they are already uniformly distributed, so folding
/// the two halves is as good as SipHash and much cheaper.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(29) ^ u64::from_le_bytes(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = ((v as u64) ^ ((v >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u128, V, BuildHasherDefault<IdHasher>>;

/// Where one span lives in the head.
#[derive(Debug, Clone, Copy)]
struct Loc {
    batch: u32,
    row: u32,
    span_id: u64,
}

/// Bytes the index costs per span and per trace (an estimate for the memory limit).
const INDEX_BYTES_PER_SPAN: usize = 16;
const INDEX_BYTES_PER_TRACE: usize = 64;
/// A trace with more spans than this also gets a set of its span ids, so that checking an
/// incoming span for a duplicate stays O(1) for very long traces (and for a client sending
/// many spans under one trace id) instead of scanning every stored span of the trace.
const SPAN_SET_THRESHOLD: usize = 64;
/// Bytes a span costs in that set (an estimate for the memory limit).
const SPAN_SET_BYTES_PER_SPAN: usize = 16;

/// The stored spans of one trace.
#[derive(Default)]
struct TraceEntry {
    locs: Vec<Loc>,
    /// Span ids of `locs`, kept once the trace is longer than [`SPAN_SET_THRESHOLD`].
    span_set: Option<HashSet<u64, BuildHasherDefault<IdHasher>>>,
}

impl TraceEntry {
    fn contains(&self, span_id: u64) -> bool {
        match &self.span_set {
            Some(set) => set.contains(&span_id),
            None => self.locs.iter().any(|l| l.span_id == span_id),
        }
    }

    /// Adds a location; returns the bytes the span-id set grew by.
    fn push(&mut self, loc: Loc) -> usize {
        self.locs.push(loc);
        match &mut self.span_set {
            Some(set) => {
                set.insert(loc.span_id);
                SPAN_SET_BYTES_PER_SPAN
            }
            None if self.locs.len() > SPAN_SET_THRESHOLD => {
                self.span_set = Some(self.locs.iter().map(|l| l.span_id).collect());
                self.locs.len() * SPAN_SET_BYTES_PER_SPAN
            }
            None => 0,
        }
    }
}

#[derive(Default)]
struct Inner {
    batches: Vec<Arc<RecordBatch>>,
    index: IdMap<TraceEntry>,
    /// Bytes of span-id sets and of the operations map, for the memory estimate.
    aux_bytes: usize,
    rows: usize,
    batch_bytes: usize,
    duplicates: u64,
    /// service → (operation, kind)
    operations: BTreeMap<String, BTreeSet<(String, i8)>>,
    /// When the first span arrived, for the flush age threshold.
    first_insert: Option<std::time::Instant>,
}

/// Counters describing the head.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadStats {
    /// Spans held.
    pub rows: usize,
    /// Distinct traces held.
    pub traces: usize,
    /// Record batches held.
    pub batches: usize,
    /// Estimated memory in bytes (Arrow buffers plus the index), logs and metrics included.
    pub bytes: usize,
    /// Duplicate spans dropped on insert since start.
    pub duplicates: u64,
}

/// The in-memory head: the `spans` table (indexed by trace id), the `logs` and `metrics`
/// tables, and the statistics of every node that sent them. One WAL segment range feeds one
/// head, so all three are frozen and flushed together.
#[derive(Default)]
pub struct Head {
    inner: RwLock<Inner>,
    /// The `logs` table.
    pub logs: SignalHead,
    /// The `metrics` table.
    pub metrics: SignalHead,
    nodes: parking_lot::Mutex<NodeMap>,
}

fn key(t: &[u8; 16]) -> u128 {
    u128::from_be_bytes(*t)
}

impl Head {
    /// An empty head.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch of the `spans` schema, dropping spans already present. Returns the number
    /// of spans added.
    ///
    /// # Errors
    /// Only if filtering out duplicates fails, which cannot happen for a well-formed batch.
    pub fn insert(&self, batch: RecordBatch) -> Result<usize, arrow::error::ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        let mut inner = self.inner.write();
        inner.first_insert.get_or_insert_with(std::time::Instant::now);
        let batch = {
            let view = SpanView::new(&batch);
            let mut seen_here: HashSet<(u128, u64), BuildHasherDefault<IdHasher>> = HashSet::default();
            let keep: Vec<bool> = (0..view.len())
                .map(|r| {
                    let t = key(&view.trace_id(r));
                    let s = u64::from_be_bytes(view.span_id(r));
                    let old = inner.index.get(&t).is_some_and(|e| e.contains(s));
                    !old && seen_here.insert((t, s))
                })
                .collect();
            let dups = keep.iter().filter(|k| !**k).count();
            if dups == 0 {
                batch
            } else {
                inner.duplicates += dups as u64;
                if dups == keep.len() {
                    return Ok(0);
                }
                arrow::compute::filter_record_batch(&batch, &BooleanArray::from(keep))?
            }
        };
        let b = inner.batches.len() as u32;
        let view = SpanView::new(&batch);
        let mut combos: HashSet<(i32, i32, i8)> = HashSet::new();
        for r in 0..view.len() {
            let loc = Loc { batch: b, row: r as u32, span_id: u64::from_be_bytes(view.span_id(r)) };
            let grew = inner.index.entry(key(&view.trace_id(r))).or_default().push(loc);
            inner.aux_bytes += grew;
            combos.insert((view.service.key(r), view.name.key(r), view.kind(r)));
        }
        for (s, n, k) in combos {
            let service = view.service.dictionary().value(s as usize);
            let name = view.name.dictionary().value(n as usize);
            let mut grew = 0;
            let ops = match inner.operations.get_mut(service) {
                Some(ops) => ops,
                None => {
                    grew += service.len() + 64;
                    inner.operations.entry(service.to_string()).or_default()
                }
            };
            let op = (name.to_string(), k);
            if !ops.contains(&op) {
                grew += name.len() + 48;
                ops.insert(op);
            }
            inner.aux_bytes += grew;
        }
        inner.rows += view.len();
        inner.batch_bytes += batch.get_array_memory_size();
        let added = view.len();
        // Under the head's lock: the locations above point at this batch's position.
        observe_nodes(&mut self.nodes.lock(), &batch, Table::Spans);
        inner.batches.push(Arc::new(batch));
        Ok(added)
    }

    /// Adds a batch of the `logs` schema, dropping records already held. Returns how many
    /// were added.
    ///
    /// # Errors
    /// The batch is not a `logs` batch.
    pub fn insert_logs(&self, batch: RecordBatch) -> Result<usize, arrow::error::ArrowError> {
        Ok(self.logs.insert(batch)?.map_or(0, |b| {
            observe_nodes(&mut self.nodes.lock(), &b, Table::Logs);
            b.num_rows()
        }))
    }

    /// Adds a batch of the `metrics` schema, dropping data points already held. Returns how
    /// many were added.
    ///
    /// # Errors
    /// The batch is not a `metrics` batch.
    pub fn insert_metrics(&self, batch: RecordBatch) -> Result<usize, arrow::error::ArrowError> {
        Ok(self.metrics.insert(batch)?.map_or(0, |b| {
            observe_nodes(&mut self.nodes.lock(), &b, Table::Metrics);
            b.num_rows()
        }))
    }

    /// The nodes whose records this head holds.
    pub fn nodes(&self) -> NodeMap {
        self.nodes.lock().clone()
    }

    /// Whether no table of the head holds a record.
    pub fn is_empty(&self) -> bool {
        self.inner.read().rows == 0 && self.logs.rows() == 0 && self.metrics.rows() == 0
    }

    /// Every span of a trace, in insertion order.
    pub fn trace(&self, id: &TraceId) -> Vec<SpanRecord> {
        let inner = self.inner.read();
        let Some(locs) = inner.index.get(&key(&id.0)).map(|e| &e.locs) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(locs.len());
        let mut i = 0;
        while i < locs.len() {
            // Consecutive locations usually share a batch: build its view once.
            let b = locs[i].batch;
            let view = SpanView::new(&inner.batches[b as usize]);
            while i < locs.len() && locs[i].batch == b {
                out.push(view.record(locs[i].row as usize));
                i += 1;
            }
        }
        out
    }

    /// Whether every span of `batch` is stored already (a retry of acknowledged spans).
    pub fn all_present(&self, batch: &RecordBatch) -> bool {
        let inner = self.inner.read();
        let view = SpanView::new(batch);
        (0..view.len()).all(|r| inner.index.get(&key(&view.trace_id(r))).is_some_and(|e| e.contains(u64::from_be_bytes(view.span_id(r)))))
    }

    /// The batches held now, newest last. Cheap (reference-counted); later inserts are not
    /// visible in the returned list.
    pub fn snapshot(&self) -> Vec<Arc<RecordBatch>> {
        self.inner.read().batches.clone()
    }

    /// Service names seen, sorted.
    pub fn services(&self) -> Vec<String> {
        self.inner.read().operations.keys().cloned().collect()
    }

    /// (operation, span kind) pairs of a service, sorted.
    pub fn operations(&self, service: &str) -> Vec<(String, i8)> {
        self.inner.read().operations.get(service).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Whether the head holds span `span_id` of trace `trace_id`.
    pub fn contains(&self, trace_id: &[u8; 16], span_id: &[u8; 8]) -> bool {
        self.inner.read().index.get(&key(trace_id)).is_some_and(|e| e.contains(u64::from_be_bytes(*span_id)))
    }

    /// Every service with its (operation, span kind) pairs.
    pub fn operations_map(&self) -> BTreeMap<String, Vec<(String, i8)>> {
        self.inner.read().operations.iter().map(|(s, ops)| (s.clone(), ops.iter().cloned().collect())).collect()
    }

    /// How long ago the first record of any table arrived; `None` while empty.
    pub fn age(&self) -> Option<std::time::Duration> {
        [self.inner.read().first_insert.map(|t| t.elapsed()), self.logs.age(), self.metrics.age()].into_iter().flatten().max()
    }

    /// Size and content counters.
    pub fn stats(&self) -> HeadStats {
        let inner = self.inner.read();
        HeadStats {
            rows: inner.rows,
            traces: inner.index.len(),
            batches: inner.batches.len(),
            bytes: inner.batch_bytes
                + inner.aux_bytes
                + inner.rows * INDEX_BYTES_PER_SPAN
                + inner.index.len() * INDEX_BYTES_PER_TRACE
                + self.logs.bytes()
                + self.metrics.bytes(),
            duplicates: inner.duplicates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_otlp::ExportTraceServiceRequest;
    use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn req(spans: &[(u8, u8)]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: spans
                        .iter()
                        .map(|(t, s)| Span {
                            trace_id: vec![*t; 16],
                            span_id: vec![*s; 8],
                            name: format!("op{s}"),
                            start_time_unix_nano: 1,
                            end_time_unix_nano: 2,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn dedups_and_indexes() {
        let h = Head::new();
        assert_eq!(h.insert(skein_columnar::spans::build(&req(&[(1, 1), (1, 2), (2, 1)])).unwrap()).unwrap(), 3);
        // retry of the same spans plus one new one, with a duplicate inside the batch itself
        assert_eq!(h.insert(skein_columnar::spans::build(&req(&[(1, 1), (1, 3), (1, 3)])).unwrap()).unwrap(), 1);
        assert_eq!(h.insert(skein_columnar::spans::build(&req(&[(2, 1)])).unwrap()).unwrap(), 0);
        let t = h.trace(&TraceId([1; 16]));
        let mut names: Vec<_> = t.iter().map(|s| s.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["op1", "op2", "op3"]);
        let st = h.stats();
        assert_eq!((st.rows, st.traces, st.duplicates), (4, 2, 3));
        assert_eq!(h.services(), ["unknown_service"]);
        assert_eq!(h.operations("unknown_service").len(), 3);
        assert!(h.trace(&TraceId([3; 16])).is_empty());
    }

    #[test]
    fn long_traces_dedup_through_the_span_set() {
        let h = Head::new();
        let ids: Vec<(u8, u8)> = (1..=200u8).map(|s| (5, s)).collect();
        assert_eq!(h.insert(skein_columnar::spans::build(&req(&ids)).unwrap()).unwrap(), 200);
        // every span again, plus one new: only the new one is added
        let mut again = ids.clone();
        again.push((5, 201));
        assert_eq!(h.insert(skein_columnar::spans::build(&req(&again)).unwrap()).unwrap(), 1);
        assert_eq!(h.trace(&TraceId([5; 16])).len(), 201);
        assert_eq!(h.stats().duplicates, 200);
    }
}

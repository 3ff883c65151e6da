//! The in-memory heads of the `logs` and `metrics` tables, and the per-node statistics every
//! head keeps for `GET /api/v1/nodes`.
//!
//! A [`SignalHead`] is simpler than the spans head: nothing looks a record up by id, so it is
//! a list of batches plus the set of record fingerprints it holds, which drops a retried record
//! on insert (a retry that crosses a flush is removed at query time by the same fingerprint).

use crate::head::IdHasher;
use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{Int32Type, TimestampNanosecondType};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

/// Bytes a fingerprint costs in the head's set (an estimate for the memory limit).
const FINGERPRINT_BYTES: usize = 16;

/// The resource attribute an agent stamps with its version.
pub const AGENT_VERSION_KEY: &str = "skein.agent.version";

/// What the collector knows about one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Earliest record time seen from the node (Unix ns).
    pub first_seen_ns: i64,
    /// Latest record time seen from the node (Unix ns), never later than when it arrived.
    pub last_seen_ns: i64,
    /// Spans received.
    pub spans: u64,
    /// Log records received.
    pub logs: u64,
    /// Metric data points received.
    pub metrics: u64,
    /// `skein.agent.version` of the latest resource that carried one.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// Services seen on the node.
    #[serde(default)]
    pub services: BTreeSet<String>,
    /// The node's identity attributes ([`IDENTITY_KEYS`]) from the latest resource that had them.
    #[serde(default)]
    pub identity: BTreeMap<String, String>,
}

/// Resource attributes that identify a node, reported by `GET /api/v1/nodes`.
pub const IDENTITY_KEYS: [&str; 6] = ["host.name", "host.id", "k8s.pod.name", "k8s.namespace.name", "k8s.node.name", "k8s.pod.uid"];

impl NodeStats {
    /// Folds `other` (later data) into `self`.
    pub fn merge(&mut self, other: &NodeStats) {
        if self.spans + self.logs + self.metrics == 0 {
            *self = other.clone();
            return;
        }
        self.first_seen_ns = self.first_seen_ns.min(other.first_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(other.last_seen_ns);
        self.spans += other.spans;
        self.logs += other.logs;
        self.metrics += other.metrics;
        if other.agent_version.is_some() {
            self.agent_version.clone_from(&other.agent_version);
        }
        self.services.extend(other.services.iter().cloned());
        for (k, v) in &other.identity {
            self.identity.insert(k.clone(), v.clone());
        }
    }
}

/// Node name → statistics.
pub type NodeMap = BTreeMap<String, NodeStats>;

/// Folds every node of `from` into `into`.
pub fn merge_nodes(into: &mut NodeMap, from: &NodeMap) {
    for (node, s) in from {
        into.entry(node.clone()).or_default().merge(s);
    }
}

/// Which table a batch belongs to, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `spans` (time column `start_time`).
    Spans,
    /// `logs` (time column `time`).
    Logs,
    /// `metrics` (time column `time`).
    Metrics,
}

/// Adds the rows of `batch` to `map`, by its `node` column. Times later than now are counted
/// as now, so one node with a fast clock does not look alive in the future.
pub fn observe_nodes(map: &mut NodeMap, batch: &RecordBatch, table: Table) {
    let time_col = if table == Table::Spans { "start_time" } else { "time" };
    let (Some(node), Some(service), Some(resource), Some(time)) = (
        batch.column_by_name("node").and_then(|c| c.as_dictionary_opt::<Int32Type>()),
        batch.column_by_name("service_name").and_then(|c| c.as_dictionary_opt::<Int32Type>()),
        batch.column_by_name("resource").and_then(|c| c.as_dictionary_opt::<Int32Type>()),
        batch.column_by_name(time_col).and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>()),
    ) else {
        return;
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(i64::MAX, |d| d.as_nanos() as i64);
    let names = node.values().as_string::<i32>();
    if names.len() == 1 && node.null_count() == 0 && batch.num_rows() > 0 {
        // The usual batch: one node (an agent's request). No per-row work.
        let (Some(lo), Some(hi)) = (arrow::compute::min(time), arrow::compute::max(time)) else { return };
        let all = |d: &arrow::array::DictionaryArray<Int32Type>| -> BTreeSet<i32> { (0..d.values().len() as i32).collect() };
        add(
            map,
            names.value(0),
            table,
            (batch.num_rows() as u64, lo.min(now), hi.min(now), all(service), all(resource)),
            service,
            resource,
        );
        return;
    }
    let mut per: HashMap<i32, Acc> = HashMap::new();
    for r in 0..batch.num_rows() {
        let t = time.value(r).min(now);
        let e = per.entry(node.keys().value(r)).or_insert((0, i64::MAX, i64::MIN, BTreeSet::new(), BTreeSet::new()));
        e.0 += 1;
        e.1 = e.1.min(t);
        e.2 = e.2.max(t);
        e.3.insert(service.keys().value(r));
        e.4.insert(resource.keys().value(r));
    }
    for (k, acc) in per {
        if (k as usize) < names.len() {
            add(map, names.value(k as usize), table, acc, service, resource);
        }
    }
}

/// Rows, min time, max time, service keys and resource keys of one node in a batch.
type Acc = (u64, i64, i64, BTreeSet<i32>, BTreeSet<i32>);

fn add(
    map: &mut NodeMap,
    node: &str,
    table: Table,
    (rows, lo, hi, svc, res): Acc,
    service: &arrow::array::DictionaryArray<Int32Type>,
    resource: &arrow::array::DictionaryArray<Int32Type>,
) {
    let services = service.values().as_string::<i32>();
    let resources = resource.values().as_binary::<i32>();
    let mut s = NodeStats { first_seen_ns: lo, last_seen_ns: hi, ..NodeStats::default() };
    match table {
        Table::Spans => s.spans = rows,
        Table::Logs => s.logs = rows,
        Table::Metrics => s.metrics = rows,
    }
    s.services = svc.into_iter().filter(|&i| (i as usize) < services.len()).map(|i| services.value(i as usize).to_string()).collect();
    for i in res.into_iter().filter(|&i| (i as usize) < resources.len()) {
        for (key, v) in skein_columnar::spans::resource_attributes(resources.value(i as usize)) {
            if key == AGENT_VERSION_KEY {
                s.agent_version = Some(v);
            } else if IDENTITY_KEYS.contains(&key.as_str()) {
                s.identity.insert(key, v);
            }
        }
    }
    map.entry(node.to_string()).or_default().merge(&s);
}

#[derive(Default)]
struct Inner {
    batches: Vec<Arc<RecordBatch>>,
    seen: HashSet<u64, BuildHasherDefault<IdHasher>>,
    rows: usize,
    bytes: usize,
    duplicates: u64,
    first_insert: Option<std::time::Instant>,
}

/// The head of the `logs` or the `metrics` table.
#[derive(Default)]
pub struct SignalHead {
    inner: RwLock<Inner>,
}

impl SignalHead {
    /// Adds a batch (with a `fingerprint` column), leaving out records already held.
    /// Returns the batch as kept (`None` when every record was a duplicate).
    ///
    /// # Errors
    /// The batch has no fingerprint column.
    pub fn insert(&self, batch: RecordBatch) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let fps = skein_columnar::logs::fingerprints(&batch)?.clone();
        let mut inner = self.inner.write();
        inner.first_insert.get_or_insert_with(std::time::Instant::now);
        let keep: Vec<bool> = fps.values().iter().map(|f| inner.seen.insert(*f)).collect();
        let kept = keep.iter().filter(|k| **k).count();
        inner.duplicates += (keep.len() - kept) as u64;
        if kept == 0 {
            return Ok(None);
        }
        let batch = if kept == keep.len() { batch } else { arrow::compute::filter_record_batch(&batch, &BooleanArray::from(keep))? };
        inner.rows += batch.num_rows();
        inner.bytes += batch.get_array_memory_size() + batch.num_rows() * FINGERPRINT_BYTES;
        inner.batches.push(Arc::new(batch.clone()));
        Ok(Some(batch))
    }

    /// Whether every record of `batch` is held already (a retry of acknowledged records).
    pub fn all_present(&self, batch: &RecordBatch) -> bool {
        let Ok(fps) = skein_columnar::logs::fingerprints(batch) else { return false };
        let inner = self.inner.read();
        fps.values().iter().all(|f| inner.seen.contains(f))
    }

    /// Whether the head holds the record with fingerprint `fp`.
    pub fn contains(&self, fp: u64) -> bool {
        self.inner.read().seen.contains(&fp)
    }

    /// The batches held now, newest last.
    pub fn snapshot(&self) -> Vec<Arc<RecordBatch>> {
        self.inner.read().batches.clone()
    }

    /// Records held.
    pub fn rows(&self) -> usize {
        self.inner.read().rows
    }

    /// Estimated memory in bytes.
    pub fn bytes(&self) -> usize {
        self.inner.read().bytes
    }

    /// Retried records dropped on insert.
    pub fn duplicates(&self) -> u64 {
        self.inner.read().duplicates
    }

    /// How long ago the first record arrived; `None` while empty.
    pub fn age(&self) -> Option<std::time::Duration> {
        self.inner.read().first_insert.map(|t| t.elapsed())
    }
}

/// The `[min, max]` of a batch's `time` column, `None` when empty.
pub fn time_range(batches: &[Arc<RecordBatch>]) -> Option<(i64, i64)> {
    let mut out: Option<(i64, i64)> = None;
    for b in batches {
        let Ok(t) = skein_columnar::logs::times(b) else { continue };
        if let (Some(lo), Some(hi)) = (arrow::compute::min(t), arrow::compute::max(t)) {
            out = Some(out.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
    }
    out
}

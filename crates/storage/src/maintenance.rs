//! Background work on the store: flushing heads to blocks, compacting small blocks, expiring
//! old ones, and deleting the files they leave behind.
//!
//! Every change to the block list follows one order, which makes a crash at any point safe
//! (see [`crate::manifest`] for the invariants):
//! 1. write the new block file and make it durable;
//! 2. write the manifest that lists it (and, for compaction and retention, moves the blocks it
//!    replaces to `pending_deletes`) and make it durable;
//! 3. swap the in-memory state queries read (heads and blocks) in one step;
//! 4. only then truncate the WAL (flush) or, after `delete_delay`, delete replaced files.
//!
//! A single task runs all of it, so a compaction and a retention pass never remove the same
//! block; a flush only adds blocks, so it runs concurrently with neither being a problem.

use crate::block::{Block, ObjectReader, write};
use crate::error::{Error, Result};
use crate::manifest::{BlockMeta, Manifest, PendingDelete, table_dir};
use crate::objstore::Objects;
use crate::signal_head::{Table, merge_nodes};
use crate::store::Store;
use arrow::array::RecordBatch;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use skein_columnar::spans::layout::restore;
use skein_columnar::spans::{stored_schema, with_end_time};
use skein_core::metrics;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the flush thresholds are checked.
const FLUSH_CHECK: Duration = Duration::from_millis(500);

/// A process-unique, roughly time-ordered id (block file names, the WAL id).
pub(crate) fn unique_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let salt = (u64::from(std::process::id()) << 20) ^ SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:024x}{salt:012x}")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Crash-test hook: when `SKEIN_FAILPOINT` names this point, the process aborts here, as a
/// `kill -9` at exactly that step would leave it. Unset in normal operation.
fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if POINT.get_or_init(|| std::env::var("SKEIN_FAILPOINT").ok()).as_deref() == Some(name) {
        tracing::warn!(failpoint = name, "SKEIN_FAILPOINT reached: aborting");
        std::process::abort();
    }
}

/// Deletes block files that neither the manifest lists nor waits to delete: a crash between
/// writing a block and writing the manifest leaves them, and no query can see them.
pub(crate) async fn remove_unlisted(objects: &Objects, tenant: &str, m: &Manifest) -> Result<()> {
    let known: HashSet<&str> = m
        .blocks
        .iter()
        .chain(&m.logs)
        .chain(&m.metrics)
        .map(|b| b.path.as_str())
        .chain(m.pending_deletes.iter().map(|p| p.path.as_str()))
        .collect();
    for table in ["spans", "logs", "metrics"] {
        let dir = table_dir(tenant, table);
        let listed: Vec<_> = objects.store.list(Some(&dir)).try_collect().await.map_err(|source| Error::ObjectStore {
            op: "listing",
            path: dir.to_string(),
            source,
        })?;
        for o in listed {
            if !known.contains(o.location.as_ref()) {
                tracing::info!(path = %o.location, "deleting a block file no manifest lists (left by a crash before its flush completed)");
                delete(objects, &o.location).await?;
            }
        }
    }
    Ok(())
}

async fn delete(objects: &Objects, path: &Path) -> Result<()> {
    match objects.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(Error::ObjectStore { op: "deleting", path: path.to_string(), source }),
    }
}

impl Store {
    /// Runs flushes, compaction and retention until `shutdown` turns true.
    ///
    /// Freezing runs on its own ticker, so a head that reaches a threshold is frozen on time
    /// even while an earlier one is still being written: heads stay about the configured size
    /// however long a flush takes, and if flushing falls behind, the memory limit pushes back
    /// on ingest.
    pub async fn run_maintenance(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let freezer = {
            let store = Arc::clone(&self);
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(FLUSH_CHECK) => {}
                        _ = shutdown.wait_for(|v| *v) => return,
                    }
                    if let Err(e) = store.freeze_if_due().await {
                        tracing::error!(error = %e, "freezing the head failed");
                    }
                }
            })
        };
        let interval: Duration = self.cfg.storage.compaction.interval.into();
        let mut last_compaction = Instant::now();
        let mut backoff = FLUSH_CHECK;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait_for(|v| *v) => break,
            }
            match self.flush_frozen().await {
                Ok(_) => backoff = FLUSH_CHECK,
                Err(e) => {
                    self.metrics.flush_failures.inc();
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "flushing the head to a block failed; the head keeps the spans and the WAL keeps them durable");
                }
            }
            if last_compaction.elapsed() >= interval {
                last_compaction = Instant::now();
                if let Err(e) = self.compact_and_expire().await {
                    self.metrics.compaction_failures.inc();
                    tracing::warn!(error = %e, "compaction or retention failed; retrying at the next interval");
                }
            }
        }
        let _ = freezer.await;
    }

    /// Loads the metadata of every listed block (footer, page index, bloom filters), so the
    /// first queries after a start do not pay for it. Failures are logged; queries retry.
    pub async fn warm_blocks(&self) {
        let blocks = Arc::clone(&self.state.read().blocks);
        let t = Instant::now();
        for b in blocks.iter() {
            if let Err(e) = b.warm(&self.objects).await {
                tracing::warn!(block = %b.meta.path, error = %e, "loading block metadata failed");
            }
        }
        tracing::info!(blocks = blocks.len(), elapsed_ms = t.elapsed().as_millis() as u64, "block metadata loaded");
    }

    /// Freezes the active head if a threshold is reached. Returns whether it did.
    ///
    /// # Errors
    /// The WAL could not start a new segment.
    async fn freeze_if_due(&self) -> Result<bool> {
        let f = &self.cfg.storage.flush;
        let (stats, rows, age) = {
            let st = self.state.read();
            (st.active.stats(), st.active.stats().rows + st.active.logs.rows() + st.active.metrics.rows(), st.active.age())
        };
        let due =
            rows as u64 >= f.max_rows || stats.bytes as u64 >= f.max_bytes.bytes() || age.is_some_and(|a| a >= Duration::from(f.max_age));
        if due { self.freeze().await } else { Ok(false) }
    }

    /// Freezes the active head if a threshold is reached and writes every frozen head as a
    /// block. Returns whether anything was flushed.
    ///
    /// # Errors
    /// Writing a block or the manifest failed; the head stays and is retried.
    pub async fn flush_if_due(&self) -> Result<bool> {
        self.freeze_if_due().await?;
        self.flush_frozen().await
    }

    /// Flushes the whole head now, whatever the thresholds say (shutdown, tests, benchmarks).
    ///
    /// # Errors
    /// As [`Store::flush_if_due`].
    pub async fn flush_now(&self) -> Result<bool> {
        self.freeze().await?;
        self.flush_frozen().await
    }

    async fn flush_frozen(&self) -> Result<bool> {
        let _one_flusher = self.flush_lock.lock().await;
        let mut flushed = false;
        loop {
            let Some(frozen) = self.state.read().frozen.first().cloned() else { return Ok(flushed) };
            let t = Instant::now();
            let batches = frozen.head.snapshot();
            let meta = self.write_block(batches, 0, frozen.head.operations_map()).await?;
            let logs =
                self.write_table_block("logs", frozen.head.logs.snapshot(), skein_columnar::logs::schema(), &["trace_id"], 0).await?;
            let points =
                self.write_table_block("metrics", frozen.head.metrics.snapshot(), skein_columnar::metrics::schema(), &[], 0).await?;
            failpoint("flush-after-block");
            let mut m = self.manifest.lock().await;
            let mut next = m.clone();
            let block = meta.map(|meta| {
                next.blocks.push(meta.clone());
                Arc::new(Block::new(meta))
            });
            let logs = logs.map(|meta| {
                next.logs.push(meta.clone());
                Arc::new(Block::new(meta))
            });
            let points = points.map(|meta| {
                next.metrics.push(meta.clone());
                Arc::new(Block::new(meta))
            });
            let nodes = frozen.head.nodes();
            merge_nodes(&mut next.nodes, &nodes);
            next.wal_id.clone_from(&self.wal_id);
            next.wal_flushed_before = frozen.wal_before;
            next.store(&self.objects, &self.tenant).await?;
            *m = next;
            failpoint("flush-after-manifest");
            {
                let mut st = self.state.write();
                st.frozen.retain(|f| !Arc::ptr_eq(&f.head, &frozen.head));
                let st = &mut *st;
                for (list, added) in [(&mut st.blocks, block), (&mut st.logs, logs), (&mut st.metrics, points)] {
                    if let Some(added) = added {
                        let mut blocks = list.as_ref().clone();
                        blocks.push(added);
                        *list = Arc::new(blocks);
                    }
                }
                let mut all = st.nodes.as_ref().clone();
                merge_nodes(&mut all, &nodes);
                st.nodes = Arc::new(all);
            }
            drop(m);
            self.wal.truncate_before(frozen.wal_before)?;
            self.metrics.flushes.inc();
            self.metrics.flush_seconds.observe(t.elapsed());
            tracing::info!(rows = frozen.head.stats().rows, elapsed_ms = t.elapsed().as_millis() as u64, "head flushed to a block");
            flushed = true;
        }
    }

    /// Encodes `batches` as a block and writes it durably. `None` when there was nothing to
    /// write (every span a duplicate).
    async fn write_block(
        &self,
        batches: Vec<Arc<RecordBatch>>,
        level: u32,
        operations: BTreeMap<String, Vec<(String, i8)>>,
    ) -> Result<Option<BlockMeta>> {
        let cfg = self.cfg.storage.block.clone();
        let enc = tokio::task::spawn_blocking(move || {
            let refs: Vec<&RecordBatch> = batches.iter().map(AsRef::as_ref).collect();
            write::encode(&refs, &cfg)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(|source| Error::Parquet { path: "(new block)".into(), source })?;
        self.put_block("spans", enc, level, operations).await
    }

    /// Writes an encoded block of `table` durably and describes it.
    async fn put_block(
        &self,
        table: &str,
        enc: write::Encoded,
        level: u32,
        operations: BTreeMap<String, Vec<(String, i8)>>,
    ) -> Result<Option<BlockMeta>> {
        self.metrics.block_duplicates.add(enc.duplicates);
        if enc.rows == 0 {
            return Ok(None);
        }
        let id = unique_id();
        let path = Path::from(format!("{}/{id}.parquet", table_dir(&self.tenant, table)));
        let bytes = enc.bytes.len() as u64;
        self.objects.store.put(&path, enc.bytes.into()).await.map_err(|source| Error::ObjectStore {
            op: "writing",
            path: path.to_string(),
            source,
        })?;
        self.objects.sync(&path)?;
        Ok(Some(BlockMeta {
            id,
            path: path.to_string(),
            rows: enc.rows,
            bytes,
            min_start_ns: enc.min_start_ns,
            max_start_ns: enc.max_start_ns,
            max_end_ns: enc.max_end_ns,
            level,
            created_unix_ms: now_ms(),
            operations,
            columns: enc.columns,
        }))
    }

    /// Encodes the `logs` or `metrics` batches of a frozen head as a block of `table` and
    /// writes it durably. `None` when there is nothing to write.
    async fn write_table_block(
        &self,
        table: &str,
        batches: Vec<Arc<RecordBatch>>,
        schema: arrow::datatypes::SchemaRef,
        bloom: &'static [&'static str],
        level: u32,
    ) -> Result<Option<BlockMeta>> {
        if batches.is_empty() {
            return Ok(None);
        }
        let cfg = self.cfg.storage.block.clone();
        let enc = tokio::task::spawn_blocking(move || {
            let refs: Vec<&RecordBatch> = batches.iter().map(AsRef::as_ref).collect();
            write::encode_table(&refs, &schema, &cfg, bloom)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(|source| Error::Parquet { path: format!("(new {table} block)"), source })?;
        self.put_block(table, enc, level, BTreeMap::new()).await
    }

    /// One pass of retention, compaction and deferred deletes.
    ///
    /// # Errors
    /// The object store failed; the manifest is unchanged or consistently updated.
    pub async fn compact_and_expire(&self) -> Result<()> {
        self.expire().await?;
        if self.cfg.storage.compaction.enabled {
            for table in [Table::Spans, Table::Logs, Table::Metrics] {
                while self.compact_once(table).await? {}
            }
        }
        self.delete_pending().await
    }

    /// Removes blocks whose newest span ended before the retention period.
    async fn expire(&self) -> Result<()> {
        let retention: Duration = self.cfg.storage.retention.into();
        if retention.is_zero() {
            return Ok(());
        }
        let cutoff_ns = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().saturating_sub(retention)).as_nanos() as i64;
        let doomed: HashSet<String> = {
            let m = self.manifest.lock().await;
            m.blocks.iter().chain(&m.logs).chain(&m.metrics).filter(|b| b.max_end_ns < cutoff_ns).map(|b| b.id.clone()).collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        self.replace_blocks(&doomed, None, Table::Spans).await?;
        self.metrics.expired_blocks.add(doomed.len() as u64);
        tracing::info!(blocks = doomed.len(), "expired blocks past the retention period");
        Ok(())
    }

    /// Merges the oldest run of small blocks of `table` into one. Returns whether it merged
    /// anything.
    async fn compact_once(&self, table: Table) -> Result<bool> {
        let c = &self.cfg.storage.compaction;
        let inputs: Vec<BlockMeta> = {
            let m = self.manifest.lock().await;
            let list = match table {
                Table::Spans => &m.blocks,
                Table::Logs => &m.logs,
                Table::Metrics => &m.metrics,
            };
            let mut small: Vec<&BlockMeta> = list.iter().filter(|b| b.bytes < c.target_block_size.bytes()).collect();
            small.sort_by_key(|b| (b.min_start_ns, b.created_unix_ms));
            let (mut bytes, mut rows) = (0u64, 0u64);
            let mut run = Vec::new();
            for b in small {
                if !run.is_empty() && (bytes >= c.target_block_size.bytes() || rows + b.rows > c.max_rows_per_merge) {
                    break;
                }
                bytes += b.bytes;
                rows += b.rows;
                run.push(b.clone());
            }
            run
        };
        if inputs.len() < 2 {
            return Ok(false);
        }
        let t = Instant::now();
        let mut batches = Vec::new();
        let mut operations: BTreeMap<String, BTreeSet<(String, i8)>> = BTreeMap::new();
        for b in &inputs {
            let reader = ObjectReader::new(Arc::clone(&self.objects.store), Path::from(b.path.as_str()), b.bytes);
            let perr = |source| Error::Parquet { path: b.path.clone(), source };
            let stream = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(perr)?.build().map_err(perr)?;
            let read: Vec<RecordBatch> = stream.try_collect().await.map_err(perr)?;
            if table == Table::Spans {
                // A block's batches together: a parent is named by its row in the trace, which
                // may be in the batch before.
                if let Some(first) = read.first() {
                    let all = arrow::compute::concat_batches(first.schema_ref(), &read)?;
                    drop(read);
                    batches.push(Arc::new(with_end_time(&restore(&all, &stored_schema())?)?));
                }
            } else {
                batches.extend(read.into_iter().map(Arc::new));
            }
            for (s, ops) in &b.operations {
                operations.entry(s.clone()).or_default().extend(ops.iter().cloned());
            }
        }
        let level = inputs.iter().map(|b| b.level).max().unwrap_or(0) + 1;
        let operations = operations.into_iter().map(|(s, o)| (s, o.into_iter().collect())).collect();
        let out = match table {
            Table::Spans => self.write_block(batches, level, operations).await?,
            Table::Logs => self.write_table_block("logs", batches, skein_columnar::logs::schema(), &["trace_id"], level).await?,
            Table::Metrics => self.write_table_block("metrics", batches, skein_columnar::metrics::schema(), &[], level).await?,
        };
        failpoint("compact-after-block");
        let ids: HashSet<String> = inputs.iter().map(|b| b.id.clone()).collect();
        let rows_in: u64 = inputs.iter().map(|b| b.rows).sum();
        let rows_out = out.as_ref().map_or(0, |b| b.rows);
        self.replace_blocks(&ids, out, table).await?;
        failpoint("compact-after-manifest");
        self.metrics.compactions.inc();
        self.metrics.compacted_blocks.add(ids.len() as u64);
        tracing::info!(table = ?table, blocks = ids.len(), rows_in, rows_out, level, elapsed_ms = t.elapsed().as_millis() as u64, "compacted blocks");
        Ok(true)
    }

    /// Removes the blocks `ids` from the manifest and the query state (their files are
    /// deleted after `delete_delay`) and adds `added` to the blocks of `table`, in one manifest
    /// write.
    async fn replace_blocks(&self, ids: &HashSet<String>, added: Option<BlockMeta>, table: Table) -> Result<()> {
        let delay: Duration = self.cfg.storage.compaction.delete_delay.into();
        let mut m = self.manifest.lock().await;
        let mut next = m.clone();
        let after = now_ms() + delay.as_millis() as u64;
        for list in [&mut next.blocks, &mut next.logs, &mut next.metrics] {
            let (gone, kept): (Vec<BlockMeta>, Vec<BlockMeta>) = std::mem::take(list).into_iter().partition(|b| ids.contains(&b.id));
            *list = kept;
            next.pending_deletes.extend(gone.iter().map(|b| PendingDelete { path: b.path.clone(), delete_after_unix_ms: after }));
        }
        let added = added.map(|meta| {
            match table {
                Table::Spans => next.blocks.push(meta.clone()),
                Table::Logs => next.logs.push(meta.clone()),
                Table::Metrics => next.metrics.push(meta.clone()),
            }
            Arc::new(Block::new(meta))
        });
        next.store(&self.objects, &self.tenant).await?;
        *m = next;
        let mut st = self.state.write();
        let st = &mut *st;
        for (t, list) in [(Table::Spans, &mut st.blocks), (Table::Logs, &mut st.logs), (Table::Metrics, &mut st.metrics)] {
            let add = if t == table { added.clone() } else { None };
            if add.is_some() || list.iter().any(|b| ids.contains(&b.meta.id)) {
                let mut blocks: Vec<Arc<Block>> = list.iter().filter(|b| !ids.contains(&b.meta.id)).cloned().collect();
                blocks.extend(add);
                *list = Arc::new(blocks);
            }
        }
        Ok(())
    }

    /// Deletes the files of removed blocks whose delay has passed.
    async fn delete_pending(&self) -> Result<()> {
        let now = now_ms();
        let due: Vec<PendingDelete> =
            self.manifest.lock().await.pending_deletes.iter().filter(|p| p.delete_after_unix_ms <= now).cloned().collect();
        if due.is_empty() {
            return Ok(());
        }
        for p in &due {
            delete(&self.objects, &Path::from(p.path.as_str())).await?;
        }
        let mut m = self.manifest.lock().await;
        let mut next = m.clone();
        next.pending_deletes.retain(|p| !due.contains(p));
        next.store(&self.objects, &self.tenant).await?;
        *m = next;
        self.metrics.deleted_files.add(due.len() as u64);
        Ok(())
    }

    /// Prometheus text for blocks, flushes, compaction and retention.
    pub(crate) fn render_storage_metrics(&self, out: &mut String) {
        let m = &self.metrics;
        let blocks = Arc::clone(&self.state.read().blocks);
        let t = format!("tenant=\"{}\"", self.tenant);
        let (rows, bytes): (u64, u64) = blocks.iter().fold((0, 0), |(r, b), x| (r + x.meta.rows, b + x.meta.bytes));
        metrics::family(out, "skein_blocks", "gauge", "Blocks listed in the manifest.", &t, blocks.len());
        metrics::family(out, "skein_block_bytes", "gauge", "Bytes of the listed blocks.", &t, bytes);
        metrics::family(out, "skein_block_rows", "gauge", "Spans in the listed blocks.", &t, rows);
        metrics::family(out, "skein_flushes_total", "counter", "Heads written as blocks.", &t, m.flushes.get());
        metrics::family(out, "skein_flush_failures_total", "counter", "Flush attempts that failed (retried).", &t, m.flush_failures.get());
        metrics::header(out, "skein_flush_duration_seconds", "histogram", "Time to write a head as a block and list it.");
        m.flush_seconds.render(out, "skein_flush_duration_seconds", &t);
        metrics::family(
            out,
            "skein_compactions_total",
            "counter",
            "Compactions (each merges several blocks into one).",
            &t,
            m.compactions.get(),
        );
        metrics::family(out, "skein_compacted_blocks_total", "counter", "Blocks merged away by compaction.", &t, m.compacted_blocks.get());
        metrics::family(
            out,
            "skein_compaction_failures_total",
            "counter",
            "Compaction or retention passes that failed.",
            &t,
            m.compaction_failures.get(),
        );
        metrics::family(out, "skein_expired_blocks_total", "counter", "Blocks removed by retention.", &t, m.expired_blocks.get());
        metrics::family(
            out,
            "skein_deleted_block_files_total",
            "counter",
            "Files of removed blocks deleted after the delay.",
            &t,
            m.deleted_files.get(),
        );
        metrics::family(
            out,
            "skein_block_duplicate_spans_total",
            "counter",
            "Duplicate spans dropped while writing blocks.",
            &t,
            m.block_duplicates.get(),
        );
    }
}

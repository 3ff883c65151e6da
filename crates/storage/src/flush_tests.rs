//! Flush, restart, compaction and retention against a real local object store.

use crate::{StorageConfig, Store, StoreConfig};
use skein_core::{ByteSize, Duration, TraceId};
use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::proto::common::v1::{AnyValue, KeyValue, any_value};
use skein_otlp::proto::resource::v1::Resource;
use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use std::path::Path;
use std::sync::Arc;

fn cfg(storage: StorageConfig) -> StoreConfig {
    StoreConfig {
        memory_limit: 1 << 30,
        limits: skein_otlp::Limits::default(),
        wal: skein_wal::WalOptions::default(),
        max_inflight_bytes: 64 << 20,
        storage,
    }
}

fn req(trace: u8, spans: std::ops::Range<u8>) -> ExportTraceServiceRequest {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(any_value::Value::StringValue(format!("svc{}", trace % 2))) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: spans
                    .map(|s| Span {
                        trace_id: vec![trace; 16],
                        span_id: vec![s; 8],
                        name: format!("op{s}"),
                        start_time_unix_nano: now + u64::from(s),
                        end_time_unix_nano: now + 1000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn count(s: &Store, t: u8) -> usize {
    s.trace(&TraceId([t; 16])).await.unwrap().len()
}

async fn open(dir: &Path, storage: StorageConfig) -> Arc<Store> {
    Store::open(dir, cfg(storage)).await.unwrap().0
}

#[tokio::test]
async fn a_flushed_head_is_read_from_its_block_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), StorageConfig::default()).await;
        s.ingest_traces(req(1, 1..4)).await.unwrap();
        s.ingest_traces(req(2, 1..3)).await.unwrap();
        assert!(s.flush_now().await.unwrap());
        assert_eq!(s.head_stats().rows, 0);
        assert_eq!(s.snapshot().blocks.len(), 1);
        assert_eq!(count(&s, 1).await, 3);
        // a retry of a flushed span plus a new span of the same trace: each span once
        s.ingest_traces(req(1, 3..5)).await.unwrap();
        assert_eq!(count(&s, 1).await, 4);
        assert_eq!(s.services(), ["svc0", "svc1"]);
        s.close();
    }
    let s = open(dir.path(), StorageConfig::default()).await;
    assert_eq!(count(&s, 1).await, 4);
    assert_eq!(count(&s, 2).await, 2);
    assert_eq!(s.head_stats().rows, 2, "only the spans after the flush are replayed");
    assert_eq!(s.operations("svc1").len(), 4);
}

#[tokio::test]
async fn a_crash_between_manifest_and_wal_truncation_loads_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), StorageConfig::default()).await;
        s.ingest_traces(req(1, 1..4)).await.unwrap();
        // keep the WAL as it was before the flush truncated it
        copy_dir(&dir.path().join("wal"), saved.path());
        s.flush_now().await.unwrap();
        s.close();
    }
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    copy_dir(saved.path(), &dir.path().join("wal"));
    let s = open(dir.path(), StorageConfig::default()).await;
    assert_eq!(count(&s, 1).await, 3);
    assert_eq!(s.head_stats().rows, 0, "the WAL records already in the block are skipped");
    let mut text = String::new();
    s.render_metrics(&mut text);
    assert!(text.contains("skein_wal_replay_skipped_records_total 1"), "{text}");
}

#[tokio::test]
async fn an_unlisted_block_file_is_removed_on_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), StorageConfig::default()).await;
        s.ingest_traces(req(1, 1..4)).await.unwrap();
        s.flush_now().await.unwrap();
        s.close();
    }
    let blocks = dir.path().join("tenants/default/spans");
    std::fs::copy(std::fs::read_dir(&blocks).unwrap().next().unwrap().unwrap().path(), blocks.join("orphan.parquet")).unwrap();
    let s = open(dir.path(), StorageConfig::default()).await;
    assert!(!blocks.join("orphan.parquet").exists());
    assert_eq!(count(&s, 1).await, 3);
}

#[tokio::test]
async fn compaction_merges_blocks_and_drops_duplicates_and_retention_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = StorageConfig { retention: Duration::secs(0), ..Default::default() };
    storage.compaction.delete_delay = Duration::secs(3600);
    let s = open(dir.path(), storage.clone()).await;
    for t in 1..=3u8 {
        s.ingest_traces(req(t, 1..5)).await.unwrap();
        s.flush_now().await.unwrap();
    }
    // the same spans of trace 1 once more, in a fourth block (a retry after its flush)
    s.ingest_traces(req(1, 1..5)).await.unwrap();
    s.flush_now().await.unwrap();
    let before = s.snapshot();
    assert_eq!(before.blocks.len(), 4);
    s.compact_and_expire().await.unwrap();
    let after = s.snapshot();
    assert_eq!(after.blocks.len(), 1);
    assert_eq!(after.blocks[0].meta.rows, 12);
    assert_eq!(after.blocks[0].meta.level, 1);
    // a query that planned on the old blocks can still read them until delete_delay
    for b in before.blocks.iter() {
        b.read_trace(s.objects(), &[1; 16]).await.unwrap();
    }
    for t in 1..=3u8 {
        assert_eq!(count(&s, t).await, 4);
    }
    let mut text = String::new();
    s.render_metrics(&mut text);
    assert!(text.contains("skein_compacted_blocks_total{tenant=\"default\"} 4"), "{text}");
    assert!(text.contains("skein_block_rows{tenant=\"default\"} 12"), "{text}");
    s.close();
    drop(s);

    // restart: the manifest lists one block; with a retention of 1 ns it expires and, with no
    // delay, its file goes at once
    storage.retention = Duration(std::time::Duration::from_nanos(1));
    storage.compaction.delete_delay = Duration::secs(0);
    let s = open(dir.path(), storage).await;
    assert_eq!(count(&s, 2).await, 4);
    std::thread::sleep(std::time::Duration::from_millis(5));
    s.compact_and_expire().await.unwrap();
    assert_eq!(count(&s, 2).await, 0);
    assert!(s.snapshot().blocks.is_empty());
    // what is left are the four compaction inputs, still within the hour they were given
    assert_eq!(std::fs::read_dir(dir.path().join("tenants/default/spans")).unwrap().count(), 4);
}

#[tokio::test]
async fn flush_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig {
        flush: crate::config::FlushConfig { max_rows: 5, max_bytes: ByteSize::gib(1), ..Default::default() },
        ..Default::default()
    };
    let s = open(dir.path(), storage).await;
    s.ingest_traces(req(1, 1..4)).await.unwrap();
    assert!(!s.flush_if_due().await.unwrap());
    s.ingest_traces(req(2, 1..4)).await.unwrap();
    assert!(s.flush_if_due().await.unwrap());
    assert_eq!(s.snapshot().blocks.len(), 1);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flushes_write_each_head_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StorageConfig::default()).await;
    for t in 1..=20u8 {
        s.ingest_traces(req(t, 1..4)).await.unwrap();
    }
    let (a, b) = tokio::join!(s.flush_now(), s.flush_now());
    a.unwrap();
    b.unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.blocks.iter().map(|b| b.meta.rows).sum::<u64>(), 60);
    assert_eq!(s.head_stats().rows, 0);
}

#[tokio::test]
async fn blocks_do_not_store_end_time_and_reads_put_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), StorageConfig::default()).await;
    s.ingest_traces(req(7, 1..6)).await.unwrap();
    let before: Vec<(i64, i64)> =
        s.trace(&TraceId([7; 16])).await.unwrap().iter().map(|r| (r.start_time_unix_nano, r.end_time_unix_nano)).collect();
    s.flush_now().await.unwrap();
    let block = s.snapshot().blocks[0].clone();
    let bytes = std::fs::read(dir.path().join(&block.meta.path)).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
    let cols: Vec<String> = parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    assert!(cols.contains(&"start_time".to_string()) && !cols.contains(&"end_time".to_string()), "{cols:?}");
    let after: Vec<(i64, i64)> =
        s.trace(&TraceId([7; 16])).await.unwrap().iter().map(|r| (r.start_time_unix_nano, r.end_time_unix_nano)).collect();
    assert_eq!(before.len(), 5);
    assert_eq!(before, after);
}

/// A block written before `end_time` was dropped from the stored schema (so holding it, and
/// without the columns of `skein_columnar::spans::layout`) is read and compacted like a new
/// one, next to a new one.
#[tokio::test]
async fn blocks_written_with_end_time_still_read_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig { retention: Duration::secs(0), ..Default::default() };
    let s = open(dir.path(), storage.clone()).await;
    for t in 1..=2u8 {
        s.ingest_traces(req(t, 1..5)).await.unwrap();
        s.flush_now().await.unwrap();
    }
    let ends = |spans: Vec<skein_columnar::SpanRecord>| {
        let mut v: Vec<(i64, i64)> = spans.iter().map(|r| (r.start_time_unix_nano, r.end_time_unix_nano)).collect();
        v.sort_unstable();
        v
    };
    let want = ends(s.trace(&TraceId([1; 16])).await.unwrap());
    // Rewrite the first block with every column, as blocks were written before.
    let old = s.snapshot().blocks[0].meta.clone();
    let path = dir.path().join(&old.path);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let read: Vec<arrow::array::RecordBatch> = reader.map(Result::unwrap).collect();
    let read = arrow::compute::concat_batches(read[0].schema_ref(), &read).unwrap();
    let stored = skein_columnar::spans::layout::restore(&read, &skein_columnar::spans::stored_schema()).unwrap();
    let full = vec![skein_columnar::spans::with_end_time(&stored).unwrap()];
    let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), skein_columnar::spans::schema(), None).unwrap();
    for b in &full {
        w.write(b).unwrap();
    }
    let bytes = w.into_inner().unwrap();
    std::fs::write(&path, &bytes).unwrap();
    s.close();
    drop(s);
    let manifest = dir.path().join("tenants/default/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    for b in m["blocks"].as_array_mut().unwrap() {
        if b["path"] == old.path.as_str() {
            b["bytes"] = bytes.len().into();
            b.as_object_mut().unwrap().remove("columns");
        }
    }
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();

    let s = open(dir.path(), storage).await;
    assert_eq!(ends(s.trace(&TraceId([1; 16])).await.unwrap()), want, "read from the old-format block");
    s.compact_and_expire().await.unwrap();
    assert_eq!(s.snapshot().blocks.len(), 1);
    assert_eq!(ends(s.trace(&TraceId([1; 16])).await.unwrap()), want, "read from the compacted block");
    assert_eq!(count(&s, 2).await, 4);
}

/// Blocks of thousands of spans (more than one read batch, so traces straddle batches) keep
/// every span's parent and attributes through a flush and a compaction.
#[tokio::test]
async fn large_blocks_compact_with_parents_and_attributes_intact() {
    use skein_otlp::synth::{Synth, SynthConfig};
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig { retention: Duration::secs(0), ..Default::default() };
    let s = open(dir.path(), storage).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut synth = Synth::new(SynthConfig::default());
    let mut ids = Vec::new();
    for _ in 0..2 {
        for _ in 0..5 {
            let (r, t) = synth.batch(20, now);
            ids.extend(t);
            s.ingest_traces(r).await.unwrap();
        }
        s.flush_now().await.unwrap();
    }
    let read = |s: Arc<Store>| {
        let ids = ids.clone();
        async move {
            let mut all = Vec::new();
            for id in &ids {
                let mut spans: Vec<String> = s.trace(&TraceId(*id)).await.unwrap().iter().map(|r| format!("{r:?}")).collect();
                spans.sort();
                all.push(spans);
            }
            all
        }
    };
    let before = read(Arc::clone(&s)).await;
    assert!(before.iter().map(Vec::len).sum::<usize>() > 4000);
    assert_eq!(s.snapshot().blocks.len(), 2);
    s.compact_and_expire().await.unwrap();
    assert_eq!(s.snapshot().blocks.len(), 1);
    assert_eq!(read(Arc::clone(&s)).await, before);
}

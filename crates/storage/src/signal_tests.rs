//! Logs and metrics through the store: the WAL, the head, blocks, restart, and node stats.

use crate::{StorageConfig, Store, StoreConfig};
use skein_otlp::synth::signals::{Line, logs_request, metrics_request};
use std::path::Path;
use std::sync::Arc;

fn cfg() -> StoreConfig {
    StoreConfig {
        memory_limit: 1 << 30,
        limits: skein_otlp::Limits::default(),
        wal: skein_wal::WalOptions::default(),
        max_inflight_bytes: 64 << 20,
        storage: StorageConfig::default(),
    }
}

async fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, cfg()).await.unwrap().0
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn rows(batches: &[Arc<arrow::array::RecordBatch>]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

fn lines(t0: u64, n: u64) -> Vec<Line> {
    (0..n).map(|i| Line { time: t0 + i, severity: 9, body: format!("line {i}"), trace_id: vec![7; 16], ..Line::default() }).collect()
}

/// Rows of a table in the snapshot, heads and blocks (blocks counted from the manifest).
fn count(t: &crate::store::TableSnapshot) -> u64 {
    rows(&t.head) as u64 + t.blocks.iter().map(|b| b.meta.rows).sum::<u64>()
}

#[tokio::test]
async fn logs_and_metrics_are_durable_deduplicated_and_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now() - 1_000_000;
    {
        let s = open(dir.path()).await;
        let o = s.ingest_logs(logs_request("web-1", "frontend", &lines(t0, 3))).await.unwrap();
        assert_eq!((o.accepted, o.rejected), (3, 0));
        // a retry of the same request is acknowledged and stored once
        s.ingest_logs(logs_request("web-1", "frontend", &lines(t0, 3))).await.unwrap();
        s.ingest_metrics(metrics_request("web-1", "queue.bytes", false, &[(t0, 1.0), (t0 + 1, 2.0)], &[])).await.unwrap();
        let snap = s.snapshot();
        assert_eq!((count(&snap.logs), count(&snap.metrics)), (3, 2));
        s.close();
    }
    // replayed from the WAL, still once
    let s = open(dir.path()).await;
    let snap = s.snapshot();
    assert_eq!((count(&snap.logs), count(&snap.metrics)), (3, 2));
    // flushed to blocks, then a retry that crosses the flush reaches the head again
    assert!(s.flush_now().await.unwrap());
    let snap = s.snapshot();
    assert_eq!((snap.logs.blocks.len(), snap.metrics.blocks.len()), (1, 1));
    assert_eq!((count(&snap.logs), count(&snap.metrics)), (3, 2));
    let nodes = s.nodes();
    let web = &nodes["web-1"];
    assert_eq!((web.spans, web.logs, web.metrics), (0, 3, 2));
    assert_eq!((web.first_seen_ns, web.last_seen_ns), (t0 as i64, t0 as i64 + 2));
    assert!(web.services.contains("frontend") && web.services.contains("skein-agent"), "{web:?}");
    s.close();
    drop(s);
    // reopened from the manifest: the blocks and the node list are back
    let s = open(dir.path()).await;
    let snap = s.snapshot();
    assert_eq!((count(&snap.logs), count(&snap.metrics)), (3, 2));
    assert_eq!(s.nodes()["web-1"].logs, 3);
    let mut text = String::new();
    s.render_metrics(&mut text);
    assert!(text.contains("skein_log_records_accepted_total"), "{text}");
}

#[tokio::test]
async fn invalid_logs_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let mut bad = lines(now(), 1);
    bad[0].trace_id = vec![1; 3];
    let e = s.ingest_logs(logs_request("n", "s", &bad)).await.unwrap_err();
    assert_eq!(e.code(), skein_core::ErrorCode::BadRequest);
    assert!(e.to_string().contains("trace id must be 16 bytes or empty, got 3"), "{e}");
    let e = s.ingest_metrics_protobuf(bytes::Bytes::from_static(b"\xff\xff")).await.unwrap_err();
    assert_eq!(e.code(), skein_core::ErrorCode::BadRequest);
    assert_eq!(count(&s.snapshot().logs), 0);
}

#[tokio::test]
async fn log_and_metric_blocks_are_compacted_and_retries_across_flushes_merged() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let t0 = now() - 1_000_000;
    let first = logs_request("web-1", "frontend", &lines(t0, 3));
    s.ingest_logs(first.clone()).await.unwrap();
    s.ingest_metrics(metrics_request("web-1", "m", false, &[(t0, 1.0)], &[])).await.unwrap();
    s.flush_now().await.unwrap();
    // the retry crossed the flush: the head takes it again
    s.ingest_logs(first).await.unwrap();
    s.ingest_metrics(metrics_request("web-1", "m", false, &[(t0 + 5, 2.0)], &[])).await.unwrap();
    s.flush_now().await.unwrap();
    let snap = s.snapshot();
    assert_eq!((snap.logs.blocks.len(), count(&snap.logs)), (2, 6));
    s.compact_and_expire().await.unwrap();
    let snap = s.snapshot();
    assert_eq!((snap.logs.blocks.len(), count(&snap.logs)), (1, 3), "the merged block holds each record once");
    assert_eq!((snap.metrics.blocks.len(), count(&snap.metrics)), (1, 2));
    assert_eq!(snap.logs.blocks[0].meta.level, 1);
    // and the manifest agrees after a restart
    s.close();
    drop(s);
    let s = open(dir.path()).await;
    let snap = s.snapshot();
    assert_eq!((snap.logs.blocks.len(), count(&snap.logs), count(&snap.metrics)), (1, 3, 2));
}

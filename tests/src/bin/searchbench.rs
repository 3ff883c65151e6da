//! Trace search over blocks at scale, in process (no HTTP): the block part of
//! `service=X&min_duration=1s` over the last hour, and the same search with the trace
//! summaries the API returns (one trace lookup per match). The baseline beside it is a plain
//! count of the spans the search has to consider, through the same engine.
//!
//! `cargo run --release -p skein-tests --features bench --bin searchbench -- --spans 10000000 --dir /tmp/sb`
//!
//! Spans arrive in time order over the last hour, as a collector receives them, so blocks
//! cover successive time ranges; `--overlap` gives every trace a start near now instead, so
//! every block overlaps every other (the worst case for newest-first search).

use clap::Parser;
use prost::Message;
use skein_core::TraceId;
use skein_core::query::SearchParams;
use skein_otlp::synth::{Synth, SynthConfig};
use skein_query::engine::{Engine, SqlLimits};
use skein_storage::{StorageConfig, Store, StoreConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
struct Args {
    /// Spans to store.
    #[arg(long, default_value_t = 10_000_000)]
    spans: usize,
    /// Spans per block.
    #[arg(long, default_value_t = 1_000_000)]
    block_spans: usize,
    /// Keep the store here, and reuse it when it already holds blocks.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Every trace starts near now, so all blocks overlap in time.
    #[arg(long)]
    overlap: bool,
    /// Searches per service.
    #[arg(long, default_value_t = 10)]
    queries: usize,
    /// Print the plan of one search with its run-time metrics.
    #[arg(long)]
    explain: bool,
}

const HOUR_NS: u64 = 3_600_000_000_000;

fn pct(mut v: Vec<f64>, p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let cfg = StoreConfig {
        memory_limit: 16 << 30,
        limits: skein_otlp::Limits::default(),
        wal: skein_wal::WalOptions { sync: skein_wal::SyncPolicy::Never, ..Default::default() },
        max_inflight_bytes: 1 << 30,
        storage: StorageConfig::default(),
    };
    let (store, _) = Store::open(&dir, cfg).await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    if store.snapshot().blocks.is_empty() {
        let t = Instant::now();
        let mut synth = Synth::new(SynthConfig::default());
        let (mut done, mut in_head) = (0usize, 0usize);
        while done < args.spans {
            let at = if args.overlap { now } else { now - HOUR_NS + (done as u64 * HOUR_NS / args.spans as u64) };
            let (req, _) = synth.batch(20, at);
            let n: usize = req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
            store.ingest_traces_protobuf(bytes::Bytes::from(req.encode_to_vec())).await?;
            done += n;
            in_head += n;
            if in_head >= args.block_spans {
                store.flush_now().await?;
                in_head = 0;
            }
        }
        store.flush_now().await?;
        eprintln!("stored {done} spans in {} blocks in {:.1} s", store.snapshot().blocks.len(), t.elapsed().as_secs_f64());
    }
    store.warm_blocks().await;
    let engine = Engine::new(Arc::clone(&store), SqlLimits { timeout: Duration::from_secs(60), memory: 4 << 30, max_rows: 100_000 });
    let snap = store.snapshot();
    let rows: u64 = snap.blocks.iter().map(|b| b.meta.rows).sum();
    let newest = snap.blocks.iter().map(|b| b.meta.max_start_ns).max().unwrap_or(0);
    println!("{rows} spans in {} blocks", snap.blocks.len());
    let services = store.services();
    let q = |s: &str| SearchParams {
        service: Some(s.to_string()),
        min_duration_ns: Some(1_000_000_000),
        start_ns: Some(newest - HOUR_NS as i64),
        limit: 20,
        ..Default::default()
    };
    // Baseline: counting the spans of one service over the hour, the scan a search that could
    // not stop early would do.
    let mut base = Vec::new();
    for s in &services {
        let sql = format!(
            "SELECT count(*) FROM spans WHERE service_name = '{s}' AND start_time >= to_timestamp_nanos({})",
            newest - HOUR_NS as i64
        );
        let t = Instant::now();
        engine.sql(&sql).await.map_err(|e| anyhow::anyhow!(e.message))?;
        base.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (mut blocks_ms, mut full_ms, mut found) = (Vec::new(), Vec::new(), 0usize);
    for i in 0..args.queries * services.len() {
        let q = q(&services[i % services.len()]);
        let t = Instant::now();
        let ids = engine.search_blocks(store.snapshot(), &q).await.map_err(|e| anyhow::anyhow!(e.message))?;
        blocks_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let ids: Vec<TraceId> = ids.into_iter().map(|(id, _)| TraceId(id)).collect();
        std::hint::black_box(store.traces(&ids).await?);
        full_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        found += ids.len();
    }
    println!("baseline  count(*) of one service over the hour: p50 {:.1} ms p99 {:.1} ms", pct(base.clone(), 50), pct(base, 99));
    println!("search    blocks only: p50 {:.1} ms p99 {:.1} ms", pct(blocks_ms.clone(), 50), pct(blocks_ms, 99));
    println!("search    with summaries: p50 {:.1} ms p99 {:.1} ms ({found} traces found)", pct(full_ms.clone(), 50), pct(full_ms, 99));
    if args.explain {
        let plan = engine.search_frame(store.snapshot(), &q(&services[0])).await.map_err(|e| anyhow::anyhow!(e.message))?;
        for b in plan.explain(false, true)?.collect().await? {
            let col = arrow::array::AsArray::as_string::<i32>(b.column(1));
            for v in col.iter().flatten() {
                println!("{v}");
            }
        }
    }
    store.close();
    Ok(())
}

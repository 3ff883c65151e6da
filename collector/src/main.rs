//! `skein-collector`: parses the command line, loads configuration, binds the listeners,
//! replays the WAL, serves, and shuts down on SIGINT/SIGTERM. Logic lives in `crates/`.

mod config;
mod demo;
mod handlers;

use anyhow::Context;
use clap::Parser;
use config::{CollectorConfig, WalSync};
use handlers::Collector;
use skein_query::alerts::Evaluator;
use skein_server::process::{
    Command, ConfigArgs, bind, check_socket_addrs, main_with, serve_otlp, shutdown_signal, wait_for_true, write_listen_file,
};
use skein_server::{ServerMetrics, Webhook, WebhookOptions};
use skein_storage::{Store, StoreConfig};
use std::sync::Arc;
use tokio::sync::watch;

/// Skein trace collector: OTLP in, durable WAL, Arrow head, trace queries and the Jaeger API out.
#[derive(Parser, Debug)]
#[command(name = "skein-collector", version)]
struct Cli {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Also run three simulated nodes sending realistic traces, so there is data to look at.
    #[arg(long)]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

fn load_config(cli: &Cli) -> anyhow::Result<CollectorConfig> {
    // `SKEIN_AGENT_*` configures the agent (which may share the environment, e.g. in a test
    // or on a host running both), not the collector.
    let mut cfg: CollectorConfig = cli.cfg.load("SKEIN_", &["SKEIN_AGENT_"])?;
    if let Some(d) = &cli.cfg.data_dir {
        cfg.data_dir = d.clone();
    }
    // A request must fit one WAL record (and Arrow's 32-bit offsets).
    let max_record = skein_wal::MAX_RECORD_LEN as u64 - 1;
    if cfg.otlp.max_body_size.bytes() > max_record {
        anyhow::bail!(
            "invalid configuration: otlp.max_body_size = {} is larger than the largest WAL record ({max_record} bytes)",
            cfg.otlp.max_body_size
        );
    }
    check_socket_addrs(&[
        ("otlp.grpc_addr", &cfg.otlp.grpc_addr),
        ("otlp.http_addr", &cfg.otlp.http_addr),
        ("query.addr", &cfg.query.addr),
    ])?;
    cfg.alerts.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(cfg)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let demo = cli.demo;
    main_with("skein-collector", load_config(&cli), cli.command, |c: &CollectorConfig| &c.log.level, None, move |cfg| run(cfg, demo))
}

async fn run(mut cfg: CollectorConfig, demo: bool) -> anyhow::Result<()> {
    if demo && cfg.alerts.rules.is_empty() {
        // Something for GET /api/v1/alerts to show: the demo's replica falls 35 s behind every
        // 3 minutes.
        cfg.alerts.rules.push(skein_query::alerts::RuleConfig {
            name: "demo: replica behind".into(),
            kind: "replica_lag".into(),
            above_seconds: Some(10.0),
            hold: Some(skein_core::Duration::secs(10)),
            ..Default::default()
        });
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let grpc_l = bind("otlp.grpc_addr", &cfg.otlp.grpc_addr).await?;
    let http_l = bind("otlp.http_addr", &cfg.otlp.http_addr).await?;
    let query_l = bind("query.addr", &cfg.query.addr).await?;
    let (grpc_addr, http_addr, query_addr) = (grpc_l.local_addr()?, http_l.local_addr()?, query_l.local_addr()?);
    tracing::warn!("no authentication configured: running open and single-tenant");

    let rules = cfg.alerts.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let webhook = match &cfg.alerts.webhook {
        Some(w) => Some(
            Webhook::new(WebhookOptions::new(&w.url, w.timeout.into()))
                .map_err(|e| anyhow::anyhow!("invalid configuration: alerts.webhook: {e}"))?,
        ),
        None => None,
    };
    let collector = Arc::new(Collector::new(&cfg, Evaluator::new(rules), webhook.clone()));
    let metrics = Arc::new(ServerMetrics::default());
    let max_body = usize::try_from(cfg.otlp.max_body_size.bytes()).unwrap_or(usize::MAX);
    let max_inflight = usize::try_from(cfg.otlp.max_inflight_bytes.bytes()).unwrap_or(usize::MAX);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let otlp = serve_otlp(collector.clone(), grpc_l, http_l, max_body, max_inflight, Arc::clone(&metrics), shutdown_rx.clone());
    let query = axum::serve(query_l, skein_server::query_router(collector.clone(), collector.clone(), Arc::clone(&metrics)))
        .with_graceful_shutdown(wait_for_true(shutdown_rx.clone()));
    let query = tokio::spawn(async move { query.await });
    write_listen_file(&cfg.data_dir, &[("otlp_grpc", grpc_addr), ("otlp_http", http_addr), ("query", query_addr)])?;
    tracing::info!(otlp_grpc = %grpc_addr, otlp_http = %http_addr, query = %query_addr, data_dir = %cfg.data_dir.display(), "listening");

    let store_cfg = StoreConfig {
        memory_limit: cfg.head.memory_limit.bytes(),
        limits: skein_otlp::Limits {
            max_attributes_per_span: cfg.otlp.max_attributes_per_span,
            max_attribute_value_len: cfg.otlp.max_attribute_value_len,
        },
        wal: skein_wal::WalOptions {
            segment_size: cfg.wal.segment_size.bytes(),
            sync: match cfg.wal.sync {
                WalSync::Always => skein_wal::SyncPolicy::Always,
                WalSync::Never => skein_wal::SyncPolicy::Never,
            },
            ..Default::default()
        },
        max_inflight_bytes: cfg.otlp.max_inflight_bytes.bytes().max(cfg.otlp.max_body_size.bytes()),
        storage: cfg.storage.clone(),
    };
    let dir = cfg.data_dir.clone();
    let started = std::time::Instant::now();
    let opened = Store::open(&dir, store_cfg).await;
    let maintenance = match opened {
        Ok((store, report)) => {
            tracing::info!(
                records = report.records,
                bytes = report.bytes,
                segments = report.segments,
                corruptions = report.corruptions.len(),
                spans = store.head_stats().rows,
                blocks = store.snapshot().blocks.len(),
                storage = %store.objects().location,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "write-ahead log replayed; ready"
            );
            collector.set_store(Arc::clone(&store));
            let maintenance = tokio::spawn(Arc::clone(&store).run_maintenance(shutdown_rx.clone()));
            tokio::spawn(async move { store.warm_blocks().await });
            maintenance
        }
        Err(e) => {
            collector.set_failed(e.to_string());
            let _ = shutdown_tx.send(true);
            return Err(anyhow::anyhow!(e).context("opening the store"));
        }
    };

    let webhook_task = webhook.map(|w| tokio::spawn(w.run(shutdown_rx.clone())));
    let alerts_task = collector
        .has_alert_rules()
        .then(|| tokio::spawn(Arc::clone(&collector).run_alerts(cfg.alerts.interval.into(), shutdown_rx.clone())));
    let demo_task = demo.then(|| tokio::spawn(demo::run(grpc_addr, shutdown_rx.clone())));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let [grpc, http] = otlp;
    let _ = tokio::join!(grpc, http, query);
    for t in [demo_task, alerts_task, webhook_task].into_iter().flatten() {
        let _ = t.await;
    }
    let _ = maintenance.await;
    if let Some(store) = collector.store().cloned() {
        // Joins the WAL writer thread after it wrote what is queued: not on an async worker.
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
    Ok(())
}

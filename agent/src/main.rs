//! `skein-agent`: parses the command line, loads configuration, opens one queue per
//! collector, binds the OTLP and admin listeners, runs the exporters, and on SIGTERM stops
//! taking data, pushes what it can within `shutdown_timeout` and keeps the rest queued.
//! Logic lives in `crates/` (sources, exporter, wal).

mod admin;
mod config;

use anyhow::Context;
use clap::Parser;
use config::{AgentConfig, QueueSync};
use skein_exporter::Exporter;
use skein_server::ServerMetrics;
use skein_server::process::{
    Command, ConfigArgs, bind, check_socket_addrs, main_with, serve_otlp, shutdown_signal, wait_for_true, write_listen_file,
};
use skein_sources::enrich::NodeIdentity;
use skein_sources::otlp::{AgentIngest, Destination};
use skein_sources::otlp_build::now_unix_ns;
use skein_wal::{Queue, QueueOptions, SyncPolicy};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// Skein agent: OTLP from the apps on this node, stamped with the node's identity, kept in a
/// disk-backed queue and pushed to the collector.
#[derive(Parser, Debug)]
#[command(name = "skein-agent", version)]
struct Cli {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Collector OTLP/gRPC endpoint (repeatable; replaces `exporter.endpoints`).
    #[arg(long = "collector", value_name = "URL", global = true)]
    collectors: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

fn load_config(cli: &Cli) -> anyhow::Result<AgentConfig> {
    let mut cfg: AgentConfig = cli.cfg.load("SKEIN_AGENT_", &[])?;
    if let Some(d) = &cli.cfg.data_dir {
        cfg.data_dir = d.clone();
    }
    if !cli.collectors.is_empty() {
        cfg.exporter.endpoints.clone_from(&cli.collectors);
    }
    check_socket_addrs(&[
        ("otlp.grpc_addr", &cfg.otlp.grpc_addr),
        ("otlp.http_addr", &cfg.otlp.http_addr),
        ("admin.addr", &cfg.admin.addr),
    ])?;
    if cfg.exporter.endpoints.is_empty() {
        anyhow::bail!("invalid configuration: exporter.endpoints is empty; name at least one collector, e.g. [\"http://collector:4317\"]");
    }
    for e in &cfg.exporter.endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) || e.parse::<tonic::transport::Uri>().is_err() {
            anyhow::bail!("invalid configuration: exporter.endpoints has {e:?}; expected a URL such as \"http://collector:4317\"");
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = cfg.exporter.endpoints.iter().find(|e| !seen.insert(e.trim_end_matches('/'))) {
        anyhow::bail!("invalid configuration: exporter.endpoints lists {dup:?} twice");
    }
    for (key, d) in [("exporter.timeout", cfg.exporter.timeout), ("exporter.retry_initial_delay", cfg.exporter.retry_initial_delay)] {
        if d.0.is_zero() {
            anyhow::bail!("invalid configuration: {key} = 0s; it must be positive (e.g. \"200ms\")");
        }
    }
    let max_record = skein_wal::MAX_RECORD_LEN as u64 - 64;
    if cfg.otlp.max_body_size.bytes() > max_record {
        anyhow::bail!(
            "invalid configuration: otlp.max_body_size = {} is larger than the largest queue record ({max_record} bytes)",
            cfg.otlp.max_body_size
        );
    }
    if cfg.queue.segment_size.bytes().saturating_mul(4) > cfg.queue.max_bytes.bytes() {
        anyhow::bail!(
            "invalid configuration: queue.max_bytes = {} must hold at least 4 segments of queue.segment_size = {}",
            cfg.queue.max_bytes,
            cfg.queue.segment_size
        );
    }
    cfg.file_tail.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    skein_sources::replica_lag::build(&cfg.replica_lag.probes).map_err(|e| anyhow::anyhow!("invalid configuration: replica_lag: {e}"))?;
    for (i, t) in cfg.prom_scrape.iter().enumerate() {
        t.validate(i).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    }
    Ok(cfg)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Two worker threads: the agent shares its node with the apps it serves.
    main_with("skein-agent", load_config(&cli), cli.command, |c: &AgentConfig| &c.log.level, Some(2), run)
}

/// The queue directory of one collector: its URL made into a file name, so reordering the
/// list keeps each collector's backlog with it.
fn queue_dir(data_dir: &Path, endpoint: &str) -> PathBuf {
    let name: String = endpoint.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    data_dir.join("queue").join(name)
}

/// Queues `make(now)` every `every` until `stop` turns true, the first one at once when
/// `at_start` (else after one interval); a failure is logged with `what`.
fn periodic(
    ingest: &Arc<AgentIngest>,
    every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    at_start: bool,
    mut make: impl FnMut(u64) -> skein_otlp::ExportMetricsServiceRequest + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let ingest = Arc::clone(ingest);
    tokio::spawn(async move {
        let mut wait = !at_start;
        loop {
            if wait {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|v| *v) => return,
                }
            }
            wait = true;
            let req = make(now_unix_ns());
            if let Err(e) = skein_server::OtlpIngest::export(ingest.as_ref(), skein_server::Export::Metrics(req)).await {
                tracing::warn!(error = %e.message, "queueing {what} failed");
            }
        }
    })
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let opts = QueueOptions {
        max_bytes: cfg.queue.max_bytes.bytes(),
        segment_size: cfg.queue.segment_size.bytes(),
        sync: match cfg.queue.sync {
            QueueSync::Always => SyncPolicy::Always,
            QueueSync::Never => SyncPolicy::Never,
        },
    };
    let mut exporters = Vec::new();
    let mut destinations = Vec::new();
    for endpoint in &cfg.exporter.endpoints {
        let dir = queue_dir(&cfg.data_dir, endpoint);
        let q = tokio::task::spawn_blocking({
            let (dir, opts) = (dir.clone(), opts.clone());
            move || Queue::open(&dir, opts)
        })
        .await?
        .with_context(|| format!("opening the queue in {}", dir.display()))?;
        let q = Arc::new(q);
        let exp = Arc::new(Exporter::new(endpoint.clone(), cfg.exporter.clone(), Arc::clone(&q)));
        destinations.push(Destination { queue: q, notify: Arc::clone(&exp.notify) });
        exporters.push(exp);
    }
    let identity = NodeIdentity::detect(&cfg.node, &|k| std::env::var(k).ok());
    let limits = skein_otlp::Limits {
        max_attributes_per_span: cfg.otlp.max_attributes_per_span,
        max_attribute_value_len: cfg.otlp.max_attribute_value_len,
    };
    let ingest = Arc::new(AgentIngest::new(identity.clone(), &cfg.exporter.endpoints, destinations, limits));

    let grpc_l = bind("otlp.grpc_addr", &cfg.otlp.grpc_addr).await?;
    let http_l = bind("otlp.http_addr", &cfg.otlp.http_addr).await?;
    let admin_l = bind("admin.addr", &cfg.admin.addr).await?;
    let (grpc_addr, http_addr, admin_addr) = (grpc_l.local_addr()?, http_l.local_addr()?, admin_l.local_addr()?);
    let metrics = Arc::new(ServerMetrics::default());
    let max_body = usize::try_from(cfg.otlp.max_body_size.bytes()).unwrap_or(usize::MAX);
    let max_inflight = usize::try_from(cfg.otlp.max_inflight_bytes.bytes()).unwrap_or(usize::MAX);
    let (stop_rx_tx, stop_rx) = watch::channel(false);
    // Exporters learn the drain deadline; the admin port stays up until the very end.
    let (drain_until_tx, drain_until) = watch::channel(None);
    let (stop_admin_tx, stop_admin) = watch::channel(false);
    let [grpc, http] = serve_otlp(ingest.clone(), grpc_l, http_l, max_body, max_inflight, Arc::clone(&metrics), stop_rx.clone());
    let state = Arc::new(admin::Admin::new(identity, ingest.clone(), exporters.clone(), metrics));
    let admin = axum::serve(admin_l, admin::router(Arc::clone(&state))).with_graceful_shutdown(wait_for_true(stop_admin));
    let admin = tokio::spawn(async move { admin.await });
    let drain = cfg.shutdown_timeout.0;
    let tasks: Vec<_> = exporters.iter().map(|e| tokio::spawn(Arc::clone(e).run(drain_until.clone()))).collect();
    let reporter = (!cfg.admin.report_interval.0.is_zero()).then(|| {
        let state = Arc::clone(&state);
        periodic(&ingest, cfg.admin.report_interval.0, stop_rx.clone(), "the agent's own metrics", false, move |now| state.self_report(now))
    });
    let host = (!cfg.host_metrics.interval.0.is_zero()).then(|| {
        let uptime_ns = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0, |s| (s * 1e9) as u64);
        let mut sampler = skein_sources::host_metrics::Sampler::new("/", now_unix_ns().saturating_sub(uptime_ns));
        periodic(&ingest, cfg.host_metrics.interval.0, stop_rx.clone(), "host metrics", true, move |now| sampler.sample(now))
    });
    let tail = if cfg.file_tail.inputs.is_empty() {
        None
    } else {
        let tailer = skein_sources::file_tail::Tailer::new(cfg.file_tail.clone(), &cfg.data_dir.join("file_tail"))
            .map_err(|e| anyhow::anyhow!("file_tail: {e}"))?;
        state.set_tail_stats(Arc::clone(&tailer.stats));
        let (ingest, stop) = (Arc::clone(&ingest), stop_rx.clone());
        let export = move |req| {
            let ingest = Arc::clone(&ingest);
            async move {
                skein_server::OtlpIngest::export(ingest.as_ref(), skein_server::Export::Logs(req)).await.map(|_| ()).map_err(|e| {
                    use skein_sources::file_tail::ExportError;
                    match e.code {
                        skein_core::ErrorCode::BadRequest | skein_core::ErrorCode::PayloadTooLarge => ExportError::Refused(e.message),
                        _ => ExportError::Retry(e.message),
                    }
                })
            }
        };
        Some(tokio::spawn(skein_sources::file_tail::run(tailer, export, stop)))
    };
    let started = now_unix_ns();
    let scrapers: Vec<_> = cfg
        .prom_scrape
        .iter()
        .map(|target| {
            let (ingest, stop) = (Arc::clone(&ingest), stop_rx.clone());
            let export = move |req| {
                let ingest = Arc::clone(&ingest);
                async move {
                    skein_server::OtlpIngest::export(ingest.as_ref(), skein_server::Export::Metrics(req))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.message)
                }
            };
            tokio::spawn(skein_sources::prom_scrape::Scraper::new(target.clone(), started).run(export, stop))
        })
        .collect();
    let lag = skein_sources::replica_lag::spawn(&cfg.replica_lag.probes, Arc::clone(&ingest), stop_rx.clone()).context("replica_lag")?;
    write_listen_file(&cfg.data_dir, &[("otlp_grpc", grpc_addr), ("otlp_http", http_addr), ("admin", admin_addr)])?;
    state.set_ready();
    tracing::info!(
        otlp_grpc = %grpc_addr,
        otlp_http = %http_addr,
        admin = %admin_addr,
        collectors = ?cfg.exporter.endpoints,
        data_dir = %cfg.data_dir.display(),
        "listening"
    );

    shutdown_signal().await;
    // Everything below ends by `shutdown_timeout` after the signal, but a push in flight at
    // that moment, which may take up to `exporter.timeout`.
    let deadline = std::time::Instant::now() + drain;
    tracing::info!(timeout = ?drain, "shutting down: no new data; pushing what is queued");
    // Stop taking data first (requests in progress are answered, sources hand over their last
    // export), then let the exporters drain.
    let _ = stop_rx_tx.send(true);
    let stopping = async {
        let _ = tokio::join!(grpc, http);
        for task in [reporter, host, tail, Some(lag)].into_iter().flatten().chain(scrapers) {
            let _ = task.await;
        }
    };
    if tokio::time::timeout_at(deadline.into(), stopping).await.is_err() {
        tracing::warn!("a listener or source was still busy at shutdown_timeout; not waiting for it");
    }
    let _ = drain_until_tx.send(Some(deadline));
    let hard_stop = tokio::time::Instant::from_std(deadline) + cfg.exporter.timeout.0;
    for t in tasks {
        if tokio::time::timeout_at(hard_stop, t).await.is_err() {
            tracing::warn!("an exporter was still pushing at the shutdown deadline; its records stay queued");
        }
    }
    tracing::info!(records_left_in_queue = state.queued_records(), "stopped");
    let _ = stop_admin_tx.send(true);
    let _ = admin.await;
    Ok(())
}

//! What both binaries do around their work: the `run` / `check-config` /
//! `print-default-config` commands, logging, listeners, `listen.json`, and SIGTERM/SIGINT.

use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use tokio::net::TcpListener;

/// The flags both binaries take for their configuration (flatten into the CLI).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML configuration file (see config/<binary>.example.toml).
    #[arg(long, short = 'c', global = true)]
    pub config: Option<std::path::PathBuf>,
    /// Override one key, e.g. `--set log.level=debug` (repeatable; wins over file and env).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
    /// Data directory (same as `--set data_dir=DIR`).
    #[arg(long, global = true)]
    pub data_dir: Option<std::path::PathBuf>,
}

impl ConfigArgs {
    /// Loads `T` from the file, the environment variables starting with `prefix` (except
    /// those starting with one of `foreign`, another binary's), and the `--set`s.
    ///
    /// # Errors
    /// As [`skein_core::config::load`].
    pub fn load<T: serde::de::DeserializeOwned + serde::Serialize + Default>(&self, prefix: &str, foreign: &[&str]) -> anyhow::Result<T> {
        let env = std::env::vars().filter(|(k, _)| !foreign.iter().any(|f| k.starts_with(f)));
        Ok(skein_core::config::load(self.config.as_deref(), env, prefix, &self.set)?)
    }
}

/// The subcommands of `skein-collector` and `skein-agent`.
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run (the default).
    Run,
    /// Load and validate the configuration, then exit.
    CheckConfig,
    /// Print the default configuration as TOML.
    PrintDefaultConfig,
}

/// Runs `command` for binary `name`: exit code 2 for a configuration that did not load,
/// otherwise prints the default configuration, confirms a valid one, or starts logging at
/// `log_level(&cfg)` and a multi-threaded runtime (`worker_threads`, or one per core) and runs
/// `run(cfg)` on it.
pub fn main_with<C, F, Fut>(
    name: &str,
    loaded: anyhow::Result<C>,
    command: Option<Command>,
    log_level: fn(&C) -> &str,
    worker_threads: Option<usize>,
    run: F,
) -> ExitCode
where
    C: serde::Serialize + Default,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            return ExitCode::from(2);
        }
    };
    match command {
        Some(Command::PrintDefaultConfig) => {
            print!("{}", toml::to_string(&C::default()).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig) => {
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Some(Command::Run) | None => {
            init_logging(log_level(&cfg));
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = worker_threads {
                b.worker_threads(n);
            }
            let rt = match b.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("{name}: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: a log file or a container log gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

/// Checks that each `(key, value)` is a socket address, naming the key when one is not.
///
/// # Errors
/// The first value that does not parse.
pub fn check_socket_addrs(addrs: &[(&str, &str)]) -> anyhow::Result<()> {
    for (key, addr) in addrs {
        addr.parse::<SocketAddr>().map_err(|e| {
            anyhow::anyhow!("invalid configuration: {key} = {addr:?} is not a socket address ({e}); expected e.g. \"127.0.0.1:4317\"")
        })?;
    }
    Ok(())
}

/// Binds `addr` (the value of config key `key`, named in the error).
///
/// # Errors
/// The address could not be bound.
pub async fn bind(key: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {key} = {addr}"))
}

/// Writes `<dir>/listen.json` with the bound addresses (atomically), so tools and tests that
/// asked for port 0 learn the real ports.
///
/// # Errors
/// The file could not be written.
pub fn write_listen_file(dir: &Path, addrs: &[(&str, SocketAddr)]) -> anyhow::Result<()> {
    let body: serde_json::Map<String, serde_json::Value> = addrs.iter().map(|(k, a)| ((*k).to_string(), a.to_string().into())).collect();
    let tmp = dir.join("listen.json.tmp");
    std::fs::write(&tmp, serde_json::Value::Object(body).to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("listen.json")).with_context(|| format!("writing {}/listen.json", dir.display()))?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Resolves once `rx` turns true.
pub async fn wait_for_true(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Serves OTLP for every signal on both listeners (gRPC: `TraceService`, `LogsService`,
/// `MetricsService`; HTTP: `/v1/traces`, `/v1/logs`, `/v1/metrics`) over `ingest`, until
/// `stop` turns true; one task per listener. Requests are at most `max_body` bytes, and both
/// listeners share one budget of `max_inflight` request bytes in progress.
#[allow(clippy::too_many_arguments)]
pub fn serve_otlp(
    ingest: std::sync::Arc<dyn crate::OtlpIngest>,
    grpc: TcpListener,
    http: TcpListener,
    max_body: usize,
    max_inflight: usize,
    metrics: std::sync::Arc<crate::ServerMetrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> [tokio::task::JoinHandle<()>; 2] {
    let budget = crate::BodyBudget::for_limits(max_inflight, max_body);
    let grpc = tonic::transport::Server::builder()
        // HTTP/2's default 64 KiB stream window makes a client stop and wait for a window
        // update several times per typical export (hundreds of KiB): more round trips, wake-ups
        // and syscalls per request. A window of a few MiB lets a request arrive in one go.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(crate::GrpcTraceService::new(ingest.clone(), max_body, budget.clone(), metrics.clone()))
        .add_service(crate::GrpcLogsService::new(ingest.clone(), max_body, budget.clone(), metrics.clone()))
        .add_service(crate::GrpcMetricsService::new(ingest.clone(), max_body, budget.clone(), metrics.clone()))
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(grpc), wait_for_true(stop.clone()));
    let http = axum::serve(http, crate::otlp_http_router(ingest, &skein_otlp::Signal::ALL, max_body, budget, metrics))
        .with_graceful_shutdown(wait_for_true(stop));
    [
        tokio::spawn(async move {
            if let Err(e) = grpc.await {
                tracing::error!(error = %e, "the OTLP/gRPC server failed");
            }
        }),
        tokio::spawn(async move {
            if let Err(e) = http.await {
                tracing::error!(error = %e, "the OTLP/HTTP server failed");
            }
        }),
    ]
}

//! Runs the real `skein-collector` binary for a test.
//!
//! [`Collector::start`] (or [`Collector::builder`]) starts the binary in a fresh temporary
//! directory with every listener on `127.0.0.1:0`, waits (with a deadline) until the
//! collector has written `<data_dir>/listen.json` and answers `/readyz` with 200, and hands
//! back the bound addresses. The child's stdout and stderr go to `<tmp>/collector.log`.
//!
//! When the `Collector` is dropped, the child is killed and its log is printed to stderr:
//! the test harness captures that output and shows it only for a failing test. If the test
//! is panicking, the temporary directory is kept and its path printed.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use skein_otlp::proto::collector::trace::v1::trace_service_client::TraceServiceClient;
use skein_otlp::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::Channel;

use crate::wait::wait_until;

/// How long a start (or restart, including WAL replay) may take by default.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How much of the collector's log is printed when the harness is dropped.
const LOG_TAIL: u64 = 64 * 1024;

/// The workspace root (the parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The collector binary: `$SKEIN_COLLECTOR_BIN`, else `$CARGO_TARGET_DIR/debug/skein-collector`,
/// else `<workspace>/target/debug/skein-collector`.
///
/// # Errors
/// The binary does not exist (with a hint how to build it).
pub fn collector_bin() -> Result<PathBuf> {
    binary("skein-collector", "SKEIN_COLLECTOR_BIN")
}

/// A workspace binary: `$<env_var>`, else `$CARGO_TARGET_DIR/debug/<name>`, else
/// `<workspace>/target/debug/<name>`.
///
/// # Errors
/// The binary does not exist (with a hint how to build it).
pub fn binary(name: &str, env_var: &str) -> Result<PathBuf> {
    let path = if let Some(p) = std::env::var_os(env_var) {
        PathBuf::from(p)
    } else {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_relative() { workspace_root().join(t) } else { t })
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug").join(name)
    };
    if !path.is_file() {
        bail!(
            "{name} binary not found at {}: build it with `cargo build -p {name}` \
             (tests/run-all.sh does), or point {env_var} at it",
            path.display()
        );
    }
    Ok(path)
}

/// The addresses the collector bound, read from `<data_dir>/listen.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// OTLP/gRPC.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// Query API, Jaeger API and ops endpoints.
    pub query: SocketAddr,
}

impl Listen {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("listen.json is not JSON: {text}"))?;
        let addr = |k: &str| -> Result<SocketAddr> {
            v[k].as_str()
                .with_context(|| format!("listen.json has no string {k:?}: {text}"))?
                .parse()
                .with_context(|| format!("listen.json {k:?} is not an address: {text}"))
        };
        Ok(Self { otlp_grpc: addr("otlp_grpc")?, otlp_http: addr("otlp_http")?, query: addr("query")? })
    }
}

/// How to start a collector: extra `--set key=value`s, extra arguments and environment.
#[derive(Debug, Clone)]
pub struct CollectorBuilder {
    sets: Vec<(String, String)>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    ready_timeout: Duration,
}

impl Default for CollectorBuilder {
    fn default() -> Self {
        Self { sets: Vec::new(), args: Vec::new(), env: Vec::new(), ready_timeout: READY_TIMEOUT }
    }
}

impl CollectorBuilder {
    /// Adds `--set key=value` (after the harness's own ephemeral-port settings).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.sets.push((key.into(), value.into()));
        self
    }

    /// Adds a command-line flag placed before the `run` subcommand, e.g. `--demo`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the child (the harness removes every inherited
    /// `SKEIN_*` variable, so only these reach the collector's configuration).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How long to wait for `listen.json` and `/readyz` (default 90 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the collector in a new temporary directory and waits until it is ready.
    ///
    /// # Errors
    /// The binary is missing, exits, or is not ready within the timeout (the error carries
    /// the tail of its log).
    pub async fn start(self) -> Result<Collector> {
        let bin = collector_bin()?;
        let tmp = tempfile::Builder::new().prefix("skein-e2e-").tempdir().context("creating a temporary directory")?;
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        let log_path = tmp.path().join("collector.log");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        let mut c = Collector { bin, config: self, tmp: Some(tmp), data_dir, log_path, child: None, listen: None, starts: 0, client };
        c.spawn_and_wait().await?;
        Ok(c)
    }
}

/// A running `skein-collector` (see the module docs).
#[derive(Debug)]
pub struct Collector {
    bin: PathBuf,
    config: CollectorBuilder,
    tmp: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    listen: Option<Listen>,
    starts: u32,
    client: reqwest::Client,
}

impl Collector {
    /// A builder for a collector with extra settings.
    pub fn builder() -> CollectorBuilder {
        CollectorBuilder::default()
    }

    /// Starts a collector with the default configuration (ephemeral ports, temp data dir).
    ///
    /// # Errors
    /// See [`CollectorBuilder::start`].
    pub async fn start() -> Result<Self> {
        Self::builder().start().await
    }

    /// The data directory (kept across [`restart`](Self::restart)).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The addresses bound by the current process.
    ///
    /// # Panics
    /// After [`kill9`](Self::kill9) and before a restart.
    pub fn listen(&self) -> Listen {
        self.listen.unwrap_or_else(|| panic!("the collector is not running"))
    }

    /// `http://<query addr><path>`, e.g. `c.query_url("/api/v1/services")`.
    pub fn query_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen().query)
    }

    /// The OTLP/HTTP traces endpoint, `http://<addr>/v1/traces`.
    pub fn otlp_http_url(&self) -> String {
        format!("http://{}/v1/traces", self.listen().otlp_http)
    }

    /// The OTLP/gRPC endpoint, `http://<addr>`.
    pub fn otlp_grpc_url(&self) -> String {
        format!("http://{}", self.listen().otlp_grpc)
    }

    /// The process id of the running collector.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A shared HTTP client (60 s timeout per request).
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// `GET` on the query port; returns the status and the body parsed as JSON.
    ///
    /// # Errors
    /// Transport errors, or a body that is not JSON.
    pub async fn get_json(&self, path: &str) -> Result<(u16, Value)> {
        let url = self.query_url(path);
        let resp = self.client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let v = serde_json::from_str(&text).with_context(|| format!("GET {url} answered {status} with a body that is not JSON: {text}"))?;
        Ok((status, v))
    }

    /// `GET /api/v1/traces/{trace_id}`, which must answer 200; returns the trace.
    ///
    /// # Errors
    /// Any other status, or transport errors.
    pub async fn trace(&self, trace_id_hex: &str) -> Result<Value> {
        let (status, v) = self.get_json(&format!("/api/v1/traces/{trace_id_hex}")).await?;
        if status != 200 {
            bail!("GET /api/v1/traces/{trace_id_hex} answered {status}: {v}");
        }
        Ok(v)
    }

    /// `POST /v1/traces` with a raw body, content type and optional content encoding.
    ///
    /// # Errors
    /// Transport errors only; any status is returned.
    pub async fn post_traces(&self, body: Vec<u8>, content_type: &str, content_encoding: Option<&str>) -> Result<reqwest::Response> {
        let mut req = self.client.post(self.otlp_http_url()).header("content-type", content_type).body(body);
        if let Some(enc) = content_encoding {
            req = req.header("content-encoding", enc);
        }
        Ok(req.send().await?)
    }

    /// Exports `req` over OTLP/HTTP protobuf; fails unless the answer is 200.
    ///
    /// # Errors
    /// A non-200 answer (with its body), transport or decode errors.
    pub async fn export_http(&self, req: &ExportTraceServiceRequest) -> Result<ExportTraceServiceResponse> {
        let resp = self.post_traces(prost::Message::encode_to_vec(req), "application/x-protobuf", None).await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if status != 200 {
            let msg = <skein_otlp::RpcStatus as prost::Message>::decode(&body[..])
                .map(|s| s.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("POST /v1/traces answered {status}: {msg}");
        }
        Ok(<ExportTraceServiceResponse as prost::Message>::decode(&body[..])?)
    }

    /// A gRPC `TraceService` client on a new connection (30 s request timeout).
    ///
    /// # Errors
    /// The connection could not be made.
    pub async fn grpc_client(&self) -> Result<TraceServiceClient<Channel>> {
        let channel = Channel::from_shared(self.otlp_grpc_url())?
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.otlp_grpc_url()))?;
        Ok(TraceServiceClient::new(channel))
    }

    /// Kills the collector with SIGKILL and reaps it; the data directory stays.
    ///
    /// # Errors
    /// The process could not be signalled or reaped.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("sending SIGKILL to the collector")?;
            child.wait().context("reaping the collector")?;
        }
        self.listen = None;
        Ok(())
    }

    /// Starts the collector again on the same data directory (killing it first with SIGKILL
    /// if it is still running) and waits until it is ready; ports change.
    ///
    /// # Errors
    /// See [`CollectorBuilder::start`].
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn_and_wait().await
    }

    /// Drops the environment variables set with [`CollectorBuilder::env`] for later restarts.
    pub fn clear_env(&mut self) {
        self.config.env.clear();
    }

    /// The collector's log so far (stdout and stderr of every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let Ok(mut f) = File::open(&self.log_path) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let listen_json = self.data_dir.join("listen.json");
        match std::fs::remove_file(&listen_json) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing a stale listen.json"),
        }
        self.starts += 1;
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log_path)?;
        let args = self.args();
        writeln!(log, "==== skein-tests: start #{} ====\n$ {} {}", self.starts, self.bin.display(), args.join(" "))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SKEIN_") {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in &self.config.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().with_context(|| format!("spawning {}", self.bin.display()))?);

        let timeout = self.config.ready_timeout;
        let result = wait_until(timeout, "listen.json and /readyz = 200", || {
            let exited = self.child.as_mut().map(|c| c.try_wait());
            let client = &self.client;
            let listen_json = &listen_json;
            async move {
                // `Some(Err(_))` stops the wait at once: the process is gone.
                match exited {
                    Some(Ok(Some(status))) => {
                        return Some(Err(format!("the collector exited: {status}")));
                    }
                    Some(Err(e)) => return Some(Err(format!("waiting on the collector: {e}"))),
                    _ => {}
                }
                let Ok(listen) = Listen::read(listen_json) else {
                    return None;
                };
                let ready = client
                    .get(format!("http://{}/readyz", listen.query))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .map(|r| r.status().as_u16() == 200)
                    .unwrap_or(false);
                ready.then_some(Ok(listen))
            }
        })
        .await;
        match result {
            Ok(Ok(listen)) => {
                self.listen = Some(listen);
                Ok(())
            }
            Ok(Err(why)) => {
                self.child = None;
                bail!("{why}; log {}:\n{}", self.log_path.display(), self.log_tail())
            }
            Err(e) => {
                let _ = self.kill9();
                bail!("{e}; log {}:\n{}", self.log_path.display(), self.log_tail())
            }
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec!["--data-dir".to_string(), self.data_dir.display().to_string()];
        let ports = [("otlp.grpc_addr", "127.0.0.1:0"), ("otlp.http_addr", "127.0.0.1:0"), ("query.addr", "127.0.0.1:0")];
        let sets = ports.iter().map(|(k, v)| (k.to_string(), v.to_string())).chain(self.config.sets.iter().cloned());
        for (k, v) in sets {
            args.push("--set".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(self.config.args.iter().cloned());
        args.push("run".into());
        args
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Captured by the test harness: shown only when the test fails.
        eprintln!(
            "---- skein-collector log ({}), last {} KiB ----\n{}\n---- end of skein-collector log ----",
            self.log_path.display(),
            LOG_TAIL / 1024,
            self.log_tail()
        );
        if std::thread::panicking()
            && let Some(tmp) = self.tmp.take()
        {
            eprintln!("kept the collector's directory for inspection: {}", tmp.keep().display());
        }
    }
}

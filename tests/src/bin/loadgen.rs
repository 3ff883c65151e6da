//! `loadgen`: measures the collector's OTLP/gRPC ingest and trace-by-id latency.
//!
//! It starts `skein-collector` in a temporary data directory on ephemeral ports (or targets a
//! running one with `--grpc`, `--query` and `--pid`), pre-generates realistic multi-node traces
//! with [`skein_otlp::synth`] (10–40 spans of 5–15 attributes each), encodes them once, and
//! sends the same bytes from several concurrent gRPC connections. It reports:
//!
//! - ingest throughput (acked spans per second) and ack latency p50/p99;
//! - the collector's CPU seconds per million spans, from `utime + stime` of its
//!   `/proc/<pid>/stat`, so the load generator's own CPU on the same machine does not count;
//! - the collector's peak RSS (`VmHWM`);
//! - the baseline measured in the same run: one thread doing nothing but `prost`-decoding the
//!   same request bytes, and the ratio of ingest to it;
//! - trace-by-id latency p50/p99 over random trace ids that were sent, with every span in the
//!   head, checking that each answer has the number of spans that was sent.
//!
//! Every phase has a deadline; the run ends by itself.
//!
//! ```text
//! cargo build --release -p skein-collector -p skein-tests --features bench --bin loadgen
//! target/release/loadgen --spans 1000000 [--connections 8] [--json]
//! ```

use anyhow::{Context, Result, bail};
use clap::Parser;
use prost::Message;
use prost::bytes::Bytes;
use serde_json::{Value, json};
use skein_exporter::RawCodec;
use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::synth::{Synth, SynthConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Attempts per request when the collector pushes back (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`);
/// the backoff doubles from 50 ms, so a request gives up after about 6 s. Then the whole run
/// stops: a collector that stays full (e.g. a head past `head.memory_limit` with nothing to
/// flush it) would otherwise keep the load generator waiting for nothing.
const MAX_ATTEMPTS: u32 = 8;

/// Load generator for skein-collector: OTLP/gRPC ingest and trace-by-id latency.
#[derive(Parser, Debug)]
#[command(name = "loadgen")]
struct Args {
    /// Collector binary to start (ignored with --grpc).
    #[arg(long, default_value = "target/release/skein-collector")]
    collector_bin: PathBuf,
    /// Extra `--set KEY=VALUE` for the started collector (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Data directory for the started collector (default: a new temporary directory, removed
    /// at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Target a running collector's OTLP/gRPC address instead of starting one.
    #[arg(long, requires = "query")]
    grpc: Option<SocketAddr>,
    /// Query API address of the running collector (with --grpc).
    #[arg(long, requires = "grpc")]
    query: Option<SocketAddr>,
    /// Process id of the running collector, for its CPU and RSS (with --grpc).
    #[arg(long, requires = "grpc")]
    pid: Option<u32>,
    /// Concurrent gRPC connections, one request in flight on each.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Spans to send (rounded up to whole requests).
    #[arg(long, default_value_t = 1_000_000)]
    spans: usize,
    /// Stop sending after this long (e.g. `30s`, `2m`); the pre-generated requests are sent
    /// again from the start if they run out first (their spans are then duplicates).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Traces per request (10–40 spans each, about 25 on average).
    #[arg(long, default_value_t = 20)]
    traces_per_request: usize,
    /// Trace-by-id queries after the ingest phase.
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    /// Compress requests with gzip.
    #[arg(long)]
    gzip: bool,
    /// Seed of the trace generator.
    #[arg(long, default_value_t = 0x5EED)]
    seed: u64,
    /// Give up on the ingest phase after this long.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// After the trace-by-id phase, wait until the head is flushed to blocks (pass e.g.
    /// `--set storage.flush.max_age=5s`), then measure storage: bytes on disk per span, trace
    /// by id from blocks (warm, then cold after a restart with the page cache dropped when
    /// allowed), search `service=X&min_duration=1s` over the last hour, the SQL group-by of
    /// issue 3, and the restart time to /readyz (the restart needs a collector loadgen started).
    #[arg(long)]
    storage: bool,
    /// Spread the traces' start times over this span of time before now, in the order they
    /// are sent, as a collector receiving live traffic sees them (so blocks flushed one after
    /// another cover successive time ranges); `0s` starts every trace near now.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    spread: Duration,
    /// Searches and SQL runs timed in the storage phase.
    #[arg(long, default_value_t = 50)]
    storage_queries: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a duration; expected e.g. 30s, 500ms, 2m, 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; expected ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Pre-encoded requests and what they hold.
struct Workload {
    requests: Vec<Bytes>,
    spans_per_request: Vec<usize>,
    /// Trace ids in request order, with their span counts.
    traces: Vec<([u8; 16], usize)>,
    /// `traces[first_trace[i]..first_trace[i + 1]]` are in request `i`.
    first_trace: Vec<usize>,
}

impl Workload {
    fn generate(args: &Args) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let mut synth = Synth::new(SynthConfig { seed: args.seed, ..SynthConfig::default() });
        let mut w = Workload { requests: Vec::new(), spans_per_request: Vec::new(), traces: Vec::new(), first_trace: vec![0] };
        let mut total = 0;
        let spread = args.spread.as_nanos() as u64;
        while total < args.spans.max(1) {
            let at = now - spread + (total as u64).min(args.spans as u64) * spread / args.spans.max(1) as u64;
            let (req, ids) = synth.batch(args.traces_per_request.max(1), at);
            let mut counts: HashMap<&[u8], usize> = HashMap::new();
            let mut n = 0;
            for span in req.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
                *counts.entry(&span.trace_id[..]).or_default() += 1;
                n += 1;
            }
            w.traces.extend(ids.iter().map(|id| (*id, counts.get(&id[..]).copied().unwrap_or(0))));
            w.first_trace.push(w.traces.len());
            w.requests.push(Bytes::from(req.encode_to_vec()));
            w.spans_per_request.push(n);
            total += n;
        }
        w
    }

    fn spans(&self) -> usize {
        self.spans_per_request.iter().sum()
    }

    fn bytes(&self) -> usize {
        self.requests.iter().map(Bytes::len).sum()
    }
}

/// The baseline: spans per second of one thread that only decodes the same bytes (at least
/// one pass and one second).
fn decode_only(w: &Workload) -> Result<f64> {
    let started = Instant::now();
    let mut spans = 0usize;
    loop {
        for bytes in &w.requests {
            let req = ExportTraceServiceRequest::decode(bytes.as_ref()).context("decoding a generated request")?;
            spans += req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum::<usize>();
            std::hint::black_box(req);
        }
        if started.elapsed() >= Duration::from_secs(1) {
            return Ok(spans as f64 / started.elapsed().as_secs_f64());
        }
    }
}

/// What one connection did.
#[derive(Default)]
struct SendStats {
    latencies_us: Vec<u32>,
    acked_spans: usize,
    rejected_spans: usize,
    retries: usize,
    failed_requests: usize,
    /// Indices of the requests that were acknowledged.
    acked: Vec<usize>,
    /// When the last acknowledgement arrived.
    last_ack: Option<Instant>,
    first_error: Option<String>,
}

async fn connection(
    channel: Channel,
    w: Arc<Workload>,
    next: Arc<AtomicUsize>,
    cycle: bool,
    deadline: Instant,
    gzip: bool,
    stop: Arc<AtomicBool>,
) -> SendStats {
    let mut grpc = tonic::client::Grpc::new(channel);
    if gzip {
        grpc = grpc.send_compressed(CompressionEncoding::Gzip);
    }
    let mut st = SendStats::default();
    let n = w.requests.len();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= n && !cycle {
            break;
        }
        let i = k % n;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Err(e) = grpc.ready().await {
                st.first_error.get_or_insert_with(|| format!("connection not ready: {e}"));
                st.failed_requests += 1;
                stop.store(true, Ordering::Relaxed);
                break;
            }
            let started = Instant::now();
            let result = grpc.unary(tonic::Request::new(w.requests[i].clone()), PathAndQuery::from_static(EXPORT_PATH), RawCodec).await;
            match result {
                Ok(resp) => {
                    let micros = started.elapsed().as_micros();
                    st.latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    let rejected = resp.into_inner().partial_success.map_or(0, |p| usize::try_from(p.rejected_spans).unwrap_or(0));
                    st.rejected_spans += rejected;
                    st.acked_spans += w.spans_per_request[i].saturating_sub(rejected);
                    st.last_ack = Some(Instant::now());
                    st.acked.push(i);
                    break;
                }
                Err(s) if matches!(s.code(), tonic::Code::ResourceExhausted | tonic::Code::Unavailable) && attempt < MAX_ATTEMPTS => {
                    st.retries += 1;
                    tokio::time::sleep(Duration::from_millis(25u64 << attempt)).await;
                }
                Err(s) => {
                    st.failed_requests += 1;
                    st.first_error.get_or_insert_with(|| format!("{:?}: {} (after {attempt} attempts)", s.code(), s.message()));
                    if attempt > 1 {
                        stop.store(true, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
    }
    st
}

/// Nearest-rank percentile of sorted values.
fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `utime + stime` of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).context("short /proc/<pid>/stat")?.parse::<u64>()? as f64) };
    // Fields 14 and 15 of stat(5); the state (field 3) is index 0 here.
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident set size (`VmHWM`) in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/<pid>/status")?;
    let kib: u64 = line.split_whitespace().nth(1).context("malformed VmHWM")?.parse()?;
    Ok(kib * 1024)
}

/// A collector started by the load generator; killed (and its directory removed) on drop.
struct Started {
    child: Child,
    dir: PathBuf,
    remove_dir: bool,
    log: PathBuf,
}

impl Started {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or_default().to_string()
    }

    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        // SIGTERM first so it shuts down as in production; SIGKILL if it does not.
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn collector_bin(args: &Args) -> Result<PathBuf> {
    if args.collector_bin.is_file() {
        return Ok(args.collector_bin.clone());
    }
    // Relative paths are tried from the workspace root too, so `cargo run` works from anywhere.
    let alt = skein_tests::workspace_root().join(&args.collector_bin);
    if args.collector_bin.is_relative() && alt.is_file() {
        return Ok(alt);
    }
    bail!(
        "collector binary {} not found: build it with `cargo build --release -p skein-collector` or pass --collector-bin",
        args.collector_bin.display()
    )
}

/// Starts the collector and waits for `listen.json` and `/readyz`.
async fn start_collector(args: &Args, http: &reqwest::Client) -> Result<(Started, SocketAddr, SocketAddr)> {
    let bin = collector_bin(args)?;
    let (dir, remove_dir) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            (std::env::temp_dir().join(format!("skein-loadgen-{}-{nanos}", std::process::id())), true)
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("collector.log");
    let child = spawn(&bin, args, &dir, &log)?;
    let mut started = Started { child, dir, remove_dir, log };
    let (grpc, query) = wait_ready(&mut started, http).await?;
    Ok((started, grpc, query))
}

/// Starts the collector binary on `dir/data`, its output appended to `log`.
fn spawn(bin: &Path, args: &Args, dir: &Path, log: &Path) -> Result<Child> {
    let data = dir.join("data");
    let _ = std::fs::remove_file(data.join("listen.json"));
    let mut cmd = Command::new(bin);
    cmd.arg("--data-dir").arg(&data);
    for set in ["otlp.grpc_addr=127.0.0.1:0", "otlp.http_addr=127.0.0.1:0", "query.addr=127.0.0.1:0"] {
        cmd.args(["--set", set]);
    }
    for set in &args.sets {
        cmd.args(["--set", set]);
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.arg("run").stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    cmd.spawn().with_context(|| format!("starting {}", bin.display()))
}

/// Waits for `listen.json` and `/readyz` of a started collector.
async fn wait_ready(started: &mut Started, http: &reqwest::Client) -> Result<(SocketAddr, SocketAddr)> {
    let data = started.dir.join("data");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = started.child.try_wait()? {
            bail!("the collector exited ({status}); log {}:\n{}", started.log.display(), started.log_tail());
        }
        if Instant::now() > deadline {
            bail!("the collector was not ready within 120 s; log {}:\n{}", started.log.display(), started.log_tail());
        }
        if let Ok((grpc, query)) = read_listen(&data.join("listen.json")) {
            let ready = http.get(format!("http://{query}/readyz")).send().await.is_ok_and(|r| r.status() == 200);
            if ready {
                return Ok((grpc, query));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_listen(path: &Path) -> Result<(SocketAddr, SocketAddr)> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let addr = |k: &str| -> Result<SocketAddr> { Ok(v[k].as_str().with_context(|| format!("listen.json has no {k}"))?.parse()?) };
    Ok((addr("otlp_grpc")?, addr("query")?))
}

/// Trace-by-id latencies (µs), answers that were not 200, and answers with another span count.
async fn query_phase(
    http: &reqwest::Client,
    query: SocketAddr,
    w: &Workload,
    acked: &[usize],
    n: usize,
    seed: u64,
) -> Result<(Vec<u32>, usize, usize, Option<String>)> {
    // Only traces whose request was acknowledged: those must be found.
    let candidates: Vec<([u8; 16], usize)> =
        acked.iter().flat_map(|&i| &w.traces[w.first_trace[i]..w.first_trace[i + 1]]).copied().collect();
    if candidates.is_empty() || n == 0 {
        return Ok((Vec::new(), 0, 0, None));
    }
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut lat, mut errors, mut mismatched, mut first_problem) = (Vec::with_capacity(n), 0, 0, None);
    // A few warm-up queries (connection set-up, first-touch caches) are not measured.
    for i in 0..n + 20 {
        if Instant::now() > deadline {
            break;
        }
        let (id, expected) = candidates[(next() % candidates.len() as u64) as usize];
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let url = format!("http://{query}/api/v1/traces/{hex}");
        let started = Instant::now();
        let resp = http.get(&url).send().await;
        let outcome = match resp {
            Ok(r) => {
                let status = r.status();
                r.bytes().await.map(|b| (status, b))
            }
            Err(e) => Err(e),
        };
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        if i >= 20 {
            lat.push(micros);
        }
        match outcome {
            Ok((status, body)) if status == 200 => {
                let got = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["span_count"].as_u64());
                if got != Some(expected as u64) {
                    mismatched += 1;
                    first_problem.get_or_insert_with(|| format!("trace {hex}: sent {expected} spans, span_count {got:?}"));
                }
            }
            Ok((status, body)) => {
                errors += 1;
                first_problem.get_or_insert_with(|| format!("GET {url} answered {status}: {}", String::from_utf8_lossy(&body)));
            }
            Err(e) => {
                errors += 1;
                first_problem.get_or_insert_with(|| format!("GET {url}: {e}"));
            }
        }
    }
    lat.sort_unstable();
    Ok((lat, errors, mismatched, first_problem))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let (started, grpc, query, pid) = match (args.grpc, args.query) {
        (Some(g), Some(q)) => (None, g, q, args.pid),
        _ => {
            eprintln!("loadgen: starting the collector");
            let (s, g, q) = start_collector(&args, &http).await?;
            let pid = s.child.id();
            (Some(s), g, q, Some(pid))
        }
    };
    let mut started = started;
    let result = match run(&args, &http, grpc, query, pid).await {
        Ok((mut report, w, acked)) if args.storage => match storage_phase(&args, &http, query, started.as_mut(), &w, &acked).await {
            Ok(st) => {
                report["storage"] = st;
                Ok(report)
            }
            Err(e) => Err(e),
        },
        other => other.map(|(r, _, _)| r),
    };
    if let Some(mut s) = started {
        if result.is_err() {
            eprintln!("loadgen: collector log {}:\n{}", s.log.display(), s.log_tail());
        }
        s.stop();
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

async fn run(
    args: &Args,
    http: &reqwest::Client,
    grpc: SocketAddr,
    query: SocketAddr,
    pid: Option<u32>,
) -> Result<(Value, Arc<Workload>, Vec<usize>)> {
    eprintln!("loadgen: generating {} spans", args.spans);
    let t = Instant::now();
    let w = Arc::new(Workload::generate(args));
    eprintln!(
        "loadgen: {} requests, {} traces, {} spans, {:.1} MiB in {:.1} s; measuring decode-only",
        w.requests.len(),
        w.traces.len(),
        w.spans(),
        w.bytes() as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    let decode_rate = decode_only(&w)?;

    let endpoint = Endpoint::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60));
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        // One `connect` per channel: separate HTTP/2 connections, as separate agents would use.
        channels.push(endpoint.connect().await.with_context(|| format!("connecting to {grpc}"))?);
    }
    eprintln!("loadgen: sending over {} connections", channels.len());
    let cpu0 = pid.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    let deadline = started + args.duration.unwrap_or(args.timeout).min(args.timeout);
    let (next, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|ch| {
            tokio::spawn(connection(ch, Arc::clone(&w), Arc::clone(&next), args.duration.is_some(), deadline, args.gzip, Arc::clone(&stop)))
        })
        .collect();
    let mut all = SendStats::default();
    for t in tasks {
        let s = t.await?;
        all.latencies_us.extend(s.latencies_us);
        all.acked_spans += s.acked_spans;
        all.rejected_spans += s.rejected_spans;
        all.retries += s.retries;
        all.failed_requests += s.failed_requests;
        all.acked.extend(s.acked);
        all.last_ack = all.last_ack.max(s.last_ack);
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    // Up to the last ack: time spent backing off from a full collector at the end is not ingest.
    let elapsed = all.last_ack.map_or(started.elapsed(), |t| t - started).as_secs_f64();
    let cpu = match (pid, cpu0) {
        (Some(p), Some(c0)) => Some(cpu_seconds(p)? - c0),
        _ => None,
    };
    all.latencies_us.sort_unstable();
    let ingest_rate = all.acked_spans as f64 / elapsed;
    if all.acked_spans == 0 {
        bail!("no span was acknowledged: {}", all.first_error.unwrap_or_default());
    }

    eprintln!("loadgen: {:.0} spans/s; querying {} traces by id", ingest_rate, args.queries);
    let (qlat, qerrors, qmismatched, qproblem) = query_phase(http, query, &w, &all.acked, args.queries, args.seed).await?;
    let rss = pid.map(peak_rss).transpose()?;

    let ms = |us: u32| f64::from(us) / 1000.0;
    let report = json!({
        "connections": args.connections.max(1),
        "requests": w.requests.len(),
        "traces": w.traces.len(),
        "spans_per_request": w.spans() as f64 / w.requests.len() as f64,
        "bytes_per_span": w.bytes() as f64 / w.spans() as f64,
        "gzip": args.gzip,
        "ingest": {
            "acked_spans": all.acked_spans,
            "rejected_spans": all.rejected_spans,
            "failed_requests": all.failed_requests,
            "retries": all.retries,
            "first_error": all.first_error,
            "seconds": elapsed,
            "spans_per_second": ingest_rate,
            "ack_latency_ms": { "p50": ms(percentile(&all.latencies_us, 0.50)), "p99": ms(percentile(&all.latencies_us, 0.99)), "max": ms(all.latencies_us.last().copied().unwrap_or(0)) },
        },
        "collector": {
            "pid": pid,
            "cpu_seconds": cpu,
            "cpu_seconds_per_million_spans": cpu.map(|c| c / all.acked_spans as f64 * 1e6),
            "peak_rss_bytes": rss,
        },
        "decode_only_spans_per_second": decode_rate,
        "ingest_to_decode_ratio": ingest_rate / decode_rate,
        "trace_by_id": {
            "queries": qlat.len(),
            "spans_in_head": all.acked_spans,
            "p50_ms": ms(percentile(&qlat, 0.50)),
            "p99_ms": ms(percentile(&qlat, 0.99)),
            "max_ms": ms(qlat.last().copied().unwrap_or(0)),
            "errors": qerrors,
            "span_count_mismatches": qmismatched,
            "first_problem": qproblem,
        },
    });
    Ok((report, w, all.acked))
}

/// A sum over the samples of a Prometheus metric (every label set).
async fn metric(http: &reqwest::Client, query: SocketAddr, name: &str) -> Result<f64> {
    let text = http.get(format!("http://{query}/metrics")).send().await?.text().await?;
    Ok(skein_tests::metric_sum(&text, name))
}

/// p50, p99 and max of latencies in ms.
fn summary_ms(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    json!({"n": v.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": v.last().copied().unwrap_or(f64::NAN)})
}

fn trace_summary(q: (Vec<u32>, usize, usize, Option<String>)) -> Value {
    let (lat, errors, mismatched, problem) = q;
    let ms = |us: u32| f64::from(us) / 1000.0;
    json!({"queries": lat.len(), "p50_ms": ms(percentile(&lat, 0.5)), "p99_ms": ms(percentile(&lat, 0.99)), "max_ms": ms(lat.last().copied().unwrap_or(0)), "errors": errors, "span_count_mismatches": mismatched, "first_problem": problem})
}

/// Drops the kernel's page cache so the next reads come from the disk; false when not allowed.
fn drop_page_cache() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

async fn storage_phase(
    args: &Args,
    http: &reqwest::Client,
    mut query: SocketAddr,
    started: Option<&mut Started>,
    w: &Workload,
    acked: &[usize],
) -> Result<Value> {
    eprintln!("loadgen: waiting until the head is flushed to blocks");
    let t = Instant::now();
    while metric(http, query, "skein_head_rows").await? > 0.0 {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the head was not flushed within 10 min: pass --set storage.flush.max_age=5s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (bytes, rows, blocks) = (
        metric(http, query, "skein_block_bytes").await?,
        metric(http, query, "skein_block_rows").await?,
        metric(http, query, "skein_blocks").await?,
    );
    eprintln!("loadgen: {rows} spans in {blocks} blocks, {bytes} bytes; trace by id from blocks");
    let warm = trace_summary(query_phase(http, query, w, acked, args.queries, args.seed ^ 1).await?);

    let services: Vec<String> = http.get(format!("http://{query}/api/v1/services")).send().await?.json::<Value>().await?["services"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i64;
    let (mut search, mut found) = (Vec::new(), 0usize);
    for i in 0..args.storage_queries.max(1) {
        let s = &services[i % services.len().max(1)];
        let url = format!("http://{query}/api/v1/traces?service={s}&min_duration=1s&start={}&limit=20", now_ns - 3_600_000_000_000);
        let t = Instant::now();
        let v: Value = http.get(&url).send().await?.error_for_status()?.json().await?;
        search.push(t.elapsed().as_secs_f64() * 1000.0);
        found += v["traces"].as_array().map_or(0, Vec::len);
    }
    let sql = "SELECT service_name, count(*), approx_percentile_cont(duration_ns, 0.99) FROM spans GROUP BY 1";
    let mut group_by = Vec::new();
    for _ in 0..args.storage_queries.clamp(1, 10) {
        let t = Instant::now();
        http.post(format!("http://{query}/api/v1/sql")).json(&json!({ "query": sql })).send().await?.error_for_status()?.bytes().await?;
        group_by.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (mut restart_ms, mut cold, mut cache_dropped) = (None, Value::Null, false);
    if let Some(st) = started {
        eprintln!("loadgen: restarting the collector");
        st.stop();
        cache_dropped = drop_page_cache();
        let bin = collector_bin(args)?;
        let t = Instant::now();
        st.child = spawn(&bin, args, &st.dir, &st.log)?;
        let (_, q) = wait_ready(st, http).await?;
        restart_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
        query = q;
        cold = trace_summary(query_phase(http, query, w, acked, args.queries, args.seed ^ 2).await?);
    }
    Ok(json!({
        "blocks": blocks,
        "block_rows": rows,
        "block_bytes": bytes,
        "bytes_per_span": bytes / rows.max(1.0),
        "protobuf_bytes_per_span": w.bytes() as f64 / w.spans() as f64,
        "trace_by_id_warm": warm,
        "trace_by_id_after_restart": cold,
        "page_cache_dropped": cache_dropped,
        "search": summary_ms(search),
        "search_traces_found": found,
        "group_by_sql": summary_ms(group_by),
        "restart_to_ready_ms": restart_ms,
    }))
}

fn print_text(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let i = &r["ingest"];
    let c = &r["collector"];
    let q = &r["trace_by_id"];
    println!(
        "workload      {} requests of {:.0} spans ({} traces, {:.0} B/span{}), {} connections",
        r["requests"],
        f(&r["spans_per_request"]),
        r["traces"],
        f(&r["bytes_per_span"]),
        if r["gzip"] == true { ", gzip" } else { "" },
        r["connections"]
    );
    println!(
        "ingest        {:>12.0} spans/s  ({} spans acked in {:.2} s; {} rejected, {} failed requests, {} retries)",
        f(&i["spans_per_second"]),
        i["acked_spans"],
        f(&i["seconds"]),
        i["rejected_spans"],
        i["failed_requests"],
        i["retries"]
    );
    if let Some(e) = i["first_error"].as_str() {
        println!("              first error: {e}");
    }
    println!(
        "ack latency   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        f(&i["ack_latency_ms"]["p50"]),
        f(&i["ack_latency_ms"]["p99"]),
        f(&i["ack_latency_ms"]["max"])
    );
    match c["cpu_seconds_per_million_spans"].as_f64() {
        Some(per) => println!("collector CPU {per:.2} s per million spans ({:.2} s user+system; target <= 2.5)", f(&c["cpu_seconds"])),
        None => println!("collector CPU n/a (pass --pid)"),
    }
    match c["peak_rss_bytes"].as_u64() {
        Some(b) => println!("collector RSS peak {:.0} MiB (VmHWM)", b as f64 / 1048576.0),
        None => println!("collector RSS n/a (pass --pid)"),
    }
    println!("decode-only   {:>12.0} spans/s  (prost, 1 thread, same bytes)", f(&r["decode_only_spans_per_second"]));
    println!("ingest/decode {:.1}%  (target >= 25%)", f(&r["ingest_to_decode_ratio"]) * 100.0);
    println!(
        "trace by id   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} queries, {} spans in head, {} errors, {} span-count mismatches; target p99 < 5 ms)",
        f(&q["p50_ms"]),
        f(&q["p99_ms"]),
        f(&q["max_ms"]),
        q["queries"],
        q["spans_in_head"],
        q["errors"],
        q["span_count_mismatches"]
    );
    if let Some(p) = q["first_problem"].as_str() {
        println!("              first problem: {p}");
    }
    let st = &r["storage"];
    if st.is_object() {
        println!(
            "blocks        {} spans in {} blocks: {:.1} B/span on disk (OTLP protobuf {:.1} B/span; target <= 30)",
            st["block_rows"],
            st["blocks"],
            f(&st["bytes_per_span"]),
            f(&st["protobuf_bytes_per_span"])
        );
        let tq = |name: &str, v: &Value| {
            println!(
                "{name:<13} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} queries, {} errors, {} mismatches; target p99 < 20 ms)",
                f(&v["p50_ms"]),
                f(&v["p99_ms"]),
                f(&v["max_ms"]),
                v["queries"],
                v["errors"],
                v["span_count_mismatches"]
            )
        };
        tq("id, warm", &st["trace_by_id_warm"]);
        if st["trace_by_id_after_restart"].is_object() {
            tq(if st["page_cache_dropped"] == true { "id, cold" } else { "id, restarted" }, &st["trace_by_id_after_restart"]);
        }
        println!(
            "search        p50 {:.1} ms  p99 {:.1} ms  ({} searches service=X&min_duration=1s over the last hour, {} traces found; target p99 < 300 ms)",
            f(&st["search"]["p50_ms"]),
            f(&st["search"]["p99_ms"]),
            st["search"]["n"],
            st["search_traces_found"]
        );
        println!(
            "group-by SQL  p50 {:.0} ms  max {:.0} ms  ({} runs; target < 1 s)",
            f(&st["group_by_sql"]["p50_ms"]),
            f(&st["group_by_sql"]["max_ms"]),
            st["group_by_sql"]["n"]
        );
        if let Some(ms) = st["restart_to_ready_ms"].as_f64() {
            println!("restart       {ms:.0} ms to /readyz (target < 2 s)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7u32], 0.99), 7);
        assert_eq!(percentile::<u32>(&[], 0.5), 0);
    }

    #[test]
    fn cpu_and_rss_of_this_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).expect("stat") >= 0.0);
        assert!(peak_rss(pid).expect("status") > 0);
    }
}

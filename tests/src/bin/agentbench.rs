//! The agent's footprint: idle RSS, then CPU and RSS while it forwards spans at fixed rates
//! (OTLP/HTTP protobuf in, queue with fsync, OTLP/gRPC zstd out to a real collector).
//!
//! `cargo build --release -p skein-agent -p skein-collector -p skein-tests --features bench --bin agentbench`
//! `target/release/agentbench --rates 10000,50000 --seconds 20`
//!
//! Baseline in the same run: the CPU one thread spends only decoding and re-encoding the same
//! requests with prost (the least any OTLP forwarder that stamps resources must do).

use anyhow::{Context, Result, bail};
use clap::Parser;
use prost::Message;
use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::synth::{Synth, SynthConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/skein-agent")]
    agent_bin: PathBuf,
    #[arg(long, default_value = "target/release/skein-collector")]
    collector_bin: PathBuf,
    /// Span rates to run, spans per second.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Traces per request (about 25 spans each): 20 makes ~500-span requests, like an SDK's
    /// batch span processor (512 spans per export).
    #[arg(long, default_value_t = 20)]
    traces_per_request: usize,
    /// Write the requests, concatenated (itself one valid export request), to this file and
    /// exit: input for `zstd -b` when choosing the push compression.
    #[arg(long)]
    dump: Option<PathBuf>,
}

fn ticks_per_sec() -> f64 {
    100.0
}

/// utime + stime of `pid` in seconds.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok((f[11].parse::<f64>()? + f[12].parse::<f64>()?) / ticks_per_sec())
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 =
        status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).context("no VmRSS")?.parse()?;
    Ok(kb / 1024.0)
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

async fn listen(dir: &Path, key: &str) -> Result<String> {
    let t = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("listen.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(a) = v[key].as_str()
        {
            return Ok(a.to_string());
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("no listen.json in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Result<f64> {
    Ok(skein_tests::metric_sum(&http.get(url).send().await?.text().await?, name))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let (cdir, adir) = (tmp.path().join("collector"), tmp.path().join("agent"));
    let ports = |k: &[&str]| k.iter().flat_map(|k| ["--set".to_string(), format!("{k}=127.0.0.1:0")]).collect::<Vec<_>>();
    let mut cargs = vec!["--data-dir".to_string(), cdir.display().to_string()];
    cargs.extend(ports(&["otlp.grpc_addr", "otlp.http_addr", "query.addr"]));
    cargs.push("run".into());
    let mut collector = spawn(&args.collector_bin, &cargs, &tmp.path().join("collector.log"))?;
    let grpc = listen(&cdir, "otlp_grpc").await?;
    let mut aargs = vec!["--data-dir".to_string(), adir.display().to_string(), "--collector".into(), format!("http://{grpc}")];
    aargs.extend(ports(&["otlp.grpc_addr", "otlp.http_addr", "admin.addr"]));
    aargs.push("run".into());
    let mut agent = spawn(&args.agent_bin, &aargs, &tmp.path().join("agent.log"))?;
    let http_addr = listen(&adir, "otlp_http").await?;
    let admin = listen(&adir, "admin").await?;
    let pid = agent.id();
    let http = reqwest::Client::new();

    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("agent idle RSS        {:.1} MiB (target < 15 MiB)", rss_mib(pid)?);

    // Requests, encoded once.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let mut synth = Synth::new(SynthConfig::default());
    let mut requests: Vec<(bytes::Bytes, usize)> = Vec::new();
    for _ in 0..200 {
        let (r, _) = synth.batch(args.traces_per_request, now);
        let n = r.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        requests.push((bytes::Bytes::from(r.encode_to_vec()), n));
    }
    if let Some(path) = &args.dump {
        let all: Vec<u8> = requests.iter().flat_map(|r| r.0.iter().copied()).collect();
        std::fs::write(path, all)?;
        let _ = agent.kill();
        let _ = collector.kill();
        return Ok(());
    }
    let per_req = requests.iter().map(|r| r.1).sum::<usize>() as f64 / requests.len() as f64;
    // Baseline: decode + re-encode only, one thread.
    let t = Instant::now();
    let mut spans = 0usize;
    while t.elapsed() < Duration::from_secs(2) {
        for (b, n) in &requests {
            let r = ExportTraceServiceRequest::decode(&b[..])?;
            std::hint::black_box(r.encode_to_vec());
            spans += n;
        }
    }
    let base_cpu_per_m = t.elapsed().as_secs_f64() / spans as f64 * 1e6;
    println!("baseline              prost decode + encode of the same requests: {base_cpu_per_m:.2} s CPU per million spans");

    let metrics_url = format!("http://{admin}/metrics");
    for &rate in &args.rates {
        let interval = Duration::from_secs_f64(per_req / rate as f64);
        let (cpu0, start) = (cpu_secs(pid)?, Instant::now());
        let (mut sent, mut i, mut peak) = (0usize, 0usize, 0f64);
        let mut next = Instant::now();
        let mut last_sample = Instant::now();
        while start.elapsed() < Duration::from_secs(args.seconds) {
            let (body, n) = &requests[i % requests.len()];
            i += 1;
            let r = http
                .post(format!("http://{http_addr}/v1/traces"))
                .header("content-type", "application/x-protobuf")
                .body(body.clone())
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("agent answered {}", r.status());
            }
            sent += n;
            if last_sample.elapsed() > Duration::from_millis(200) {
                peak = peak.max(rss_mib(pid)?);
                last_sample = Instant::now();
            }
            next += interval;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                tokio::time::sleep(d).await;
            }
        }
        let wall = start.elapsed().as_secs_f64();
        // Wait for the queue to drain, so the CPU counts the export too.
        let t = Instant::now();
        while metric(&http, &metrics_url, "skein_agent_queue_records").await? > 0.0 && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cpu = cpu_secs(pid)? - cpu0;
        peak = peak.max(rss_mib(pid)?);
        println!(
            "{:>6} spans/s offered, {:.0} sent: agent CPU {:.1}% of one core ({:.2} s per million spans, {:.1}x the baseline), peak RSS {:.1} MiB",
            rate,
            sent as f64 / wall,
            cpu / wall * 100.0,
            cpu / sent as f64 * 1e6,
            cpu / sent as f64 * 1e6 / base_cpu_per_m,
            peak
        );
    }
    let delivered = metric(&http, &metrics_url, "skein_agent_sent_records_total").await?;
    let appended = metric(&http, &metrics_url, "skein_agent_queue_appended_records_total").await?;
    println!("records appended {appended}, delivered {delivered}");
    let _ = agent.kill();
    let _ = collector.kill();
    let _ = agent.wait();
    let _ = collector.wait();
    Ok(())
}

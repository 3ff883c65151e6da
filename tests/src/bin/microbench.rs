//! In-process benchmarks of the collector's hot paths, each beside a baseline measured in the
//! same run on the same data, so the ratios mean something on a shared, noisy machine:
//!
//! - decode: prost-decoding OTLP requests (baseline) vs decode + validate + Arrow build, and vs
//!   `build_from_protobuf` (validation and Arrow build in one pass over the protobuf bytes);
//! - logs and metrics: prost-decoding the requests (baseline) vs decode + validate + Arrow
//!   build of the `logs` and `metrics` tables;
//! - WAL append: raw `write` of the same bytes to a file (baseline) vs `Wal::append`, with and
//!   without fsync, from concurrent tasks (group commit);
//! - trace lookup with `--head-spans` spans in the head: prost-decoding the trace's own spans
//!   from protobuf (baseline: what any store pays to materialise them) vs `Head::trace`, and
//!   vs `Head::trace` + full assembly.
//!
//! - agent sources (`--sources` runs only these): a `host_metrics` scrape vs reading the same
//!   `/proc` files; a `file_tail` poll of 1,000 idle files vs `stat`ing their paths; parsing
//!   JSON and text log lines into OTLP records vs `serde_json` parsing / splitting them alone.
//!
//! `cargo run --release -p skein-tests --features bench --bin microbench -- --head-spans 1000000`

use clap::Parser;
use prost::Message;
use skein_core::TraceId;
use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::synth::{Synth, SynthConfig};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
struct Args {
    /// Spans loaded into the head for the trace-lookup benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    head_spans: usize,
    /// Traces per request.
    #[arg(long, default_value_t = 20)]
    traces_per_request: usize,
    /// Trace lookups to time.
    #[arg(long, default_value_t = 2_000)]
    lookups: usize,
    /// Only the agent sources' benchmarks.
    #[arg(long)]
    sources: bool,
}

/// Median of `runs` timings of `f`, per call, over `n` calls each.
fn per_call(runs: usize, n: usize, mut f: impl FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed() / n as u32
        })
        .collect();
    pct(&mut v, 0.5)
}

fn sources_bench() -> anyhow::Result<()> {
    use skein_sources::file_tail::{FileTailConfig, StartAt, TailInput, Tailer, parse::LineParser};
    // host metrics: one scrape vs reading the files it reads
    let mut sampler = skein_sources::host_metrics::Sampler::new("/", 1);
    let files = ["/proc/stat", "/proc/meminfo", "/proc/loadavg", "/proc/uptime", "/proc/net/dev", "/proc/diskstats", "/proc/self/mounts"];
    let read = per_call(9, 200, || {
        for f in files {
            std::hint::black_box(std::fs::read_to_string(f).ok());
        }
    });
    let mut t = 1u64;
    let scrape = per_call(9, 200, || {
        t += 1;
        std::hint::black_box(sampler.sample(t));
    });
    println!(
        "host_metrics: scrape {:>7.1} µs  (reading its {} /proc files alone: {:.1} µs; {:.2}x)",
        scrape.as_secs_f64() * 1e6,
        files.len(),
        read.as_secs_f64() * 1e6,
        scrape.as_secs_f64() / read.as_secs_f64()
    );
    // file_tail: a poll of 1,000 idle files vs stat of their paths
    let dir = tempfile::tempdir()?;
    let mut paths = Vec::new();
    for i in 0..1000 {
        let p = dir.path().join(format!("f{i:04}.log"));
        std::fs::write(&p, format!("line {i}\n"))?;
        paths.push(p);
    }
    let cfg = FileTailConfig {
        start_at: StartAt::Beginning,
        inputs: vec![TailInput { include: vec![format!("{}/*.log", dir.path().display())], ..Default::default() }],
        ..Default::default()
    };
    let mut tailer = Tailer::new(cfg, &dir.path().join("ckpt")).map_err(anyhow::Error::msg)?;
    let first = tailer.poll();
    let keys: Vec<_> = first.iter().map(|b| b.key).collect();
    tailer.commit(&keys);
    let stat = per_call(7, 20, || {
        for p in &paths {
            std::hint::black_box(std::fs::metadata(p).ok());
        }
    });
    let poll = per_call(7, 20, || {
        std::hint::black_box(tailer.poll());
    });
    println!(
        "file_tail: poll of 1000 idle files {:>7.0} µs  (stat of their paths alone: {:.0} µs; {:.2}x); at a 500 ms poll: {:.2} % of a core",
        poll.as_secs_f64() * 1e6,
        stat.as_secs_f64() * 1e6,
        poll.as_secs_f64() / stat.as_secs_f64(),
        poll.as_secs_f64() / 0.5 * 100.0
    );
    // line parsing
    let parser = LineParser { trace_regex: None, correlation_fields: TailInput::default().correlation_fields };
    let json: Vec<String> = (0..10_000)
        .map(|i| format!(r#"{{"ts":"2026-11-28T10:00:{:02}.5Z","level":"info","msg":"GET /cart/{i} 200","trace_id":"0af7651916cd43dd8448eb211c80{i:04x}","span_id":"b7ad6b716920{i:04x}","request_id":"r-{i}","user":{i},"ms":{}}}"#, i % 60, i % 97))
        .collect();
    let text: Vec<String> = (0..10_000)
        .map(|i| format!("2026-11-28 10:00:{:02},500 INFO [http] GET /cart/{i} 200 in {} ms request_id=r-{i} traceparent=00-0af7651916cd43dd8448eb211c80{i:04x}-b7ad6b716920{i:04x}-01", i % 60, i % 97))
        .collect();
    let json_base = per_call(5, 1, || {
        for l in &json {
            std::hint::black_box(serde_json::from_str::<serde_json::Value>(l).ok());
        }
    });
    let json_parse = per_call(5, 1, || {
        for l in &json {
            std::hint::black_box(parser.parse(l.as_bytes()).into_record(1, &[]));
        }
    });
    let text_base = per_call(5, 1, || {
        for l in &text {
            std::hint::black_box(l.split_whitespace().count());
        }
    });
    let text_parse = per_call(5, 1, || {
        for l in &text {
            std::hint::black_box(parser.parse(l.as_bytes()).into_record(1, &[]));
        }
    });
    let rate = |d: Duration| 10_000.0 / d.as_secs_f64();
    println!(
        "file_tail JSON lines: {:>10.0} lines/s  (serde_json::Value parse alone: {:.0}/s; {:.2}x of it)",
        rate(json_parse),
        rate(json_base),
        json_base.as_secs_f64() / json_parse.as_secs_f64()
    );
    println!(
        "file_tail text lines: {:>10.0} lines/s  (splitting into words alone: {:.0}/s; {:.2}x of it)",
        rate(text_parse),
        rate(text_base),
        text_base.as_secs_f64() / text_parse.as_secs_f64()
    );
    Ok(())
}

fn spans_in(r: &ExportTraceServiceRequest) -> usize {
    r.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// Log and metric requests like an app's (a service on one node; log lines with trace context
/// and 4 attributes; 20 gauges of 8 series each), decoded with prost alone and with validation and
/// the Arrow build, on the same bytes.
fn signals_bench(now: u64) -> anyhow::Result<()> {
    use skein_otlp::synth::signals::{Line, kv, logs_request, metrics_request};
    use skein_otlp::{ExportLogsServiceRequest, ExportMetricsServiceRequest};
    let logs: Vec<Vec<u8>> = (0..400u64)
        .map(|r| {
            let lines: Vec<Line> = (0..200u64)
                .map(|i| Line {
                    time: now + r * 1000 + i,
                    severity: if i % 10 == 0 { 17 } else { 9 },
                    body: format!("GET /api/cart/{i} 200 in {} ms user=u{} items={}", i % 97, r * 7 + i, i % 5),
                    trace_id: (r * 1000 + i).to_be_bytes().repeat(2),
                    span_id: (i + 1).to_be_bytes().to_vec(),
                    attributes: vec![
                        kv("request_id", &format!("req-{r}-{i}")),
                        kv("http.route", "/api/cart/{id}"),
                        kv("code.function.name", "handle"),
                        kv("logger", "cart.http"),
                    ],
                })
                .collect();
            logs_request("api-1", "cart-api", &lines).encode_to_vec()
        })
        .collect();
    let metrics: Vec<Vec<u8>> = (0..400u64)
        .map(|r| {
            let reqs: Vec<Vec<u8>> = (0..20)
                .flat_map(|m| {
                    (0..8).map(move |series| {
                        let attrs = [kv("route", &format!("/r{series}")), kv("method", "GET")];
                        metrics_request("api-1", &format!("app.metric.{m}"), m % 2 == 0, &[(now + r, (r * series) as f64)], &attrs)
                            .encode_to_vec()
                    })
                })
                .collect();
            reqs.concat()
        })
        .collect();
    let limits = skein_otlp::Limits::default();
    let time = |f: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>, bodies: &[Vec<u8>]| -> anyhow::Result<Duration> {
        let t = Instant::now();
        for b in bodies {
            f(b)?;
        }
        Ok(t.elapsed())
    };
    let compare = |name: &str,
                   unit: &str,
                   n: f64,
                   bodies: &[Vec<u8>],
                   decode: &dyn Fn(&[u8]) -> anyhow::Result<()>,
                   build: &dyn Fn(&[u8]) -> anyhow::Result<()>|
     -> anyhow::Result<()> {
        let d = time(&mut |b| decode(b), bodies)?;
        let b = time(&mut |b| build(b), bodies)?;
        println!("{:<30}{:>12.0} {unit}/s", format!("{name} decode only:"), n / d.as_secs_f64());
        println!(
            "{:<30}{:>12.0} {unit}/s  ({:.2}x of decode-only)",
            format!("{name} decode+validate+build:"),
            n / b.as_secs_f64(),
            d.as_secs_f64() / b.as_secs_f64()
        );
        Ok(())
    };
    compare(
        "logs",
        "records",
        400.0 * 200.0,
        &logs,
        &|b| {
            std::hint::black_box(ExportLogsServiceRequest::decode(b)?);
            Ok(())
        },
        &|b| {
            let mut r = ExportLogsServiceRequest::decode(b)?;
            skein_otlp::validate_logs(&mut r, &limits);
            std::hint::black_box(skein_columnar::logs::build(&r)?);
            Ok(())
        },
    )?;
    compare(
        "metrics",
        "points",
        400.0 * 160.0,
        &metrics,
        &|b| {
            std::hint::black_box(ExportMetricsServiceRequest::decode(b)?);
            Ok(())
        },
        &|b| {
            let mut r = ExportMetricsServiceRequest::decode(b)?;
            skein_otlp::validate_metrics(&mut r, &limits);
            std::hint::black_box(skein_columnar::metrics::build(&r)?);
            Ok(())
        },
    )?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sources_bench()?;
    if args.sources {
        return Ok(());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let mut synth = Synth::new(SynthConfig::default());
    // One encoded request per trace (the lookup baseline), and requests of
    // `traces_per_request` traces made by concatenating them: concatenated protobuf messages
    // decode as one message with the repeated fields appended.
    let mut per_trace = Vec::new();
    let mut ids = Vec::new();
    let mut total = 0;
    while total < args.head_spans {
        let (r, t) = synth.batch(1, now);
        total += spans_in(&r);
        ids.extend(t);
        per_trace.push(r.encode_to_vec());
    }
    let reqs: Vec<Vec<u8>> = per_trace.chunks(args.traces_per_request).map(|c| c.concat()).collect();
    let bytes: usize = reqs.iter().map(Vec::len).sum();
    println!("data: {} requests, {total} spans, {} traces, {:.1} B/span OTLP protobuf", reqs.len(), ids.len(), bytes as f64 / total as f64);

    // 1. decode baseline vs decode + validate + build
    let sample = &reqs[..reqs.len().min(400)];
    let sample_spans: usize = sample.iter().map(|b| spans_in(&ExportTraceServiceRequest::decode(&b[..]).unwrap_or_default())).sum();
    let t = Instant::now();
    for b in sample {
        let r = ExportTraceServiceRequest::decode(&b[..])?;
        std::hint::black_box(r);
    }
    let decode = t.elapsed();
    let t = Instant::now();
    for b in sample {
        let mut r = ExportTraceServiceRequest::decode(&b[..])?;
        skein_otlp::validate_traces(&mut r, &skein_otlp::Limits::default());
        std::hint::black_box(skein_columnar::spans::build(&r)?);
    }
    let build = t.elapsed();
    let t = Instant::now();
    for b in sample {
        std::hint::black_box(skein_columnar::spans::build_from_protobuf(b, &skein_otlp::Limits::default())?);
    }
    let wire = t.elapsed();
    let rate = |d: Duration| sample_spans as f64 / d.as_secs_f64();
    println!("decode only:                 {:>12.0} spans/s", rate(decode));
    println!(
        "decode+validate+arrow build: {:>12.0} spans/s  ({:.2}x of decode-only)",
        rate(build),
        decode.as_secs_f64() / build.as_secs_f64()
    );
    println!(
        "build_from_protobuf:         {:>12.0} spans/s  ({:.2}x of decode-only)",
        rate(wire),
        decode.as_secs_f64() / wire.as_secs_f64()
    );

    // 1b. logs and metrics: prost decode (baseline) vs decode + validate + Arrow build
    signals_bench(now)?;

    // 2. WAL append vs raw file writes
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let mut f = std::fs::File::create(dir.path().join("raw"))?;
    for b in sample {
        f.write_all(b)?;
    }
    f.sync_data()?;
    let raw = t.elapsed();
    let sample_bytes: usize = sample.iter().map(Vec::len).sum();
    println!("raw write+1 fsync:           {:>12.1} MB/s", sample_bytes as f64 / raw.as_secs_f64() / 1e6);
    for (name, sync) in [("never", skein_wal::SyncPolicy::Never), ("always", skein_wal::SyncPolicy::Always)] {
        let wdir = dir.path().join(name);
        let (wal, _) = skein_wal::Wal::open(&wdir, skein_wal::WalOptions { sync, ..Default::default() }, |_, _| Ok::<(), String>(()))?;
        let t = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for chunk in sample.chunks(sample.len().div_ceil(16)) {
                let wal = wal.clone();
                let chunk: Vec<Vec<u8>> = chunk.to_vec();
                tasks.push(tokio::spawn(async move {
                    for b in chunk {
                        wal.append(b).await?;
                    }
                    Ok::<(), skein_wal::Error>(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            Ok::<(), anyhow::Error>(())
        })?;
        let d = t.elapsed();
        println!(
            "WAL append sync={name:<6} 16 tasks: {:>8.1} MB/s, {:>8.0} records/s ({:.2}x of raw write)",
            sample_bytes as f64 / d.as_secs_f64() / 1e6,
            sample.len() as f64 / d.as_secs_f64(),
            raw.as_secs_f64() / d.as_secs_f64()
        );
        wal.close();
    }

    // 3. trace lookup in a head holding head_spans spans
    let head = skein_storage::Head::new();
    let t = Instant::now();
    for b in &reqs {
        let r = ExportTraceServiceRequest::decode(&b[..])?;
        head.insert(skein_columnar::spans::build(&r)?)?;
    }
    let st = head.stats();
    if std::env::var_os("SKEIN_BENCH_COLUMNS").is_some() {
        let snap = head.snapshot();
        let schema = skein_columnar::spans::schema();
        for (i, f) in schema.fields().iter().enumerate() {
            let b: usize = snap.iter().map(|b| b.column(i).get_array_memory_size()).sum();
            println!("  column {:<28} {:>7.1} B/span", f.name(), b as f64 / st.rows as f64);
        }
    }
    println!(
        "head: {} spans, {} traces, {:.0} MiB estimated ({:.0} B/span), loaded in {:.2?}",
        st.rows,
        st.traces,
        st.bytes as f64 / 1048576.0,
        st.bytes as f64 / st.rows as f64,
        t.elapsed()
    );
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut pick = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % ids.len() as u64) as usize
    };
    let (mut base, mut lookup, mut full) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.lookups {
        let i = pick();
        let id = TraceId(ids[i]);
        // Baseline: decode the same spans from OTLP protobuf.
        let t = Instant::now();
        std::hint::black_box(ExportTraceServiceRequest::decode(&per_trace[i][..])?);
        base.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(head.trace(&id));
        lookup.push(t.elapsed());
        let t = Instant::now();
        let spans = head.trace(&id);
        let a = skein_query::assemble::assemble(id, spans, &Default::default());
        std::hint::black_box(serde_json::to_vec(&a)?);
        full.push(t.elapsed());
    }
    println!(
        "trace by id ({} lookups): protobuf decode of the trace p50 {:?} p99 {:?} | head lookup p50 {:?} p99 {:?} | lookup+assemble+JSON p50 {:?} p99 {:?}",
        args.lookups,
        pct(&mut base, 0.5),
        pct(&mut base, 0.99),
        pct(&mut lookup, 0.5),
        pct(&mut lookup, 0.99),
        pct(&mut full, 0.5),
        pct(&mut full, 0.99)
    );
    Ok(())
}

//! The agent's own sources with real processes: log files tailed through rename and
//! copy-truncate rotation and a `kill -9` of the agent arrive once each, in order, with their
//! trace ids, beside the spans of that trace; a thousand idle files cost no reads.

use prost::Message;
use skein_tests::otlp::{self, hex};
use skein_tests::{Agent, Collector, free_port, metric_sum, wait_until};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn append(f: &mut std::fs::File, lines: impl IntoIterator<Item = String>) {
    let text: String = lines.into_iter().map(|l| l + "\n").collect();
    f.write_all(text.as_bytes()).expect("append to a log file");
}

fn open(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open a log file")
}

fn seq_lines(file: &str, range: std::ops::Range<usize>) -> impl Iterator<Item = String> + '_ {
    range.map(move |i| format!("INFO line file={file} seq={i}"))
}

/// Every tailed line at the collector: (file, seq) → observed times, in API order.
async fn tailed(c: &Collector) -> HashMap<(String, usize), Vec<u64>> {
    let mut out: HashMap<(String, usize), Vec<u64>> = HashMap::new();
    let Ok((200, v)) = c.get_json("/api/v1/logs?service=tailapp&q=seq%3D&limit=2000").await else { return out };
    for l in v["logs"].as_array().into_iter().flatten() {
        let body = l["body"].as_str().unwrap_or_default();
        let field = |k: &str| body.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
        if let (Some(f), Some(s)) = (field("file="), field("seq=").and_then(|s| s.parse().ok())) {
            out.entry((f, s)).or_default().push(l["observed_time_unix_nano"].as_u64().unwrap_or(0));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailed_lines_arrive_once_in_order_through_rotation_and_kill_9_with_their_trace() {
    let port = free_port().unwrap();
    let collector = Collector::builder().set("otlp.grpc_addr", format!("127.0.0.1:{port}")).start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let inputs = format!("[{{include = [\"{}/*.log\"], service = \"tailapp\"}}]", logs.path().display());
    let sets = [
        ("file_tail.inputs", inputs.as_str()),
        ("file_tail.start_at", "beginning"),
        ("file_tail.poll_interval", "100ms"),
        ("file_tail.flush_after", "300ms"),
        ("file_tail.rotate_wait", "3s"),
        ("exporter.retry_initial_delay", "50ms"),
        ("node.host_name", "tail-node"),
    ];
    let mut agent = Agent::start(&[format!("http://127.0.0.1:{port}")], &sets).await.unwrap();
    let (a, b) = (logs.path().join("a.log"), logs.path().join("b.log"));

    // A trace sent as spans, and lines of the same trace in three forms.
    let tid = otlp::random_trace_id();
    let sids = [otlp::random_span_id(), otlp::random_span_id()];
    let end = otlp::now_ns();
    let spans = sids.iter().map(|s| otlp::SpanBuilder::new(tid, *s, "handle").times(end - 1_000_000, end).build()).collect();
    let body = otlp::request(vec![otlp::resource_spans("tailapp", "unused", spans)]).encode_to_vec();
    assert_eq!(agent.post("traces", body).await.unwrap(), 200);
    let mut fa = open(&a);
    append(
        &mut fa,
        [
            format!("{{\"level\":\"error\",\"msg\":\"json line\",\"trace_id\":\"{}\",\"span_id\":\"{}\"}}", hex(&tid), hex(&sids[0])),
            format!("WARN text line traceparent=00-{}-{}-01 request_id=req-42", hex(&tid), hex(&sids[1])),
            format!("ERROR key value line trace_id={}", hex(&tid)),
        ],
    );
    append(&mut fa, seq_lines("a", 0..100));
    let mut fb = open(&b);
    append(&mut fb, seq_lines("b", 0..50));

    // Rotation by rename, once the agent has read what a.log holds: the app writes a few more
    // lines to the renamed file, then reopens.
    wait_until(Duration::from_secs(30), "a.log's first 100 lines", || async {
        tailed(&collector).await.keys().filter(|(f, _)| f == "a").count() == 100
    })
    .await
    .unwrap();
    std::fs::rename(&a, logs.path().join("a.log.1")).unwrap();
    append(&mut fa, seq_lines("a", 100..110));
    let mut fa = open(&a);
    append(&mut fa, seq_lines("a", 110..200));

    // Rotation by copy-truncate, once what b.log holds has been read.
    wait_until(Duration::from_secs(30), "b.log's first 50 lines", || async {
        tailed(&collector).await.keys().filter(|(f, _)| f == "b").count() == 50
    })
    .await
    .unwrap();
    std::fs::copy(&b, logs.path().join("b.log.1")).unwrap();
    fb.set_len(0).unwrap();
    append(&mut fb, seq_lines("b", 50..100));

    // kill -9 while lines are being written; more lines while the agent is down.
    for i in 0..10 {
        append(&mut fa, seq_lines("a", 200 + i * 10..210 + i * 10));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    agent.kill9().unwrap();
    append(&mut fa, seq_lines("a", 300..400));
    append(&mut fb, seq_lines("b", 100..120));
    agent.restart().await.unwrap();
    append(&mut fa, seq_lines("a", 400..420));

    let want = 420 + 120;
    let got = wait_until(Duration::from_secs(60), "every tailed line at the collector", || async {
        let t = tailed(&collector).await;
        (t.len() == want).then_some(t)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    // In order per file: a.log's first inode held lines 0..110, the second 110..420; b.log
    // (copy-truncated in place) 0..120.
    for (file, lines) in [("a", 0..110), ("a", 110..420), ("b", 0..120)] {
        let mut times = Vec::new();
        for seq in lines.clone() {
            let t = got.get(&(file.to_string(), seq)).unwrap_or_else(|| panic!("{file} seq={seq} missing"));
            assert_eq!(t.len(), 1, "{file} seq={seq} arrived {} times", t.len());
            times.push(t[0]);
        }
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{file} lines {lines:?} are in order");
    }

    // The trace's logs: the three lines with its id, beside its spans.
    let (status, v) = collector.get_json(&format!("/api/v1/traces/{}/logs", hex(&tid))).await.unwrap();
    assert_eq!(status, 200, "{v}");
    let lines = v["logs"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{v}");
    assert_eq!(lines[0]["body"], "json line");
    assert_eq!(lines[0]["span_id"], hex(&sids[0]));
    assert_eq!(lines[0]["severity_number"], 17);
    assert_eq!(lines[1]["span_id"], hex(&sids[1]));
    assert_eq!(lines[1]["correlation_id"], "req-42");
    assert_eq!(lines[1]["node"], "tail-node");
    assert!(lines.iter().all(|l| l["source"].as_str().is_some_and(|s| s.ends_with("a.log"))), "{v}");
    let trace = collector.trace(&hex(&tid)).await.unwrap();
    assert_eq!(trace["span_count"], 2, "{trace}");
    let (_, v) = collector.get_json("/api/v1/logs?correlation_id=req-42").await.unwrap();
    assert_eq!(v["logs"].as_array().map(Vec::len), Some(1), "{v}");
    let m = agent.metrics().await.unwrap();
    assert!(metric_sum(&m, "skein_agent_file_tail_rotations_total") >= 1.0, "{m}");
}

/// The agent's CPU time (user + system, in clock ticks) from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the agent's /proc/<pid>/stat");
    let after = &stat[stat.rfind(')').expect("a comm field") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f[i].parse::<u64>().expect("utime and stime");
    ticks(11) + ticks(12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_tailed_files_cost_no_reads() {
    let port = free_port().unwrap();
    let _collector = Collector::builder().set("otlp.grpc_addr", format!("127.0.0.1:{port}")).start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    for i in 0..1000 {
        append(&mut open(&logs.path().join(format!("f{i:04}.log"))), [format!("file {i} first line")]);
    }
    let inputs = format!("[{{include = [\"{}/*.log\"], service = \"idle\"}}]", logs.path().display());
    let sets = [("file_tail.inputs", inputs.as_str()), ("file_tail.start_at", "beginning"), ("file_tail.poll_interval", "250ms")];
    let agent = Agent::start(&[format!("http://127.0.0.1:{port}")], &sets).await.unwrap();
    let m = wait_until(Duration::from_secs(30), "every file read once", || async {
        let m = agent.metrics().await.unwrap_or_default();
        (metric_sum(&m, "skein_agent_file_tail_records_total") == 1000.0).then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(metric_sum(&m, "skein_agent_file_tail_files"), 1000.0, "{m}");
    let read = metric_sum(&m, "skein_agent_file_tail_read_bytes_total");
    let pid = agent.pid().unwrap();
    let (t0, c0) = (std::time::Instant::now(), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (secs, ticks) = (t0.elapsed().as_secs_f64(), cpu_ticks(pid) - c0);
    let m = agent.metrics().await.unwrap();
    assert_eq!(metric_sum(&m, "skein_agent_file_tail_read_bytes_total"), read, "20 polls of idle files read nothing");
    // One stat per file per poll: a few ms of CPU a second. The bound only catches a tailer
    // that re-reads or re-hashes idle files (tens of percent).
    let share = ticks as f64 / 100.0 / secs;
    eprintln!("1000 idle files at a 250 ms poll: {:.2} % of one core", share * 100.0);
    assert!(share < 0.10, "{:.1} % of a core for idle files", share * 100.0);
}

//! The agent between apps and the collector, with real processes: spans sent to the agent
//! arrive at the collector stamped with the agent's node; a collector outage and a `kill -9`
//! of the agent lose nothing the agent acknowledged; a full queue drops the oldest data and
//! says so; the agent links no arrow, parquet or datafusion.

use crate::support::spans_by_id;
use prost::Message;
use skein_tests::otlp::{self, hex};
use skein_tests::{Agent, Collector, free_port, metric_sum, wait_until};
use std::time::Duration;

/// A trace of `n` spans from an app whose resource names only its service (so the agent's
/// node identity is what the collector sees).
fn app_trace(n: usize) -> (Vec<u8>, String) {
    let tid = otlp::random_trace_id();
    let end = otlp::now_ns();
    let spans = (0..n)
        .map(|i| otlp::SpanBuilder::new(tid, otlp::random_span_id(), format!("op {i}")).times(end - 1_000_000, end).build())
        .collect();
    let mut rs = otlp::resource_spans("checkout", "unused", spans);
    if let Some(r) = rs.resource.as_mut() {
        r.attributes.retain(|kv| kv.key == "service.name");
    }
    (otlp::request(vec![rs]).encode_to_vec(), hex(&tid))
}

async fn span_count(c: &Collector, tid: &str) -> usize {
    match c.get_json(&format!("/api/v1/traces/{tid}")).await {
        Ok((200, v)) => spans_by_id(&v).len(),
        _ => 0,
    }
}

async fn all_arrived(c: &Collector, sent: &[(String, usize)]) -> bool {
    for (tid, n) in sent {
        if span_count(c, tid).await != *n {
            return false;
        }
    }
    true
}

/// Waits until every trace of `sent` is at the collector, then checks each has exactly its
/// spans (`spans_by_id` panics on a duplicate span).
async fn each_once_after_restart(c: &Collector, sent: &[(String, usize)]) {
    wait_until(Duration::from_secs(60), "every acked trace after the agent's restart", || async { all_arrived(c, sent).await })
        .await
        .expect("every acked trace arrives");
    for (tid, n) in sent {
        assert_eq!(span_count(c, tid).await, *n, "trace {tid}");
    }
}

const FAST_RETRY: [(&str, &str); 3] =
    [("exporter.retry_initial_delay", "50ms"), ("exporter.retry_max_delay", "500ms"), ("node.host_name", "node-a")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_stamped_and_an_outage_loses_nothing() {
    let port = free_port().unwrap();
    let mut collector = Collector::builder().set("otlp.grpc_addr", format!("127.0.0.1:{port}")).start().await.unwrap();
    let agent = Agent::start(&[format!("http://127.0.0.1:{port}")], &FAST_RETRY).await.unwrap();

    let (body, tid) = app_trace(3);
    assert_eq!(agent.post("traces", body).await.unwrap(), 200);
    wait_until(Duration::from_secs(30), "the first trace at the collector", || async { span_count(&collector, &tid).await == 3 })
        .await
        .unwrap();
    let (_, trace) = collector.get_json(&format!("/api/v1/traces/{tid}")).await.unwrap();
    let text = trace.to_string();
    assert!(text.contains("node-a"), "the agent's node identity is on the spans: {text}");
    assert!(text.contains("skein.agent.version"), "{text}");

    // The collector goes away; the app keeps sending and the agent keeps answering 200.
    collector.kill9().unwrap();
    let mut sent = Vec::new();
    for i in 0..20 {
        let (body, tid) = app_trace(1 + i % 4);
        assert_eq!(agent.post("traces", body).await.unwrap(), 200, "the agent acks while the collector is down");
        sent.push((tid, 1 + i % 4));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = agent.metrics().await.unwrap();
    assert!(metric_sum(&m, "skein_agent_queue_records") >= 1.0, "records wait in the queue:\n{m}");
    assert!(metric_sum(&m, "skein_agent_push_retries_total") >= 1.0, "{m}");
    let status = agent.status().await.unwrap();
    assert_eq!(status["collectors"][0]["healthy"], false, "{status}");

    collector.restart().await.unwrap();
    wait_until(Duration::from_secs(60), "every acked trace at the restarted collector", || async { all_arrived(&collector, &sent).await })
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "an empty queue", || async {
        metric_sum(&agent.metrics().await.unwrap_or_default(), "skein_agent_queue_records") == 0.0
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_agent_loses_nothing_it_acknowledged() {
    // The collector is not up yet: everything the agent acks stays in its queue.
    let port = free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut agent = Agent::start(std::slice::from_ref(&url), &FAST_RETRY).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..30 {
        let (body, tid) = app_trace(1 + i % 3);
        assert_eq!(agent.post("traces", body).await.unwrap(), 200);
        sent.push((tid, 1 + i % 3));
    }
    agent.kill9().unwrap();
    let collector = Collector::builder().set("otlp.grpc_addr", format!("127.0.0.1:{port}")).start().await.unwrap();
    agent.restart().await.unwrap();
    // Exactly once as seen by the API, and stored once: nothing was delivered before the kill,
    // so no retry could have sent anything twice.
    each_once_after_restart(&collector, &sent).await;
    let stored = collector
        .http()
        .post(collector.query_url("/api/v1/sql"))
        .json(&serde_json::json!({"query": "SELECT count(*), count(DISTINCT span_id) FROM spans"}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let total: usize = sent.iter().map(|(_, n)| n).sum();
    assert_eq!(stored["rows"][0], serde_json::json!([total, total]), "{stored}");
    // SIGTERM: a clean exit
    let status = agent.terminate(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_agent_under_load_loses_nothing_it_acknowledged() {
    // The collector is up: while four apps send as fast as the agent answers, the exporter is
    // pushing and acknowledging, so the kill lands amid appends, pushes and cursor writes.
    let port = free_port().unwrap();
    let collector = Collector::builder().set("otlp.grpc_addr", format!("127.0.0.1:{port}")).start().await.unwrap();
    let mut agent = Agent::start(&[format!("http://127.0.0.1:{port}")], &FAST_RETRY).await.unwrap();
    let url = format!("{}/v1/traces", agent.otlp_http_url());
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let apps: Vec<_> = (0..4)
        .map(|app| {
            let (url, acked) = (url.clone(), acked.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in 0.. {
                    let n = 1 + (app + i) % 4;
                    let (body, tid) = app_trace(n);
                    let r = client.post(&url).header("content-type", "application/x-protobuf").body(body).send().await;
                    match r.map(|r| r.status().as_u16()) {
                        Ok(200) => acked.lock().unwrap().push((tid, n)),
                        // the agent is gone: what got no answer may or may not have been kept
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Kill once the apps have had 200 exports acknowledged and the collector has some of them.
    wait_until(Duration::from_secs(30), "200 acknowledged exports, some delivered", || async {
        acked.lock().unwrap().len() >= 200
            && collector
                .get_json("/api/v1/traces?service=checkout&limit=1")
                .await
                .is_ok_and(|(_, v)| v["traces"].as_array().is_some_and(|t| !t.is_empty()))
    })
    .await
    .unwrap();
    agent.kill9().unwrap();
    for a in apps {
        a.await.unwrap();
    }
    let sent = acked.lock().unwrap().clone();
    eprintln!("{} exports acknowledged before the kill", sent.len());
    assert!(sent.len() >= 50, "only {} exports were acknowledged before the kill", sent.len());
    agent.restart().await.unwrap();
    each_once_after_restart(&collector, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_data_counts_it_and_stays_healthy() {
    let port = free_port().unwrap();
    let sets = [("queue.max_bytes", "256KiB"), ("queue.segment_size", "32KiB"), ("queue.sync", "never")];
    let agent = Agent::start(&[format!("http://127.0.0.1:{port}")], &sets).await.unwrap();
    // ~1 MiB of spans (2.4 KB a request) with nowhere to go
    for _ in 0..400 {
        let (body, _) = app_trace(40);
        assert_eq!(agent.post("traces", body).await.unwrap(), 200);
    }
    let m = agent.metrics().await.unwrap();
    let dropped = metric_sum(&m, "skein_agent_queue_dropped_records_total");
    assert!(dropped > 0.0, "{m}");
    assert!(metric_sum(&m, "skein_agent_queue_disk_bytes") <= 256.0 * 1024.0, "{m}");
    // The drop by signal: every dropped record is counted once, and spans were among them.
    assert_eq!(metric_sum(&m, "skein_agent_queue_dropped_signal_records_total"), dropped, "{m}");
    let traces = |name: &str| {
        m.lines()
            .find(|l| l.starts_with(name) && l.contains("signal=\"traces\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let records = traces("skein_agent_queue_dropped_signal_records_total");
    assert!(records > 0.0, "{m}");
    // each of those exports held 40 spans
    assert_eq!(traces("skein_agent_queue_dropped_items_total"), 40.0 * records, "{m}");
    assert_eq!(traces("skein_agent_received_items_total"), 400.0 * 40.0, "{m}");
    assert_eq!(agent.admin_get("/healthz").await.unwrap().0, 200);
    assert_eq!(agent.admin_get("/readyz").await.unwrap().0, 200);
    assert!(agent.log().contains("dropped its oldest undelivered records"), "the drop is logged");
}

#[test]
fn the_agent_links_no_arrow_parquet_or_datafusion() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["tree", "-p", "skein-agent", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(skein_tests::workspace_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.lines().any(|l| l.starts_with("skein-agent ")), "{tree}");
    let heavy: Vec<&str> =
        tree.lines().filter(|l| ["arrow", "parquet", "datafusion", "object_store"].iter().any(|h| l.starts_with(h))).collect();
    assert!(heavy.is_empty(), "the agent links {heavy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_collectors_a_trace_lands_on_one_and_a_dead_one_only_holds_back_its_share() {
    let (pa, pb) = (free_port().unwrap(), free_port().unwrap());
    let urls = [format!("http://127.0.0.1:{pa}"), format!("http://127.0.0.1:{pb}")];
    let a = Collector::builder().set("otlp.grpc_addr", format!("127.0.0.1:{pa}")).start().await.unwrap();
    let mut b = Collector::builder().set("otlp.grpc_addr", format!("127.0.0.1:{pb}")).start().await.unwrap();
    let agent = Agent::start(&urls, &FAST_RETRY).await.unwrap();
    let ring = skein_exporter::Ring::new(&urls);
    let owner = |tid: &str| ring.pick(&(0..16).map(|i| u8::from_str_radix(&tid[2 * i..2 * i + 2], 16).unwrap()).collect::<Vec<_>>());

    let send = |n: usize| {
        let agent = &agent;
        async move {
            let mut sent = Vec::new();
            for i in 0..n {
                let (body, tid) = app_trace(2 + i % 3);
                assert_eq!(agent.post("traces", body).await.unwrap(), 200);
                sent.push((tid, 2 + i % 3));
            }
            sent
        }
    };
    let first = send(30).await;
    let (on_a, on_b): (Vec<_>, Vec<_>) = first.iter().cloned().partition(|(t, _)| owner(t) == 0);
    assert!(!on_a.is_empty() && !on_b.is_empty(), "30 traces use both collectors");
    wait_until(Duration::from_secs(30), "each trace whole on its collector", || async {
        all_arrived(&a, &on_a).await && all_arrived(&b, &on_b).await
    })
    .await
    .unwrap();
    for (tid, _) in &on_a {
        assert_eq!(span_count(&b, tid).await, 0, "trace {tid} is on one collector only");
    }

    // B dies: A's share keeps flowing, B's waits in B's queue.
    b.kill9().unwrap();
    let second = send(30).await;
    let (on_a, on_b): (Vec<_>, Vec<_>) = second.iter().cloned().partition(|(t, _)| owner(t) == 0);
    wait_until(Duration::from_secs(30), "A's share while B is down", || async { all_arrived(&a, &on_a).await }).await.unwrap();
    let status = agent.status().await.unwrap();
    let queued: i64 = status["collectors"].as_array().unwrap().iter().map(|c| c["queue"]["records"].as_i64().unwrap_or(0)).sum();
    assert!(queued >= 1, "B's share is queued: {status}");

    b.restart().await.unwrap();
    wait_until(Duration::from_secs(60), "B's backlog after it returns", || async { all_arrived(&b, &on_b).await }).await.unwrap();

    // Logs go with their trace, over OTLP/JSON with gzip: each trace's log record lands on the
    // collector that holds the trace. Metrics go by node: all on the node's collector.
    let now = otlp::now_ns();
    let records: Vec<serde_json::Value> = first
        .iter()
        .map(|(tid, _)| serde_json::json!({"timeUnixNano": now.to_string(), "severityNumber": 9, "body": {"stringValue": format!("log of {tid}")}, "traceId": tid}))
        .collect();
    let logs = serde_json::json!({"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeLogs": [{"logRecords": records}]}]});
    let (code, text) = agent.post_as("logs", logs.to_string().into_bytes(), "application/json", true).await.unwrap();
    assert_eq!((code, text.as_str()), (200, "{}"));
    let metrics = serde_json::json!({"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeMetrics": [{"metrics": [{"name": "e2e.json.gauge", "unit": "1", "gauge": {"dataPoints": [{"timeUnixNano": now.to_string(), "asDouble": 1.5}]}}]}]}]});
    let (code, _) = agent.post_as("metrics", metrics.to_string().into_bytes(), "application/json", true).await.unwrap();
    assert_eq!(code, 200);
    let collectors = [&a, &b];
    wait_until(Duration::from_secs(30), "each trace's log on the trace's collector", || async {
        for (tid, _) in &first {
            if logs_of(collectors[owner(tid)], tid).await != 1 {
                return false;
            }
        }
        true
    })
    .await
    .unwrap();
    for (tid, _) in &first {
        assert_eq!(logs_of(collectors[1 - owner(tid)], tid).await, 0, "the log of {tid} is on one collector only");
    }
    let by_node = ring.pick(b"node-a");
    wait_until(Duration::from_secs(30), "the metric on the node's collector", || async { series(collectors[by_node]).await == 1 })
        .await
        .unwrap();
    assert_eq!(series(collectors[1 - by_node]).await, 0);
}

/// Log records of trace `tid` at `c` (a failed query fails the test).
async fn logs_of(c: &Collector, tid: &str) -> usize {
    let (code, v) = c.get_json(&format!("/api/v1/traces/{tid}/logs")).await.expect("GET a trace's logs");
    assert_eq!(code, 200, "{v}");
    v["logs"].as_array().map_or(0, Vec::len)
}

/// Series of the metric `e2e.json.gauge` at `c` (a failed query fails the test).
async fn series(c: &Collector) -> usize {
    let (code, v) = c.get_json("/api/v1/metrics?name=e2e.json.gauge").await.expect("GET metric series");
    assert_eq!(code, 200, "{v}");
    v["series"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_pushes_what_is_queued_before_exiting() {
    let port = free_port().unwrap();
    let collector = Collector::builder().set("otlp.grpc_addr", format!("127.0.0.1:{port}")).start().await.unwrap();
    // Batches wait up to 30 s to fill, so without the drain on SIGTERM nothing would be sent.
    let sets = [("exporter.batch_max_age", "30s"), ("shutdown_timeout", "10s")];
    let mut agent = Agent::start(&[format!("http://127.0.0.1:{port}")], &sets).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..10 {
        let (body, tid) = app_trace(1 + i % 3);
        assert_eq!(agent.post("traces", body).await.unwrap(), 200);
        sent.push((tid, 1 + i % 3));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!all_arrived(&collector, &sent).await, "still waiting for the batch to fill");
    let status = agent.terminate(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(all_arrived(&collector, &sent).await, "the agent pushed its queue before exiting");
    assert!(agent.log().contains("records_left_in_queue=0"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_collector_down_exits_within_the_shutdown_timeout_and_keeps_the_queue() {
    let port = free_port().unwrap();
    let sets = [("shutdown_timeout", "2s"), ("exporter.retry_initial_delay", "1s")];
    let mut agent = Agent::start(&[format!("http://127.0.0.1:{port}")], &sets).await.unwrap();
    let (body, _) = app_trace(2);
    assert_eq!(agent.post("traces", body).await.unwrap(), 200);
    // Let the retries back off past the shutdown timeout (1 s, 2 s, 4 s, ...).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let t = std::time::Instant::now();
    let status = agent.terminate(Duration::from_secs(20)).await.unwrap();
    let took = t.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?} with shutdown_timeout = 2s:\n{}", agent.log());
    assert!(!agent.log().contains("records_left_in_queue=0"), "the undelivered trace stays queued: {}", agent.log());
}

//! Log search, a trace's logs, metric series and the node list over a real store, with data
//! in blocks and in the head, and retried duplicates on both sides of a flush.

use super::signals::AGENT_QUEUE_METRIC;
use super::*;
use serde_json::Value;
use skein_core::query::{LogQuery, MetricAgg, MetricQuery};
use skein_core::{SpanId, TraceId};
use skein_otlp::synth::signals::{Line, kv, logs_request, metrics_request};

const T0: u64 = 1_700_000_000_000_000_000;
const S: u64 = 1_000_000_000;

fn line(i: u64, trace: u8, severity: i32, body: &str) -> Line {
    Line {
        time: T0 + i * S,
        severity,
        body: body.into(),
        trace_id: if trace == 0 { Vec::new() } else { vec![trace; 16] },
        span_id: if trace == 0 { Vec::new() } else { vec![i as u8 + 1; 8] },
        attributes: vec![kv("request_id", &format!("req-{trace}"))],
    }
}

async fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = super::tests::open_store(dir.path()).await;
    let first = logs_request("web-1", "frontend", &[line(0, 1, 9, "GET /cart started"), line(1, 2, 9, "GET /home started")]);
    store.ingest_logs(first.clone()).await.unwrap();
    store
        .ingest_metrics(metrics_request("web-1", "http.requests", true, &[(T0, 10.0), (T0 + 10 * S, 30.0)], &[kv("route", "/cart")]))
        .await
        .unwrap();
    store.flush_now().await.unwrap();
    // after the flush: the retry of the first request (a duplicate across the flush), and more
    store.ingest_logs(first).await.unwrap();
    store
        .ingest_logs(logs_request(
            "api-1",
            "cart-api",
            &[line(2, 1, 17, "cart query failed: timeout 50% over"), line(3, 0, 13, "slow disk")],
        ))
        .await
        .unwrap();
    // the counter resets (a restart) between 20 s and 30 s
    store
        .ingest_metrics(metrics_request(
            "web-1",
            "http.requests",
            true,
            &[(T0 + 20 * S, 50.0), (T0 + 30 * S, 5.0)],
            &[kv("route", "/cart")],
        ))
        .await
        .unwrap();
    store
        .ingest_metrics(metrics_request("api-1", "http.requests", true, &[(T0, 0.0), (T0 + 30 * S, 60.0)], &[kv("route", "/cart")]))
        .await
        .unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    store
        .ingest_metrics(metrics_request("api-1", AGENT_QUEUE_METRIC, false, &[(now - 5 * S, 100.0), (now - S, 4096.0)], &[]))
        .await
        .unwrap();
    let limits = SqlLimits { timeout: Duration::from_secs(30), memory: 256 << 20, max_rows: 1000 };
    (dir, Engine::new(store, limits))
}

fn bodies(v: &[Value]) -> Vec<&str> {
    v.iter().map(|l| l["body"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_traces_logs_come_from_every_node_in_time_order_once() {
    let (_d, e) = engine().await;
    let q = LogQuery { trace_id: Some(TraceId([1; 16])), oldest_first: true, limit: 100, ..LogQuery::default() };
    let logs = e.logs(&q).await.unwrap();
    assert_eq!(bodies(&logs), ["GET /cart started", "cart query failed: timeout 50% over"]);
    assert_eq!(logs[0]["node"], "web-1");
    assert_eq!(logs[1]["node"], "api-1");
    assert_eq!(logs[1]["severity_text"], "ERROR");
    assert_eq!(logs[0]["trace_id"], "01".repeat(16));
    assert_eq!(logs[0]["correlation_id"], "req-1");
    assert_eq!(logs[0]["resource"]["service.name"], "frontend");
    // by span
    let q = LogQuery { span_id: Some(SpanId([3; 8])), ..q };
    assert_eq!(bodies(&e.logs(&q).await.unwrap()), ["cart query failed: timeout 50% over"]);
}

#[tokio::test]
async fn log_search_filters_and_orders_newest_first() {
    let (_d, e) = engine().await;
    let all = e.logs(&LogQuery { limit: 100, ..LogQuery::default() }).await.unwrap();
    assert_eq!(bodies(&all), ["slow disk", "cart query failed: timeout 50% over", "GET /home started", "GET /cart started"]);
    let warn = e.logs(&LogQuery { min_severity: Some(13), limit: 100, ..LogQuery::default() }).await.unwrap();
    assert_eq!(bodies(&warn), ["slow disk", "cart query failed: timeout 50% over"]);
    // a literal % in the text is not a wildcard; the match ignores case
    let text = e.logs(&LogQuery { text: Some("TIMEOUT 50%".into()), limit: 100, ..LogQuery::default() }).await.unwrap();
    assert_eq!(bodies(&text), ["cart query failed: timeout 50% over"]);
    assert!(e.logs(&LogQuery { text: Some("t_me".into()), limit: 100, ..LogQuery::default() }).await.unwrap().is_empty());
    let svc = e.logs(&LogQuery { service: Some("frontend".into()), limit: 1, ..LogQuery::default() }).await.unwrap();
    assert_eq!(bodies(&svc), ["GET /home started"]);
    let corr = e.logs(&LogQuery { correlation_id: Some("req-2".into()), limit: 100, ..LogQuery::default() }).await.unwrap();
    assert_eq!(bodies(&corr), ["GET /home started"]);
    let window = LogQuery { start_ns: Some((T0 + S) as i64), end_ns: Some((T0 + 2 * S) as i64), limit: 100, ..LogQuery::default() };
    assert_eq!(e.logs(&window).await.unwrap().len(), 2);
    let node = e.logs(&LogQuery { node: Some("api-1".into()), limit: 100, ..LogQuery::default() }).await.unwrap();
    assert_eq!(node.len(), 2);
}

#[tokio::test]
async fn metric_series_aggregate_per_node_and_rate_handles_resets() {
    let (_d, e) = engine().await;
    let q = MetricQuery {
        name: "http.requests".into(),
        node: None,
        start_ns: T0 as i64,
        end_ns: (T0 + 30 * S) as i64,
        step_ns: (10 * S) as i64,
        agg: MetricAgg::Max,
    };
    let v = e.metric_series(&q).await.unwrap();
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{v}");
    assert_eq!(series[0]["node"], "api-1");
    assert_eq!(series[0]["attributes"]["route"], "/cart");
    assert_eq!(series[1]["points"], serde_json::json!([[T0, 10.0], [T0 + 10 * S, 30.0], [T0 + 20 * S, 50.0], [T0 + 30 * S, 5.0]]));
    assert_eq!(v["kind"], "sum");
    assert_eq!(v["truncated"], false, "{v}");
    // rate: increases per second, the reset counts the value after it
    let rate = e.metric_series(&MetricQuery { agg: MetricAgg::Rate, node: Some("web-1".into()), ..q.clone() }).await.unwrap();
    assert_eq!(rate["series"][0]["points"], serde_json::json!([[T0 + 10 * S, 2.0], [T0 + 20 * S, 2.0], [T0 + 30 * S, 0.5]]));
    // too many buckets is refused with the reason
    let e2 = e.metric_series(&MetricQuery { step_ns: 1, ..q }).await.unwrap_err();
    assert_eq!(e2.code, ErrorCode::BadRequest);
    assert!(e2.message.contains("at most 11000"), "{}", e2.message);
}

#[tokio::test]
async fn nodes_report_counts_and_the_agent_queue_depth() {
    let (_d, e) = engine().await;
    let nodes = e.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    let api = &nodes[0];
    assert_eq!(api["node"], "api-1");
    assert_eq!(api["records"]["logs"], 2);
    assert_eq!(api["records"]["metrics"], 4);
    assert_eq!(api["agent_queue_bytes"], 4096.0);
    assert_eq!(api["identity"]["host.name"], "api-1");
    let web = &nodes[1];
    // Counts are of records received: a retry that crossed a flush counts again (the
    // record itself is returned once by the log API).
    assert_eq!(web["records"]["logs"], 4, "{web}");
    assert!(web["agent_queue_bytes"].is_null());
}

#[tokio::test]
async fn sql_sees_logs_and_metrics() {
    let (_d, e) = engine().await;
    let a = e.sql("SELECT node, count(*) AS n FROM logs GROUP BY node ORDER BY node").await.unwrap();
    let j = to_json(&a);
    assert_eq!(j["rows"], serde_json::json!([["api-1", 2], ["web-1", 4]]), "the SQL view shows a retry that crossed a flush: {j}");
    let a = e.sql("SELECT resource_attributes['service.name'] AS s, attributes['route'] AS r, max(value) FROM metrics WHERE name = 'http.requests' GROUP BY 1, 2").await.unwrap();
    let j = to_json(&a);
    assert_eq!(j["rows"], serde_json::json!([["skein-agent", "/cart", 60.0]]), "{j}");
}

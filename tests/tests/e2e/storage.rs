//! Blocks on an object store: an S3 bucket (moto, a real S3 server in its own process) that
//! serves every trace after a restart with an empty local disk; crashes at every step of a
//! flush and a compaction; compaction and retention while queries run.

use crate::support::spans_by_id;
use serde_json::{Value, json};
use skein_tests::otlp::{self, hex};
use skein_tests::s3::S3Server;
use skein_tests::{Collector, CollectorBuilder, wait_until};
use std::collections::BTreeSet;
use std::time::Duration;

/// (trace id, its span ids) for each trace sent.
type Sent = Vec<(String, BTreeSet<String>)>;

/// Sends `n` traces of three spans on two nodes, ending `age_ns` ago.
async fn send(c: &Collector, n: usize, age_ns: u64) -> Sent {
    let mut sent = Vec::new();
    for _ in 0..n {
        let t = otlp::random_trace_id();
        let (a, b, d) = (otlp::random_span_id(), otlp::random_span_id(), otlp::random_span_id());
        let end = otlp::now_ns() - age_ns;
        let start = end - 5_000_000;
        let web = otlp::SpanBuilder::new(t, a, "GET /cart").times(start, end).attr("http.route", otlp::string("/cart")).build();
        let api = otlp::SpanBuilder::new(t, b, "cart").parent(a).times(start + 1_000_000, end - 1_000_000).build();
        let db = otlp::SpanBuilder::new(t, d, "SELECT").parent(b).times(start + 2_000_000, end - 2_000_000).build();
        let req = otlp::request(vec![otlp::resource_spans("web", "web-1", vec![web]), otlp::resource_spans("api", "api-1", vec![api, db])]);
        c.export_http(&req).await.expect("export acked");
        sent.push((hex(&t), [hex(&a), hex(&b), hex(&d)].into_iter().collect()));
    }
    sent
}

async fn sql(c: &Collector, q: &str) -> Value {
    let r = c.http().post(c.query_url("/api/v1/sql")).json(&json!({ "query": q })).send().await.expect("sql request");
    let status = r.status();
    let v: Value = r.json().await.expect("sql json");
    assert_eq!(status, 200, "{q}: {v}");
    v
}

async fn metric(c: &Collector, name: &str) -> f64 {
    let text = c.http().get(c.query_url("/metrics")).send().await.expect("metrics").text().await.expect("metrics text");
    skein_tests::metric_sum(&text, name)
}

/// Every sent span is returned exactly once, by trace id and by SQL.
async fn check_exactly_once(c: &Collector, sent: &Sent) {
    for (tid, spans) in sent {
        let (status, trace) = c.get_json(&format!("/api/v1/traces/{tid}")).await.expect("trace");
        assert_eq!(status, 200, "trace {tid} is missing: {trace}");
        let got: BTreeSet<String> = spans_by_id(&trace).keys().cloned().collect();
        assert_eq!(&got, spans, "trace {tid} lost or gained spans");
    }
    let total: usize = sent.iter().map(|(_, s)| s.len()).sum();
    let v = sql(c, "SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans").await;
    assert_eq!(v["rows"][0], json!([total, total]), "SQL sees each span once");
}

fn fast_storage(b: CollectorBuilder) -> CollectorBuilder {
    b.set("storage.flush.max_age", "1s").set("storage.compaction.interval", "1s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_bucket_serves_every_trace_after_a_restart_with_an_empty_local_disk() {
    let s3 = S3Server::start().await.expect("moto S3 server starts");
    s3.create_bucket("skein").await.unwrap();
    let mut c = fast_storage(Collector::builder())
        .set("storage.url", "s3://skein/cluster-a")
        .set("storage.s3.endpoint", &s3.endpoint)
        .set("storage.s3.region", "us-east-1")
        .set("storage.s3.access_key_id", "test")
        .set("storage.s3.secret_access_key", "test")
        .set("storage.s3.allow_http", "true")
        .start()
        .await
        .expect("collector starts");
    let sent = send(&c, 40, 0).await;
    wait_until(Duration::from_secs(30), "the head is flushed to the bucket", || async { metric(&c, "skein_head_rows").await == 0.0 })
        .await
        .unwrap();
    let keys = s3.list("skein", "cluster-a/tenants/default/").await.unwrap();
    assert!(keys.iter().any(|k| k.ends_with("manifest.json")), "{keys:?}");
    assert!(keys.iter().any(|k| k.ends_with(".parquet")), "{keys:?}");

    // a new machine: nothing on the local disk, only the bucket
    c.kill9().unwrap();
    std::fs::remove_dir_all(c.data_dir()).unwrap();
    std::fs::create_dir_all(c.data_dir()).unwrap();
    c.restart().await.expect("restarts on an empty disk");
    check_exactly_once(&c, &sent).await;
    let v = sql(&c, "SELECT service_name, count(*) FROM spans GROUP BY 1 ORDER BY 1").await;
    assert_eq!(v["rows"], json!([["api", 80], ["web", 40]]));
    let (_, services) = c.get_json("/api/v1/services").await.unwrap();
    assert_eq!(services["services"], json!(["api", "web"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_of_a_flush_or_a_compaction_loses_and_duplicates_nothing() {
    for point in ["flush-after-block", "flush-after-manifest", "compact-after-block", "compact-after-manifest"] {
        let compaction = point.starts_with("compact");
        // For the compaction points the flushes must succeed, so the crash comes from the merge.
        let mut c = fast_storage(Collector::builder()).env("SKEIN_FAILPOINT", point).start().await.expect("collector starts");
        let mut sent = send(&c, 20, 0).await;
        if compaction {
            wait_until(Duration::from_secs(30), "the first block", || async { metric(&c, "skein_blocks").await >= 1.0 }).await.unwrap();
            sent.extend(send(&c, 20, 0).await);
        }
        wait_until(Duration::from_secs(30), format!("the collector aborts at {point}"), || async {
            !c.http().get(c.query_url("/healthz")).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await
        .unwrap();
        assert!(c.log().contains(point), "the failpoint was reached");
        c.kill9().unwrap();
        c.clear_env();
        c.restart().await.expect("restarts");
        check_exactly_once(&c, &sent).await;
        // and once the interrupted work is done again
        wait_until(Duration::from_secs(30), "the head is flushed again", || async { metric(&c, "skein_head_rows").await == 0.0 })
            .await
            .unwrap();
        if compaction {
            // after-block: the merge is redone; after-manifest: it was complete before the crash
            wait_until(Duration::from_secs(30), "one merged block", || async { metric(&c, "skein_blocks").await == 1.0 }).await.unwrap();
        }
        check_exactly_once(&c, &sent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_retention_while_queries_run() {
    let c = fast_storage(Collector::builder())
        .set("storage.retention", "7days")
        .set("storage.compaction.delete_delay", "2s")
        .start()
        .await
        .expect("collector starts");
    // spans from 30 days ago: a block that retention removes
    let old = send(&c, 10, 30 * 24 * 3600 * 1_000_000_000).await;
    wait_until(Duration::from_secs(30), "the old spans' flush", || async { metric(&c, "skein_flushes_total").await >= 1.0 }).await.unwrap();
    let mut sent = Sent::new();
    for _ in 0..4 {
        sent.extend(send(&c, 10, 0).await);
        let blocks = metric(&c, "skein_flushes_total").await;
        wait_until(Duration::from_secs(30), "a flush", || async { metric(&c, "skein_flushes_total").await > blocks }).await.unwrap();
    }
    let total: usize = sent.iter().map(|(_, s)| s.len()).sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut queries = 0;
    while std::time::Instant::now() < deadline {
        let v = sql(&c, "SELECT count(*) FROM spans WHERE start_time > now() - INTERVAL '1 day'").await;
        assert_eq!(v["rows"][0][0], total, "recent spans counted exactly while blocks change");
        let (tid, spans) = &sent[queries % sent.len()];
        let (status, trace) = c.get_json(&format!("/api/v1/traces/{tid}")).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(spans_by_id(&trace).len(), spans.len());
        queries += 1;
    }
    assert!(metric(&c, "skein_compactions_total").await >= 1.0, "compaction ran during the loop");
    assert!(metric(&c, "skein_expired_blocks_total").await >= 1.0, "retention ran during the loop");
    let (status, _) = c.get_json(&format!("/api/v1/traces/{}", old[0].0)).await.unwrap();
    assert_eq!(status, 404, "expired traces are gone");
    check_exactly_once(&c, &sent).await;
    wait_until(Duration::from_secs(15), "replaced block files are deleted after the delay", || async {
        metric(&c, "skein_deleted_block_files_total").await >= 2.0
    })
    .await
    .unwrap();
}

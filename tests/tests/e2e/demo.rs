//! `--demo` populates the collector with cross-node traces at once.

use crate::support::string_set;
use skein_tests::{Collector, wait_until};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_produces_cross_node_traces() {
    let c = Collector::builder().arg("--demo").start().await.expect("collector starts with --demo");

    let trace = wait_until(Duration::from_secs(60), "a demo trace that spans several nodes", || async {
        let (status, v) = c.get_json("/api/v1/traces?limit=20").await?;
        anyhow::ensure!(status == 200, "search answered {status}: {v}");
        for summary in v["traces"].as_array().into_iter().flatten() {
            let Some(tid) = summary["trace_id"].as_str() else { continue };
            let trace = c.trace(tid).await?;
            if trace["nodes"].as_array().is_some_and(|n| n.len() >= 2) {
                return Ok(Some(trace));
            }
        }
        Ok(None)
    })
    .await
    .expect("--demo produces traces");
    assert!(trace["span_count"].as_u64().is_some_and(|n| n >= 2), "{trace}");
    // The trace's logs: access lines from more than one node, carrying its trace id.
    let tid = trace["trace_id"].as_str().unwrap().to_string();
    let (status, logs) = c.get_json(&format!("/api/v1/traces/{tid}/logs")).await.unwrap();
    assert_eq!(status, 200, "{logs}");
    let lines = logs["logs"].as_array().unwrap();
    assert!(lines.iter().all(|l| l["trace_id"] == tid.as_str()), "{logs}");
    let nodes: std::collections::BTreeSet<&str> = lines.iter().filter_map(|l| l["node"].as_str()).collect();
    assert!(nodes.len() >= 2, "logs from the nodes of the trace: {logs}");
    // Per-node request counters, and the nodes (the six hosts report as traces reach them).
    wait_until(Duration::from_secs(60), "request counters from three nodes", || async {
        let (status, m) = c.get_json("/api/v1/metrics?name=http.server.request.count&agg=max").await?;
        anyhow::ensure!(status == 200, "{m}");
        Ok(m["series"].as_array().is_some_and(|s| s.len() >= 3).then_some(()))
    })
    .await
    .expect("the demo reports metrics");
    wait_until(Duration::from_secs(60), "four nodes in the node list", || async {
        let (status, n) = c.get_json("/api/v1/nodes").await?;
        anyhow::ensure!(status == 200, "{n}");
        Ok(n["nodes"].as_array().is_some_and(|n| n.len() >= 4).then_some(()))
    })
    .await
    .expect("the demo's nodes are listed");
    // The replica's lag, as its agent's probe would report it.
    let replica = wait_until(Duration::from_secs(30), "db-2 in the replica-lag list", || async {
        let (status, v) = c.get_json("/api/v1/replica-lag").await?;
        anyhow::ensure!(status == 200, "{v}");
        Ok(v["replicas"].as_array().and_then(|r| r.iter().find(|r| r["replica"] == "db-2:5432").cloned()))
    })
    .await
    .expect("the demo reports replica lag");
    assert_eq!(
        (replica["system"].as_str(), replica["primary"].as_str(), replica["state"].as_str()),
        (Some("postgresql"), Some("db-1:5432"), Some("streaming")),
        "{replica}"
    );
    // The demo's alert rule on that replica is evaluated (it fires during the lag episodes).
    wait_until(Duration::from_secs(60), "the demo's alert rule evaluated", || async {
        let text = c.http().get(c.query_url("/metrics")).send().await?.text().await?;
        Ok::<_, anyhow::Error>((skein_tests::metric_sum(&text, "skein_alert_evaluations_total") >= 1.0).then_some(()))
    })
    .await
    .expect("the demo configures a replica_lag rule");
    assert!(trace["services"].as_array().is_some_and(|s| s.len() >= 2), "{trace}");

    let services = wait_until(Duration::from_secs(60), "three demo services", || async {
        let (status, v) = c.get_json("/api/services").await?;
        anyhow::ensure!(status == 200, "{v}");
        let s = string_set(&v["data"]);
        Ok(if s.len() >= 3 { Some(s) } else { None })
    })
    .await
    .expect("Jaeger sees the demo services");
    assert!(services.len() >= 3, "{services:?}");
}

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

//! Acked means durable: `kill -9` of the collector while clients are sending over gRPC loses
//! nothing that was acked, and replaying the WAL (once or twice) duplicates nothing.

use crate::support::spans_by_id;
use skein_tests::otlp::{self, hex};
use skein_tests::{Collector, wait_until};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;

/// Concurrent senders, each on its own connection.
const SENDERS: usize = 4;
/// Requests acked before the kill.
const ACKED_BEFORE_KILL: usize = 1000;
/// Upper bound on requests per sender, so the test ends even if the kill never lands.
const MAX_PER_SENDER: usize = 20_000;

/// What the clients saw acknowledged: (trace id, span ids).
type Acked = Arc<Mutex<Vec<(String, BTreeSet<String>)>>>;

fn acked_count(acked: &Acked) -> usize {
    acked.lock().map(|a| a.len()).unwrap_or(0)
}

/// Checks that every acked span is returned, exactly once, and returns the count found.
async fn count_found(c: &Collector, acked: &[(String, BTreeSet<String>)]) -> usize {
    let mut found = 0;
    for chunk in acked.chunks(16) {
        let mut reads = JoinSet::new();
        for (tid, expected) in chunk {
            let (tid, expected) = (tid.clone(), expected.clone());
            let url = c.query_url(&format!("/api/v1/traces/{tid}"));
            let http = c.http().clone();
            reads.spawn(async move {
                let resp = http.get(&url).send().await.expect("trace by id");
                let status = resp.status();
                let trace: serde_json::Value = resp.json().await.expect("json");
                assert_eq!(status, 200, "acked trace {tid} is missing after restart: {trace}");
                let spans = spans_by_id(&trace); // panics on duplicates
                let got: BTreeSet<String> = spans.keys().cloned().collect();
                assert_eq!(got, expected, "acked trace {tid} lost or gained spans: {trace}");
                assert_eq!(trace["span_count"], expected.len(), "{trace}");
                got.len()
            });
        }
        while let Some(n) = reads.join_next().await {
            found += n.expect("a read task panicked");
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acked_span() {
    let mut c = Collector::start().await.expect("collector starts");
    let acked: Acked = Arc::default();

    let mut senders = JoinSet::new();
    for n in 0..SENDERS {
        let mut client = c.grpc_client().await.expect("grpc client");
        let acked = Arc::clone(&acked);
        senders.spawn(async move {
            for i in 0..MAX_PER_SENDER {
                let (req, tid) = otlp::sample_trace(&format!("load{n}"), 1 + (i % 4));
                let ids: BTreeSet<String> = otlp::span_ids(&req).into_iter().collect();
                match client.export(req).await {
                    Ok(resp) => {
                        let ps = resp.into_inner().partial_success;
                        assert!(ps.as_ref().is_none_or(|p| p.rejected_spans == 0), "valid spans rejected: {ps:?}");
                        if let Ok(mut a) = acked.lock() {
                            a.push((hex(&tid), ids));
                        }
                    }
                    // The collector died under us: what was not acked may or may not be there.
                    Err(status) => return Some(status),
                }
            }
            None
        });
    }

    wait_until(Duration::from_secs(120), format!("{ACKED_BEFORE_KILL} acked requests"), || async {
        acked_count(&acked) >= ACKED_BEFORE_KILL
    })
    .await
    .expect("load is flowing");
    c.kill9().expect("kill -9");

    let mut errors = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(r) = senders.join_next().await {
            errors.push(r.expect("a sender panicked"));
        }
    })
    .await;
    assert!(drained.is_ok(), "senders did not notice the collector died");
    assert!(errors.iter().all(Option::is_some), "every sender was still sending when the collector was killed: {errors:?}");

    let acked = acked.lock().expect("lock").clone();
    let acked_spans: usize = acked.iter().map(|(_, s)| s.len()).sum();

    c.restart().await.expect("restart after kill -9 (WAL replay)");
    let found = count_found(&c, &acked).await;
    assert_eq!(found, acked_spans, "acked spans = spans found after restart");

    // A second crash and replay must neither lose nor duplicate anything.
    c.restart().await.expect("second restart");
    let found = count_found(&c, &acked).await;
    assert_eq!(found, acked_spans, "acked spans = spans found after a second replay");
    eprintln!("acked {} requests, {acked_spans} spans; all found after two restarts", acked.len());
}

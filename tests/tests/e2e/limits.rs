//! Back-pressure: past `head.memory_limit` ingest answers 429 (HTTP) and `RESOURCE_EXHAUSTED`
//! (gRPC) with retry information, and what was acked stays queryable.

use crate::support::Reply;
use skein_tests::Collector;
use skein_tests::otlp::{self, SpanBuilder, hex, random_span_id, random_trace_id, string};
use tonic_types::StatusExt;

/// At most this many requests (of ~200 KiB each) are sent looking for the 429.
const MAX_REQUESTS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_head_answers_429_with_retry_after() {
    let c = Collector::builder().set("head.memory_limit", "4MiB").start().await.expect("collector starts");

    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..MAX_REQUESTS {
        let t = random_trace_id();
        let spans = (0..100)
            .map(|j| {
                SpanBuilder::new(t, random_span_id(), format!("op {j}"))
                    .attr("payload", string(format!("{i}-{j}-{}", "p".repeat(2000))))
                    .build()
            })
            .collect();
        let req = otlp::request(vec![otlp::resource_spans("fill", "node-fill", spans)]);
        let resp = c.post_traces(prost::Message::encode_to_vec(&req), "application/x-protobuf", None).await.expect("post");
        let r = Reply::read(resp).await.expect("reply");
        match r.status {
            200 => acked.push(hex(&t)),
            429 => {
                refused = Some(r);
                break;
            }
            other => panic!("request {i}: expected 200 or 429, got {other}: {}", r.message()),
        }
    }
    let r = refused.unwrap_or_else(|| panic!("no 429 after {MAX_REQUESTS} requests of ~200 KiB with a 4 MiB head limit"));
    assert!(!acked.is_empty(), "the head took some requests before it was full");
    let retry_after = r.headers.get("retry-after").unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers));
    let retry_after = retry_after.to_str().expect("ascii");
    assert!(retry_after.trim().parse::<u64>().is_ok(), "Retry-After in seconds: {retry_after:?}");
    assert!(!r.message().is_empty(), "429 carries a google.rpc.Status message");

    // gRPC says RESOURCE_EXHAUSTED with RetryInfo, so OTLP clients retry.
    let mut grpc = c.grpc_client().await.expect("grpc");
    let (req, _) = otlp::sample_trace("full", 1);
    let status = grpc.export(req).await.expect_err("the head is full");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.get_details_retry_info().is_some(), "RESOURCE_EXHAUSTED carries RetryInfo: {status:?}");

    // Everything acked before is still there, and queries still work.
    for tid in [acked.first(), acked.last()].into_iter().flatten() {
        let trace = c.trace(tid).await.expect("acked trace");
        assert_eq!(trace["span_count"], 100, "{tid}");
    }
    let resp = c.http().get(c.query_url("/healthz")).send().await.expect("healthz");
    assert_eq!(resp.status(), 200);
}

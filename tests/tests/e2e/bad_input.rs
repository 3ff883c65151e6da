//! Bad OTLP/HTTP input gets the status the OTLP spec prescribes and a `google.rpc.Status`
//! message naming what was wrong, and the collector goes on serving.

use crate::support::{Reply, assert_still_serving, spans_by_id};
use serde_json::json;
use skein_tests::Collector;
use skein_tests::otlp::{self, SpanBuilder, hex, random_span_id, random_trace_id, string};
use std::io::Write;

async fn post(c: &Collector, body: Vec<u8>, ct: &str, enc: Option<&str>) -> Reply {
    let resp = c.post_traces(body, ct, enc).await.expect("post");
    Reply::read(resp).await.expect("read reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_400_naming_protobuf() {
    let c = Collector::start().await.expect("collector starts");
    // Field 1 (resource_spans), length-delimited, with a length running past the end.
    let r = post(&c, vec![0x0a, 0xff, 0xff, 0x01, 0x02], "application/x-protobuf", None).await;
    assert_eq!(r.status, 400, "{}", r.message());
    assert!(r.content_type.starts_with("application/x-protobuf"), "{}", r.content_type);
    let msg = r.message();
    assert!(msg.to_lowercase().contains("protobuf"), "message names the problem: {msg:?}");
    assert_still_serving(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_naming_json() {
    let c = Collector::start().await.expect("collector starts");
    let r = post(&c, br#"{"resourceSpans": [{"scopeSpans": "#.to_vec(), "application/json", None).await;
    assert_eq!(r.status, 400, "{}", r.message());
    assert!(r.content_type.starts_with("application/json"), "{}", r.content_type);
    let msg = r.message();
    assert!(msg.to_lowercase().contains("json"), "message names the problem: {msg:?}");

    // Well-formed JSON that does not fit the schema is also a 400.
    let r = post(&c, br#"{"resourceSpans": 42}"#.to_vec(), "application/json", None).await;
    assert_eq!(r.status, 400, "{}", r.message());
    assert!(r.message().contains("resourceSpans") || r.message().to_lowercase().contains("json"), "{}", r.message());

    // So is a damaged gzip stream.
    let r = post(&c, b"definitely not gzip".to_vec(), "application/json", Some("gzip")).await;
    assert_eq!(r.status, 400, "{}", r.message());
    assert!(r.message().to_lowercase().contains("gzip"), "{}", r.message());
    assert_still_serving(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_is_415() {
    let c = Collector::start().await.expect("collector starts");
    let r = post(&c, b"hello".to_vec(), "text/plain", None).await;
    assert_eq!(r.status, 415, "{}", r.message());
    let msg = r.message();
    assert!(msg.contains("text/plain"), "message names the content type: {msg:?}");

    let r = post(&c, b"{}".to_vec(), "application/json", Some("br")).await;
    assert_eq!(r.status, 415, "an unknown content encoding: {}", r.message());
    assert!(r.message().contains("br"), "{}", r.message());
    assert_still_serving(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_body_is_413() {
    let c = Collector::builder().set("otlp.max_body_size", "64KiB").start().await.expect("collector starts");
    let t = random_trace_id();
    let spans =
        (0..40).map(|i| SpanBuilder::new(t, random_span_id(), format!("s{i}")).attr("payload", string("x".repeat(2000))).build()).collect();
    let big = prost::Message::encode_to_vec(&otlp::request(vec![otlp::resource_spans("big", "n", spans)]));
    assert!(big.len() > 64 * 1024);
    let r = post(&c, big.clone(), "application/x-protobuf", None).await;
    assert_eq!(r.status, 413, "{}", r.message());
    let msg = r.message();
    assert!(
        msg.contains("65536") || msg.to_lowercase().contains("limit") || msg.to_lowercase().contains("large"),
        "message says the body is too large: {msg:?}"
    );

    // Small on the wire, too large once inflated.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&big).expect("gzip");
    let small = gz.finish().expect("gzip");
    assert!(small.len() < 64 * 1024);
    let r = post(&c, small, "application/x-protobuf", Some("gzip")).await;
    assert_eq!(r.status, 413, "the inflated size counts: {}", r.message());

    let (status, _) = c.get_json(&format!("/api/v1/traces/{}", hex(&t))).await.expect("get");
    assert_eq!(status, 404, "nothing of a refused request is stored");
    assert_still_serving(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_id_of_the_wrong_length_is_named() {
    let c = Collector::start().await.expect("collector starts");

    // Alone: a 400, or a 200 whose partial success rejects the one span.
    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "0102030405060708", "spanId": hex(&random_span_id()), "name": "short id",
        "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000"}]}]}]});
    let r = post(&c, body.to_string().into_bytes(), "application/json", None).await;
    match r.status {
        400 => {
            let msg = r.message().to_lowercase();
            assert!(msg.contains("trace id") || msg.contains("trace_id") || msg.contains("traceid"), "{msg:?}");
        }
        200 => {
            let (rejected, msg) = r.partial_success().expect("OTLP JSON").expect("a partial success");
            assert_eq!(rejected, 1, "{msg}");
            assert!(msg.to_lowercase().contains("trace id"), "{msg:?}");
        }
        other => panic!("expected 400 or 200 with partial success, got {other}: {}", r.message()),
    }

    // Mixed with a good span: 200, the bad span rejected and named, the good one stored.
    let (good_t, good_s) = (random_trace_id(), random_span_id());
    let mut bad = SpanBuilder::new(random_trace_id(), random_span_id(), "bad").build();
    bad.trace_id.truncate(8);
    let good = SpanBuilder::new(good_t, good_s, "good").build();
    let req = otlp::request(vec![otlp::resource_spans("mixed", "n", vec![good, bad])]);
    let r = post(&c, prost::Message::encode_to_vec(&req), "application/x-protobuf", None).await;
    assert_eq!(r.status, 200, "{}", r.message());
    let (rejected, msg) = r.partial_success().expect("OTLP protobuf").expect("partial_success must be set");
    assert_eq!(rejected, 1, "{msg}");
    let lower = msg.to_lowercase();
    assert!(lower.contains("trace id") && lower.contains("16"), "names the trace id problem: {msg:?}");

    let trace = c.trace(&hex(&good_t)).await.expect("the good span is stored");
    assert!(spans_by_id(&trace).contains_key(&hex(&good_s)), "{trace}");
    assert_eq!(trace["span_count"], 1, "{trace}");

    // Over gRPC the same request is accepted with the same partial success.
    let mut grpc = c.grpc_client().await.expect("grpc");
    let resp = grpc.export(req).await.expect("grpc export").into_inner();
    let ps = resp.partial_success.expect("partial_success over gRPC");
    assert_eq!(ps.rejected_spans, 1, "{ps:?}");
    assert!(ps.error_message.to_lowercase().contains("trace id"), "{ps:?}");
    assert_still_serving(&c).await;
}

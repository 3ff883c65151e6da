//! Router tests with fake handlers and no socket.

use super::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use prost::Message;
use skein_core::ErrorCode;
use tower::ServiceExt;

struct FakeIngest;

impl OtlpIngest for FakeIngest {
    fn export(&self, req: Export) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(async move {
            let n: usize = match req {
                Export::Traces(req) => req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum(),
                Export::Logs(req) => req.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum(),
                Export::Metrics(req) => req.resource_metrics.iter().flat_map(|r| &r.scope_metrics).map(|s| s.metrics.len()).sum(),
            };
            match n {
                0 => Err(ApiError::new(ErrorCode::ResourceExhausted, "head is full").with_retry_after(std::time::Duration::from_secs(3))),
                1 => Ok(ExportOutcome::default()),
                _ => Ok(ExportOutcome { rejected: 1, message: "rejected 1 of 2: bad id".into() }),
            }
        })
    }

    fn export_protobuf(&self, signal: Signal, body: bytes::Bytes) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        let req = match signal {
            Signal::Traces => <ExportTraceServiceRequest as Message>::decode(&body[..]).map(Export::Traces),
            Signal::Logs => <ExportLogsServiceRequest as Message>::decode(&body[..]).map(Export::Logs),
            Signal::Metrics => <ExportMetricsServiceRequest as Message>::decode(&body[..]).map(Export::Metrics),
        };
        match req {
            Ok(req) => self.export(req),
            Err(e) => Box::pin(async move { Err(ApiError::bad_request(format!("malformed protobuf: {e}"))) }),
        }
    }
}

struct FakeQuery;

impl QueryService for FakeQuery {
    fn sql(&self, query: &str, arrow: bool) -> Result<crate::SqlOutput, ApiError> {
        if arrow {
            return Ok(crate::SqlOutput::Arrow(query.as_bytes().to_vec()));
        }
        Ok(crate::SqlOutput::Json(serde_json::json!({"columns": [], "rows": [[query]]})))
    }
    fn trace(&self, id: TraceId, _: TraceOptions) -> Result<Option<Value>, ApiError> {
        Ok((id.0[0] == 1).then(|| serde_json::json!({"trace_id": id.to_hex()})))
    }
    fn search(&self, q: &SearchParams) -> Result<Vec<Value>, ApiError> {
        Ok(vec![serde_json::json!({"service": q.service})])
    }
    fn services(&self) -> Result<Vec<String>, ApiError> {
        Ok(vec!["api".into(), "db".into()])
    }
    fn operations(&self, _: &str) -> Result<Vec<(String, i8)>, ApiError> {
        Ok(vec![("GET /".into(), 2), ("SELECT".into(), 3)])
    }
    fn jaeger_trace(&self, id: TraceId) -> Result<Option<Value>, ApiError> {
        Ok((id.0[15] == 1).then(|| serde_json::json!({"traceID": id.to_hex()})))
    }
    fn jaeger_search(&self, _: &SearchParams) -> Result<Vec<Value>, ApiError> {
        Ok(vec![])
    }
    fn logs(&self, q: &skein_core::query::LogQuery) -> Result<Vec<Value>, ApiError> {
        Ok(vec![serde_json::json!(format!("{q:?}"))])
    }
    fn metrics(&self, q: &skein_core::query::MetricQuery) -> Result<Value, ApiError> {
        Ok(serde_json::json!({"query": format!("{q:?}")}))
    }
    fn nodes(&self) -> Result<Vec<Value>, ApiError> {
        Ok(vec![serde_json::json!({"node": "web-1"})])
    }
    fn replica_lag(&self, start_ns: i64, end_ns: i64, step_ns: i64) -> Result<Vec<Value>, ApiError> {
        Ok(vec![serde_json::json!({"replica": "db-2", "window": [start_ns, end_ns, step_ns]})])
    }
    fn alerts(&self) -> Result<Vec<Value>, ApiError> {
        Ok(vec![serde_json::json!({"rule": "lag", "state": "firing"})])
    }
    fn dependencies(&self, start_ns: i64, end_ns: i64) -> Result<Vec<skein_core::query::Dependency>, ApiError> {
        Ok(vec![skein_core::query::Dependency {
            parent: "web".into(),
            child: "api".into(),
            call_count: (end_ns - start_ns) as u64,
            error_count: 1,
        }])
    }
}

struct FakeOps;

impl Ops for FakeOps {
    fn ready(&self) -> Result<(), String> {
        Err("replaying WAL".into())
    }
    fn render_metrics(&self, out: &mut String) {
        out.push_str("fake_metric 1\n");
    }
}

fn otlp() -> axum::Router {
    otlp_http_router(Arc::new(FakeIngest), &Signal::ALL, 1024, BodyBudget::new(1 << 20), Arc::default())
}

fn query() -> axum::Router {
    query_router(Arc::new(FakeQuery), Arc::new(FakeOps), Arc::default())
}

async fn send(app: axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app.oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
}

fn post(ct: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/traces").header("content-type", ct).body(body.into()).unwrap()
}

const ONE_SPAN: &str = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x"}]}]}]}"#;
const TWO_SPANS: &str = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"a"},{"name":"b"}]}]}]}"#;

#[tokio::test]
async fn http_json_success_and_partial_success() {
    let (s, h, b) = send(otlp(), post("application/json", ONE_SPAN)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap(), serde_json::json!({}));
    let (s, _, b) = send(otlp(), post("application/json", TWO_SPANS)).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["partialSuccess"]["rejectedSpans"], "1");
    assert_eq!(v["partialSuccess"]["errorMessage"], "rejected 1 of 2: bad id");
}

#[tokio::test]
async fn http_errors_carry_rpc_status() {
    let (s, _, b) = send(otlp(), post("application/x-protobuf", vec![0x0a, 0xff])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let st = skein_otlp::RpcStatus::decode(&b[..]).unwrap();
    assert!(st.message.starts_with("malformed protobuf"), "{}", st.message);
    assert_eq!(st.code, 3);

    let (s, _, b) = send(otlp(), post("text/plain", "hi")).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(String::from_utf8_lossy(&b).contains("unsupported content type"));

    let (s, _, b) = send(otlp(), post("application/json", vec![b' '; 2000])).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&b).contains("limit of 1024 bytes"));

    let (s, h, _) = send(otlp(), post("application/json", "{}")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h["retry-after"], "3");

    let (s, _, b) = send(otlp(), post("application/json", "{\"resourceSpans\": 7}")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&b).contains("malformed JSON"));
}

#[tokio::test]
async fn native_api() {
    let (s, _, b) = send(query(), Request::get("/api/v1/traces/01000000000000000000000000000000").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = send(query(), Request::get("/api/v1/traces/02000000000000000000000000000000").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["error"]["code"], "not_found");
    let (s, _, b) = send(query(), Request::get("/api/v1/traces/xyz").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&b).contains("invalid trace id"));
    let (s, _, b) = send(query(), Request::get("/api/v1/traces?service=api").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["traces"][0]["service"], "api");
}

#[tokio::test]
async fn jaeger_api_shapes() {
    let (_, _, b) = send(query(), Request::get("/api/services").body(Body::empty()).unwrap()).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap(),
        serde_json::json!({"data": ["api", "db"], "total": 2, "limit": 0, "offset": 0, "errors": null})
    );
    let (_, _, b) = send(query(), Request::get("/api/operations?service=api&spanKind=server").body(Body::empty()).unwrap()).await;
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["data"], serde_json::json!([{"name": "GET /", "spanKind": "server"}]));
    let (s, _, _) = send(query(), Request::get("/api/operations").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, b) = send(query(), Request::get("/api/traces/1").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["data"][0]["traceID"], "00000000000000000000000000000001");
    let (s, _, b) = send(query(), Request::get("/api/traces/2").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["errors"][0]["code"], 404);
    let (_, _, b) = send(query(), Request::get("/api/traces?traceID=1&traceID=2").body(Body::empty()).unwrap()).await;
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["errors"][0]["traceID"], "00000000000000000000000000000002");
    let (s, _, b) = send(query(), Request::get("/api/traces?service=api&minDuration=2s&maxDuration=1s").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&b).contains("maxDuration"));
}

#[tokio::test]
async fn ops_endpoints() {
    let (s, _, b) = send(query(), Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&b).contains("replaying WAL"));
    let (s, _, _) = send(query(), Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, b) = send(query(), Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert!(String::from_utf8_lossy(&b).contains("fake_metric 1"));
}

#[tokio::test]
async fn dependencies_in_both_apis() {
    let (s, _, b) = send(query(), Request::get("/api/v1/dependencies?start=100&end=160").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["dependencies"],
        serde_json::json!([{"parent": "web", "child": "api", "call_count": 60, "error_count": 1}])
    );
    // Jaeger: endTs and lookback in ms
    let (s, _, b) = send(query(), Request::get("/api/dependencies?endTs=2000&lookback=1000").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["data"],
        serde_json::json!([{"parent": "web", "child": "api", "callCount": 1_000_000_000}])
    );
    let (s, _, _) = send(query(), Request::get("/api/dependencies?endTs=soon").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = send(query(), Request::get("/api/v1/dependencies?start=5&end=1").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sql_endpoint_negotiates_json_or_arrow_and_checks_the_body() {
    let sql = |body: &str, accept: Option<&str>| {
        let mut r = Request::post("/api/v1/sql").header("content-type", "application/json");
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        r.body(Body::from(body.to_string())).unwrap()
    };
    let (s, h, b) = send(query(), sql(r#"{"query": "SELECT 1"}"#, None)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["rows"][0][0], "SELECT 1");
    let (s, h, b) = send(query(), sql(r#"{"query": "SELECT 2"}"#, Some("text/plain, application/vnd.apache.arrow.stream;q=0.9"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], crate::ARROW_STREAM);
    assert_eq!(b, b"SELECT 2");
    for (body, want) in [("not json", "not JSON"), (r#"{"sql": "x"}"#, "no string field \\\"query\\\"")] {
        let (s, _, b) = send(query(), sql(body, None)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&b).contains(want), "{}", String::from_utf8_lossy(&b));
    }
}

#[tokio::test]
async fn logs_and_metrics_have_their_own_paths_and_partial_success_fields() {
    let logs = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"a"}},{"body":{"stringValue":"b"}}]}]}]}"#;
    let req = Request::post("/v1/logs").header("content-type", "application/json").body(Body::from(logs)).unwrap();
    let (s, _, b) = send(otlp(), req).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["partialSuccess"]["rejectedLogRecords"], "1", "{v}");
    let m = skein_otlp::ExportMetricsServiceRequest {
        resource_metrics: vec![skein_otlp::proto::metrics::v1::ResourceMetrics {
            scope_metrics: vec![skein_otlp::proto::metrics::v1::ScopeMetrics {
                metrics: vec![skein_otlp::proto::metrics::v1::Metric { name: "m".into(), ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let req = Request::post("/v1/metrics").header("content-type", "application/x-protobuf").body(Body::from(m.encode_to_vec())).unwrap();
    let (s, h, b) = send(otlp(), req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "application/x-protobuf");
    let r = skein_otlp::ExportMetricsServiceResponse::decode(&b[..]).unwrap();
    assert!(r.partial_success.is_none());
    // an export the handler refuses keeps OTLP's status semantics on every signal
    let req = Request::post("/v1/metrics").header("content-type", "application/json").body(Body::from("{}")).unwrap();
    let (s, h, _) = send(otlp(), req).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h["retry-after"], "3");
}

async fn get_json(uri: &str) -> (StatusCode, Value) {
    let (s, _, b) = send(query(), Request::get(uri).body(Body::empty()).unwrap()).await;
    (s, serde_json::from_slice(&b).unwrap())
}

#[tokio::test]
async fn log_metric_and_node_routes_parse_their_parameters() {
    let (s, v) = get_json("/api/v1/logs?service=api&severity=warn&q=timeout&trace_id=0102030405060708090a0b0c0d0e0f10&limit=5").await;
    assert_eq!(s, StatusCode::OK);
    let q = v["logs"][0].as_str().unwrap();
    assert!(q.contains("min_severity: Some(13)") && q.contains("text: Some(\"timeout\")") && q.contains("limit: 5"), "{q}");
    let (s, v) = get_json("/api/v1/logs?severity=loud").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("severity=\"loud\""), "{v}");
    let (s, v) = get_json("/api/v1/logs?sevrity=warn").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("unknown parameter \"sevrity\""), "{v}");
    let (s, v) = get_json("/api/v1/traces/0102030405060708090a0b0c0d0e0f10/logs?span_id=0102030405060708").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["trace_id"], "0102030405060708090a0b0c0d0e0f10");
    assert!(v["logs"][0].as_str().unwrap().contains("oldest_first: true"), "{v}");
    let (s, _) = get_json("/api/v1/traces/xyz/logs").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = get_json("/api/v1/metrics?name=cpu&start=0&end=60000000000&step=10s&agg=rate").await;
    assert_eq!(s, StatusCode::OK);
    let q = v["query"].as_str().unwrap();
    assert!(q.contains("step_ns: 10000000000") && q.contains("agg: Rate"), "{q}");
    let (s, v) = get_json("/api/v1/metrics?step=10s").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("'name' is required"), "{v}");
    let (s, _) = get_json("/api/v1/metrics?name=cpu&agg=median").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = get_json("/api/v1/nodes").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["nodes"][0]["node"], "web-1");
}

#[tokio::test]
async fn replica_lag_and_alert_routes() {
    let (s, v) = get_json("/api/v1/replica-lag?start=1000&end=61000&step=10us").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["replicas"][0]["window"], serde_json::json!([1000, 61000, 10_000]));
    assert_eq!(
        (v["start_unix_nano"].as_i64(), v["end_unix_nano"].as_i64(), v["step_ns"].as_i64()),
        (Some(1000), Some(61000), Some(10_000))
    );
    // the default: the last hour in one-minute steps
    let (s, v) = get_json("/api/v1/replica-lag").await;
    assert_eq!(s, StatusCode::OK);
    let w = &v["replicas"][0]["window"];
    assert_eq!(w[1].as_i64().unwrap() - w[0].as_i64().unwrap(), 3600 * 1_000_000_000);
    assert_eq!(w[2], 60_000_000_000i64);
    for (uri, want) in [
        ("/api/v1/replica-lag?start=yesterday", "parameter start=\"yesterday\" is not an integer"),
        ("/api/v1/replica-lag?start=10&end=5", "end=5 is before start=10"),
        ("/api/v1/replica-lag?step=-1s", "step=\"-1s\" must be positive"),
        ("/api/v1/replica-lag?start=0&end=3600000000000&step=1ms", "at most 11000"),
        ("/api/v1/replica-lag?replica=db-2", "unknown parameter \"replica\""),
    ] {
        let (s, v) = get_json(uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(v["error"]["code"], "bad_request");
        assert!(v["error"]["message"].as_str().unwrap().contains(want), "{uri}: {v}");
    }
    let (s, v) = get_json("/api/v1/alerts").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, serde_json::json!({"alerts": [{"rule": "lag", "state": "firing"}]}));
}

/// Yields until `f` holds; fails the test after 10 s, naming `what` it waited for.
async fn until(mut f: impl FnMut() -> bool, what: &str) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "timed out waiting for {what}");
        tokio::task::yield_now().await;
    }
}

/// Holds every protobuf export until released, so requests stay in progress.
struct Gate(tokio::sync::Notify);

impl OtlpIngest for Gate {
    fn export(&self, _: Export) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(async { Ok(ExportOutcome::default()) })
    }
    fn export_protobuf(&self, _: Signal, _: bytes::Bytes) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(async move {
            self.0.notified().await;
            Ok(ExportOutcome::default())
        })
    }
}

fn grpc_frame(len: usize) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    frame.resize(5 + len, 0);
    http::Request::post("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap()
}

#[tokio::test]
async fn requests_past_the_in_flight_budget_are_refused_as_they_arrive() {
    let gate = Arc::new(Gate(tokio::sync::Notify::new()));
    let budget = BodyBudget::new(4096);
    let metrics = Arc::new(ServerMetrics::default());
    let http = otlp_http_router(gate.clone(), &Signal::ALL, 1 << 20, budget.clone(), metrics.clone());
    let grpc = crate::GrpcTraceService::new(gate.clone(), 1 << 20, budget.clone(), metrics.clone());
    // 3000 bytes held by a request the ingest has not answered yet.
    let first = tokio::spawn(send(http.clone(), post("application/x-protobuf", vec![0u8; 3000])));
    until(|| budget.available() == 1096, "the first request to hold 3000 bytes").await;
    // 2000 more bytes do not fit, over HTTP or gRPC: refused with a retry hint, nothing kept.
    let (s, h, b) = send(http.clone(), post("application/x-protobuf", vec![0u8; 2000])).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h["retry-after"], "1");
    let st = skein_otlp::RpcStatus::decode(&b[..]).unwrap();
    assert!(st.message.contains("otlp.max_inflight_bytes"), "{}", st.message);
    let resp = tower::ServiceExt::oneshot(grpc.clone(), grpc_frame(2000)).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "8", "{:?}", resp.headers());
    assert_eq!(budget.available(), 1096);
    // A request that fits goes through while the first is still held.
    let small = tokio::spawn(tower::ServiceExt::oneshot(grpc, grpc_frame(500)));
    // The frame's 505 bytes, then the 500-byte message once tonic hands it over to the call
    // that holds them (had the call not found its bytes, it would take 500 more: 91 left).
    until(|| budget.available() == 1096 - 500, "the small call to hold its 500-byte message").await;
    gate.0.notify_waiters();
    until(
        || {
            gate.0.notify_waiters();
            first.is_finished() && small.is_finished()
        },
        "both held requests to be answered",
    )
    .await;
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    let resp = small.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Every byte is back once the answers are out.
    assert_eq!(budget.available(), 4096);
    assert_eq!(metrics.busy_refusals(), 2);
}

/// Answers every protobuf export with a 400 naming how many bytes it got.
struct Len;

impl OtlpIngest for Len {
    fn export(&self, _: Export) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(async { Ok(ExportOutcome::default()) })
    }
    fn export_protobuf(&self, _: Signal, body: bytes::Bytes) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(async move { Err(ApiError::bad_request(format!("got {} bytes", body.len()))) })
    }
}

#[tokio::test]
async fn a_body_larger_than_the_drain_bound_but_within_the_limit_is_read_whole() {
    // 70 MiB, under a 100 MiB max_body_size: every byte reaches the ingest.
    let n = 70 << 20;
    let http = otlp_http_router(Arc::new(Len), &Signal::ALL, 100 << 20, BodyBudget::new(256 << 20), Arc::default());
    let chunks = (0..70).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 1 << 20])));
    let body = Body::from_stream(futures::stream::iter(chunks));
    let (s, _, b) = send(http, post("application/x-protobuf", body)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let st = skein_otlp::RpcStatus::decode(&b[..]).unwrap();
    assert_eq!(st.message, format!("got {n} bytes"));
}

#[tokio::test]
async fn a_compressed_body_within_the_limits_fits_the_budget_alone() {
    // 15 KiB that gzip takes to about 8 KiB, with max_body_size = max_inflight_bytes = 20 KiB:
    // compressed and inflated are held together for a moment, and that must not be a 429.
    let mut x = 1u32;
    let raw: Vec<u8> = (0..15 * 1024)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if i % 2 == 0 { (x >> 24) as u8 } else { 0 }
        })
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() + raw.len() > 20 * 1024, "{} compressed", gz.len());
    let http = otlp_http_router(Arc::new(Len), &Signal::ALL, 20 * 1024, BodyBudget::for_limits(20 * 1024, 20 * 1024), Arc::default());
    let req = Request::post("/v1/traces")
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(Body::from(gz))
        .unwrap();
    let (s, _, b) = send(http, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&b));
    assert_eq!(skein_otlp::RpcStatus::decode(&b[..]).unwrap().message, format!("got {} bytes", raw.len()));
}

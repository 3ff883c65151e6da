//! The query API and the Jaeger API over spans sent by our own OTLP client: de-duplication,
//! orphans and missing roots, typed attributes, gzip JSON ingest, search, metadata endpoints
//! and ops endpoints.

use crate::support::{Reply, jaeger_span_ids, jaeger_tag, jaeger_trace, parent, root_id, spans_by_id, string_set};
use serde_json::{Value, json};
use skein_otlp::proto::trace::v1::Span;
use skein_tests::Collector;
use skein_tests::otlp::{self, SpanBuilder, SpanKind, array, boolean, double, hex, int, kv, random_span_id, random_trace_id, string};
use std::collections::BTreeSet;
use std::io::Write;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_twice_yields_no_duplicate_spans() {
    let c = Collector::start().await.expect("collector starts");
    let (req, tid) = otlp::sample_trace("dup", 3);
    let expected: BTreeSet<String> = otlp::span_ids(&req).into_iter().collect();
    let tid = hex(&tid);

    c.export_http(&req).await.expect("first delivery");
    c.export_http(&req).await.expect("second delivery (a retry)");
    let mut grpc = c.grpc_client().await.expect("grpc client");
    grpc.export(req.clone()).await.expect("third delivery, over gRPC");

    let trace = c.trace(&tid).await.expect("trace");
    let spans = spans_by_id(&trace);
    assert_eq!(spans.keys().cloned().collect::<BTreeSet<_>>(), expected, "{trace}");
    assert_eq!(trace["span_count"], expected.len(), "{trace}");
    assert_eq!(trace["complete"], true, "{trace}");

    let jt = jaeger_trace(&c, &tid).await;
    assert_eq!(jaeger_span_ids(&jt), expected, "{jt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_whose_parent_never_arrived_is_an_orphan() {
    let c = Collector::start().await.expect("collector starts");
    let t = random_trace_id();
    let (root, child, orphan, missing) = (random_span_id(), random_span_id(), random_span_id(), random_span_id());
    let spans = vec![
        SpanBuilder::new(t, root, "GET /").build(),
        SpanBuilder::new(t, child, "load").parent(root).build(),
        SpanBuilder::new(t, orphan, "lost child").parent(missing).build(),
    ];
    c.export_http(&otlp::request(vec![otlp::resource_spans("orph", "node-1", spans)])).await.expect("export");

    let trace = c.trace(&hex(&t)).await.expect("trace");
    assert_eq!(trace["span_count"], 3, "{trace}");
    assert_eq!(trace["complete"], false, "an orphan makes the trace incomplete: {trace}");
    assert_eq!(root_id(&trace).as_deref(), Some(hex(&root).as_str()), "{trace}");
    let warnings = trace["warnings"].to_string().to_lowercase();
    assert!(warnings.contains("orphan"), "warnings must call it an orphan: {trace}");
    assert!(
        warnings.contains(&hex(&orphan)) || warnings.contains(&hex(&missing)),
        "warnings must name the orphan or its missing parent: {trace}"
    );
    assert_eq!(
        parent(&spans_by_id(&trace)[&hex(&orphan)]).as_deref(),
        Some(hex(&missing).as_str()),
        "the orphan keeps its parent id: {trace}"
    );

    // Only children, no root at all: root is null and a warning says so.
    let t2 = random_trace_id();
    let spans = vec![SpanBuilder::new(t2, random_span_id(), "child").parent(random_span_id()).build()];
    c.export_http(&otlp::request(vec![otlp::resource_spans("orph", "node-1", spans)])).await.expect("export");
    let trace = c.trace(&hex(&t2)).await.expect("trace");
    assert!(trace["root"].is_null(), "no root was sent: {trace}");
    assert_eq!(trace["complete"], false, "{trace}");
    assert!(trace["warnings"].as_array().is_some_and(|w| !w.is_empty()), "a missing root is warned about: {trace}");
}

fn typed_span(t: [u8; 16], id: [u8; 8]) -> Span {
    SpanBuilder::new(t, id, "typed")
        .kind(SpanKind::Client)
        .attr("t.int", int(42))
        .attr("t.negative", int(-7))
        .attr("t.bool", boolean(true))
        .attr("t.double", double(200.0))
        .attr("t.fraction", double(0.25))
        .attr("t.string", string("hello"))
        .attr("t.strings", array(vec![string("a"), string("b")]))
        .attr("t.ints", array(vec![int(1), int(2), int(3)]))
        .event(otlp::now_ns() - 500_000, "cache miss", vec![kv("key", string("user:1"))])
        .build()
}

/// Checks the native API's typed attribute values.
fn assert_native_types(span: &Value) {
    let a = &span["attributes"];
    assert!(a["t.int"].is_i64() && a["t.int"] == 42, "int stays an int: {a}");
    assert_eq!(a["t.negative"], -7, "{a}");
    assert_eq!(a["t.bool"], true, "bool stays a bool: {a}");
    assert!(a["t.double"].is_f64() && a["t.double"].as_f64() == Some(200.0), "a double stays a double (200.0, not 200): {a}");
    assert_eq!(a["t.fraction"].as_f64(), Some(0.25), "{a}");
    assert_eq!(a["t.string"], "hello", "{a}");
    assert_eq!(a["t.strings"], json!(["a", "b"]), "array of strings: {a}");
    assert_eq!(a["t.ints"], json!([1, 2, 3]), "array of ints: {a}");
    assert!(a["t.ints"].as_array().is_some_and(|v| v.iter().all(Value::is_i64)), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_types_round_trip_in_both_apis() {
    let c = Collector::start().await.expect("collector starts");
    let (t, id) = (random_trace_id(), random_span_id());
    let mut rs = otlp::resource_spans("typed-svc", "node-typed", vec![typed_span(t, id)]);
    if let Some(r) = rs.resource.as_mut() {
        r.attributes.push(kv("host.cores", int(8)));
    }
    c.export_http(&otlp::request(vec![rs])).await.expect("export");

    let trace = c.trace(&hex(&t)).await.expect("trace");
    let span = &spans_by_id(&trace)[&hex(&id)];
    assert_native_types(span);
    assert_eq!(span["service"], "typed-svc", "{span}");
    assert_eq!(span["node"], "node-typed", "{span}");
    assert_eq!(span["resource"]["host.cores"], 8, "resource attributes are typed too: {span}");
    assert_eq!(span["resource"]["service.name"], "typed-svc", "{span}");
    assert_eq!(span["events"][0]["name"], "cache miss", "{span}");
    assert_eq!(span["depth"], 0, "{span}");
    let (start, end) = (
        span["start_time_unix_nano"].as_u64().expect("start is an integer"),
        span["end_time_unix_nano"].as_u64().expect("end is an integer"),
    );
    assert_eq!(span["duration_ns"].as_u64(), Some(end - start), "{span}");

    let jt = jaeger_trace(&c, &hex(&t)).await;
    let js = &jt["spans"][0];
    assert_eq!(js["spanID"], hex(&id), "{js}");
    assert_eq!(js["traceID"], hex(&t), "{js}");
    assert!(js["startTime"].is_u64() && js["duration"].is_u64(), "µs integers: {js}");
    assert_eq!(js["startTime"].as_u64(), Some(start / 1000), "{js}");
    let tag = |k: &str| jaeger_tag(js, k).unwrap_or_else(|| panic!("no tag {k}: {js}")).clone();
    assert_eq!(tag("t.int"), json!({"key": "t.int", "type": "int64", "value": 42}));
    assert_eq!(tag("t.bool"), json!({"key": "t.bool", "type": "bool", "value": true}));
    assert_eq!(tag("t.double")["type"], "float64");
    assert_eq!(tag("t.double")["value"].as_f64(), Some(200.0));
    assert_eq!(tag("t.string"), json!({"key": "t.string", "type": "string", "value": "hello"}));
    // Jaeger has no array type: the OTel→Jaeger translation carries arrays as JSON strings.
    let arr = tag("t.strings");
    assert_eq!(arr["type"], "string", "{arr}");
    let parsed: Value = serde_json::from_str(arr["value"].as_str().unwrap_or("")).unwrap_or_default();
    assert_eq!(parsed, json!(["a", "b"]), "{arr}");
    assert_eq!(tag("span.kind")["value"], "client", "{js}");
    assert!(js["logs"][0]["fields"].to_string().contains("cache miss"), "events become logs: {js}");
    let pid = js["processID"].as_str().expect("processID");
    let process = &jt["processes"][pid];
    assert_eq!(process["serviceName"], "typed-svc", "{jt}");
    assert!(process["tags"].to_string().contains("node-typed"), "process tags carry host.name: {jt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_json_is_ingested() {
    let c = Collector::start().await.expect("collector starts");
    let (t, root, child) = (random_trace_id(), random_span_id(), random_span_id());
    let now = otlp::now_ns();
    // Hand-written OTLP/JSON: upper-case hex ids, int64 as strings and as numbers, an unknown field.
    let body = json!({"resourceSpans": [{
    "resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "json-svc"}},
        {"key": "host.name", "value": {"stringValue": "json-node"}}]},
    "scopeSpans": [{"scope": {"name": "hand"}, "spans": [
        {"traceId": hex(&t).to_uppercase(), "spanId": hex(&root), "name": "GET /json", "kind": 2,
         "startTimeUnixNano": (now - 2_000_000).to_string(), "endTimeUnixNano": now.to_string(),
         "attributes": [
            {"key": "n", "value": {"intValue": "7"}},
            {"key": "m", "value": {"intValue": 8}},
            {"key": "d", "value": {"doubleValue": 1.5}},
            {"key": "b", "value": {"boolValue": false}},
            {"key": "arr", "value": {"arrayValue": {"values": [{"stringValue": "x"}]}}}],
         "someFutureField": {"x": 1}},
        {"traceId": hex(&t), "spanId": hex(&child).to_uppercase(), "parentSpanId": hex(&root),
         "name": "child", "kind": 1,
         "startTimeUnixNano": now - 1_000_000, "endTimeUnixNano": now - 500_000}
    ]}]}]});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.to_string().as_bytes()).expect("gzip");
    let resp = c.post_traces(gz.finish().expect("gzip"), "application/json", Some("gzip")).await.expect("post");
    let reply = Reply::read(resp).await.expect("reply");
    assert_eq!(reply.status, 200, "{}", reply.message());
    assert!(reply.content_type.starts_with("application/json"), "answer in the request's encoding");
    let ps = reply.partial_success().expect("answer is OTLP JSON");
    assert!(ps.as_ref().is_none_or(|(n, _)| *n == 0), "nothing rejected: {ps:?}");

    let trace = c.trace(&hex(&t)).await.expect("trace");
    let spans = spans_by_id(&trace);
    assert_eq!(spans.len(), 2, "{trace}");
    let a = &spans[&hex(&root)]["attributes"];
    assert_eq!(a["n"], 7, "{a}");
    assert_eq!(a["m"], 8, "{a}");
    assert_eq!(a["d"], 1.5, "{a}");
    assert_eq!(a["b"], false, "{a}");
    assert_eq!(a["arr"], json!(["x"]), "{a}");
    assert_eq!(parent(&spans[&hex(&child)]).as_deref(), Some(hex(&root).as_str()));
    assert_eq!(spans[&hex(&child)]["depth"], 1, "{trace}");
    assert_eq!(trace["complete"], true, "{trace}");
}

/// Sends one trace whose root lasts `dur_ms` (ending 30 s ago) and returns its id.
async fn send_timed(c: &Collector, service: &str, op: &str, dur_ms: u64, route: &str, error: bool) -> String {
    let t = random_trace_id();
    let end = otlp::now_ns() - 30_000_000_000;
    let start = end - dur_ms * 1_000_000;
    let root = random_span_id();
    let mut r = SpanBuilder::new(t, root, op).times(start, end).attr("http.route", string(route));
    if error {
        r = r.error("boom");
    }
    let child =
        SpanBuilder::new(t, random_span_id(), "inner").parent(root).kind(SpanKind::Internal).times(start + 1_000, end - 1_000).build();
    c.export_http(&otlp::request(vec![otlp::resource_spans(service, &format!("{service}-node"), vec![r.build(), child])]))
        .await
        .expect("export");
    hex(&t)
}

fn native_ids(v: &Value) -> BTreeSet<String> {
    v["traces"]
        .as_array()
        .unwrap_or_else(|| panic!("no traces[]: {v}"))
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap_or_else(|| panic!("summary without trace_id: {t}")).to_string())
        .collect()
}

fn jaeger_ids(v: &Value) -> BTreeSet<String> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data[]: {v}"))
        .iter()
        .map(|t| t["traceID"].as_str().unwrap_or_else(|| panic!("trace without traceID: {t}")).to_string())
        .collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_the_expected_traces_in_both_apis() {
    let c = Collector::start().await.expect("collector starts");
    let svc = format!("search-{}", &hex(&random_span_id())[..6]);
    let slow = send_timed(&c, &svc, "GET /slow", 1500, "/slow", false).await;
    let fast = send_timed(&c, &svc, "GET /fast", 10, "/fast", true).await;
    let other = send_timed(&c, "other-svc", "GET /slow", 2000, "/slow", false).await;

    let get = |path: String| {
        let c = &c;
        async move {
            let (status, v) = c.get_json(&path).await.expect("search");
            assert_eq!(status, 200, "GET {path}: {v}");
            v
        }
    };

    // Native search.
    let v = get(format!("/api/v1/traces?service={svc}")).await;
    assert_eq!(native_ids(&v), set(&[&slow, &fast]), "{v}");
    let v = get(format!("/api/v1/traces?service={svc}&min_duration=1s")).await;
    assert_eq!(native_ids(&v), set(&[&slow]), "{v}");
    let v = get(format!("/api/v1/traces?service={svc}&max_duration=100ms")).await;
    assert_eq!(native_ids(&v), set(&[&fast]), "{v}");
    let v = get("/api/v1/traces?min_duration=1s&operation=GET%20/slow".into()).await;
    assert_eq!(native_ids(&v), set(&[&slow, &other]), "{v}");
    let v = get(format!("/api/v1/traces?service={svc}&status=error")).await;
    assert_eq!(native_ids(&v), set(&[&fast]), "{v}");
    let v = get(format!("/api/v1/traces?service={svc}&attr.http.route=/fast")).await;
    assert_eq!(native_ids(&v), set(&[&fast]), "{v}");
    let v = get(format!("/api/v1/traces?node={svc}-node")).await;
    assert_eq!(native_ids(&v), set(&[&slow, &fast]), "{v}");
    let summary = &v["traces"][0];
    // Newest first: `fast` was sent after `slow` but both end 30 s before sending; by start time
    // the 10 ms trace started later.
    assert_eq!(summary["trace_id"], fast.as_str(), "newest first: {v}");
    assert_eq!(summary["root_service"], svc.as_str(), "{summary}");
    assert_eq!(summary["root_operation"], "GET /fast", "{summary}");
    assert_eq!(summary["span_count"], 2, "{summary}");
    assert_eq!(summary["node_count"], 1, "{summary}");
    assert_eq!(summary["error_count"], 1, "{summary}");
    assert_eq!(summary["duration_ns"], 10_000_000, "{summary}");

    let (status, v) = c.get_json(&format!("/api/v1/traces?service={svc}&min_duration=2s&max_duration=1s")).await.expect("search");
    assert_eq!(status, 400, "max_duration < min_duration is a bad request: {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("error.message: {v}"));
    assert!(msg.contains("duration"), "{v}");

    // Jaeger search, with µs times, Go durations and JSON tags.
    let end_us = otlp::now_ns() / 1000;
    let start_us = end_us - 3_600_000_000;
    let window = format!("start={start_us}&end={end_us}");
    let v = get(format!("/api/traces?service={svc}&{window}")).await;
    assert_eq!(jaeger_ids(&v), set(&[&slow, &fast]), "{v}");
    let v = get(format!("/api/traces?service={svc}&minDuration=1.2s&{window}")).await;
    assert_eq!(jaeger_ids(&v), set(&[&slow]), "{v}");
    let v = get(format!("/api/traces?service={svc}&maxDuration=500ms")).await;
    assert_eq!(jaeger_ids(&v), set(&[&fast]), "{v}");
    let tags = "%7B%22http.route%22%3A%22%2Ffast%22%7D"; // {"http.route":"/fast"}
    let v = get(format!("/api/traces?service={svc}&tags={tags}&{window}")).await;
    assert_eq!(jaeger_ids(&v), set(&[&fast]), "{v}");
    let v = get(format!("/api/traces?service={svc}&tag=http.route:/slow&minDuration=1s")).await;
    assert_eq!(jaeger_ids(&v), set(&[&slow]), "{v}");
    let v = get(format!("/api/traces?service={svc}&operation=GET%20/fast&{window}")).await;
    assert_eq!(jaeger_ids(&v), set(&[&fast]), "{v}");
    assert_eq!(v["data"][0]["spans"].as_array().map(Vec::len), Some(2), "full traces: {v}");
    let v = get(format!("/api/traces?traceID={slow}&traceID={other}")).await;
    assert_eq!(jaeger_ids(&v), set(&[&slow, &other]), "{v}");

    let (status, v) = c.get_json(&format!("/api/traces?service={svc}&minDuration=2s&maxDuration=1s")).await.expect("search");
    assert_eq!(status, 400, "maxDuration < minDuration is a bad request: {v}");
    assert_eq!(v["errors"][0]["code"], 400, "Jaeger error envelope: {v}");
    assert!(v["errors"][0]["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_not_found_answers() {
    let c = Collector::start().await.expect("collector starts");
    let svc = "meta-svc";
    send_timed(&c, svc, "GET /a", 5, "/a", false).await;
    send_timed(&c, svc, "GET /b", 5, "/b", false).await;

    let ok = |path: &'static str| {
        let c = &c;
        async move {
            let (status, v) = c.get_json(path).await.expect("get");
            assert_eq!(status, 200, "GET {path}: {v}");
            v
        }
    };
    let v = ok("/api/v1/services").await;
    assert!(v.to_string().contains(svc), "{v}");
    let v = ok("/api/v1/services/meta-svc/operations").await;
    assert!(v.to_string().contains("GET /a") && v.to_string().contains("GET /b"), "{v}");

    let v = ok("/api/services").await;
    assert!(string_set(&v["data"]).contains(svc), "{v}");
    let v = ok("/api/services/meta-svc/operations").await;
    assert_eq!(string_set(&v["data"]), ["GET /a", "GET /b", "inner"].iter().map(|s| s.to_string()).collect(), "{v}");
    let v = ok("/api/operations?service=meta-svc&spanKind=server").await;
    let ops = v["data"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert!(ops.contains(&json!({"name": "GET /a", "spanKind": "server"})), "{v}");
    assert!(ops.iter().all(|o| o["spanKind"] == "server"), "spanKind filters: {v}");
    let (status, v) = c.get_json("/api/operations").await.expect("get");
    assert_eq!(status, 400, "missing service is a bad request: {v}");

    let unknown = hex(&random_trace_id());
    let (status, v) = c.get_json(&format!("/api/v1/traces/{unknown}")).await.expect("get");
    assert_eq!(status, 404, "{v}");
    assert!(v["error"]["message"].is_string(), "native error shape: {v}");
    let (status, v) = c.get_json(&format!("/api/traces/{unknown}")).await.expect("get");
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["errors"][0]["code"], 404, "{v}");
    let (status, v) = c.get_json("/api/v1/traces/not-hex").await.expect("get");
    assert_eq!(status, 400, "a malformed trace id is a bad request: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_answer() {
    let c = Collector::start().await.expect("collector starts");
    let (req, _) = otlp::sample_trace("ops", 1);
    c.export_http(&req).await.expect("export");
    for path in ["/healthz", "/readyz"] {
        let resp = c.http().get(c.query_url(path)).send().await.expect("get");
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = c.http().get(c.query_url("/metrics")).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("metrics text");
    assert!(text.contains("# TYPE") && text.contains("# HELP"), "Prometheus text: {text}");
    assert!(
        text.lines().any(|l| !l.starts_with('#') && l.contains("span") && l.contains("accepted")),
        "a counter of accepted spans: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_is_reported_always_and_adjusted_only_when_asked() {
    let c = Collector::start().await.expect("collector starts");
    let (t, parent_id, child_id) = (random_trace_id(), random_span_id(), random_span_id());
    let now = otlp::now_ns();
    let (p_start, p_end) = (now - 100_000_000, now);
    // The child's node clock runs 90 ms behind: it seems to start 50 ms before its parent.
    let (c_start, c_end) = (now - 150_000_000, now - 130_000_000);
    let parent_span = SpanBuilder::new(t, parent_id, "GET /skew").times(p_start, p_end).build();
    let child = SpanBuilder::new(t, child_id, "handle").parent(parent_id).times(c_start, c_end).build();
    c.export_http(&otlp::request(vec![
        otlp::resource_spans("skew-fe", "skew-node-1", vec![parent_span]),
        otlp::resource_spans("skew-be", "skew-node-2", vec![child]),
    ]))
    .await
    .expect("export");

    let raw = c.trace(&hex(&t)).await.expect("trace");
    let skew = raw["clock_skew"].to_string();
    assert!(skew.contains("skew-node-1") && skew.contains("skew-node-2"), "clock_skew names the node pair: {raw}");
    assert!(raw["warnings"].to_string().to_lowercase().contains("skew"), "{raw}");
    assert_eq!(raw["complete"], true, "skew does not make a trace incomplete: {raw}");
    let s = &spans_by_id(&raw)[&hex(&child_id)];
    assert_eq!(s["start_time_unix_nano"], c_start, "not adjusted unless asked: {s}");

    let adjusted = c.get_json(&format!("/api/v1/traces/{}?adjust=skew", hex(&t))).await.expect("adjusted trace");
    assert_eq!(adjusted.0, 200, "{}", adjusted.1);
    let s = &spans_by_id(&adjusted.1)[&hex(&child_id)];
    let (start, end) = (s["start_time_unix_nano"].as_u64().expect("start"), s["end_time_unix_nano"].as_u64().expect("end"));
    assert!(p_start <= start && end <= p_end, "adjusted into its parent: {s}");
    assert_eq!(end - start, c_end - c_start, "adjustment keeps the duration: {s}");
    assert!(s["warnings"].to_string().to_lowercase().contains("adjust"), "an adjusted span carries a warning: {s}");

    let jt = jaeger_trace(&c, &hex(&t)).await;
    let js = jt["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["spanID"] == hex(&child_id).as_str())
        .unwrap_or_else(|| panic!("child in Jaeger: {jt}"));
    assert_eq!(js["startTime"], c_start / 1000, "Jaeger answers raw times: {js}");
}

/// The value of the first Prometheus sample whose line contains every one of `words`.
fn metric(text: &str, words: &[&str]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#') && words.iter().all(|w| l.contains(w))).find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_limits_trim_and_are_counted() {
    let c = Collector::builder()
        .set("otlp.max_attributes_per_span", "3")
        .set("otlp.max_attribute_value_len", "8")
        .start()
        .await
        .expect("collector starts");
    let (t, id) = (random_trace_id(), random_span_id());
    let span = SpanBuilder::new(t, id, "wide")
        .attr("a", string("0123456789abcdef"))
        .attr("b", int(1))
        .attr("c", int(2))
        .attr("d", int(3))
        .attr("e", int(4))
        .build();
    let reply =
        c.export_http(&otlp::request(vec![otlp::resource_spans("lim", "n", vec![span])])).await.expect("a trimmed span is still accepted");
    assert!(reply.partial_success.is_none_or(|p| p.rejected_spans == 0), "trimming is not rejecting");
    let trace = c.trace(&hex(&t)).await.expect("trace");
    let a = &spans_by_id(&trace)[&hex(&id)]["attributes"];
    assert_eq!(a.as_object().map(|o| o.len()), Some(3), "3 attributes kept: {a}");
    assert_eq!(a["a"], "01234567", "value cut to 8 bytes: {a}");

    let text = c.http().get(c.query_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metric(&text, &["attribute", "dropped"]).is_some_and(|v| v >= 2.0), "dropped attributes are counted: {text}");
    assert!(metric(&text, &["attribute", "truncated"]).is_some_and(|v| v >= 1.0), "truncated values are counted: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_graph_counts_calls_between_services() {
    let c = Collector::start().await.expect("collector starts");
    // Two traces of frontend → api (fan-out 2 and 3) → db: 5 api calls, 2 db calls.
    for fanout in [2, 3] {
        let (req, _) = otlp::sample_trace("deps", fanout);
        c.export_http(&req).await.expect("export");
    }
    let (status, native) = c.get_json("/api/v1/dependencies").await.expect("native dependencies");
    assert_eq!(status, 200, "{native}");
    let edges: BTreeSet<(String, String, u64)> = native["dependencies"]
        .as_array()
        .expect("dependencies array")
        .iter()
        .map(|e| {
            (
                e["parent"].as_str().unwrap_or("").to_string(),
                e["child"].as_str().unwrap_or("").to_string(),
                e["call_count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, u64)> =
        [("deps-api", "deps-db", 2), ("deps-frontend", "deps-api", 5)].into_iter().map(|(p, c, n)| (p.into(), c.into(), n)).collect();
    assert_eq!(edges, want, "{native}");

    let (status, jaeger) = c.get_json("/api/dependencies?lookback=3600000").await.expect("jaeger dependencies");
    assert_eq!(status, 200, "{jaeger}");
    let data = jaeger["data"].as_array().expect("data array");
    assert_eq!(data.len(), 2, "{jaeger}");
    assert!(data.iter().any(|e| e["parent"] == "deps-frontend" && e["child"] == "deps-api" && e["callCount"] == 5), "{jaeger}");
    // A window that ends before the spans started finds nothing.
    let (_, empty) = c.get_json("/api/dependencies?endTs=1000&lookback=1000").await.expect("jaeger dependencies");
    assert_eq!(empty["data"], json!([]), "{empty}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bodies_are_ingested_over_http_and_grpc() {
    let c = Collector::start().await.expect("collector starts");
    // OTLP/HTTP protobuf, Content-Encoding: zstd
    let (req, tid) = otlp::sample_trace("zstd-http", 2);
    let body = zstd::encode_all(&prost::Message::encode_to_vec(&req)[..], 3).expect("zstd");
    let reply = Reply::read(c.post_traces(body, "application/x-protobuf", Some("zstd")).await.expect("post")).await.expect("reply");
    assert_eq!(reply.status, 200, "{}", reply.message());
    let trace = c.trace(&hex(&tid)).await.expect("trace");
    assert_eq!(trace["span_count"], otlp::span_ids(&req).len(), "{trace}");
    // OTLP/gRPC with zstd message compression
    let (req, tid) = otlp::sample_trace("zstd-grpc", 2);
    let mut grpc = c.grpc_client().await.expect("grpc client").send_compressed(tonic::codec::CompressionEncoding::Zstd);
    grpc.export(req.clone()).await.expect("zstd gRPC export");
    let trace = c.trace(&hex(&tid)).await.expect("trace");
    assert_eq!(trace["span_count"], otlp::span_ids(&req).len(), "{trace}");
}

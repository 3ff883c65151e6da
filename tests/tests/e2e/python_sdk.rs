//! The OpenTelemetry Python SDK, a third-party client, as three separate processes on three
//! "nodes" propagating one W3C trace context (`tests/python/otel_node.py`): one exports over
//! OTLP/gRPC, the others over OTLP/HTTP protobuf (one of them gzip). The collector must
//! assemble one complete trace with every span, parent link, node and typed attribute, and
//! Jaeger's API must show the same spans with three processes.

use crate::support::{jaeger_span_ids, jaeger_tag, jaeger_trace, parent, root_id, spans_by_id, string_set};
use serde_json::{Value, json};
use skein_tests::{Collector, metric_sum, workspace_root};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// The venv's Python: `$SKEIN_TEST_VENV/bin/python`, default `tests/.venv`.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("SKEIN_TEST_VENV")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { workspace_root().join(p) } else { p })
        .unwrap_or_else(|| workspace_root().join("tests/.venv"));
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "no Python venv with the OpenTelemetry SDK at {}: run tests/run-all.sh, which creates it \
         (or set SKEIN_TEST_VENV to a venv with tests/python/requirements.txt installed)",
        venv.display()
    );
    python
}

/// `otel_node.py --chain CHAIN` under `python`, without any inherited `OTEL_*` setting.
fn node_chain(python: &std::path::Path, chain: &Value) -> tokio::process::Command {
    let script = workspace_root().join("tests/python/otel_node.py");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(&script).arg("--chain").arg(chain.to_string()).stdin(std::process::Stdio::null()).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// What one node reported about its spans, logs and metrics.
struct NodeReport {
    service: String,
    host: String,
    trace_id: String,
    spans: Vec<(String, Option<String>, String)>, // (span id, parent id, name)
    request_id: String,
    logs: Vec<(String, String, String)>, // (trace id, span id, body)
}

fn parse_reports(stdout: &str) -> Vec<NodeReport> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("bad report {l}: {e}"));
            let s = |v: &Value| v.as_str().map(str::to_string);
            NodeReport {
                service: s(&v["service"]).unwrap_or_default(),
                host: s(&v["host"]).unwrap_or_default(),
                trace_id: s(&v["trace_id"]).unwrap_or_default(),
                spans: v["spans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|sp| (s(&sp["span_id"]).unwrap_or_default(), s(&sp["parent_span_id"]), s(&sp["name"]).unwrap_or_default()))
                    .collect(),
                request_id: s(&v["request_id"]).unwrap_or_default(),
                logs: v["logs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| {
                        (s(&l["trace_id"]).unwrap_or_default(), s(&l["span_id"]).unwrap_or_default(), s(&l["body"]).unwrap_or_default())
                    })
                    .collect(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_three_processes_one_trace() {
    let python = venv_python();
    let c = Collector::start().await.expect("collector starts");
    let grpc = c.listen().otlp_grpc.to_string();
    let http = c.listen().otlp_http.to_string();
    let chain = json!([
        {"service": "py-frontend", "host": "py-node-a", "protocol": "grpc", "endpoint": grpc,
         "operation": "GET /checkout"},
        {"service": "py-api", "host": "py-node-b", "protocol": "http", "endpoint": http},
        {"service": "py-db", "host": "py-node-c", "protocol": "http-gzip", "endpoint": http},
    ]);
    let mut cmd = node_chain(&python, &chain);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the Python nodes finished within 180 s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python nodes failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let reports = parse_reports(&stdout);
    assert_eq!(reports.len(), 3, "one report per node:\n{stdout}\n{stderr}");
    let tid = reports[0].trace_id.clone();
    assert!(reports.iter().all(|r| r.trace_id == tid), "one trace context across processes:\n{stdout}");

    // Expected: span id -> (parent, name, service, host).
    let mut expected: BTreeMap<String, (Option<String>, String, String, String)> = BTreeMap::new();
    for r in &reports {
        for (id, parent, name) in &r.spans {
            expected.insert(id.clone(), (parent.clone(), name.clone(), r.service.clone(), r.host.clone()));
        }
    }
    let roots: Vec<_> = expected.iter().filter(|(_, e)| e.0.is_none()).map(|(id, _)| id.clone()).collect();
    assert_eq!(roots.len(), 1, "the script makes one root: {stdout}");
    let depth = |id: &str| {
        let mut d = 0;
        let mut id = id.to_string();
        while let Some(Some(p)) = expected.get(&id).map(|e| e.0.clone()) {
            d += 1;
            id = p;
        }
        d
    };

    // The native API: every span, right parents, nodes, services, depth, typed attributes.
    let trace = c.trace(&tid).await.expect("the trace is queryable once the SDKs were acked");
    let spans = spans_by_id(&trace);
    assert_eq!(
        spans.keys().cloned().collect::<BTreeSet<_>>(),
        expected.keys().cloned().collect::<BTreeSet<_>>(),
        "every span of the three processes: {trace}"
    );
    assert_eq!(trace["span_count"], expected.len(), "{trace}");
    assert_eq!(trace["trace_id"], tid.as_str(), "{trace}");
    assert_eq!(trace["complete"], true, "{trace}");
    assert_eq!(root_id(&trace).as_deref(), Some(roots[0].as_str()), "{trace}");
    assert_eq!(trace["warnings"].as_array().map(Vec::len), Some(0), "a clean trace on one machine has no warnings: {trace}");
    assert_eq!(string_set(&trace["nodes"]), ["py-node-a", "py-node-b", "py-node-c"].iter().map(|s| s.to_string()).collect(), "{trace}");
    assert_eq!(string_set(&trace["services"]), ["py-frontend", "py-api", "py-db"].iter().map(|s| s.to_string()).collect(), "{trace}");
    for (id, (want_parent, name, service, host)) in &expected {
        let s = &spans[id];
        assert_eq!(parent(s).as_ref(), want_parent.as_ref(), "parent of {name}: {s}");
        assert_eq!(s["name"], name.as_str(), "{s}");
        assert_eq!(s["service"], service.as_str(), "{s}");
        assert_eq!(s["node"], host.as_str(), "{s}");
        assert_eq!(s["depth"], depth(id), "depth of {name}: {s}");
        let a = &s["attributes"];
        assert!(a["app.items"].is_i64(), "int attribute: {a}");
        assert!(a["app.cached"].is_boolean(), "bool attribute: {a}");
        assert!(a["app.ratio"].is_f64() && a["app.ratio"].as_f64() == Some(200.0), "double attribute (200.0): {a}");
        assert_eq!(a["app.tags"], json!(["a", "b"]), "string array attribute: {a}");
        assert_eq!(a["app.codes"], json!([1, 2, 3]), "int array attribute: {a}");
        assert_eq!(s["resource"]["service.name"], service.as_str(), "{s}");
        assert_eq!(s["resource"]["host.name"], host.as_str(), "{s}");
    }
    let critical = trace["critical_path"].as_array().unwrap_or_else(|| panic!("critical_path: {trace}"));
    assert!(!critical.is_empty(), "a critical path through the trace: {trace}");

    // The Jaeger API: the same spans, three processes, CHILD_OF references, typed tags.
    let jt = jaeger_trace(&c, &tid).await;
    assert_eq!(jt["traceID"], tid.as_str(), "{jt}");
    assert_eq!(jaeger_span_ids(&jt), expected.keys().cloned().collect(), "{jt}");
    let processes = jt["processes"].as_object().unwrap_or_else(|| panic!("processes: {jt}"));
    assert_eq!(processes.len(), 3, "one process per node: {jt}");
    let process_services: BTreeSet<String> =
        processes.values().map(|p| p["serviceName"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(process_services, ["py-frontend", "py-api", "py-db"].iter().map(|s| s.to_string()).collect(), "{jt}");
    for js in jt["spans"].as_array().into_iter().flatten() {
        let id = js["spanID"].as_str().unwrap_or_default();
        let (want_parent, name, service, host) = &expected[id];
        assert_eq!(js["operationName"], name.as_str(), "{js}");
        let process = &processes[js["processID"].as_str().unwrap_or_default()];
        assert_eq!(process["serviceName"], service.as_str(), "{js}");
        assert!(process["tags"].to_string().contains(host.as_str()), "process tags name the host: {process}");
        let refs: Vec<&Value> = js["references"].as_array().into_iter().flatten().collect();
        match want_parent {
            Some(p) => {
                assert_eq!(refs.len(), 1, "{js}");
                assert_eq!(refs[0]["refType"], "CHILD_OF", "{js}");
                assert_eq!(refs[0]["spanID"], p.as_str(), "{js}");
                assert_eq!(refs[0]["traceID"], tid.as_str(), "{js}");
            }
            None => assert!(refs.is_empty(), "the root has no references: {js}"),
        }
        let tag = |k: &str| jaeger_tag(js, k).unwrap_or_else(|| panic!("no tag {k}: {js}"));
        assert_eq!(tag("app.items")["type"], "int64", "{js}");
        assert!(tag("app.items")["value"].is_i64(), "{js}");
        assert_eq!(tag("app.cached")["type"], "bool", "{js}");
        assert!(tag("app.cached")["value"].is_boolean(), "{js}");
        assert_eq!(tag("app.ratio")["type"], "float64", "{js}");
        assert_eq!(tag("app.ratio")["value"].as_f64(), Some(200.0), "{js}");
        assert_eq!(tag("app.tags")["type"], "string", "arrays become JSON strings: {js}");
        let arr: Value = serde_json::from_str(tag("app.tags")["value"].as_str().unwrap_or("")).unwrap_or_default();
        assert_eq!(arr, json!(["a", "b"]), "{js}");
        assert!(jaeger_tag(js, "span.kind").is_some(), "{js}");
    }
}

/// The same SDK processes, but each exporting to its node's agent (two agents with different
/// identities, one gRPC and one HTTP), the agents pushing to one collector: the trace arrives
/// whole, and every span carries its agent's identity next to what the app set.
/// One run of a two-node chain (with logs and metrics) through agents `a` and `b`: the
/// reports of both nodes, checked for success.
async fn run_chain_through(python: &std::path::Path, a: &skein_tests::Agent, b: &skein_tests::Agent, round: usize) -> Vec<NodeReport> {
    let chain = json!([
        {"service": "py-frontend", "host": "py-node-a", "protocol": "grpc",
         "endpoint": a.otlp_grpc_url().trim_start_matches("http://"), "operation": format!("GET /cart/{round}"), "signals": true},
        {"service": "py-api", "host": "py-node-b", "protocol": "http",
         "endpoint": b.otlp_http_url().trim_start_matches("http://"), "signals": true},
    ]);
    let mut cmd = node_chain(python, &chain);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output()).await.expect("the Python nodes finished").expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the Python nodes failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let reports = parse_reports(&stdout);
    assert_eq!(reports.len(), 2, "{stdout}");
    reports
}

/// Log lines the reports say were emitted: (trace id, span id, body, host).
fn reported_logs(reports: &[NodeReport]) -> BTreeSet<(String, String, String, String)> {
    reports.iter().flat_map(|r| r.logs.iter().map(move |(t, s, b)| (t.clone(), s.clone(), b.clone(), r.host.clone()))).collect()
}

/// The logs of trace `tid` at the collector as (trace id, span id, body, node), and how many
/// records the API returned (to see duplicates).
async fn logs_of(c: &Collector, tid: &str) -> (BTreeSet<(String, String, String, String)>, usize) {
    match c.get_json(&format!("/api/v1/traces/{tid}/logs")).await {
        Ok((200, v)) => {
            let logs = v["logs"].as_array().cloned().unwrap_or_default();
            let s = |l: &Value, k: &str| l[k].as_str().unwrap_or_default().to_string();
            (logs.iter().map(|l| (s(l, "trace_id"), s(l, "span_id"), s(l, "body"), s(l, "node"))).collect(), logs.len())
        }
        _ => (BTreeSet::new(), 0),
    }
}

/// The Python SDK sends spans, logs and metrics to two agents with different node identities,
/// which push to one collector. The collector is then killed for 60 seconds while the apps
/// keep sending; after it restarts, every record the agents acked arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_through_two_agents_and_a_collector_outage() {
    let python = venv_python();
    let port = skein_tests::free_port().unwrap();
    let mut c = Collector::builder().set("otlp.grpc_addr", format!("127.0.0.1:{port}")).start().await.expect("collector starts");
    let upstream = [format!("http://127.0.0.1:{port}")];
    // Each agent reports its own queue gauges every second, under its app's host name.
    let fast = [
        ("exporter.retry_initial_delay", "50ms"),
        ("exporter.retry_max_delay", "1s"),
        ("admin.report_interval", "1s"),
        ("host_metrics.interval", "1s"),
    ];
    let sets = |host: &'static str, pod: &'static str, node: &'static str| {
        let mut v = vec![("node.host_name", host), ("node.k8s_pod_name", pod), ("node.k8s_node_name", node)];
        v.extend(fast);
        v
    };
    let a = skein_tests::Agent::start(&upstream, &sets("py-node-a", "pod-a", "worker-1")).await.unwrap();
    let b = skein_tests::Agent::start(&upstream, &sets("py-node-b", "pod-b", "worker-2")).await.unwrap();

    let reports = run_chain_through(&python, &a, &b, 0).await;
    let tid = reports[0].trace_id.clone();
    let expected: BTreeMap<String, String> =
        reports.iter().flat_map(|r| r.spans.iter().map(move |(id, _, _)| (id.clone(), r.host.clone()))).collect();
    // The SDKs were acked by the agents; the agents push within their batch age.
    let trace = skein_tests::wait_until(Duration::from_secs(30), "the whole trace at the collector", || {
        let (c, tid, n) = (&c, tid.clone(), expected.len());
        async move {
            match c.get_json(&format!("/api/v1/traces/{tid}")).await {
                Ok((200, t)) if t["span_count"] == n => Some(t),
                _ => None,
            }
        }
    })
    .await
    .unwrap();
    let spans = spans_by_id(&trace);
    assert_eq!(spans.keys().cloned().collect::<BTreeSet<_>>(), expected.keys().cloned().collect::<BTreeSet<_>>(), "{trace}");
    assert_eq!(trace["complete"], true, "{trace}");
    assert_eq!(string_set(&trace["nodes"]), ["py-node-a", "py-node-b"].map(String::from).into(), "{trace}");
    for (id, host) in &expected {
        let r = &spans[id]["resource"];
        let (pod, node) = if host == "py-node-a" { ("pod-a", "worker-1") } else { ("pod-b", "worker-2") };
        assert_eq!(r["host.name"], host.as_str(), "the app's host.name is kept: {r}");
        assert_eq!(r["k8s.pod.name"], pod, "{r}");
        assert_eq!(r["k8s.node.name"], node, "{r}");
        assert!(r["skein.agent.version"].is_string(), "{r}");
    }

    // The logs of the trace, from both nodes, with their trace context and correlation id.
    let want = reported_logs(&reports);
    assert_eq!(want.len(), 4, "two log lines per node");
    let (got, n) = skein_tests::wait_until(Duration::from_secs(30), "the trace's logs", || async {
        let (got, n) = logs_of(&c, &tid).await;
        (got == want).then_some((got, n))
    })
    .await
    .unwrap();
    assert_eq!(n, got.len(), "each log record once");
    let front = reports.iter().find(|r| r.host == "py-node-a").expect("a report of py-node-a");
    let (_, v) = c.get_json(&format!("/api/v1/logs?correlation_id={}", front.request_id)).await.unwrap();
    assert_eq!(v["logs"].as_array().map(Vec::len), Some(2), "the request id became the correlation id: {v}");
    assert_eq!(v["logs"][0]["resource"]["k8s.pod.name"], "pod-a", "{v}");

    // The counters of both nodes, and both nodes in the node list with their agent.
    let (_, m) = c.get_json("/api/v1/metrics?name=app.requests&agg=max").await.unwrap();
    let nodes: BTreeSet<String> = m["series"].as_array().unwrap().iter().map(|s| s["node"].as_str().unwrap().to_string()).collect();
    assert_eq!(nodes, ["py-node-a", "py-node-b"].map(String::from).into(), "{m}");
    let n = skein_tests::wait_until(Duration::from_secs(30), "both agents' queue depth in the node list", || async {
        let (_, n) = c.get_json("/api/v1/nodes").await.ok()?;
        let list = n["nodes"].as_array()?;
        list.iter().all(|node| node["agent_queue_bytes"].is_number()).then_some(n.clone())
    })
    .await
    .unwrap();
    let list = n["nodes"].as_array().unwrap();
    assert_eq!(list.iter().map(|n| n["node"].as_str().unwrap()).collect::<Vec<_>>(), ["py-node-a", "py-node-b"], "{n}");
    for node in list {
        assert!(node["agent_version"].is_string(), "{node}");
        assert!(node["services"].to_string().contains("skein-agent"), "{node}");
        assert!(node["records"]["spans"].as_u64().unwrap() >= 2 && node["records"]["logs"] == 2, "{node}");
        assert!(node["identity"]["k8s.pod.name"].is_string(), "{node}");
    }

    // Each agent's host metrics, under its node.
    let mem = skein_tests::wait_until(Duration::from_secs(30), "host memory usage from py-node-a", || async {
        let (_, m) = c.get_json("/api/v1/metrics?name=system.memory.usage&node=py-node-a&agg=max").await.ok()?;
        m["series"].as_array().is_some_and(|s| s.len() == 4).then_some(m)
    })
    .await
    .unwrap();
    let states: BTreeSet<&str> =
        mem["series"].as_array().unwrap().iter().filter_map(|s| s["attributes"]["system.memory.state"].as_str()).collect();
    assert_eq!(states, ["buffers", "cached", "free", "used"].into(), "{mem}");

    // The collector is down for 60 s; the apps keep sending and the agents keep acking.
    c.kill9().unwrap();
    let down = std::time::Instant::now();
    let mut rounds = vec![reports];
    for round in 1..=3 {
        rounds.push(run_chain_through(&python, &a, &b, round).await);
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(down.elapsed())).await;
    assert!(metric_sum(&a.metrics().await.unwrap(), "skein_agent_queue_records") >= 1.0, "the agent queued during the outage");
    c.restart().await.unwrap();

    // Every round arrives, each record once.
    for reports in &rounds {
        let tid = reports[0].trace_id.clone();
        let n: usize = reports.iter().map(|r| r.spans.len()).sum();
        let want = reported_logs(reports);
        skein_tests::wait_until(Duration::from_secs(60), "a round sent during the outage, at the restarted collector", || async {
            let spans = match c.get_json(&format!("/api/v1/traces/{tid}")).await {
                Ok((200, t)) => spans_by_id(&t).len(),
                _ => 0,
            };
            let (got, count) = logs_of(&c, &tid).await;
            (spans == n && got == want && count == want.len()).then_some(())
        })
        .await
        .unwrap();
    }
    let (_, all) = c.get_json("/api/v1/logs?limit=1000").await.unwrap();
    assert_eq!(all["logs"].as_array().map(Vec::len), Some(16), "4 rounds of 4 log lines, none twice: {all}");
    // Each process exports its counter twice (force_flush and shutdown): 4 rounds x 2 nodes x 2.
    let window = format!("start={}&end={}&step=1h", otlp_now() - 3_600_000_000_000, otlp_now());
    let (_, m) = c.get_json(&format!("/api/v1/metrics?name=app.requests&agg=sum&{window}")).await.unwrap();
    let total: f64 =
        m["series"].as_array().unwrap().iter().flat_map(|s| s["points"].as_array().unwrap().iter()).map(|p| p[1].as_f64().unwrap()).sum();
    assert_eq!(total, 16.0, "every data point once: {m}");
}

fn otlp_now() -> i64 {
    skein_tests::otlp::now_ns() as i64
}

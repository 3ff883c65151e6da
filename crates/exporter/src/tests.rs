//! The exporter against a real gRPC server (the collector's OTLP services over a scripted
//! handler) on loopback.

use super::*;
use skein_core::ErrorCode;
use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use skein_otlp::{ExportTraceServiceRequest, Signal};
use skein_server::{ApiError, BoxFuture, Export, ExportOutcome, OtlpIngest};
use std::collections::VecDeque;

#[derive(Default)]
struct Script {
    /// (signal, request bytes) of every accepted export.
    got: Mutex<Vec<(Signal, usize)>>,
    /// Failures to answer with first, in order.
    fail: Mutex<VecDeque<ApiError>>,
    /// A failure for one attempt (1 is the first).
    fail_attempt: Mutex<Option<(u64, ApiError)>>,
    attempts: AtomicU64,
}

impl OtlpIngest for Script {
    fn export(&self, _: Export) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(async { Err(ApiError::bad_request("json is not used here")) })
    }
    fn export_protobuf(&self, signal: Signal, body: bytes::Bytes) -> BoxFuture<'_, Result<ExportOutcome, ApiError>> {
        Box::pin(async move {
            let attempt = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(e) = self.fail.lock().pop_front() {
                return Err(e);
            }
            if let Some((_, e)) = self.fail_attempt.lock().take_if(|(n, _)| *n == attempt) {
                return Err(e);
            }
            let n = match signal {
                Signal::Traces => {
                    let req = ExportTraceServiceRequest::decode(&body[..]).map_err(|e| ApiError::bad_request(e.to_string()))?;
                    let spans: Vec<&Span> = req.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
                    if spans.iter().any(|s| s.span_id == [0xEE; 8]) {
                        return Err(ApiError::bad_request("span 0xeeeeeeeeeeeeeeee is poisoned"));
                    }
                    spans.len()
                }
                _ => body.len(),
            };
            self.got.lock().push((signal, n));
            Ok(ExportOutcome::default())
        })
    }
}

async fn serve(script: Arc<Script>) -> String {
    serve_limited(script, 1 << 20).await
}

/// A server refusing messages over `max_message` bytes, as tonic does.
async fn serve_limited(script: Arc<Script>, max_message: usize) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let m = Arc::new(skein_server::ServerMetrics::default());
    let budget = skein_server::BodyBudget::new(64 << 20);
    let svc = tonic::transport::Server::builder()
        .add_service(skein_server::GrpcTraceService::new(script.clone(), max_message, budget.clone(), m.clone()))
        .add_service(skein_server::GrpcLogsService::new(script, max_message, budget, m))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l));
    tokio::spawn(svc);
    format!("http://{addr}")
}

fn spans(n: u8) -> Vec<u8> {
    let spans = (0..n).map(|i| Span { trace_id: vec![1; 16], span_id: vec![i + 1; 8], ..Default::default() }).collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }],
    };
    record(Signal::Traces, &req.encode_to_vec())
}

fn cfg() -> ExporterConfig {
    ExporterConfig {
        batch_max_age: Duration::millis(20),
        retry_initial_delay: Duration::millis(10),
        retry_max_delay: Duration::millis(50),
        timeout: Duration::secs(5),
        ..Default::default()
    }
}

/// An exporter running on a queue, until [`Running::stop`].
struct Running {
    exp: Arc<Exporter>,
    tx: watch::Sender<Option<Instant>>,
    task: tokio::task::JoinHandle<()>,
}

fn start(endpoint: String, cfg: ExporterConfig, queue: &Arc<Queue>) -> Running {
    let exp = Arc::new(Exporter::new(endpoint, cfg, Arc::clone(queue)));
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(Arc::clone(&exp).run(rx));
    Running { exp, tx, task }
}

impl Running {
    /// Shuts the exporter down, letting it drain for `drain`, and waits for it.
    async fn stop(self, drain: std::time::Duration) {
        self.tx.send(Some(Instant::now() + drain)).unwrap();
        self.task.await.unwrap();
    }
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_runs_of_one_signal_retries_and_acks_only_what_was_delivered() {
    let script = Arc::new(Script::default());
    script.fail.lock().push_back(ApiError::new(ErrorCode::Unavailable, "starting"));
    let endpoint = serve(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), skein_wal::QueueOptions::default()).unwrap());
    for n in [2, 3] {
        queue.append(&spans(n)).unwrap();
    }
    queue.append(&record(Signal::Logs, b"\x0a\x00")).unwrap();
    queue.append(&spans(4)).unwrap();
    let run = start(endpoint, cfg(), &queue);
    let exp = &run.exp;
    let drain = std::time::Duration::from_secs(1);
    until("the queue to drain", || queue.stats().depth.get() == 0).await;
    // the first push failed and was retried; traces 2+3 went as one request, then logs, then 4
    assert_eq!(*script.got.lock(), vec![(Signal::Traces, 5), (Signal::Logs, 2), (Signal::Traces, 4)]);
    assert_eq!(exp.stats.retries.get(), 1);
    assert_eq!(exp.stats.sent_records[0].get(), 3);
    assert_eq!(exp.stats.sent_records[1].get(), 1);
    // later appends are picked up when notified
    queue.append(&spans(1)).unwrap();
    exp.notify.notify_one();
    until("the new record", || script.got.lock().len() == 4).await;
    run.stop(drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_drops_the_batch_and_goes_on() {
    let script = Arc::new(Script::default());
    script.fail.lock().push_back(ApiError::bad_request("span 0 has a trace id of 3 bytes"));
    let endpoint = serve(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), skein_wal::QueueOptions::default()).unwrap());
    queue.append(&spans(2)).unwrap();
    let run = start(endpoint, cfg(), &queue);
    let exp = &run.exp;
    let drain = std::time::Duration::from_secs(1);
    until("the drop", || exp.stats.dropped_records[0].get() == 1).await;
    assert!(exp.stats.last_error.lock().as_deref().unwrap_or("").contains("trace id of 3 bytes"));
    queue.append(&spans(3)).unwrap();
    exp.notify.notify_one();
    until("the next record", || script.got.lock().len() == 1).await;
    assert_eq!(*script.got.lock(), vec![(Signal::Traces, 3)]);
    // acknowledged in the queue once the answer is back
    until("the ack", || queue.stats().depth.get() == 0).await;
    run.stop(drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_keeps_records_queued_until_it_is_up() {
    // a port nothing listens on
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), skein_wal::QueueOptions::default()).unwrap());
    queue.append(&spans(5)).unwrap();
    let run = start(format!("http://{addr}"), cfg(), &queue);
    let exp = &run.exp;
    let drain = std::time::Duration::from_millis(100);
    until("a few retries", || exp.stats.retries.get() >= 3).await;
    assert_eq!(queue.stats().depth.get(), 1, "nothing is acknowledged while the collector is down");
    assert!(!exp.stats.healthy.load(Ordering::Relaxed));
    // shutting down gives up after the drain time and leaves the record queued
    run.stop(drain).await;
    assert_eq!(queue.stats().depth.get(), 1);
}

#[test]
fn statuses_are_classified_the_otlp_way() {
    use tonic_types::{ErrorDetails, StatusExt};
    assert!(matches!(classify(&tonic::Status::unavailable("x")), Outcome::Retry { after: None, .. }));
    assert!(matches!(classify(&tonic::Status::invalid_argument("bad")), Outcome::Permanent(m) if m.contains("bad")));
    // RESOURCE_EXHAUSTED is retried only with RetryInfo, after the delay it names
    assert!(matches!(classify(&tonic::Status::resource_exhausted("full")), Outcome::Permanent(_)));
    let with_info = tonic::Status::with_error_details(
        tonic::Code::ResourceExhausted,
        "full",
        ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(3))),
    );
    assert_eq!(
        classify(&with_info),
        Outcome::Retry { after: Some(std::time::Duration::from_secs(3)), reason: "ResourceExhausted: full".into() }
    );
    let c = cfg();
    for a in 0..20 {
        let d = backoff(&c, a);
        assert!(d <= c.retry_max_delay.0 && d >= c.retry_initial_delay.0 / 2, "{d:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_merged_run_is_retried_record_by_record_so_only_the_bad_one_is_dropped() {
    let script = Arc::new(Script::default());
    let endpoint = serve(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), skein_wal::QueueOptions::default()).unwrap());
    let poisoned = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span { trace_id: vec![2; 16], span_id: vec![0xEE; 8], ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    queue.append(&spans(2)).unwrap();
    queue.append(&record(Signal::Traces, &poisoned.encode_to_vec())).unwrap();
    queue.append(&spans(3)).unwrap();
    let run = start(endpoint, cfg(), &queue);
    let exp = &run.exp;
    let drain = std::time::Duration::from_secs(1);
    until("the queue to drain", || queue.stats().depth.get() == 0).await;
    assert_eq!(*script.got.lock(), vec![(Signal::Traces, 2), (Signal::Traces, 3)]);
    assert_eq!(exp.stats.dropped_records[0].get(), 1);
    assert_eq!(exp.stats.sent_records[0].get(), 2);
    run.stop(drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_stay_under_the_batch_size() {
    let script = Arc::new(Script::default());
    let endpoint = serve(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), skein_wal::QueueOptions::default()).unwrap());
    let one = spans(10);
    for _ in 0..10 {
        queue.append(&one).unwrap();
    }
    // room for about three records a request
    let c = ExporterConfig { batch_max_bytes: ByteSize((one.len() * 3 + 10) as u64), ..cfg() };
    let run = start(endpoint, c, &queue);
    let drain = std::time::Duration::from_secs(1);
    until("the queue to drain", || queue.stats().depth.get() == 0).await;
    let got = script.got.lock().clone();
    assert_eq!(got.iter().map(|g| g.1).sum::<usize>(), 100);
    assert!(got.iter().all(|g| g.1 <= 30), "{got:?}");
    run.stop(drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_reaches_a_grpc_server() {
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let script = Arc::new(Script::default());
        let endpoint = serve(script.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(Queue::open(dir.path(), skein_wal::QueueOptions::default()).unwrap());
        queue.append(&spans(7)).unwrap();
        let run = start(endpoint, ExporterConfig { compression, ..cfg() }, &queue);
        let drain = std::time::Duration::from_secs(1);
        until("the queue to drain", || queue.stats().depth.get() == 0).await;
        assert_eq!(*script.got.lock(), vec![(Signal::Traces, 7)], "{compression:?}");
        run.stop(drain).await;
    }
}

#[test]
fn an_http_error_without_grpc_status_maps_as_grpc_says() {
    // 502-504 and 429 are retried; anything else from a non-gRPC hop is permanent.
    for (http, retry) in [(503u16, true), (429, true), (502, true), (404, false), (400, false), (500, false)] {
        let st = call::http_status(http::StatusCode::from_u16(http).unwrap());
        assert_eq!(matches!(classify(&st), Outcome::Retry { .. }), retry, "{http}: {st:?}");
    }
}

/// An export of `resources` resources, each with `per` spans named with `name_len` bytes.
fn resources(resources: u8, per: u8, name_len: usize) -> Vec<u8> {
    let req = ExportTraceServiceRequest {
        resource_spans: (0..resources)
            .map(|r| ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..per)
                        .map(|i| Span {
                            trace_id: vec![r + 1; 16],
                            span_id: vec![i + 1; 8],
                            name: "n".repeat(name_len),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    record(Signal::Traces, &req.encode_to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_batch_size_goes_in_whole_resources_and_one_too_large_for_the_collector_is_dropped() {
    for compression in [Compression::Zstd, Compression::None] {
        too_large_records(compression).await;
    }
}

async fn too_large_records(compression: Compression) {
    let script = Arc::new(Script::default());
    // The collector takes messages up to 4 KiB.
    let endpoint = serve_limited(script.clone(), 4096).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), skein_wal::QueueOptions::default()).unwrap());
    // ~12 KiB in six resources of ~2 KiB: too large as one message, fine as pieces.
    let big = resources(6, 10, 180);
    assert!(big.len() > 3 * 4096, "{}", big.len());
    queue.append(&big).unwrap();
    // One resource of ~6 KiB: too large for the collector however it is cut.
    queue.append(&resources(1, 30, 180)).unwrap();
    queue.append(&spans(3)).unwrap();
    let c = ExporterConfig { batch_max_bytes: ByteSize(3000), compression, ..cfg() };
    let run = start(endpoint, c, &queue);
    let exp = &run.exp;
    let drain = std::time::Duration::from_secs(1);
    until("the queue to drain", || queue.stats().depth.get() == 0).await;
    let got = script.got.lock().clone();
    // every span of the large record arrived, in requests of whole resources (10 spans each)
    assert_eq!(got.iter().map(|g| g.1).sum::<usize>(), 63, "{got:?}");
    assert!(got.iter().all(|g| g.1 % 10 == 0 || g.1 == 3), "{got:?}");
    assert!(got.len() >= 4, "{got:?}");
    assert_eq!(exp.stats.sent_items[0].get(), 63);
    assert_eq!(exp.stats.sent_records[0].get(), 2);
    // the one that can never fit was dropped and counted, not retried forever
    assert_eq!(exp.stats.dropped_records[0].get(), 1);
    assert_eq!(exp.stats.dropped_items[0].get(), 30);
    // (zstd: tonic refuses while inflating, RESOURCE_EXHAUSTED; uncompressed: OUT_OF_RANGE)
    assert!(exp.stats.last_error.lock().as_deref().unwrap_or("").contains("4096 bytes"), "{:?}", exp.stats.last_error.lock());
    run.stop(drain).await;
}

#[test]
fn retry_after_is_seconds_or_an_http_date() {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_784_000_000);
    let h = |v: &str| {
        let mut m = http::HeaderMap::new();
        m.insert(http::header::RETRY_AFTER, v.parse().unwrap());
        call::retry_after(&m, now)
    };
    assert_eq!(h("7"), Some(std::time::Duration::from_secs(7)));
    let later = httpdate::fmt_http_date(now + std::time::Duration::from_secs(90));
    assert_eq!(h(&later), Some(std::time::Duration::from_secs(90)));
    let earlier = httpdate::fmt_http_date(now - std::time::Duration::from_secs(90));
    assert_eq!(h(&earlier), Some(std::time::Duration::ZERO));
    assert_eq!(h("soon"), None);
    assert_eq!(call::retry_after(&http::HeaderMap::new(), now), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxys_retry_after_sets_the_pause() {
    // A proxy in front of the collector answering 503 with Retry-After, then passing through.
    let script = Arc::new(Script::default());
    let upstream = serve(script.clone()).await;
    let hits = Arc::new(AtomicU64::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::Relaxed);
            (http::StatusCode::SERVICE_UNAVAILABLE, [(http::header::RETRY_AFTER, "1")], "upstream busy")
        }
    });
    let proxy = tokio::spawn(async move { axum::serve(l, app).await });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut caller = call::Caller::new(channel, Compression::None).unwrap();
    let err = caller.unary(Signal::Traces.grpc_path(), &spans(1)[1..]).await.unwrap_err();
    let call::CallError::Status(status) = err else { panic!("{err:?}") };
    assert_eq!(
        classify(&status),
        Outcome::Retry {
            after: Some(std::time::Duration::from_secs(1)),
            reason: "Unavailable: HTTP status 503 Service Unavailable without a gRPC status".into()
        }
    );
    assert_eq!(hits.load(Ordering::Relaxed), 1);
    proxy.abort();
    drop(upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_queued_before_the_item_count_are_merged_and_counted_with_the_new_ones() {
    let script = Arc::new(Script::default());
    let endpoint = serve(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), skein_wal::QueueOptions::default()).unwrap());
    // an older agent's record: the tag alone, then the body
    let new = spans(2);
    let parsed = Record::parse(&new).unwrap();
    assert_eq!((parsed.signal, parsed.items), (Signal::Traces, Some(2)));
    let old = [&[Signal::Traces.tag()][..], parsed.body].concat();
    assert_eq!(Record::parse(&old).map(|r| (r.items, r.items())), Some((None, 2)));
    queue.append(&old).unwrap();
    queue.append(&spans(3)).unwrap();
    assert_eq!(Record::parse(&[0x80 | 1, 0, 0]), None, "a short count is not a record");
    assert_eq!(Record::parse(&[7]), None);
    let run = start(endpoint, cfg(), &queue);
    let exp = &run.exp;
    until("the queue to drain", || queue.stats().depth.get() == 0).await;
    assert_eq!(*script.got.lock(), vec![(Signal::Traces, 5)]);
    assert_eq!((exp.stats.sent_records[0].get(), exp.stats.sent_items[0].get()), (2, 5));
    run.stop(std::time::Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_info_delay_holds_the_next_attempt_back() {
    let script = Arc::new(Script::default());
    // RESOURCE_EXHAUSTED with RetryInfo of 1 s (the collector's head is full); the exporter's
    // own backoff here starts at 10 ms.
    script
        .fail
        .lock()
        .push_back(ApiError::new(ErrorCode::ResourceExhausted, "head is full").with_retry_after(std::time::Duration::from_secs(1)));
    let endpoint = serve(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), skein_wal::QueueOptions::default()).unwrap());
    queue.append(&spans(2)).unwrap();
    let t = Instant::now();
    let run = start(endpoint, cfg(), &queue);
    let exp = &run.exp;
    until("the first attempt", || script.attempts.load(Ordering::Relaxed) == 1).await;
    until("the queue to drain", || queue.stats().depth.get() == 0).await;
    let took = t.elapsed();
    assert!(took >= std::time::Duration::from_secs(1), "retried after {took:?}, before the server's RetryInfo delay");
    assert_eq!(script.attempts.load(Ordering::Relaxed), 2);
    assert_eq!(exp.stats.retries.get(), 1);
    run.stop(std::time::Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_record_retried_midway_is_counted_once() {
    let script = Arc::new(Script::default());
    // the second piece fails once: the whole record is sent again
    *script.fail_attempt.lock() = Some((2, ApiError::new(ErrorCode::Unavailable, "restarting")));
    let endpoint = serve(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), skein_wal::QueueOptions::default()).unwrap());
    queue.append(&resources(6, 10, 180)).unwrap();
    let run = start(endpoint, ExporterConfig { batch_max_bytes: ByteSize(3000), ..cfg() }, &queue);
    let exp = &run.exp;
    until("the queue to drain", || queue.stats().depth.get() == 0).await;
    let got: usize = script.got.lock().iter().map(|g| g.1).sum();
    assert!(got > 60, "the first piece went twice: {got}");
    assert_eq!(exp.stats.retries.get(), 1);
    assert_eq!((exp.stats.sent_records[0].get(), exp.stats.sent_items[0].get()), (1, 60));
    run.stop(std::time::Duration::ZERO).await;
}

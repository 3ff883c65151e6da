//! Alert notifications: JSON payloads POSTed to a webhook from a bounded queue, drained by
//! the webhook's own task with retries and exponential backoff.
//!
//! [`Webhook::send`] only queues, under a short lock, so the alert evaluator (and anything on
//! the ingest path) never waits for the receiver. When the queue is full the oldest payload is
//! dropped and counted: a receiver that is down for long gets the latest transitions, not a
//! backlog. Payloads are delivered one at a time, in order. A 5xx, 408, 429 or a transport
//! error (connection refused, timeout) is retried after `initial_backoff`, doubling up to
//! `max_backoff`, `max_attempts` times in all; any other status is permanent. A payload given
//! up on is counted and logged, never retried later.

use parking_lot::Mutex;
use serde_json::Value;
use skein_core::metrics::{self, Counter};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Where and how a webhook is called.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookOptions {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Time limit of one POST, connection included.
    pub timeout: Duration,
    /// Payloads waiting at most; past it the oldest is dropped.
    pub queue_capacity: usize,
    /// Attempts per payload, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

impl WebhookOptions {
    /// Options for `url` with `timeout` and the defaults: 1000 queued payloads, 6 attempts
    /// 0.5 s, 1 s, 2 s, 4 s and 8 s apart.
    pub fn new(url: impl Into<String>, timeout: Duration) -> Self {
        Self {
            url: url.into(),
            timeout,
            queue_capacity: 1000,
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What happened to the payloads.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Payloads the webhook accepted (2xx).
    pub sent: Counter,
    /// Payloads given up on: a permanent refusal or every attempt failed.
    pub failed: Counter,
    /// Payloads dropped from a full queue before they were tried.
    pub dropped: Counter,
    /// Attempts retried.
    pub retries: Counter,
}

/// A webhook and its queue.
pub struct Webhook {
    url: reqwest::Url,
    /// The URL as logged: its password, if any, masked.
    shown: String,
    client: reqwest::Client,
    opts: WebhookOptions,
    queue: Mutex<VecDeque<Value>>,
    wake: Notify,
    stats: WebhookStats,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.shown).field("queued", &self.queued()).finish()
    }
}

impl Webhook {
    /// A webhook for `opts`; call [`Webhook::run`] on a task to deliver what is sent.
    ///
    /// # Errors
    /// A message naming the URL when it is not an http(s) URL, or when the HTTP client cannot
    /// be built.
    pub fn new(opts: WebhookOptions) -> Result<Arc<Self>, String> {
        let url = reqwest::Url::parse(&opts.url).map_err(|e| format!("webhook url {:?} is not a URL: {e}", opts.url))?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err(format!("webhook url {:?}: expected an http:// or https:// URL with a host", opts.url));
        }
        let client = reqwest::Client::builder()
            .timeout(opts.timeout)
            .user_agent(concat!("skein-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the webhook client: {e}"))?;
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        let shown = shown.to_string();
        Ok(Arc::new(Self { url, shown, client, opts, queue: Mutex::default(), wake: Notify::new(), stats: WebhookStats::default() }))
    }

    /// Queues `payload` for delivery without waiting; drops the oldest queued payload when
    /// the queue is full.
    pub fn send(&self, payload: Value) {
        let dropped = {
            let mut q = self.queue.lock();
            let dropped = q.len() >= self.opts.queue_capacity.max(1);
            if dropped {
                q.pop_front();
            }
            q.push_back(payload);
            dropped
        };
        if dropped {
            self.stats.dropped.inc();
            tracing::warn!(
                capacity = self.opts.queue_capacity,
                dropped_total = self.stats.dropped.get(),
                url = %self.shown,
                "alert webhook queue full: dropped the oldest notification"
            );
        }
        self.wake.notify_one();
    }

    /// Payloads waiting.
    pub fn queued(&self) -> usize {
        self.queue.lock().len()
    }

    /// What happened to the payloads so far.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// Delivers queued payloads, in order, until `shutdown` turns true; what is still queued
    /// then is not delivered.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let next = self.queue.lock().pop_front();
            let Some(payload) = next else {
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = shutdown.wait_for(|v| *v) => return,
                }
            };
            tokio::select! {
                _ = self.deliver(&payload) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
    }

    /// Posts one payload, retrying as the module doc says.
    async fn deliver(&self, payload: &Value) {
        let mut backoff = self.opts.initial_backoff;
        let attempts = self.opts.max_attempts.max(1);
        for attempt in 1..=attempts {
            let why = match self.client.post(self.url.clone()).json(payload).send().await {
                Ok(resp) if resp.status().is_success() => {
                    self.stats.sent.inc();
                    return;
                }
                Ok(resp) => {
                    let status = resp.status();
                    if !(status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429) {
                        self.stats.failed.inc();
                        tracing::warn!(status = status.as_u16(), url = %self.shown, "alert webhook refused the notification; not retrying");
                        return;
                    }
                    format!("status {status}")
                }
                Err(e) => e.without_url().to_string(),
            };
            if attempt == attempts {
                self.stats.failed.inc();
                tracing::warn!(attempts, error = %why, url = %self.shown, "alert webhook failed; notification dropped");
                return;
            }
            self.stats.retries.inc();
            tracing::debug!(attempt, error = %why, backoff_ms = backoff.as_millis() as u64, "alert webhook failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.opts.max_backoff);
        }
    }

    /// Appends the Prometheus text of the webhook's counters and queue.
    pub fn render_metrics(&self, out: &mut String) {
        let s = &self.stats;
        for (name, help, v) in [
            ("skein_alert_webhook_sent_total", "Alert notifications the webhook accepted.", s.sent.get()),
            ("skein_alert_webhook_failed_total", "Alert notifications given up on (refused, or every attempt failed).", s.failed.get()),
            (
                "skein_alert_webhook_dropped_total",
                "Alert notifications dropped from the full queue before they were tried.",
                s.dropped.get(),
            ),
            ("skein_alert_webhook_retries_total", "Alert notification attempts retried.", s.retries.get()),
        ] {
            metrics::family(out, name, "counter", help, "", v);
        }
        metrics::family(out, "skein_alert_webhook_queue", "gauge", "Alert notifications waiting for the webhook.", "", self.queued());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::StatusCode;
    use serde_json::json;

    /// Bodies received, and how many of the first requests answer 500.
    #[derive(Default)]
    struct Receiver {
        posts: Mutex<Vec<Value>>,
        fail_first: Mutex<usize>,
        status: Mutex<Option<StatusCode>>,
    }

    async fn hook(State(r): State<Arc<Receiver>>, axum::Json(body): axum::Json<Value>) -> StatusCode {
        r.posts.lock().push(body);
        if let Some(s) = *r.status.lock() {
            return s;
        }
        let mut fail = r.fail_first.lock();
        if *fail > 0 {
            *fail -= 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        StatusCode::OK
    }

    /// A receiver on 127.0.0.1:0 and its URL.
    async fn receiver(r: Arc<Receiver>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(r);
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}/hook")
    }

    fn fast(url: &str) -> WebhookOptions {
        WebhookOptions {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            ..WebhookOptions::new(url, Duration::from_secs(5))
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_post_is_retried_and_order_is_kept() {
        let r = Arc::new(Receiver { fail_first: Mutex::new(1), ..Receiver::default() });
        let w = Webhook::new(fast(&receiver(Arc::clone(&r)).await)).unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(&w).run(stopped));
        w.send(json!({"status": "firing", "alert": {"rule": "lag"}}));
        w.send(json!({"status": "resolved", "alert": {"rule": "lag"}}));
        until("two notifications delivered", || w.stats().sent.get() == 2).await;
        let posts = r.posts.lock().clone();
        let statuses: Vec<&str> = posts.iter().map(|p| p["status"].as_str().unwrap()).collect();
        assert_eq!(statuses, ["firing", "firing", "resolved"], "the first attempt got a 500 and was retried");
        assert_eq!((w.stats().retries.get(), w.stats().failed.get(), w.stats().dropped.get()), (1, 0, 0));
        let mut m = String::new();
        w.render_metrics(&mut m);
        assert!(m.contains("skein_alert_webhook_sent_total 2\n") && m.contains("skein_alert_webhook_retries_total 1\n"), "{m}");
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried_and_an_unreachable_hook_gives_up() {
        let r = Arc::new(Receiver { status: Mutex::new(Some(StatusCode::BAD_REQUEST)), ..Receiver::default() });
        let w = Webhook::new(fast(&receiver(Arc::clone(&r)).await)).unwrap();
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(Arc::clone(&w).run(stopped.clone()));
        w.send(json!({"status": "firing"}));
        until("the refusal", || w.stats().failed.get() == 1).await;
        assert_eq!((r.posts.lock().len(), w.stats().retries.get()), (1, 0));

        // a port nobody listens on
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let w = Webhook::new(WebhookOptions { max_attempts: 3, ..fast(&format!("http://{closed}/hook")) }).unwrap();
        tokio::spawn(Arc::clone(&w).run(stopped));
        w.send(json!({"status": "firing"}));
        until("giving up", || w.stats().failed.get() == 1).await;
        assert_eq!((w.stats().retries.get(), w.stats().sent.get()), (2, 0));
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest() {
        let r = Arc::new(Receiver::default());
        let w = Webhook::new(WebhookOptions { queue_capacity: 2, ..fast(&receiver(Arc::clone(&r)).await) }).unwrap();
        for i in 0..3 {
            w.send(json!({"n": i}));
        }
        assert_eq!((w.queued(), w.stats().dropped.get()), (2, 1));
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(Arc::clone(&w).run(stopped));
        until("the queue drained", || w.stats().sent.get() == 2).await;
        assert_eq!(*r.posts.lock(), [json!({"n": 1}), json!({"n": 2})]);
    }

    #[test]
    fn urls_are_checked() {
        assert!(Webhook::new(WebhookOptions::new("ftp://x/", Duration::from_secs(1))).unwrap_err().contains("http://"));
        assert!(Webhook::new(WebhookOptions::new("not a url", Duration::from_secs(1))).unwrap_err().contains("\"not a url\""));
    }
}

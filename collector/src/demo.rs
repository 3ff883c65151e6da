//! `--demo`: simulated nodes that send traces, with the logs and metrics their apps would
//! write, to this collector's own OTLP/gRPC port.
//!
//! The traffic comes from [`skein_otlp::synth`]: a frontend tier, an API tier and a database
//! tier (a PostgreSQL primary and a replica) serving a small shop, with failed and slow requests
//! mixed in. Each node's spans of a trace go in a request of their own, as the agent on that node
//! would send them, so the collector really assembles traces across nodes. Every SERVER span
//! also gets an access log line (and every failed span an ERROR line) with its trace context,
//! and each node reports `http.server.request.count` and `http.server.request.duration`. The
//! agent on the replica (db-2) reports its replication lag behind db-1 every 5 s, as the agent's
//! `replica_lag` probe would: near 0, with an episode every 3 minutes where replay falls 35 s
//! behind and catches up (so `/api/v1/replica-lag` and a `replica_lag` alert rule have something
//! to show). The traffic goes
//! through the public gRPC port rather than into the storage directly, so the demo exercises
//! and shows the same path that real agents use.

use skein_otlp::proto::collector::logs::v1::logs_service_client::LogsServiceClient;
use skein_otlp::proto::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use skein_otlp::proto::collector::trace::v1::trace_service_client::TraceServiceClient;
use skein_otlp::synth::{Synth, SynthConfig};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

/// Time between two traces: about three per second.
const TRACE_INTERVAL: Duration = Duration::from_millis(330);
/// Time between two replica-lag reports.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// The longest wait between two connection attempts or after a failed export.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Sends simulated traffic to the OTLP/gRPC listener at `otlp_grpc` until `shutdown` becomes
/// `true` (or its sender is dropped).
///
/// Waits, with backoff, for the port to accept connections; export failures are logged and
/// retried later, never fatal: the demo must not take the collector down.
pub async fn run(otlp_grpc: SocketAddr, mut shutdown: watch::Receiver<bool>) {
    let target = reachable(otlp_grpc);
    let endpoint = match Endpoint::from_shared(format!("http://{target}")) {
        Ok(e) => e.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(10)),
        Err(error) => {
            warn!(%error, endpoint = %target, "demo: invalid OTLP endpoint, not sending traffic");
            return;
        }
    };
    let Some(channel) = connect(&endpoint, &mut shutdown).await else {
        return;
    };
    let mut logs = LogsServiceClient::new(channel.clone());
    let mut metrics = MetricsServiceClient::new(channel.clone());
    let mut client = TraceServiceClient::new(channel);
    let started = unix_nanos();
    let mut totals = std::collections::BTreeMap::new();
    info!(
        endpoint = %target,
        tiers = "frontend (web-1, web-2), api (api-1, api-2), database (db-1 primary, db-2 replica)",
        "demo: sending simulated traffic from 3 nodes"
    );

    let mut synth = Synth::new(SynthConfig { seed: unix_nanos(), min_spans: 8, max_spans: 30, error_ratio: 0.08, slow_ratio: 0.05 });
    let mut tick = tokio::time::interval(TRACE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failures: u32 = 0;
    let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
    lag_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = lag_tick.tick() => {
                if let Err(status) = metrics.export(replica_lag(unix_nanos())).await {
                    debug!(code = ?status.code(), message = status.message(), "demo: replica lag export failed");
                }
                continue;
            }
            _ = stopped(&mut shutdown) => break,
        }
        for (node, request) in synth.next_requests(unix_nanos()) {
            // The lines and counters the apps would write for these spans go first, so a
            // trace's logs are there when the trace is.
            let lines = skein_otlp::synth::signals::logs_for_spans(&request);
            let points = skein_otlp::synth::signals::metrics_for_spans(&request, &mut totals, started, unix_nanos());
            let side = async {
                if !lines.resource_logs.is_empty() {
                    logs.export(lines).await?;
                }
                if !points.resource_metrics.is_empty() {
                    metrics.export(points).await?;
                }
                Ok::<(), tonic::Status>(())
            };
            if let Err(status) = side.await {
                debug!(node, code = ?status.code(), message = status.message(), "demo: logs or metrics export failed");
            }
            match client.export(request).await {
                Ok(response) => {
                    failures = 0;
                    if let Some(partial) = response.into_inner().partial_success
                        && partial.rejected_spans > 0
                    {
                        debug!(node, rejected = partial.rejected_spans, message = partial.error_message, "demo: collector rejected spans");
                    }
                }
                Err(status) => {
                    failures = failures.saturating_add(1);
                    // Log the first failure and then ever more rarely, not once per request.
                    if failures.is_power_of_two() {
                        warn!(
                            node,
                            failures,
                            code = ?status.code(),
                            message = status.message(),
                            "demo: export to collector failed"
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures)) => {}
                        _ = stopped(&mut shutdown) => return,
                    }
                    break;
                }
            }
        }
    }
    debug!("demo: stopped");
}

/// What the agent on db-2 would report at `now` about its replication from db-1: lag under
/// 0.3 s, except from second 120 to 170 of every 3 minutes, when it climbs to 35 s (replay
/// stalled, WAL arriving at 2 MB/s) before catching up.
fn replica_lag(now: u64) -> skein_otlp::ExportMetricsServiceRequest {
    use skein_otlp::synth::signals::{kv, metrics_request};
    let phase = (now / 1_000_000_000) % 180;
    let jitter = (now / 1_000_000 % 300) as f64 / 1000.0;
    let lag = if (120..170).contains(&phase) { (phase - 120) as f64 * 0.7 + jitter } else { jitter };
    let attrs = [
        kv("db.system", "postgresql"),
        kv("db.replication.primary", "db-1:5432"),
        kv("db.replication.replica", "db-2:5432"),
        kv("db.replication.state", "streaming"),
    ];
    let mut req = metrics_request("db-2", "db.replication.lag", false, &[(now, lag)], &attrs);
    let bytes = metrics_request("db-2", "db.replication.lag_bytes", false, &[(now, (lag * 2e6).round())], &attrs);
    let up = metrics_request(
        "db-2",
        "db.replication.up",
        false,
        &[(now, 1.0)],
        &[kv("db.system", "postgresql"), kv("server.address", "db-2"), kv("server.port", "5432")],
    );
    for extra in [bytes, up] {
        if let (Some(to), Some(from)) = (req.resource_metrics.first_mut(), extra.resource_metrics.into_iter().next()) {
            to.scope_metrics.extend(from.scope_metrics);
        }
    }
    req
}

/// Connects to `endpoint`, retrying with backoff; `None` when shut down first.
async fn connect(endpoint: &Endpoint, shutdown: &mut watch::Receiver<bool>) -> Option<Channel> {
    let mut attempts: u32 = 0;
    loop {
        tokio::select! {
            result = endpoint.connect() => match result {
                Ok(channel) => return Some(channel),
                Err(error) => {
                    attempts = attempts.saturating_add(1);
                    debug!(%error, attempts, "demo: collector OTLP port not up yet");
                }
            },
            _ = stopped(shutdown) => return None,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff(attempts)) => {}
            _ = stopped(shutdown) => return None,
        }
    }
}

/// Resolves when shutdown is requested or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

/// 100 ms doubling per attempt, at most [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

/// A listener bound to `0.0.0.0` or `::` is reached over loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn unspecified_addresses_are_reached_over_loopback() {
        let v4: SocketAddr = "0.0.0.0:4317".parse().expect("addr");
        assert_eq!(reachable(v4), "127.0.0.1:4317".parse().expect("addr"));
        let v6: SocketAddr = "[::]:4317".parse().expect("addr");
        assert_eq!(reachable(v6), "[::1]:4317".parse().expect("addr"));
        let other: SocketAddr = "10.1.2.3:4317".parse().expect("addr");
        assert_eq!(reachable(other), other);
    }
}

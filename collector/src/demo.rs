//! `--demo`: simulated nodes that send traces, with the logs and metrics their apps would
//! write, to this collector's own OTLP/gRPC port.
//!
//! The traffic comes from [`skein_otlp::synth`]: a frontend tier, an API tier and a database
//! tier (a PostgreSQL primary and a replica) serving a small shop, with failed and slow requests
//! mixed in. Each node's spans of a trace go in a request of their own, as the agent on that node
//! would send them, so the collector really assembles traces across nodes. Every SERVER span
//! also gets an access log line (and every failed span an ERROR line) with its trace context,
//! and each node reports `http.server.request.count` and `http.server.request.duration`. The traffic goes
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
    loop {
        tokio::select! {
            _ = tick.tick() => {}
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

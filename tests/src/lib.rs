//! End-to-end test support for Skein: a harness that runs the real `skein-collector` binary
//! on ephemeral ports in a temporary data directory, small OTLP builders, and a polling
//! helper that waits for a condition with a deadline.
//!
//! The end-to-end tests themselves live in `tests/e2e/` (one test binary); the load generator
//! (`src/bin/loadgen.rs`) uses the same harness.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use skein_tests::{Collector, otlp};
//! let collector = Collector::builder().set("otlp.max_body_size", "64KiB").start().await?;
//! let trace_id = otlp::random_trace_id();
//! let span = otlp::SpanBuilder::new(trace_id, otlp::random_span_id(), "GET /").build();
//! let req = otlp::request(vec![otlp::resource_spans("web", "node-1", vec![span])]);
//! collector.export_http(&req).await?;
//! let trace = collector.trace(&otlp::hex(&trace_id)).await?;
//! assert_eq!(trace["span_count"], 1);
//! # Ok(()) }
//! ```

pub mod agent;
pub mod collector;
pub mod dbs;
pub mod otlp;

/// The sum of every sample of Prometheus metric `name` (all label sets) in exposition `text`;
/// 0 when absent.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub mod s3;
pub mod wait;

pub use agent::{Agent, agent_bin, free_port};
pub use collector::{Collector, CollectorBuilder, Listen, binary, collector_bin, workspace_root};
pub use wait::{Condition, wait_until};

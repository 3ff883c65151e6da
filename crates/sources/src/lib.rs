//! The agent's inputs, one module each. Every source stamps its records with the node's
//! identity ([`enrich`]) and appends them to the disk-backed queue before it answers, so what a
//! source has acknowledged survives an agent crash.
//!
//! - [`otlp`]: the OTLP receiver (gRPC and HTTP, every signal) for the apps beside the agent,
//!   with [`wire`], its fast path that stamps spans without decoding them.
//!
//! Host metrics, file tailing, replica-lag probes and the Prometheus scrape are not built yet
//! (issue 5).

pub mod enrich;
pub mod file_tail;
pub mod host_metrics;
pub mod otlp;
pub mod otlp_build;
pub mod prom_scrape;
pub mod replica_lag;
pub mod wire;

//! The agent's inputs, one module each. Every source stamps its records with the node's
//! identity ([`enrich`]) and appends them to the disk-backed queue before it answers, so what a
//! source has acknowledged survives an agent crash.
//!
//! - [`otlp`]: the OTLP receiver (gRPC and HTTP, every signal) for the apps beside the agent,
//!   with [`wire`], its fast path that stamps spans without decoding them.
//! - [`host_metrics`]: the node's CPU, memory, load, disk, file system and network figures.
//! - [`file_tail`]: log files as they grow, with trace and correlation ids, exactly once.
//! - [`replica_lag`]: PostgreSQL, MySQL/MariaDB and Redis replication probes.
//! - [`prom_scrape`]: local Prometheus endpoints.
//!
//! [`otlp_build`] holds what their OTLP output shares.

pub mod enrich;
pub mod file_tail;
pub mod host_metrics;
pub mod otlp;
pub mod otlp_build;
pub mod prom_scrape;
pub mod replica_lag;
pub mod wire;

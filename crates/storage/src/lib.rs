//! The collector's store: the write-ahead log, the in-memory heads, and Parquet blocks on an
//! object store.
//!
//! Ingest path ([`Store::ingest_traces`]): validate → check the heads' memory limit → build the
//! Arrow batch → append the request to the WAL and wait for its group-commit fsync → insert
//! the batch into the active head → answer. So an acknowledged span is both durable
//! (invariant 1 of ARCHITECTURE §4) and immediately queryable (invariant 2). On start the WAL is
//! replayed through the same insert path (invariant 4), skipping what blocks already hold.
//!
//! Background ([`Store::run_maintenance`]): past a row, byte or age threshold the active head is
//! frozen (a new WAL segment starts with a new head), written as a block ([`block`]), listed in
//! the manifest ([`manifest`]), and only then is the WAL truncated; small blocks are merged and
//! old ones expired. Queries read a [`Snapshot`] of heads and blocks taken in one step.

pub mod block;
pub mod config;
mod error;
pub mod head;
mod maintenance;
pub mod manifest;
pub mod objstore;
pub mod signal_head;
mod store;

#[cfg(test)]
mod flush_tests;
#[cfg(test)]
mod signal_tests;

pub use config::StorageConfig;
pub use error::{Error, Result};
pub use head::{Head, HeadStats};
pub use signal_head::{NodeMap, NodeStats};
pub use store::{DEFAULT_TENANT, IngestOutcome, Snapshot, Store, StoreConfig, TableSnapshot};

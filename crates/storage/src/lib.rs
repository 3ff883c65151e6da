//! The collector's store: the write-ahead log and the in-memory head.
//!
//! Ingest path ([`Store::ingest_traces`]): validate → check the head's memory limit → build the
//! Arrow batch → append the request to the WAL and wait for its group-commit fsync → insert
//! the batch into the head → answer. So an acknowledged span is both durable (invariant 1 of
//! ARCHITECTURE §4) and immediately queryable (invariant 2). On start the WAL is replayed
//! through the same insert path (invariant 4). Persisting the head to Parquet blocks comes
//! with the storage issue; until then the head's memory limit bounds what is kept and ingest
//! answers `ResourceExhausted` past it (invariant 3).

mod error;
pub mod head;
mod store;

pub use error::{Error, Result};
pub use head::{Head, HeadStats};
pub use store::{IngestOutcome, Store, StoreConfig};

//! Skein's query layer: turns stored spans into the answers of the HTTP API.
//!
//! The modules here are pure (no I/O): [`assemble`] builds the cross-node trace tree of
//! `GET /api/v1/traces/{id}`, [`summary`] the one-line trace summaries search returns, and
//! [`jaeger`] the Jaeger query API's JSON shapes. [`engine`] runs DataFusion over the store
//! (SQL, search, logs, metrics, replica lag), and [`alerts`] evaluates the alert rules with it.

pub mod alerts;
pub mod assemble;
pub mod dependencies;
pub mod engine;
pub mod jaeger;
pub mod search;
pub mod summary;

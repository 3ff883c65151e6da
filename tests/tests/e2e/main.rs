//! End-to-end tests of `skein-collector`: each test starts the real binary on ephemeral ports
//! in a temporary data directory (see `skein_tests::Collector`) and talks to it over real
//! sockets, with our own OTLP client, raw HTTP, and the OpenTelemetry Python SDK.
//!
//! Build the binary first (`cargo build -p skein-collector`), or run `tests/run-all.sh`,
//! which also creates the Python venv the `python_sdk` test needs.

mod agent;
mod api;
mod bad_input;
mod config;
mod demo;
mod durability;
mod limits;
mod python_sdk;
mod replica_lag;
mod sources;
mod storage;
mod support;

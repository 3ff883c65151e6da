//! Configuration: the example file is valid and shows every key at its default, unknown keys
//! and bad values are refused naming the key, and the environment layer takes effect.

use crate::support::Reply;
use skein_tests::otlp::{self, SpanBuilder, random_span_id, random_trace_id, string};
use skein_tests::{Collector, collector_bin, workspace_root};
use std::time::Duration;

/// Exit success, stdout and stderr of one `skein-collector` invocation (SKEIN_* env removed).
async fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let bin = collector_bin().expect("collector binary");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("SKEIN_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("skein-collector {args:?} did not finish in 60 s"))
        .expect("run skein-collector");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Lists the differences between two TOML tables (paths of differing keys).
fn diff(a: &toml::Table, b: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, va) in a {
        let path = format!("{prefix}{k}");
        match (va, b.get(k)) {
            (toml::Value::Table(ta), Some(toml::Value::Table(tb))) => diff(ta, tb, &format!("{path}."), out),
            (_, None) => out.push(format!("{path}: only in the example ({va})")),
            (va, Some(vb)) if va != vb => out.push(format!("{path}: example {va}, default {vb}")),
            _ => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            out.push(format!("{prefix}{k}: missing from the example (default {vb})"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_is_valid_and_equals_the_defaults() {
    let example = workspace_root().join("config/collector.example.toml");
    let example_s = example.to_string_lossy().into_owned();
    let (ok, out, err) = run(&["--config", &example_s, "check-config"], &[]).await;
    assert!(ok, "check-config on the example failed:\n{out}\n{err}");

    let (ok, defaults, err) = run(&["print-default-config"], &[]).await;
    assert!(ok, "print-default-config failed: {err}");
    let defaults: toml::Table = toml::from_str(&defaults).unwrap_or_else(|e| panic!("print-default-config is not TOML: {e}\n{defaults}"));
    let text = std::fs::read_to_string(&example).expect("read the example");
    let example: toml::Table = toml::from_str(&text).expect("the example is TOML");
    let mut differences = Vec::new();
    diff(&example, &defaults, "", &mut differences);
    assert!(differences.is_empty(), "config/collector.example.toml differs from print-default-config:\n{}", differences.join("\n"));
    for key in ["data_dir", "otlp.grpc_addr", "otlp.http_addr", "otlp.max_body_size", "query.addr", "wal.sync", "head.memory_limit"] {
        let (section, leaf) = key.split_once('.').unwrap_or(("", key));
        let table = if section.is_empty() { Some(&defaults) } else { defaults.get(section).and_then(toml::Value::as_table) };
        assert!(table.is_some_and(|t| t.contains_key(leaf)), "the defaults lack {key}");
    }
    assert_eq!(defaults["otlp"]["grpc_addr"].as_str(), Some("0.0.0.0:4317"));
    assert_eq!(defaults["otlp"]["http_addr"].as_str(), Some("0.0.0.0:4318"));
    assert_eq!(defaults["query"]["addr"].as_str(), Some("0.0.0.0:16686"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_and_bad_values_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[otlp]\ngrpc_addr = \"127.0.0.1:0\"\nnot_a_real_key = 1\n").expect("write");
    let file_s = file.to_string_lossy().into_owned();
    let (ok, out, err) = run(&["--config", &file_s, "check-config"], &[]).await;
    assert!(!ok, "an unknown key in the file must fail check-config:\n{out}{err}");
    assert!(format!("{out}{err}").contains("not_a_real_key"), "the message names the key:\n{out}{err}");

    std::fs::write(&file, "[no_such_section]\nx = 1\n").expect("write");
    let (ok, out, err) = run(&["--config", &file_s, "check-config"], &[]).await;
    assert!(!ok, "an unknown section must fail:\n{out}{err}");
    assert!(format!("{out}{err}").contains("no_such_section"), "{out}{err}");

    let (ok, out, err) = run(&["--set", "query.bogus_flag=1", "check-config"], &[]).await;
    assert!(!ok, "an unknown --set key must fail:\n{out}{err}");
    assert!(format!("{out}{err}").contains("bogus_flag"), "{out}{err}");

    let (ok, out, err) = run(&["--set", "wal.sync=sometimes", "check-config"], &[]).await;
    assert!(!ok, "a bad enum value must fail:\n{out}{err}");
    assert!(format!("{out}{err}").contains("sync"), "names the key:\n{out}{err}");

    let (ok, out, err) = run(&["check-config"], &[("SKEIN_OTLP__MAX_BODY_SIZE", "lots")]).await;
    assert!(!ok, "a bad size from the environment must fail:\n{out}{err}");
    assert!(format!("{out}{err}").contains("max_body_size"), "names the key:\n{out}{err}");

    let (ok, out, err) = run(&["check-config"], &[]).await;
    assert!(ok, "no configuration at all is valid:\n{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_sets_config_and_flags_win() {
    // The environment lowers the body limit...
    let c = Collector::builder().env("SKEIN_OTLP__MAX_BODY_SIZE", "1KiB").start().await.expect("collector starts");
    let t = random_trace_id();
    let span = SpanBuilder::new(t, random_span_id(), "big").attr("payload", string("y".repeat(3000))).build();
    let body = prost::Message::encode_to_vec(&otlp::request(vec![otlp::resource_spans("env", "n", vec![span])]));
    let resp = c.post_traces(body.clone(), "application/x-protobuf", None).await.expect("post");
    let r = Reply::read(resp).await.expect("reply");
    assert_eq!(r.status, 413, "SKEIN_OTLP__MAX_BODY_SIZE=1KiB applies: {}", r.message());
    drop(c);

    // ...and a --set given with it wins.
    let c = Collector::builder()
        .env("SKEIN_OTLP__MAX_BODY_SIZE", "1KiB")
        .set("otlp.max_body_size", "1MiB")
        .start()
        .await
        .expect("collector starts");
    let resp = c.post_traces(body, "application/x-protobuf", None).await.expect("post");
    let r = Reply::read(resp).await.expect("reply");
    assert_eq!(r.status, 200, "--set beats the environment: {}", r.message());
}

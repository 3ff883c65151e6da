use super::*;
use skein_otlp::proto::common::v1::any_value;

fn body(r: &LogRecord) -> String {
    match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn cfg(pattern: &Path) -> FileTailConfig {
    FileTailConfig {
        start_at: StartAt::Beginning,
        flush_after: Duration::millis(0),
        rotate_wait: Duration::millis(0),
        inputs: vec![TailInput { include: vec![pattern.to_string_lossy().into_owned()], service: "app".into(), ..Default::default() }],
        ..Default::default()
    }
}

/// Polls, "queues" every batch, commits, and returns the bodies in order.
fn drain(t: &mut Tailer) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..4 {
        let batches = t.poll();
        t.save_checkpoint().unwrap();
        for b in &batches {
            out.extend(b.records.iter().map(body));
        }
        let keys: Vec<FileKey> = batches.iter().map(|b| b.key).collect();
        t.commit(&keys);
    }
    out
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

#[test]
fn framing_lines_multiline_partial_and_overlong() {
    let mut f = Framer { start: None, max: 8, max_records: usize::MAX, skip: Skip::default() };
    let (r, used) = f.frame(b"ab\r\ncd\nef", false);
    assert_eq!((r.iter().map(|r| r.range.clone()).collect::<Vec<_>>(), used), (vec![0..2, 4..6], 7));
    let (r, used) = f.frame(b"ef", true);
    assert_eq!((r[0].range.clone(), used), (0..2, 2));
    // an over-long line is cut and its rest skipped, across reads
    let (r, used) = f.frame(b"0123456789abc", false);
    assert_eq!((r[0].range.clone(), r[0].truncated, used, f.skip.line), (0..8, true, 13, true));
    let (r, used) = f.frame(b"def\nok\n", false);
    assert_eq!((r.len(), r[0].range.clone(), used, f.skip.line), (1, 4..6, 7, false));

    let re = regex::bytes::Regex::new(r"^\d").unwrap();
    let mut f = Framer { start: Some(&re), max: 64, max_records: usize::MAX, skip: Skip::default() };
    let text = b"1 start\n  at a\n  at b\n2 next\n  more\n";
    let (r, used) = f.frame(text, false);
    assert_eq!(r.len(), 1);
    assert_eq!(&text[r[0].range.clone()], b"1 start\n  at a\n  at b");
    assert_eq!(used, 22, "the unfinished record stays in the buffer");
    let (r, used) = f.frame(&text[22..], true);
    assert_eq!((&text[22..][r[0].range.clone()], used), (&b"2 next\n  more"[..], 14));

    // a record followed by an over-long partial continuation is not lost with it
    let mut f = Framer { start: Some(&re), max: 16, max_records: usize::MAX, skip: Skip::default() };
    let text = b"1 boom\n  xxxxxxxxxxxxxxxxxxxxxxxx";
    let (r, used) = f.frame(text, false);
    assert_eq!((r.len(), &text[r[0].range.clone()], used, f.skip.line), (2, &b"1 boom"[..], text.len(), true));

    // at most max_records per call; the rest is framed next time
    let mut f = Framer { start: None, max: 8, max_records: 2, skip: Skip::default() };
    let (r, used) = f.frame(b"a\nb\nc\n", false);
    assert_eq!((r.len(), used), (2, 4));
}

#[test]
fn lines_arrive_once_through_rename_and_copy_truncate_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut t = Tailer::new(cfg(&log), &dir.path().join("ckpt")).unwrap();
    append(&log, "one\ntwo\n");
    assert_eq!(drain(&mut t), ["one", "two"]);
    // rename rotation: the old file gets a last line after the rename, the new one starts
    append(&log, "three\n");
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&dir.path().join("app.log.1"), "four\n");
    append(&log, "five\n");
    let mut got = drain(&mut t);
    got.sort();
    assert_eq!(got, ["five", "four", "three"]);
    // copy-truncate
    append(&log, "six\n");
    assert_eq!(drain(&mut t), ["six"]);
    std::fs::copy(&log, dir.path().join("app.log.2")).unwrap();
    std::fs::OpenOptions::new().write(true).truncate(true).open(&log).unwrap();
    append(&log, "seven\n");
    assert_eq!(drain(&mut t), ["seven"]);
    assert!(t.stats.truncations.get() >= 1 && t.stats.rotations.get() >= 1);
}

#[test]
fn a_restart_with_a_pending_batch_sends_the_same_records_then_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (log, ck) = (dir.path().join("app.log"), dir.path().join("ckpt"));
    append(&log, "{\"msg\":\"a\",\"trace_id\":\"0af7651916cd43dd8448eb211c80319c\"}\nb\n");
    let mut t = Tailer::new(cfg(&log), &ck).unwrap();
    let first = t.poll();
    t.save_checkpoint().unwrap();
    // crash here: the batch may or may not have been queued
    drop(t);
    append(&log, "c\n");
    let mut t = Tailer::new(cfg(&log), &ck).unwrap();
    let again = t.poll();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].records, first[0].records, "identical records, so the collector keeps one copy");
    assert_eq!(again[0].records[0].trace_id.len(), 16);
    t.save_checkpoint().unwrap();
    t.commit(&[again[0].key]);
    assert_eq!(drain(&mut t), ["c"]);
    // a restart after a commit repeats nothing
    drop(t);
    let mut t = Tailer::new(cfg(&log), &ck).unwrap();
    assert!(drain(&mut t).is_empty());
    append(&log, "d\n");
    assert_eq!(drain(&mut t), ["d"]);
}

#[test]
fn a_pending_batch_replayed_after_a_rename_makes_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let (log, ck) = (dir.path().join("app.log"), dir.path().join("ckpt"));
    append(&log, "a\nb\n");
    let mut t = Tailer::new(cfg(&log), &ck).unwrap();
    let first = t.poll();
    t.save_checkpoint().unwrap();
    drop(t);
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    let mut t = Tailer::new(cfg(&log), &ck).unwrap();
    let again = t.poll();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].records, first[0].records, "same path attribute, same records");
}

#[test]
fn a_file_rotated_away_while_stopped_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let (log, ck) = (dir.path().join("app.log"), dir.path().join("ckpt"));
    append(&log, "a\n");
    let mut t = Tailer::new(cfg(&log), &ck).unwrap();
    assert_eq!(drain(&mut t), ["a"]);
    drop(t);
    append(&log, "b\n");
    std::fs::rename(&log, dir.path().join("app.log.old")).unwrap();
    append(&log, "c\n");
    let mut t = Tailer::new(cfg(&log), &ck).unwrap();
    let mut got = drain(&mut t);
    got.sort();
    assert_eq!(got, ["b", "c"]);
}

#[test]
fn start_at_end_on_the_first_start_only() {
    let dir = tempfile::tempdir().unwrap();
    let (log, ck) = (dir.path().join("app.log"), dir.path().join("ckpt"));
    append(&log, "old\n");
    let c = FileTailConfig { start_at: StartAt::End, ..cfg(&log) };
    let mut t = Tailer::new(c.clone(), &ck).unwrap();
    assert!(drain(&mut t).is_empty());
    append(&log, "new\n");
    assert_eq!(drain(&mut t), ["new"]);
    drop(t);
    // a file that appeared while the agent was stopped is read from its start
    let other = dir.path().join("b.log");
    append(&other, "while stopped\n");
    let c =
        FileTailConfig { inputs: vec![TailInput { include: vec![format!("{}/*.log", dir.path().display())], ..Default::default() }], ..c };
    let mut t = Tailer::new(c, &ck).unwrap();
    assert_eq!(drain(&mut t), ["while stopped"]);
}

#[test]
fn idle_files_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..200 {
        append(&dir.path().join(format!("f{i}.log")), "x\n");
    }
    let c = cfg(&dir.path().join("*.log"));
    let mut t = Tailer::new(c, &dir.path().join("ckpt")).unwrap();
    assert_eq!(drain(&mut t).len(), 200);
    let read = t.stats.bytes_read.get();
    for _ in 0..5 {
        assert!(t.poll().is_empty());
    }
    assert_eq!(t.stats.bytes_read.get(), read, "polling idle files reads nothing");
    assert_eq!(t.stats.files.get(), 200);
}

#[test]
fn config_errors_name_the_field() {
    let bad = |input: TailInput| FileTailConfig { inputs: vec![input], ..Default::default() }.validate().unwrap_err();
    assert!(bad(TailInput::default()).contains("file_tail.inputs[0].include is empty"));
    let e = bad(TailInput { include: vec!["/x/*.log".into()], multiline_start: "(".into(), ..Default::default() });
    assert!(e.contains("file_tail.inputs[0].multiline_start is not a valid regex"), "{e}");
    let e = bad(TailInput { include: vec!["/x/*.log".into()], trace_regex: "id=(\\w+)".into(), ..Default::default() });
    assert!(e.contains("no named group"), "{e}");
    let e = bad(TailInput { include: vec!["/x/[".into()], ..Default::default() });
    assert!(e.contains("invalid pattern"), "{e}");
}

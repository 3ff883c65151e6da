//! Behaviour of the WAL through its public API, on real files in temporary directories.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::{Duration, Instant};

type Records = Vec<(Lsn, Vec<u8>)>;

fn options(segment_size: u64) -> WalOptions {
    WalOptions { segment_size, ..WalOptions::default() }
}

/// Opens the WAL in `dir` and collects what it replays.
fn open(dir: &Path, opts: WalOptions) -> (Wal, ReplayReport, Records) {
    let mut seen = Vec::new();
    let (wal, report) = Wal::open(dir, opts, |lsn, payload| {
        seen.push((lsn, payload.to_vec()));
        Ok::<_, Infallible>(())
    })
    .expect("open wal");
    (wal, report, seen)
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut p = format!("record-{i:05}-").into_bytes();
    p.resize(len.max(p.len()), b'a' + (i % 26) as u8);
    p
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("tokio runtime")
}

/// Appends `payloads` one after the other (one batch each, so placement is deterministic).
fn append_all(rt: &tokio::runtime::Runtime, wal: &Wal, payloads: &[Vec<u8>]) -> Records {
    rt.block_on(async {
        let mut out = Vec::new();
        for p in payloads {
            let lsn = wal.append(p.clone()).await.expect("append");
            out.push((lsn, p.clone()));
        }
        out
    })
}

/// Appends waiting in the submission queue, not yet taken by the writer.
fn queued(wal: &Wal) -> usize {
    wal.inner.tx.max_capacity() - wal.inner.tx.capacity()
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat segment").len()
}

#[test]
fn round_trip_across_segments_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, report, seen) = open(dir.path(), options(200));
    assert_eq!((report.segments, report.records), (0, 0));
    assert!(seen.is_empty());

    let payloads: Vec<_> = (0..40).map(|i| payload(i, 20 + i * 3)).collect();
    let written = append_all(&rt, &wal, &payloads);
    let lsns: Vec<Lsn> = written.iter().map(|(lsn, _)| *lsn).collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{lsns:?}");
    let segments: BTreeSet<u64> = lsns.iter().map(|l| l.segment).collect();
    assert!(segments.len() >= 5, "expected several segments: {segments:?}");
    assert_eq!(wal.stats().records.get(), 40);
    drop(wal);

    let (wal, report, seen) = open(dir.path(), options(200));
    assert_eq!(seen, written);
    assert_eq!(report.records, 40);
    assert_eq!(report.segments, segments.len());
    let frame_bytes: u64 = payloads.iter().map(|p| p.len() as u64 + 8).sum();
    assert_eq!(report.bytes, frame_bytes);
    assert!(report.corruptions.is_empty(), "{:?}", report.corruptions);

    // New appends go to a fresh segment after every replayed one.
    let more = append_all(&rt, &wal, &[b"after reopen".to_vec()]);
    assert!(more[0].0.segment > *segments.last().expect("segments"));
    drop(wal);
    let (_wal, _, seen) = open(dir.path(), options(200));
    assert_eq!(seen, [written, more].concat());
}

#[test]
fn concurrent_appends_from_many_tasks_all_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), options(4096));
    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let wal = Wal::clone(&wal);
            rt.spawn(async move {
                let mut mine = Vec::new();
                for i in 0..40 {
                    let p = payload(task * 1000 + i, 50);
                    let lsn = wal.append(p.clone()).await.expect("append");
                    mine.push((lsn, p));
                }
                mine
            })
        })
        .collect();
    let mut written = Vec::new();
    for task in tasks {
        let mine = rt.block_on(task).expect("task");
        // One task's appends resolve in order, so their LSNs must increase.
        assert!(mine.windows(2).all(|w| w[0].0 < w[1].0));
        written.extend(mine);
    }
    written.sort();
    assert_eq!(written.len(), 32 * 40);
    assert!(written.windows(2).all(|w| w[0].0 != w[1].0), "duplicate lsn");
    drop(wal);

    let (_wal, report, seen) = open(dir.path(), options(4096));
    assert!(report.corruptions.is_empty());
    assert!(report.segments > 1);
    // Replay order is LSN order, and every acknowledged record is there exactly once.
    assert_eq!(seen, written);
}

#[test]
fn queued_appends_share_one_write_and_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), WalOptions::default());
    const N: usize = 100;
    // Holding the active segment keeps the writer from committing while appends queue up.
    let guard = wal.inner.shared.active.lock();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let wal = Wal::clone(&wal);
            rt.spawn(async move { wal.append(payload(i, 30)).await })
        })
        .collect();
    // The writer may already hold one append; all others must be queued.
    wait_until("appends to queue", || queued(&wal) >= N - 1);
    drop(guard);
    for task in tasks {
        rt.block_on(task).expect("task").expect("append");
    }
    assert_eq!(wal.stats().records.get(), N as u64);
    let fsyncs = wal.stats().fsyncs.get();
    assert!((1..=2).contains(&fsyncs), "{N} queued appends took {fsyncs} fsyncs");
}

#[test]
fn torn_tail_keeps_records_before_it_and_reports_the_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), WalOptions::default());
    let payloads: Vec<_> = (0..10).map(|i| payload(i, 100)).collect();
    let written = append_all(&rt, &wal, &payloads);
    drop(wal);

    let last = written[9].0;
    let path = segment::path(dir.path(), last.segment);
    let full = file_len(&path);
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(full - 3).expect("truncate");
    drop(file);

    let (wal, report, seen) = open(dir.path(), WalOptions::default());
    assert_eq!(seen, written[..9]);
    assert_eq!(
        report.corruptions,
        vec![Corruption {
            segment: last.segment,
            path: path.clone(),
            offset: last.offset,
            reason: "torn record: payload needs 100 bytes, 97 remain".to_owned(),
            bytes_dropped: 108 - 3,
        }]
    );
    assert_eq!(file_len(&path), last.offset, "segment cut at the last good record");
    assert_eq!(wal.stats().replay_corruptions.get(), 1);
    drop(wal);

    let (_wal, report, seen) = open(dir.path(), WalOptions::default());
    assert!(report.corruptions.is_empty(), "{:?}", report.corruptions);
    assert_eq!(seen, written[..9]);
}

#[test]
fn flipped_byte_ends_its_segment_and_later_segments_still_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    // 8-byte header + 3 frames of 48 bytes reaches 150: three records per segment.
    let (wal, _, _) = open(dir.path(), options(150));
    let payloads: Vec<_> = (0..9).map(|i| payload(i, 40)).collect();
    let written = append_all(&rt, &wal, &payloads);
    drop(wal);
    let segments: Vec<u64> = written.iter().map(|(l, _)| l.segment).collect();
    assert_eq!(segments[3..6], [segments[3]; 3], "layout: {segments:?}");
    assert!(segments[6] > segments[3]);

    // Damage the middle record of the middle segment.
    let victim = written[4].0;
    let path = segment::path(dir.path(), victim.segment);
    let mut bytes = fs::read(&path).expect("read");
    bytes[victim.offset as usize + 8 + 5] ^= 0x40;
    fs::write(&path, &bytes).expect("write");

    let (wal, report, seen) = open(dir.path(), options(150));
    let expected: Records = written.iter().filter(|(l, _)| !(l.segment == victim.segment && l.offset >= victim.offset)).cloned().collect();
    assert_eq!(seen, expected);
    assert_eq!(report.corruptions.len(), 1, "{:?}", report.corruptions);
    let c = &report.corruptions[0];
    assert_eq!((c.segment, c.offset), (victim.segment, victim.offset));
    assert_eq!(c.path, path);
    assert!(c.reason.starts_with("crc mismatch"), "{}", c.reason);
    assert_eq!(c.bytes_dropped, 2 * 48);
    let mut metrics = String::new();
    wal.render_metrics(&mut metrics);
    assert!(metrics.contains("\nskein_wal_replay_corruptions_total 1\n"));
}

#[test]
fn appends_after_recovery_survive_and_the_next_reopen_is_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), WalOptions::default());
    let written = append_all(&rt, &wal, &[payload(0, 10), payload(1, 10)]);
    drop(wal);
    let path = segment::path(dir.path(), written[1].0.segment);
    let mut bytes = fs::read(&path).expect("read");
    bytes.extend_from_slice(&[0x2a, 0, 0, 0, 1, 2]); // half a frame header
    fs::write(&path, &bytes).expect("write");

    let (wal, report, seen) = open(dir.path(), WalOptions::default());
    assert_eq!(report.corruptions.len(), 1);
    assert_eq!(report.corruptions[0].offset, file_len(&path));
    assert_eq!(seen, written);
    let after = append_all(&rt, &wal, &[payload(2, 10), payload(3, 10)]);
    assert!(after[0].0.segment > written[1].0.segment);
    drop(wal);

    let (wal, report, seen) = open(dir.path(), WalOptions::default());
    assert!(report.corruptions.is_empty(), "{:?}", report.corruptions);
    assert_eq!(seen, [written, after].concat());
    assert_eq!(wal.stats().replay_corruptions.get(), 0);
}

#[test]
fn rotate_and_truncate_before_delete_only_older_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), WalOptions::default());
    let mut written = Vec::new();
    let mut ids = Vec::new();
    for i in 0..4 {
        written.extend(append_all(&rt, &wal, &[payload(i, 10)]));
        let id = wal.rotate().expect("rotate");
        assert!(written.iter().all(|(l, _)| l.segment < id));
        ids.push(id);
    }
    // Nothing appended since the last rotation: the empty active segment is kept.
    assert_eq!(wal.rotate().expect("rotate"), ids[3]);
    assert_eq!(wal.stats().segments.get(), 5);
    let segment_files = || -> Vec<u64> { segment::list(dir.path()).expect("list segments") };
    assert_eq!(segment_files().len(), 5);

    wal.truncate_before(ids[0]).expect("truncate");
    let first = written[0].0.segment;
    assert!(first < ids[0]);
    assert_eq!(segment_files(), ids);
    assert!(!segment::path(dir.path(), first).exists());
    assert_eq!(wal.stats().segments.get(), 4);

    // The active segment survives any bound.
    let tail = append_all(&rt, &wal, &[payload(9, 10)]);
    wal.truncate_before(u64::MAX).expect("truncate");
    assert_eq!(segment_files(), [ids[3]]);
    assert_eq!(wal.stats().segments.get(), 1);
    assert_eq!(wal.stats().size_bytes.get() as u64, file_len(&segment::path(dir.path(), ids[3])));
    drop(wal);

    let (_wal, report, seen) = open(dir.path(), WalOptions::default());
    assert_eq!(seen, tail);
    assert_eq!(report.segments, 1);
}

#[test]
fn replay_error_stops_open_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), WalOptions::default());
    let written = append_all(&rt, &wal, &[payload(0, 10), payload(1, 10), payload(2, 10)]);
    drop(wal);

    let mut calls = 0;
    let err = Wal::open(dir.path(), WalOptions::default(), |_, _| {
        calls += 1;
        if calls == 2 { Err("head is full") } else { Ok(()) }
    })
    .expect_err("replay error must stop open");
    match err {
        Error::Replay { segment, offset, message } => {
            assert_eq!(Lsn { segment, offset }, written[1].0);
            assert_eq!(message, "head is full");
        }
        other => panic!("unexpected error {other}"),
    }
    let (_wal, _, seen) = open(dir.path(), WalOptions::default());
    assert_eq!(seen, written);
}

#[test]
fn a_second_wal_on_the_same_directory_is_refused_until_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _, _) = open(dir.path(), WalOptions::default());
    let second = Wal::open(dir.path(), WalOptions::default(), |_, _| Ok::<_, Infallible>(()));
    assert!(matches!(second, Err(Error::Locked { .. })), "{second:?}");
    wal.close();
    let (_again, _, _) = open(dir.path(), WalOptions::default());
}

#[test]
fn close_writes_what_was_queued_and_refuses_later_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), WalOptions::default());
    // More than one batch holds, so the writer must go on draining after close.
    const N: usize = 50;
    const LEN: usize = 200_000;
    const _: () = assert!(N * LEN > 2 * writer::MAX_BATCH_BYTES);
    let guard = wal.inner.shared.active.lock();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let wal = Wal::clone(&wal);
            rt.spawn(async move { (i, wal.append(payload(i, LEN)).await) })
        })
        .collect();
    wait_until("appends to queue", || queued(&wal) >= N - 1);
    // Close while everything is still queued behind the held segment.
    let closer = std::thread::spawn({
        let wal = Wal::clone(&wal);
        move || wal.close()
    });
    wait_until("close to start", || wal.inner.shared.closing.load(Ordering::Acquire));
    drop(guard);
    closer.join().expect("close");

    let mut acked = Vec::new();
    for task in tasks {
        let (i, result) = rt.block_on(task).expect("task");
        acked.push((result.expect("queued before close"), payload(i, LEN)));
    }
    let late = rt.block_on(wal.append(b"late".to_vec()));
    assert!(matches!(late, Err(Error::Closed)), "{late:?}");
    assert!(matches!(wal.rotate(), Err(Error::Closed)));
    drop(wal);

    acked.sort();
    let (_wal, _, seen) = open(dir.path(), WalOptions::default());
    assert_eq!(seen, acked, "every acknowledged append is durable");
}

#[test]
#[cfg(target_os = "linux")]
fn full_disk_fails_the_whole_batch_and_poisons_the_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), WalOptions::default());
    let before = append_all(&rt, &wal, &[payload(0, 10)]);

    let mut guard = wal.inner.shared.active.lock();
    guard.file = OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full");
    let tasks: Vec<_> = (1..6)
        .map(|i| {
            let wal = Wal::clone(&wal);
            rt.spawn(async move { wal.append(payload(i, 10)).await })
        })
        .collect();
    wait_until("appends to queue", || queued(&wal) >= 4);
    drop(guard);
    let results: Vec<_> = tasks.into_iter().map(|t| rt.block_on(t).expect("task")).collect();
    // The failing batch reports the disk error; an append that only arrived after it
    // meets the poisoned WAL. None is acknowledged.
    let disk_full = |r: &Result<Lsn>| matches!(r, Err(Error::Write { source, .. }) if source.kind() == std::io::ErrorKind::StorageFull);
    assert!(results.iter().any(disk_full), "{results:?}");
    assert!(results.iter().all(|r| disk_full(r) || matches!(r, Err(Error::Poisoned))), "{results:?}");
    assert_eq!(wal.stats().records.get(), 1);

    let later = rt.block_on(wal.append(payload(7, 10)));
    assert!(matches!(later, Err(Error::Poisoned)), "{later:?}");
    assert!(matches!(wal.rotate(), Err(Error::Poisoned)));
    assert!(later.err().is_some_and(|e| e.code().retryable()));
    drop(wal);

    // A restart recovers: what was acknowledged is there, and appends work again.
    let (wal, report, seen) = open(dir.path(), WalOptions::default());
    assert!(report.corruptions.is_empty());
    assert_eq!(seen, before);
    append_all(&rt, &wal, &[payload(8, 10)]);
}

#[test]
fn payload_bounds_and_options_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), WalOptions::default());
    let empty = rt.block_on(wal.append(Vec::new()));
    assert!(matches!(empty, Err(Error::EmptyRecord)), "{empty:?}");
    assert!(matches!(check_payload_len(MAX_RECORD_LEN + 1), Err(Error::RecordTooLarge { .. })));
    assert!(check_payload_len(MAX_RECORD_LEN).is_ok());

    let bad = WalOptions { queue_depth: 0, ..WalOptions::default() };
    let err = Wal::open(&dir.path().join("other"), bad, |_, _| Ok::<_, Infallible>(())).expect_err("queue_depth 0 is invalid");
    assert_eq!(err.to_string(), "invalid wal option queue_depth = 0: expected at least 1");
}

#[test]
fn foreign_file_with_a_segment_name_is_not_replayed_or_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = segment::path(dir.path(), 3);
    fs::write(&path, b"PAR1 not a wal segment").expect("write");
    let err = Wal::open(dir.path(), WalOptions::default(), |_, _| Ok::<_, Infallible>(())).expect_err("bad magic");
    assert!(matches!(err, Error::BadMagic { segment: 3, .. }), "{err}");
    assert_eq!(fs::read(&path).expect("read"), b"PAR1 not a wal segment");
}

#[test]
fn metrics_render_every_family() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), WalOptions::default());
    append_all(&rt, &wal, &[vec![1; 12], vec![2; 12]]);
    let mut out = String::new();
    wal.render_metrics(&mut out);
    for line in [
        "skein_wal_bytes_written_total 40\n",
        "skein_wal_records_total 2\n",
        "skein_wal_fsyncs_total 2\n",
        "skein_wal_fsync_duration_seconds_count 2\n",
        "skein_wal_segments 1\n",
        "skein_wal_size_bytes 48\n",
        "skein_wal_replay_corruptions_total 0\n",
        "# TYPE skein_wal_fsync_duration_seconds histogram\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Whatever length the last segment is cut to, replay returns exactly the records that
    /// were wholly written before the cut, in order, and the next open is clean.
    #[test]
    fn replay_after_cutting_the_last_segment_is_an_intact_prefix(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..120), 1..30),
        cut in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = WalOptions { segment_size: 300, sync: SyncPolicy::Never, ..WalOptions::default() };
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (wal, _, _) = open(dir.path(), opts.clone());
        let written = append_all(&rt, &wal, &payloads);
        drop(wal);

        let last = written.iter().map(|(l, _)| l.segment).max().expect("records");
        let path = segment::path(dir.path(), last);
        let cut = cut.index(file_len(&path) as usize + 1) as u64;
        OpenOptions::new().write(true).open(&path).expect("open").set_len(cut).expect("cut");

        let end = |(l, p): &(Lsn, Vec<u8>)| l.offset + 8 + p.len() as u64;
        let expected: Records = written
            .iter()
            .filter(|r| r.0.segment < last || end(r) <= cut)
            .cloned()
            .collect();
        let boundary = cut == segment::HEADER_LEN
            || written.iter().any(|r| r.0.segment == last && end(r) == cut);

        let (wal, report, seen) = open(dir.path(), opts.clone());
        prop_assert_eq!(&seen, &expected);
        if boundary {
            prop_assert!(report.corruptions.is_empty(), "{:?}", report.corruptions);
        } else {
            let good = expected.iter().filter(|r| r.0.segment == last).map(end).max();
            let good = if cut < segment::HEADER_LEN { 0 } else { good.unwrap_or(segment::HEADER_LEN) };
            prop_assert_eq!(report.corruptions.len(), 1);
            prop_assert_eq!(report.corruptions[0].offset, good);
            prop_assert_eq!(report.corruptions[0].bytes_dropped, cut - good);
        }
        drop(wal);

        let (_wal, report, seen) = open(dir.path(), opts);
        prop_assert!(report.corruptions.is_empty());
        prop_assert_eq!(seen, expected);
    }
}

#[test]
fn prefixed_appends_replay_as_one_payload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (wal, _, _) = open(dir.path(), options(1 << 20));
    let lsn = rt.block_on(wal.append_prefixed(7, bytes::Bytes::from_static(b"body bytes"))).expect("append");
    let plain = rt.block_on(wal.append(b"\x07body bytes".to_vec())).expect("append");
    rt.block_on(wal.append_prefixed(7, bytes::Bytes::new())).expect("a prefix alone is a one-byte record");
    drop(wal);
    let (_wal, report, seen) = open(dir.path(), options(1 << 20));
    assert!(report.corruptions.is_empty(), "{:?}", report.corruptions);
    assert_eq!(seen[0], (lsn, b"\x07body bytes".to_vec()));
    assert_eq!(seen[1], (plain, b"\x07body bytes".to_vec()));
    assert_eq!(seen[2].1, b"\x07".to_vec());
}

//! The collector's write-ahead log: a segmented, append-only, CRC-checked log with group
//! commit. It is what makes "acked means durable" true: ingest appends each request's
//! records and answers only once [`Wal::append`] has resolved, which under the default
//! [`SyncPolicy::Always`] means the bytes were written and fdatasynced. On start,
//! [`Wal::open`] replays every intact record into the head; after a flush has made old
//! records redundant, the storage layer calls [`Wal::rotate`] and then
//! [`Wal::truncate_before`] to delete whole segments.
//!
//! # Layout on disk
//!
//! ```text
//! <dir>/LOCK                        flock'ed while a Wal has the directory open
//! <dir>/00000000000000000001.wal    segment 1 (ids are zero-padded to 20 digits)
//! <dir>/00000000000000000002.wal    ...
//!
//! segment = magic "SKEINWL1" (8 bytes), then records back to back
//! record  = len: u32 LE | crc: u32 LE (crc32 of payload) | payload: len bytes
//! ```
//!
//! An [`Lsn`] is (segment id, byte offset of the record's frame in that segment); LSNs
//! order records in the order they were written.
//!
//! # Invariants
//!
//! - Only the writer thread appends, and only to the active segment, which has the
//!   highest id. A segment before it never changes again, except for a repair on open.
//! - A segment is created under a temporary name with its header written and synced, then
//!   renamed into place and the directory synced: a `*.wal` file always has a whole header.
//! - An append is answered `Ok` only after its batch was written (and synced under
//!   `Always`). A failed write or sync answers its whole batch with the error and poisons
//!   the WAL: every later append fails until the WAL is reopened, so no acknowledged
//!   record can follow a hole.
//! - Payloads are 1 byte to [`MAX_RECORD_LEN`]. Length 0 never occurs in a valid segment,
//!   so a zero-filled tail (which some file systems expose after a crash) reads as
//!   corruption, not as a run of empty records.
//! - On open, appends go to a fresh segment (last id + 1): a repaired tail is never
//!   appended to.
//!
//! # Recovery
//!
//! Segments are replayed in id order. In each, the first record that is torn (the file
//! ends inside it), has a length of 0 or above the maximum, or fails its CRC ends the
//! segment: it is logged with `tracing::error!` naming the file and offset, listed in the
//! [`ReplayReport`], and the file is truncated at the end of the last intact record, so the
//! same damage is not reported again on the next start. Replay then goes on with the next
//! segment. A file that does not start with the magic is not ours (or is a newer format):
//! `open` fails with [`Error::BadMagic`] rather than delete it. Leftover `*.wal.tmp` files
//! from an interrupted segment creation never held a record and are removed.

mod error;
pub mod queue;
mod replay;
mod segment;
mod stats;
mod writer;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub use queue::{Entry, Queue, QueueOptions, QueuePos, QueueStats};
pub use segment::MAX_RECORD_LEN;
pub use stats::WalStats;

use parking_lot::Mutex;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};
use writer::{Active, Msg, Shared};

/// When appended data is synced to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` before `append` resolves, shared by every append of a batch (default).
    #[default]
    Always,
    /// Never sync appended data; the OS writes it back when it likes. For benchmarks only:
    /// an acknowledged record can be lost in a crash.
    Never,
}

/// How a [`Wal`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment is started before the next batch once the active one has reached this
    /// many bytes (at least 1).
    pub segment_size: u64,
    /// When appended data is synced.
    pub sync: SyncPolicy,
    /// Appends that may wait for the writer; beyond it `append` waits (at least 1).
    pub queue_depth: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self { segment_size: 64 * 1024 * 1024, sync: SyncPolicy::Always, queue_depth: 4096 }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<()> {
        if self.segment_size == 0 {
            return Err(Error::InvalidOption { field: "segment_size", value: "0".to_owned(), expected: "at least 1 byte" });
        }
        if self.queue_depth == 0 {
            return Err(Error::InvalidOption { field: "queue_depth", value: "0".to_owned(), expected: "at least 1" });
        }
        Ok(())
    }
}

/// Where a record lives: its segment id and the byte offset of its frame in that segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn {
    /// Segment id.
    pub segment: u64,
    /// Offset of the record's frame in the segment file.
    pub offset: u64,
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// What [`Wal::open`] replayed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Segment files replayed.
    pub segments: usize,
    /// Records handed to the replay callback.
    pub records: u64,
    /// Bytes of those records on disk, frame headers included.
    pub bytes: u64,
    /// Damaged segment tails found and cut off, in segment order.
    pub corruptions: Vec<Corruption>,
}

/// A torn or corrupt segment tail found on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// Segment id.
    pub segment: u64,
    /// Segment file.
    pub path: PathBuf,
    /// Offset of the first bad byte: the end of the last intact record (0 when the segment
    /// header itself was torn). The file was truncated here.
    pub offset: u64,
    /// What was wrong (torn record, CRC mismatch, bad length).
    pub reason: String,
    /// Bytes cut off the segment.
    pub bytes_dropped: u64,
}

/// A handle on an open write-ahead log; clones share it.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.inner.shared.dir)
            .field("active_segment", &self.inner.shared.active_id.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens (creating) the WAL in `dir`, replays every intact record in order through
    /// `replay(lsn, payload)`, then starts the writer on a fresh segment.
    ///
    /// A torn or corrupt record ends its segment: it is logged with `tracing::error!`
    /// naming the file and offset, the segment is truncated at the last intact record and
    /// replay continues with the next segment; the report lists each such corruption.
    /// This call does blocking file I/O; from async code run it in `spawn_blocking`.
    ///
    /// # Errors
    /// [`Error::Replay`] as soon as `replay` returns an error (segments are left as they
    /// were); [`Error::Locked`] if another `Wal` has `dir` open; [`Error::BadMagic`] for a
    /// segment file that is not ours; [`Error::InvalidOption`]; and I/O errors naming the
    /// file.
    pub fn open<E: fmt::Display>(
        dir: &Path,
        opts: WalOptions,
        mut replay: impl FnMut(Lsn, &[u8]) -> Result<(), E>,
    ) -> Result<(Wal, ReplayReport)> {
        opts.validate()?;
        fs::create_dir_all(dir).map_err(|source| Error::CreateDir { path: dir.to_owned(), source })?;
        let lock = lock_dir(dir)?;
        let recovered = replay::recover(dir, &mut replay)?;
        let report = recovered.report;

        let id = recovered.sizes.keys().next_back().map_or(1, |last| last + 1);
        let path = segment::path(dir, id);
        let file = segment::create(dir, id).map_err(|source| Error::Create { segment: id, path: path.clone(), source })?;
        let active = Active { id, path, file, len: segment::HEADER_LEN };
        let shared = Arc::new(Shared::new(dir, opts, active, recovered.sizes, lock));
        shared.stats.replay_corruptions.add(report.corruptions.len() as u64);

        let (tx, rx) = mpsc::channel(shared.opts.queue_depth);
        let thread = std::thread::Builder::new()
            .name("skein-wal-writer".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || writer::run(shared, rx)
            })
            .map_err(Error::Spawn)?;
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            records = report.records,
            bytes = report.bytes,
            corruptions = report.corruptions.len(),
            active_segment = id,
            "wal opened"
        );
        let inner = Inner { shared, tx, thread: Mutex::new(Some(thread)) };
        Ok((Wal { inner: Arc::new(inner) }, report))
    }

    /// Appends one record and resolves once it is written (and synced under
    /// [`SyncPolicy::Always`]), with the record's LSN. Concurrent appends share one write
    /// and one sync. Waits while the submission queue is full. If the future is dropped
    /// after the record was queued, the record may still be written.
    ///
    /// # Errors
    /// [`Error::EmptyRecord`] and [`Error::RecordTooLarge`] for a payload out of bounds;
    /// [`Error::Write`] or [`Error::Sync`] if the batch failed (the record is not
    /// durable); [`Error::Poisoned`] after such a failure; [`Error::Closed`] after
    /// [`Wal::close`].
    pub async fn append(&self, payload: Vec<u8>) -> Result<Lsn> {
        check_payload_len(payload.len())?;
        self.submit(writer::Payload::Owned(payload)).await
    }

    /// Appends one record whose payload is `prefix` followed by `body`, as [`Wal::append`]
    /// does with the two concatenated, but without copying `body` into a new buffer first (a
    /// request body received from the network goes to the log as it is, behind a one-byte
    /// record kind).
    ///
    /// # Errors
    /// As [`Wal::append`].
    pub async fn append_prefixed(&self, prefix: u8, body: bytes::Bytes) -> Result<Lsn> {
        check_payload_len(body.len() + 1)?;
        self.submit(writer::Payload::Prefixed(prefix, body)).await
    }

    async fn submit(&self, payload: writer::Payload) -> Result<Lsn> {
        let shared = &self.inner.shared;
        if shared.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        if shared.closing.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let (done, answer) = oneshot::channel();
        self.inner.tx.send(Msg::Append { payload, done }).await.map_err(|_| Error::Closed)?;
        // A dropped sender means the writer thread is gone without answering.
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Starts a new segment now and returns its id: every record whose append resolved
    /// before this call lives in a segment with a smaller id, every later one in this
    /// segment or after. If the active segment holds no record yet it is kept and its id
    /// returned, which gives the same guarantee without an empty file per call.
    ///
    /// Blocks for the file creation and for at most one batch in flight.
    ///
    /// # Errors
    /// [`Error::Create`] if the new segment cannot be created (the current one stays
    /// active); [`Error::Poisoned`]; [`Error::Closed`].
    pub fn rotate(&self) -> Result<u64> {
        let shared = &self.inner.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut active = shared.active.lock();
        if shared.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        if active.len == segment::HEADER_LEN {
            return Ok(active.id);
        }
        shared.rotate_locked(&mut active)
    }

    /// Deletes every whole segment with an id below `segment`, typically the id
    /// [`Wal::rotate`] returned before a flush that made those records redundant. The
    /// active segment is never deleted, whatever `segment` says.
    ///
    /// # Errors
    /// [`Error::Remove`] naming the first file that could not be deleted (the segments
    /// not yet deleted are kept and a later call retries them); [`Error::Closed`].
    pub fn truncate_before(&self, segment: u64) -> Result<()> {
        let shared = &self.inner.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let limit = segment.min(shared.active_id.load(Ordering::Acquire));
        let mut closed = shared.closed.lock();
        let keep = closed.split_off(&limit);
        let doomed = std::mem::replace(&mut *closed, keep);
        let mut result = Ok(());
        let (mut deleted, mut freed) = (0i64, 0u64);
        let mut doomed = doomed.into_iter();
        for (id, size) in doomed.by_ref() {
            let path = segment::path(&shared.dir, id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    closed.insert(id, size);
                    result = Err(Error::Remove { segment: id, path, source });
                    break;
                }
            }
            deleted += 1;
            freed += size;
        }
        closed.extend(doomed);
        drop(closed);
        shared.stats.segments.add(-deleted);
        shared.stats.size_bytes.add(-(freed as i64));
        if deleted > 0 {
            tracing::debug!(deleted, freed, before = limit, "wal segments deleted");
            // Without this a crash could resurrect the files and replay them again.
            segment::sync_dir(&shared.dir).map_err(|source| Error::ReadDir { path: shared.dir.clone(), source })?;
        }
        result
    }

    /// The WAL's metrics.
    pub fn stats(&self) -> &WalStats {
        &self.inner.shared.stats
    }

    /// Appends the Prometheus text exposition of the WAL's metrics to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        self.inner.shared.stats.render(out);
    }

    /// Stops the writer thread once it has written everything already queued, and releases
    /// the directory. Later appends fail with [`Error::Closed`]. Blocks until the writer
    /// has stopped; calling it again does nothing. Dropping the last handle does the same.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl Inner {
    fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        // Wakes the writer if it waits on an empty queue; a full queue wakes it anyway.
        let _ = self.tx.try_send(Msg::Wake);
        if let Some(thread) = self.thread.lock().take()
            && thread.join().is_err()
        {
            tracing::error!(dir = %self.shared.dir.display(), "wal writer thread panicked");
        }
        self.shared.lock.lock().take();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// Rejects a payload the format cannot hold.
fn check_payload_len(len: usize) -> Result<()> {
    if len == 0 {
        return Err(Error::EmptyRecord);
    }
    if len > MAX_RECORD_LEN {
        return Err(Error::RecordTooLarge { len, max: MAX_RECORD_LEN });
    }
    Ok(())
}

/// Takes the exclusive lock on `dir/LOCK`, so that two WALs never write one directory.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| Error::Lock { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Locked { path }),
        Err(TryLockError::Error(source)) => Err(Error::Lock { path, source }),
    }
}

//! The writer: one std thread that owns the append path. It takes the first queued append
//! (blocking), locks the active segment, drains whatever else is queued (up to
//! [`MAX_BATCH_BYTES`]), writes the whole batch with one `write_all`, syncs once, and only
//! then answers every waiter: group commit. The active segment sits behind a mutex so that
//! `Wal::rotate` can swap it between two batches.
//!
//! A failed write or sync answers the whole batch with the error and poisons the WAL: what
//! follows the failure on disk is unknown, so acknowledging a later record could leave an
//! unacknowledged hole before an acknowledged one.

use crate::error::{Error, Result};
use crate::segment::{self, HEADER_LEN};
use crate::stats::WalStats;
use crate::{Lsn, SyncPolicy, WalOptions};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A batch stops draining the queue once it holds this many bytes.
pub(crate) const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// What `append` and `close` send to the writer.
/// A record's bytes as the caller handed them over.
pub(crate) enum Payload {
    /// One buffer.
    Owned(Vec<u8>),
    /// A one-byte prefix (a record kind) followed by a shared buffer, framed as one payload.
    Prefixed(u8, bytes::Bytes),
}

pub(crate) enum Msg {
    /// A record to append and who to answer.
    Append { payload: Payload, done: oneshot::Sender<Result<Lsn>> },
    /// Nothing to do: makes the writer look at the closing flag.
    Wake,
}

/// The segment appends go to.
pub(crate) struct Active {
    pub id: u64,
    pub path: PathBuf,
    pub file: File,
    /// Bytes in the file, header included; the offset of the next record.
    pub len: u64,
}

/// State shared by the `Wal` handles and the writer thread.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub opts: WalOptions,
    pub active: Mutex<Active>,
    /// `active.id`, readable without waiting for a batch in flight. Only grows.
    pub active_id: AtomicU64,
    /// Every segment before the active one with its size, by id.
    pub closed: Mutex<BTreeMap<u64, u64>>,
    pub stats: WalStats,
    pub poisoned: AtomicBool,
    pub closing: AtomicBool,
    /// The locked `LOCK` file; dropping it lets another `Wal` open the directory.
    pub lock: Mutex<Option<File>>,
}

impl Shared {
    pub(crate) fn new(dir: &Path, opts: WalOptions, active: Active, closed: BTreeMap<u64, u64>, lock: File) -> Self {
        let stats = WalStats::default();
        stats.segments.set(closed.len() as i64 + 1);
        stats.size_bytes.set((closed.values().sum::<u64>() + active.len) as i64);
        Self {
            dir: dir.to_owned(),
            opts,
            active_id: AtomicU64::new(active.id),
            active: Mutex::new(active),
            closed: Mutex::new(closed),
            stats,
            poisoned: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            lock: Mutex::new(Some(lock)),
        }
    }

    /// Closes the active segment and makes segment `active.id + 1` the active one.
    /// On error the current segment stays active and usable.
    pub(crate) fn rotate_locked(&self, active: &mut Active) -> Result<u64> {
        let id = active.id + 1;
        let path = segment::path(&self.dir, id);
        let file = segment::create(&self.dir, id).map_err(|source| Error::Create { segment: id, path: path.clone(), source })?;
        let old = std::mem::replace(active, Active { id, path, file, len: HEADER_LEN });
        self.closed.lock().insert(old.id, old.len);
        self.active_id.store(id, Ordering::Release);
        self.stats.segments.add(1);
        self.stats.size_bytes.add(HEADER_LEN as i64);
        tracing::debug!(segment = id, previous_len = old.len, "wal segment rotated");
        Ok(id)
    }

    /// Writes one batch and answers its waiters.
    fn commit(&self, first: Msg, rx: &mut mpsc::Receiver<Msg>, batch: &mut Batch) {
        batch.buf.clear();
        batch.waiters.clear();
        // Lock before draining, so appends that queue up while a rotation (or a test)
        // holds the segment all join this batch.
        let mut active = self.active.lock();
        self.add(first, batch);
        while batch.buf.len() < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(msg) => self.add(msg, batch),
                Err(_) => break,
            }
        }
        if batch.waiters.is_empty() {
            return;
        }
        if active.len >= self.opts.segment_size
            && active.len > HEADER_LEN
            && let Err(error) = self.rotate_locked(&mut active)
        {
            tracing::warn!(%error, "wal segment rotation failed: continuing in the current segment");
        }

        let (segment, base) = (active.id, active.len);
        let result = self.write(&mut active, &batch.buf);
        if result.is_ok() {
            active.len += batch.buf.len() as u64;
        }
        drop(active);

        match result {
            Ok(()) => {
                let n = batch.buf.len() as u64;
                self.stats.bytes_written.add(n);
                self.stats.size_bytes.add(n as i64);
                self.stats.records.add(batch.waiters.len() as u64);
                for (rel, done) in batch.waiters.drain(..) {
                    let lsn = Lsn { segment, offset: base + rel as u64 };
                    // The appender may have given up waiting; the record is durable anyway.
                    let _ = done.send(Ok(lsn));
                }
            }
            Err(error) => {
                self.poisoned.store(true, Ordering::Release);
                tracing::error!(
                    %error,
                    segment,
                    offset = base,
                    records = batch.waiters.len(),
                    "wal write failed: the batch is not acknowledged and the wal refuses \
                     further appends until restarted"
                );
                for (_, done) in batch.waiters.drain(..) {
                    let _ = done.send(Err(error.duplicate_io()));
                }
            }
        }
        if batch.buf.capacity() > 2 * MAX_BATCH_BYTES {
            // One huge record must not pin its buffer for the life of the process.
            batch.buf = Vec::new();
        }
    }

    /// Adds one message to the batch.
    fn add(&self, msg: Msg, batch: &mut Batch) {
        let Msg::Append { payload, done } = msg else {
            return;
        };
        if self.poisoned.load(Ordering::Acquire) {
            let _ = done.send(Err(Error::Poisoned));
            return;
        }
        batch.waiters.push((batch.buf.len(), done));
        match &payload {
            Payload::Owned(p) => segment::encode_frame(&mut batch.buf, p),
            Payload::Prefixed(prefix, body) => segment::encode_frame_parts(&mut batch.buf, &[&[*prefix], body]),
        }
    }

    /// Writes `buf` at the end of the active segment and syncs it per the policy.
    fn write(&self, active: &mut Active, buf: &[u8]) -> Result<()> {
        active.file.write_all(buf).map_err(|source| Error::Write { segment: active.id, path: active.path.clone(), source })?;
        if self.opts.sync == SyncPolicy::Always {
            let start = Instant::now();
            active.file.sync_data().map_err(|source| Error::Sync { segment: active.id, path: active.path.clone(), source })?;
            self.stats.fsync_duration.observe(start.elapsed());
            self.stats.fsyncs.inc();
        }
        Ok(())
    }
}

/// Reused buffers of one batch: the encoded frames, and each waiter with the offset of its
/// frame in `buf`.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    waiters: Vec<(usize, oneshot::Sender<Result<Lsn>>)>,
}

/// The writer thread's loop. It ends when every sender is gone, or once `closing` is set
/// and everything queued before the queue was closed has been written.
pub(crate) fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Batch::default();
    let mut rx_closed = false;
    loop {
        if !rx_closed && shared.closing.load(Ordering::Acquire) {
            // New sends fail from here on; what is already queued is still received.
            rx.close();
            rx_closed = true;
        }
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        shared.commit(first, &mut rx, &mut batch);
    }
    tracing::debug!(dir = %shared.dir.display(), "wal writer stopped");
}

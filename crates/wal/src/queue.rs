//! The agent's disk-backed queue: records are appended (and synced, by default) before the
//! app that sent them is answered, read back in order by the exporter, and deleted only once
//! the collector has acknowledged them, so an agent crash or a collector outage loses
//! nothing up to the disk cap.
//!
//! # Layout on disk
//!
//! ```text
//! <dir>/LOCK                        flock'ed while a Queue has the directory open
//! <dir>/00000000000000000001.wal    segments, in the WAL's format (see the crate docs)
//! <dir>/CURSOR                      where the first unacknowledged record is
//!
//! record payload = appended_unix_ms: u64 LE | data
//! CURSOR         = segment: u64 LE | offset: u64 LE | crc32 of those 16 bytes: u32 LE
//! ```
//!
//! The cursor is overwritten in place with one 20-byte write (a process that dies leaves the
//! old or the new one; a disk sector is written whole) and not fsynced: a machine crash may
//! leave an older cursor, or a torn one that fails its checksum (then the oldest segment is the
//! start), which only means records are sent again. Delivery is at least
//! once, and the collector removes the duplicates. Segments wholly before the cursor are
//! deleted.
//!
//! # The cap
//!
//! Past [`QueueOptions::max_bytes`] of segment files the oldest segment is deleted whether or
//! not it was delivered. The records it held that were not yet acknowledged are counted
//! ([`QueueStats::dropped_records`]) and logged with their number and bytes: never silently.
//!
//! # Recovery
//!
//! On open every segment is scanned. A torn or corrupt tail (a crash in the middle of a
//! write) is cut off at the last intact record and logged; appends then go to a fresh
//! segment, as in the WAL.

use crate::error::{Error, Result};
use crate::segment::{self, HEADER_LEN, MAX_RECORD_LEN, ScanEnd, ScanError};
use crate::{Lsn, SyncPolicy};
use parking_lot::Mutex;
use skein_core::metrics::{self, Counter, Gauge};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const CURSOR: &str = "CURSOR";
const CURSOR_TMP: &str = "CURSOR.tmp";
/// Bytes of the append time in front of each record's data.
const TIME_LEN: usize = 8;

/// How a [`Queue`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// Most bytes of segment files; past it the oldest segment is dropped (and counted).
    pub max_bytes: u64,
    /// A new segment is started once the active one has reached this many bytes. At most a
    /// quarter of `max_bytes`, so the cap drops data a segment at a time.
    pub segment_size: u64,
    /// Whether an append and a cursor update are synced before they return.
    pub sync: SyncPolicy,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self { max_bytes: 1 << 30, segment_size: 16 << 20, sync: SyncPolicy::Always }
    }
}

impl QueueOptions {
    fn validate(&self) -> Result<()> {
        if self.segment_size == 0 {
            return Err(Error::InvalidOption { field: "segment_size", value: "0".into(), expected: "at least 1 byte" });
        }
        if self.segment_size.saturating_mul(4) > self.max_bytes {
            return Err(Error::InvalidOption {
                field: "max_bytes",
                value: self.max_bytes.to_string(),
                expected: "at least 4 segments (4 x segment_size)",
            });
        }
        Ok(())
    }
}

/// A place in the queue: a record's position and its sequence number (records appended
/// since the queue directory was created, counted from the oldest segment on disk at open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueuePos {
    /// Segment and offset of the record's frame.
    pub lsn: Lsn,
    /// The record's sequence number.
    pub seq: u64,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where the record is.
    pub pos: QueuePos,
    /// Where the record after it is: pass it to [`Queue::ack`] to acknowledge this one and
    /// everything before it, or to [`Queue::read`] to go on.
    pub next: QueuePos,
    /// When the record was appended (Unix ms).
    pub appended_unix_ms: u64,
    /// The record's data.
    pub data: Vec<u8>,
}

/// Counters and gauges of a queue.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Records appended.
    pub appended_records: Counter,
    /// Bytes appended (data only).
    pub appended_bytes: Counter,
    /// Records acknowledged.
    pub acked_records: Counter,
    /// Unacknowledged records dropped by the disk cap.
    pub dropped_records: Counter,
    /// Bytes of segment files dropped by the disk cap while they held unacknowledged records.
    pub dropped_bytes: Counter,
    /// [`QueueStats::dropped_records`] by the kind of each record: its first byte without
    /// the high bit, 1 to 3 (the agent's signal tags), or 0 for anything else.
    pub dropped_by_kind: [Counter; 4],
    /// Items in the dropped records, by kind, for records whose first byte has the high bit
    /// set: a u32 (little-endian) item count follows it (the agent's counted records).
    pub dropped_items_by_kind: [Counter; 4],
    /// Corrupt tails cut off when the queue was opened.
    pub recovered_corruptions: Counter,
    /// Bytes of segment files on disk.
    pub disk_bytes: Gauge,
    /// Records not yet acknowledged.
    pub depth: Gauge,
}

#[derive(Debug)]
struct Seg {
    id: u64,
    /// File length: the end of its last complete record.
    len: u64,
    first_seq: u64,
    records: u64,
}

#[derive(Debug)]
struct Inner {
    /// Oldest first; the last one is the one appended to.
    segs: VecDeque<Seg>,
    active: File,
    /// After a failed write the active segment may end in a partial frame: the next append
    /// starts a new segment, so no record ever follows one that cannot be read.
    roll_next: bool,
    cursor: QueuePos,
}

impl Inner {
    fn end(&self) -> QueuePos {
        let s = self.segs.back().expect("the queue always has an active segment");
        QueuePos { lsn: Lsn { segment: s.id, offset: s.len }, seq: s.first_seq + s.records }
    }

    fn disk_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.len).sum()
    }
}

/// A disk-backed FIFO of records with acknowledgement and a size cap. Safe to share between
/// threads: appends are serialised, reads do their file I/O outside the lock.
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    opts: QueueOptions,
    inner: Mutex<Inner>,
    stats: QueueStats,
    /// `CURSOR`, open once it has been written (taken with `inner` held).
    cursor_file: Mutex<Option<File>>,
    _lock: File,
}

/// Writes `head`, then each of `parts`, with vectored writes (at most [`MAX_IOV`] slices a
/// call), going on after short writes.
fn write_all_parts(f: &mut File, head: &[u8], parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(parts.len() + 1);
    slices.push(io::IoSlice::new(head));
    slices.extend(parts.iter().filter(|p| !p.is_empty()).map(|p| io::IoSlice::new(p)));
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = bufs.len().min(MAX_IOV);
        match f.write_vectored(&bufs[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => io::IoSlice::advance_slices(&mut bufs, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The most slices one `writev` takes (Linux's `IOV_MAX`).
const MAX_IOV: usize = 1024;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn read_error(dir: &Path, id: u64) -> impl FnOnce(io::Error) -> Error {
    let path = segment::path(dir, id);
    move |source| Error::Read { segment: id, path, source }
}

impl Queue {
    /// Opens (creating) the queue in `dir`: repairs torn tails, reads the cursor, deletes
    /// acknowledged segments and starts a fresh segment for appends. Blocking file I/O.
    ///
    /// # Errors
    /// [`Error::Locked`] if another queue or WAL has `dir` open; [`Error::BadMagic`] for a
    /// segment file that is not ours; [`Error::InvalidOption`]; I/O errors naming the file.
    pub fn open(dir: &Path, opts: QueueOptions) -> Result<Queue> {
        opts.validate()?;
        fs::create_dir_all(dir).map_err(|source| Error::CreateDir { path: dir.to_owned(), source })?;
        let lock = crate::lock_dir(dir)?;
        let stats = QueueStats::default();
        let stored = read_cursor(dir);
        let ids = segment::list(dir).map_err(|source| Error::ReadDir { path: dir.to_owned(), source })?;
        let mut segs = VecDeque::new();
        let mut seq = 0u64;
        let mut cursor: Option<QueuePos> = None;
        for id in ids {
            let path = segment::path(dir, id);
            let file = File::open(&path).map_err(read_error(dir, id))?;
            let len = file.metadata().map_err(read_error(dir, id))?.len();
            let first_seq = seq;
            let mut records = 0u64;
            let end = segment::scan(BufReader::new(file), len, |offset, _| {
                if stored.is_some_and(|c| c.segment == id && c.offset <= offset) && cursor.is_none() {
                    cursor = Some(QueuePos { lsn: Lsn { segment: id, offset }, seq: first_seq + records });
                }
                records += 1;
                Ok::<(), ()>(())
            });
            let keep = match end {
                Ok(ScanEnd::Clean) => len,
                Ok(ScanEnd::Corrupt { offset, reason }) => {
                    tracing::error!(path = %path.display(), offset, %reason, "queue segment has a corrupt tail; cutting it off");
                    segment::repair(&path, offset).map_err(|source| Error::Repair { segment: id, path: path.clone(), offset, source })?;
                    stats.recovered_corruptions.inc();
                    offset.max(HEADER_LEN)
                }
                Ok(ScanEnd::BadMagic) => return Err(Error::BadMagic { segment: id, path }),
                Err(ScanError::Io(source)) => return Err(Error::Read { segment: id, path, source }),
                Err(ScanError::Stopped(())) => unreachable!("the scan callback never stops"),
            };
            // A cursor at the very end of this segment (every record of it acknowledged).
            if stored.is_some_and(|c| c.segment == id) && cursor.is_none() {
                cursor = Some(QueuePos { lsn: Lsn { segment: id, offset: keep }, seq: first_seq + records });
            }
            seq += records;
            segs.push_back(Seg { id, len: keep, first_seq, records });
        }
        // No record at or after the stored cursor: either its segment is gone because the cap
        // dropped it (start at the oldest remaining record) or everything was acknowledged.
        // The first segment after the stored cursor's (or the oldest, without a cursor) starts
        // the unacknowledged records; with none, everything was acknowledged.
        let cursor = cursor.unwrap_or_else(|| {
            let next = segs.iter().find(|s| stored.is_none_or(|c| s.id > c.segment));
            next.map_or(QueuePos { lsn: Lsn { segment: 0, offset: HEADER_LEN }, seq }, |s| QueuePos {
                lsn: Lsn { segment: s.id, offset: HEADER_LEN },
                seq: s.first_seq,
            })
        });
        // Past every segment and past the stored cursor: a new segment never gets an id the
        // cursor already went beyond (a CURSOR left over after the segment files were removed).
        let id = segs.back().map_or(1, |s| s.id + 1).max(cursor.lsn.segment + 1).max(stored.map_or(0, |c| c.segment) + 1);
        let path = segment::path(dir, id);
        let active = segment::create(dir, id).map_err(|source| Error::Create { segment: id, path, source })?;
        segs.push_back(Seg { id, len: HEADER_LEN, first_seq: seq, records: 0 });
        let mut inner = Inner { segs, active, roll_next: false, cursor };
        if cursor.seq >= seq {
            // Every old record is acknowledged.
            inner.cursor = QueuePos { lsn: Lsn { segment: id, offset: HEADER_LEN }, seq };
        }
        // Left by a version that replaced the cursor by renaming a temporary file.
        let _ = fs::remove_file(dir.join(CURSOR_TMP));
        let q = Queue { dir: dir.to_owned(), opts, inner: Mutex::new(inner), stats, cursor_file: Mutex::new(None), _lock: lock };
        {
            let mut inner = q.inner.lock();
            q.delete_acked(&mut inner)?;
            q.update_gauges(&inner);
            tracing::info!(
                dir = %dir.display(),
                records = inner.end().seq - inner.cursor.seq,
                bytes = inner.disk_bytes(),
                "queue opened"
            );
        }
        Ok(q)
    }

    /// Appends `data` and returns its position once it is written (and synced under
    /// [`SyncPolicy::Always`]). May drop the oldest segment to stay under the cap.
    ///
    /// # Errors
    /// [`Error::EmptyRecord`], [`Error::RecordTooLarge`]; [`Error::Write`], [`Error::Sync`]
    /// or [`Error::Create`] when the disk fails (the record is not stored).
    pub fn append(&self, data: &[u8]) -> Result<QueuePos> {
        self.append_parts(&[data])
    }

    /// [`Queue::append`] of the concatenation of `parts`, without first copying them into one
    /// buffer (the agent queues a signal tag and a request body this way).
    ///
    /// # Errors
    /// As [`Queue::append`].
    pub fn append_parts(&self, parts: &[&[u8]]) -> Result<QueuePos> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len == 0 {
            return Err(Error::EmptyRecord);
        }
        if len > MAX_RECORD_LEN - TIME_LEN {
            return Err(Error::RecordTooLarge { len, max: MAX_RECORD_LEN - TIME_LEN });
        }
        let time = now_ms().to_le_bytes();
        // The frame's header and the append time are written with the parts in one vectored
        // write: the data is not copied into a frame buffer first.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&time);
        parts.iter().for_each(|p| crc.update(p));
        let payload_len = u32::try_from(TIME_LEN + len).map_err(|_| Error::RecordTooLarge { len, max: MAX_RECORD_LEN - TIME_LEN })?;
        let mut head = [0u8; segment::FRAME_HEADER_LEN + TIME_LEN];
        head[..4].copy_from_slice(&payload_len.to_le_bytes());
        head[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        head[8..].copy_from_slice(&time);
        let frame_len = segment::frame_len(TIME_LEN + len);
        let mut inner = self.inner.lock();
        let active_len = inner.end().lsn.offset;
        if inner.roll_next || (active_len >= self.opts.segment_size && active_len > HEADER_LEN) {
            self.roll(&mut inner)?;
        }
        let pos = inner.end();
        let path = segment::path(&self.dir, pos.lsn.segment);
        let written = write_all_parts(&mut inner.active, &head, parts).map_err(|source| Error::Write {
            segment: pos.lsn.segment,
            path: path.clone(),
            source,
        });
        let synced = written.and_then(|()| match self.opts.sync {
            SyncPolicy::Always => inner.active.sync_data().map_err(|source| Error::Sync { segment: pos.lsn.segment, path, source }),
            SyncPolicy::Never => Ok(()),
        });
        if let Err(e) = synced {
            inner.roll_next = true;
            return Err(e);
        }
        let seg = inner.segs.back_mut().expect("active segment");
        seg.len += frame_len;
        seg.records += 1;
        self.stats.appended_records.inc();
        self.stats.appended_bytes.add(len as u64);
        self.enforce_cap(&mut inner);
        self.update_gauges(&inner);
        Ok(pos)
    }

    fn roll(&self, inner: &mut Inner) -> Result<()> {
        let end = inner.end();
        let id = end.lsn.segment + 1;
        let path = segment::path(&self.dir, id);
        inner.active = segment::create(&self.dir, id).map_err(|source| Error::Create { segment: id, path, source })?;
        if inner.cursor == end {
            // Everything so far is acknowledged: the cursor moves to the new segment, so the
            // old one can go.
            inner.cursor = QueuePos { lsn: Lsn { segment: id, offset: HEADER_LEN }, seq: end.seq };
        }
        inner.segs.push_back(Seg { id, len: HEADER_LEN, first_seq: end.seq, records: 0 });
        inner.roll_next = false;
        if inner.cursor.lsn.segment == id {
            self.write_cursor(inner.cursor)?;
            self.delete_acked(inner)?;
        }
        Ok(())
    }

    /// Drops the oldest segments while the files exceed the cap, counting what was lost.
    fn enforce_cap(&self, inner: &mut Inner) {
        while inner.disk_bytes() > self.opts.max_bytes && inner.segs.len() > 1 {
            let Some(old) = inner.segs.pop_front() else { break };
            let first_unacked = inner.cursor.seq.max(old.first_seq);
            let lost = (old.first_seq + old.records).saturating_sub(first_unacked);
            if lost > 0 {
                let from = if inner.cursor.lsn.segment == old.id { inner.cursor.lsn.offset } else { HEADER_LEN };
                match self.kinds(old.id, from, old.len) {
                    Ok((records, items)) => {
                        records.iter().zip(&self.stats.dropped_by_kind).for_each(|(n, c)| c.add(*n));
                        items.iter().zip(&self.stats.dropped_items_by_kind).for_each(|(n, c)| c.add(*n));
                    }
                    Err(e) => {
                        tracing::warn!(segment = old.id, error = %e, "cannot read the kinds of the records the disk cap drops");
                        self.stats.dropped_by_kind[0].add(lost);
                    }
                }
            }
            if inner.cursor.lsn.segment <= old.id {
                let next = inner.segs.front().expect("more segments remain");
                inner.cursor = QueuePos { lsn: Lsn { segment: next.id, offset: HEADER_LEN }, seq: next.first_seq };
            }
            if let Err(e) = fs::remove_file(segment::path(&self.dir, old.id)) {
                tracing::error!(segment = old.id, error = %e, "cannot delete a queue segment dropped by the disk cap");
            }
            if lost > 0 {
                self.stats.dropped_records.add(lost);
                self.stats.dropped_bytes.add(old.len);
                tracing::warn!(
                    records = lost,
                    bytes = old.len,
                    max_bytes = self.opts.max_bytes,
                    "queue is full: dropped its oldest undelivered records"
                );
            }
        }
        // The cursor on disk may now name a deleted segment; open handles that.
    }

    /// Records and items of segment `id` from `offset` to `len` by kind (as
    /// [`QueueStats::dropped_by_kind`] and [`QueueStats::dropped_items_by_kind`] count them):
    /// only each record's header and first five bytes are read.
    fn kinds(&self, id: u64, mut offset: u64, len: u64) -> io::Result<([u64; 4], [u64; 4])> {
        let mut r = BufReader::new(File::open(segment::path(&self.dir, id))?);
        r.seek(SeekFrom::Start(offset))?;
        let (mut records, mut items) = ([0u64; 4], [0u64; 4]);
        while offset < len {
            let mut head = [0u8; segment::FRAME_HEADER_LEN + TIME_LEN + 1];
            r.read_exact(&mut head)?;
            let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if n <= TIME_LEN {
                return Err(io::Error::other(format!("record length {n} at offset {offset}")));
            }
            let first = head[segment::FRAME_HEADER_LEN + TIME_LEN];
            let kind = match first & 0x7f {
                k @ 1..=3 => usize::from(k),
                _ => 0,
            };
            records[kind] += 1;
            let mut read = head.len();
            if first & 0x80 != 0 && n >= TIME_LEN + 5 {
                let mut count = [0u8; 4];
                r.read_exact(&mut count)?;
                items[kind] += u64::from(u32::from_le_bytes(count));
                read += 4;
            }
            let frame = segment::frame_len(n);
            r.seek_relative(i64::try_from(frame).unwrap_or(i64::MAX) - read as i64)?;
            offset += frame;
        }
        Ok((records, items))
    }

    /// Up to `max_records` records (and about `max_bytes` of data, at least one record)
    /// from `from` on, in order. A `from` before the cursor (records since dropped or
    /// acknowledged) starts at the cursor.
    ///
    /// # Errors
    /// A segment could not be read, or holds a record that fails its check.
    pub fn read(&self, from: QueuePos, max_records: usize, max_bytes: usize) -> Result<Vec<Entry>> {
        let (start, segs) = {
            let inner = self.inner.lock();
            let start = if from.lsn < inner.cursor.lsn { inner.cursor } else { from };
            let segs: Vec<(u64, u64, u64)> =
                inner.segs.iter().filter(|s| s.id >= start.lsn.segment).map(|s| (s.id, s.len, s.first_seq)).collect();
            (start, segs)
        };
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        let mut pos = start;
        for (id, len, first_seq) in segs {
            let mut offset = if id == pos.lsn.segment { pos.lsn.offset } else { HEADER_LEN };
            if id != pos.lsn.segment {
                pos = QueuePos { lsn: Lsn { segment: id, offset }, seq: first_seq };
            }
            if offset >= len {
                continue;
            }
            let mut file = match File::open(segment::path(&self.dir, id)) {
                Ok(f) => f,
                // Dropped by the cap since the list was taken: go on with the next one.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_error(&self.dir, id)(e)),
            };
            file.seek(SeekFrom::Start(offset)).map_err(read_error(&self.dir, id))?;
            let mut r = BufReader::new(file.take(len - offset));
            while offset < len {
                if out.len() >= max_records || (bytes >= max_bytes && !out.is_empty()) {
                    return Ok(out);
                }
                let mut head = [0u8; segment::FRAME_HEADER_LEN];
                r.read_exact(&mut head).map_err(read_error(&self.dir, id))?;
                let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                if n < TIME_LEN || n as u64 > len - offset - segment::FRAME_HEADER_LEN as u64 {
                    return Err(corrupt(&self.dir, id, offset, format!("record length {n} does not fit")));
                }
                // The append time and the data read apart, so the data needs no shifting.
                let mut t = [0u8; TIME_LEN];
                r.read_exact(&mut t).map_err(read_error(&self.dir, id))?;
                let mut payload = vec![0u8; n - TIME_LEN];
                r.read_exact(&mut payload).map_err(read_error(&self.dir, id))?;
                let mut h = crc32fast::Hasher::new();
                h.update(&t);
                h.update(&payload);
                if h.finalize() != crc {
                    return Err(corrupt(&self.dir, id, offset, "crc mismatch".into()));
                }
                let next_offset = offset + segment::frame_len(n);
                let next = QueuePos { lsn: Lsn { segment: id, offset: next_offset }, seq: pos.seq + 1 };
                bytes += payload.len();
                out.push(Entry { pos, next, appended_unix_ms: u64::from_le_bytes(t), data: payload });
                pos = next;
                offset = next_offset;
            }
        }
        Ok(out)
    }

    /// Gives up on the rest of `segment` after a read found a damaged record in it (the file
    /// changed under the queue: a disk error, or something else writing to it): the cursor moves
    /// to the start of the next segment, and the records skipped are counted as dropped and
    /// returned. Appends go on in a new segment. Without this, one bad record would stop
    /// delivery until the disk cap removed it.
    ///
    /// # Errors
    /// A new segment could not be created or the cursor not written.
    pub fn skip_damaged(&self, segment: u64) -> Result<u64> {
        let mut inner = self.inner.lock();
        if inner.segs.back().is_some_and(|s| s.id == segment) {
            self.roll(&mut inner)?;
        }
        let Some(i) = inner.segs.iter().position(|s| s.id == segment) else { return Ok(0) };
        let (seg_end, next) = {
            let s = &inner.segs[i];
            let n = &inner.segs[i + 1];
            (s.first_seq + s.records, QueuePos { lsn: Lsn { segment: n.id, offset: HEADER_LEN }, seq: n.first_seq })
        };
        if inner.cursor.lsn >= next.lsn {
            return Ok(0);
        }
        let lost = seg_end.saturating_sub(inner.cursor.seq);
        inner.cursor = next;
        self.stats.dropped_records.add(lost);
        tracing::error!(segment, records = lost, "queue segment has a damaged record; skipping the rest of the segment");
        self.write_cursor(next)?;
        self.delete_acked(&mut inner)?;
        self.update_gauges(&inner);
        Ok(lost)
    }

    /// The first unacknowledged record's position (where a reader starts after a restart).
    pub fn cursor(&self) -> QueuePos {
        self.inner.lock().cursor
    }

    /// Acknowledges every record before `upto` (an [`Entry::next`]): persists the cursor and
    /// deletes segments that hold only acknowledged records. A position at or before the
    /// cursor changes nothing.
    ///
    /// # Errors
    /// The cursor could not be written, or a segment not deleted.
    pub fn ack(&self, upto: QueuePos) -> Result<()> {
        let mut inner = self.inner.lock();
        if upto.lsn <= inner.cursor.lsn || upto.lsn > inner.end().lsn {
            return Ok(());
        }
        self.stats.acked_records.add(upto.seq.saturating_sub(inner.cursor.seq));
        inner.cursor = upto;
        // At the end of a finished segment: move to the start of the next, so it can go.
        if let Some(i) = inner.segs.iter().position(|s| s.id == upto.lsn.segment)
            && i + 1 < inner.segs.len()
            && inner.segs[i].len <= upto.lsn.offset
        {
            let next = &inner.segs[i + 1];
            inner.cursor = QueuePos { lsn: Lsn { segment: next.id, offset: HEADER_LEN }, seq: next.first_seq };
        }
        self.write_cursor(inner.cursor)?;
        self.delete_acked(&mut inner)?;
        self.update_gauges(&inner);
        Ok(())
    }

    fn write_cursor(&self, c: QueuePos) -> Result<()> {
        let mut buf = Vec::with_capacity(20);
        buf.extend_from_slice(&c.lsn.segment.to_le_bytes());
        buf.extend_from_slice(&c.lsn.offset.to_le_bytes());
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        // Overwritten in place and not fsynced, whatever the sync policy: a cursor lost or torn
        // by a machine crash only means records are sent again (its checksum catches a torn
        // one). Syncing it cost two fsyncs per push, and replacing the file by a rename an open,
        // a rename and an inode per push.
        let mut file = self.cursor_file.lock();
        let write = |file: &mut Option<File>| -> io::Result<()> {
            if file.is_none() {
                let f = OpenOptions::new().write(true).create(true).truncate(false).open(self.dir.join(CURSOR))?;
                f.set_len(buf.len() as u64)?;
                *file = Some(f);
            }
            match file {
                Some(f) => std::os::unix::fs::FileExt::write_all_at(f, &buf, 0),
                None => Ok(()),
            }
        };
        write(&mut file).map_err(|source| {
            // Reopened next time: the handle may be what failed.
            *file = None;
            Error::Cursor { path: self.dir.join(CURSOR), source }
        })
    }

    /// Deletes the segments before the cursor's (never the active one).
    fn delete_acked(&self, inner: &mut Inner) -> Result<()> {
        while inner.segs.len() > 1 && inner.segs.front().is_some_and(|s| s.id < inner.cursor.lsn.segment) {
            let Some(old) = inner.segs.pop_front() else { break };
            let path = segment::path(&self.dir, old.id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Remove { segment: old.id, path, source }),
            }
        }
        Ok(())
    }

    fn update_gauges(&self, inner: &Inner) {
        self.stats.disk_bytes.set(i64::try_from(inner.disk_bytes()).unwrap_or(i64::MAX));
        self.stats.depth.set(i64::try_from(inner.end().seq - inner.cursor.seq).unwrap_or(i64::MAX));
    }

    /// Counters and gauges.
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// When the oldest unacknowledged record was appended (Unix ms), if there is one.
    ///
    /// # Errors
    /// Its segment could not be read.
    pub fn oldest_unix_ms(&self) -> Result<Option<u64>> {
        // The first record's frame header and append time only, not its data.
        let (cursor, end) = {
            let inner = self.inner.lock();
            (inner.cursor, inner.end())
        };
        if cursor.seq >= end.seq {
            return Ok(None);
        }
        let inner = self.inner.lock();
        let Some(seg) = inner
            .segs
            .iter()
            .find(|s| s.id >= cursor.lsn.segment && s.records > 0 && (s.id > cursor.lsn.segment || cursor.lsn.offset < s.len))
        else {
            return Ok(None);
        };
        let (id, offset) = (seg.id, if seg.id == cursor.lsn.segment { cursor.lsn.offset } else { HEADER_LEN });
        drop(inner);
        let mut f = match File::open(segment::path(&self.dir, id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(&self.dir, id)(e)),
        };
        let mut head = [0u8; segment::FRAME_HEADER_LEN + TIME_LEN];
        f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_exact(&mut head)).map_err(read_error(&self.dir, id))?;
        let mut t = [0u8; TIME_LEN];
        t.copy_from_slice(&head[segment::FRAME_HEADER_LEN..]);
        Ok(Some(u64::from_le_bytes(t)))
    }

    /// Prometheus text for `queues`, each with its label set (e.g. `endpoint="…"`), names
    /// prefixed with `prefix` (e.g. `skein_agent_queue`): each family once, a sample per queue.
    pub fn render_metrics(queues: &[(&str, &Queue)], out: &mut String, prefix: &str) {
        type Get = fn(&Queue) -> f64;
        let families: [(&str, &str, &str, Get); 9] = [
            ("appended_records_total", "counter", "Records appended to the queue.", |q| q.stats.appended_records.get() as f64),
            ("appended_bytes_total", "counter", "Bytes of record data appended to the queue.", |q| q.stats.appended_bytes.get() as f64),
            ("acked_records_total", "counter", "Records the collector acknowledged and the queue released.", |q| {
                q.stats.acked_records.get() as f64
            }),
            ("dropped_records_total", "counter", "Undelivered records dropped because the queue reached its disk cap.", |q| {
                q.stats.dropped_records.get() as f64
            }),
            ("dropped_bytes_total", "counter", "Bytes of segments dropped by the disk cap while they held undelivered records.", |q| {
                q.stats.dropped_bytes.get() as f64
            }),
            ("recovered_corruptions_total", "counter", "Corrupt segment tails cut off when the queue was opened.", |q| {
                q.stats.recovered_corruptions.get() as f64
            }),
            ("disk_bytes", "gauge", "Bytes of queue segment files on disk.", |q| q.stats.disk_bytes.get() as f64),
            ("records", "gauge", "Records in the queue not yet acknowledged.", |q| q.stats.depth.get() as f64),
            ("oldest_record_age_seconds", "gauge", "Age of the oldest record not yet acknowledged (0 when empty).", |q| {
                q.oldest_unix_ms().ok().flatten().map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0)
            }),
        ];
        for (name, kind, help, get) in families {
            let name = format!("{prefix}_{name}");
            metrics::header(out, &name, kind, help);
            for (labels, q) in queues {
                metrics::sample(out, &name, labels, get(q));
            }
        }
    }
}

fn corrupt(dir: &Path, id: u64, offset: u64, reason: String) -> Error {
    Error::Corrupt { segment: id, path: segment::path(dir, id), offset, reason }
}

/// The persisted cursor, if there is a valid one.
fn read_cursor(dir: &Path) -> Option<Lsn> {
    let path = dir.join(CURSOR);
    let buf = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the queue cursor; starting from the oldest segment (records may be sent again)");
            return None;
        }
    };
    if buf.len() != 20 {
        tracing::warn!(path = %path.display(), len = buf.len(), "queue cursor file has the wrong size; starting from the oldest segment");
        return None;
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let mut c = [0u8; 4];
    c.copy_from_slice(&buf[16..20]);
    if crc32fast::hash(&buf[..16]) != u32::from_le_bytes(c) {
        tracing::warn!(path = %path.display(), "queue cursor file fails its checksum; starting from the oldest segment");
        return None;
    }
    Some(Lsn { segment: word(0), offset: word(8) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> QueueOptions {
        QueueOptions { max_bytes: 1 << 20, segment_size: 4096, sync: SyncPolicy::Always }
    }

    fn datas(q: &Queue, from: QueuePos) -> Vec<Vec<u8>> {
        q.read(from, usize::MAX, usize::MAX).unwrap().into_iter().map(|e| e.data).collect()
    }

    fn rec(i: usize) -> Vec<u8> {
        format!("record {i:05} {}", "x".repeat(100)).into_bytes()
    }

    #[test]
    fn reads_in_order_acks_and_resumes_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), opts()).unwrap();
        for i in 0..200 {
            q.append(&rec(i)).unwrap();
        }
        // 200 records of ~130 bytes over 4 KiB segments: several segments
        assert!(segment::list(dir.path()).unwrap().len() > 5);
        let all = q.read(q.cursor(), usize::MAX, usize::MAX).unwrap();
        assert_eq!(all.len(), 200);
        assert!(all.iter().enumerate().all(|(i, e)| e.data == rec(i) && e.pos.seq == i as u64));
        // reading in small batches from `next` gives the same records
        let (mut from, mut got) = (q.cursor(), Vec::new());
        loop {
            let b = q.read(from, 7, usize::MAX).unwrap();
            let Some(last) = b.last() else { break };
            from = last.next;
            got.extend(b.into_iter().map(|e| e.data));
        }
        assert_eq!(got.len(), 200);
        assert_eq!(q.stats().depth.get(), 200);
        q.ack(all[119].next).unwrap();
        assert_eq!(q.stats().depth.get(), 80);
        assert_eq!(q.stats().acked_records.get(), 120);
        let before = segment::list(dir.path()).unwrap().len();
        drop(q);
        let q = Queue::open(dir.path(), opts()).unwrap();
        assert_eq!(datas(&q, q.cursor()), (120..200).map(rec).collect::<Vec<_>>());
        // acknowledged segments were deleted (plus one fresh active segment)
        assert!(segment::list(dir.path()).unwrap().len() <= before + 1);
        q.append(&rec(200)).unwrap();
        let rest = q.read(q.cursor(), usize::MAX, usize::MAX).unwrap();
        assert_eq!(rest.len(), 81);
        q.ack(rest.last().unwrap().next).unwrap();
        assert_eq!(q.stats().depth.get(), 0);
        drop(q);
        let q = Queue::open(dir.path(), opts()).unwrap();
        assert!(datas(&q, q.cursor()).is_empty());
        assert_eq!(segment::list(dir.path()).unwrap().len(), 1, "only the fresh active segment is left");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), opts()).unwrap();
        for i in 0..10 {
            q.append(&rec(i)).unwrap();
        }
        let last = *segment::list(dir.path()).unwrap().last().unwrap();
        drop(q);
        // a crash in the middle of writing record 10
        let mut f = OpenOptions::new().append(true).open(segment::path(dir.path(), last)).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'r', b'e']).unwrap();
        drop(f);
        let q = Queue::open(dir.path(), opts()).unwrap();
        assert_eq!(q.stats().recovered_corruptions.get(), 1);
        q.append(&rec(10)).unwrap();
        assert_eq!(datas(&q, q.cursor()), (0..11).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn the_disk_cap_drops_the_oldest_records_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let o = QueueOptions { max_bytes: 16 * 1024, segment_size: 4096, sync: SyncPolicy::Never };
        let q = Queue::open(dir.path(), o.clone()).unwrap();
        let n = 1000;
        for i in 0..n {
            q.append(&rec(i)).unwrap();
        }
        let s = q.stats();
        assert!(s.disk_bytes.get() <= 16 * 1024, "{}", s.disk_bytes.get());
        let kept = datas(&q, q.cursor());
        // what is left is the newest records, in order, and what is gone is counted
        assert_eq!(kept.last().unwrap(), &rec(n - 1));
        let first = String::from_utf8(kept[0].clone()).unwrap()[7..12].parse::<usize>().unwrap();
        assert_eq!(kept, (first..n).map(rec).collect::<Vec<_>>());
        assert_eq!(s.dropped_records.get(), first as u64);
        assert_eq!(s.depth.get(), kept.len() as i64);
        // a reader that was behind the drop continues from the oldest record left
        assert_eq!(q.read(QueuePos { lsn: Lsn { segment: 1, offset: HEADER_LEN }, seq: 0 }, 1, 1).unwrap()[0].data, rec(first));
        drop(q);
        let q = Queue::open(dir.path(), o).unwrap();
        assert_eq!(datas(&q, q.cursor()), kept);
    }

    #[test]
    fn records_the_cap_drops_are_counted_by_their_first_byte() {
        let dir = tempfile::tempdir().unwrap();
        let o = QueueOptions { max_bytes: 16 * 1024, segment_size: 4096, sync: SyncPolicy::Never };
        let q = Queue::open(dir.path(), o).unwrap();
        let kind = |i: usize| [1u8, 2, 3, 9][i % 4];
        // every other record of kinds 1-3 says how many items it holds (i % 7 + 1)
        let counted = |i: usize| i.is_multiple_of(2) && kind(i) != 9;
        let rec = |i: usize| {
            let mut r = if counted(i) { vec![kind(i) | 0x80] } else { vec![kind(i)] };
            if counted(i) {
                r.extend_from_slice(&u32::try_from(i % 7 + 1).unwrap().to_le_bytes());
            }
            r.extend_from_slice(format!("record {i:05}").as_bytes());
            r
        };
        q.append(&rec(0)).unwrap();
        q.append(&rec(1)).unwrap();
        q.append(&rec(2)).unwrap();
        // acknowledged within the first segment: only what follows counts as lost
        let first = q.read(q.cursor(), 2, usize::MAX).unwrap();
        q.ack(first[1].next).unwrap();
        for i in 3..1000 {
            q.append(&rec(i)).unwrap();
        }
        let kept: Vec<usize> = q
            .read(q.cursor(), usize::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| String::from_utf8_lossy(&e.data[e.data.len() - 5..]).parse().unwrap())
            .collect();
        let lost: Vec<usize> = (2..kept[0]).collect();
        let s = q.stats();
        assert_eq!(s.dropped_records.get(), lost.len() as u64);
        let mut by_kind = [0u64; 4];
        for &i in &lost {
            by_kind[match kind(i) {
                9 => 0,
                k => k as usize,
            }] += 1;
        }
        let counted: Vec<u64> = s.dropped_by_kind.iter().map(Counter::get).collect();
        assert_eq!(counted, by_kind);
    }

    #[test]
    fn a_cursor_whose_segment_is_gone_resumes_at_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), opts()).unwrap();
        for i in 0..100 {
            q.append(&rec(i)).unwrap();
        }
        let all = q.read(q.cursor(), usize::MAX, usize::MAX).unwrap();
        // acknowledge into the second segment, then lose that segment's file
        let second = all.iter().find(|e| e.pos.lsn.segment != all[0].pos.lsn.segment).unwrap().pos.lsn.segment;
        let at = all.iter().position(|e| e.pos.lsn.segment == second).unwrap() + 1;
        q.ack(all[at].pos).unwrap();
        drop(q);
        std::fs::remove_file(segment::path(dir.path(), second)).unwrap();
        let q = Queue::open(dir.path(), opts()).unwrap();
        let next = all.iter().position(|e| e.pos.lsn.segment > second).unwrap();
        assert_eq!(datas(&q, q.cursor()), (next..100).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn a_cursor_left_after_the_segments_were_removed_does_not_swallow_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), opts()).unwrap();
        for i in 0..50 {
            q.append(&rec(i)).unwrap();
        }
        let all = q.read(q.cursor(), usize::MAX, usize::MAX).unwrap();
        q.ack(all.last().unwrap().next).unwrap();
        drop(q);
        for id in segment::list(dir.path()).unwrap() {
            std::fs::remove_file(segment::path(dir.path(), id)).unwrap();
        }
        let q = Queue::open(dir.path(), opts()).unwrap();
        for i in 0..3 {
            q.append(&rec(i)).unwrap();
        }
        drop(q); // no ack: a crash right after the app was answered
        let q = Queue::open(dir.path(), opts()).unwrap();
        assert_eq!(datas(&q, q.cursor()), (0..3).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_damaged_while_queued_is_skipped_with_the_rest_of_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), opts()).unwrap();
        for i in 0..5 {
            q.append(&rec(i)).unwrap();
        }
        let first = q.read(q.cursor(), 1, 1).unwrap()[0].pos;
        // flip a byte of the second record's data on disk
        let path = segment::path(dir.path(), first.lsn.segment);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = first.lsn.offset as usize + segment::frame_len(TIME_LEN + rec(0).len()) as usize;
        bytes[second + 20] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let Err(Error::Corrupt { segment, .. }) = q.read(q.cursor(), usize::MAX, usize::MAX) else { panic!("the damage is reported") };
        assert_eq!(q.skip_damaged(segment).unwrap(), 5);
        assert_eq!(q.stats().dropped_records.get(), 5);
        q.append(&rec(9)).unwrap();
        assert_eq!(datas(&q, q.cursor()), vec![rec(9)]);
    }

    #[test]
    fn bad_input_and_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bad = QueueOptions { max_bytes: 1000, segment_size: 4096, sync: SyncPolicy::Always };
        assert!(matches!(Queue::open(dir.path(), bad), Err(Error::InvalidOption { field: "max_bytes", .. })));
        let q = Queue::open(dir.path(), opts()).unwrap();
        assert!(matches!(q.append(b""), Err(Error::EmptyRecord)));
        assert!(matches!(Queue::open(dir.path(), opts()), Err(Error::Locked { .. })));
        // an ack past the end or before the cursor changes nothing
        let p = q.append(b"a").unwrap();
        q.ack(QueuePos { lsn: Lsn { segment: 99, offset: 0 }, seq: 99 }).unwrap();
        q.ack(p).unwrap();
        assert_eq!(q.stats().depth.get(), 1);
    }

    #[test]
    fn age_of_the_oldest_record_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), opts()).unwrap();
        assert_eq!(q.oldest_unix_ms().unwrap(), None);
        let before = now_ms();
        q.append(b"hello").unwrap();
        let t = q.oldest_unix_ms().unwrap().unwrap();
        assert!(t >= before && t <= now_ms());
        let mut out = String::new();
        Queue::render_metrics(&[("endpoint=\"a\"", &q)], &mut out, "skein_agent_queue");
        assert!(out.contains("skein_agent_queue_records{endpoint=\"a\"} 1\n"), "{out}");
        assert!(out.contains("skein_agent_queue_appended_records_total{endpoint=\"a\"} 1\n"), "{out}");
    }
}

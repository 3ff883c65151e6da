//! The on-disk format of one segment file and the file operations on it: naming, framing,
//! crash-safe creation, the scanner that finds where the intact prefix ends, and the repair
//! that cuts a segment back to it. Policy (what to do about a corrupt tail) lives in
//! `replay`; the scanner only reports.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// First bytes of every segment file; the trailing digit is the format version.
pub(crate) const MAGIC: [u8; 8] = *b"SKEINWL1";
/// Length of the segment header (the magic).
pub(crate) const HEADER_LEN: u64 = MAGIC.len() as u64;
/// Length of a record frame header: u32 LE payload length, u32 LE crc32 of the payload.
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a record may carry. A frame claiming more is treated as corruption on
/// replay rather than allocated.
pub const MAX_RECORD_LEN: usize = 256 * 1024 * 1024;

const SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".wal.tmp";
const ID_DIGITS: usize = 20;

/// File name of segment `id`: 20 zero-padded digits, so names sort like ids.
pub(crate) fn file_name(id: u64) -> String {
    format!("{id:020}{SUFFIX}")
}

/// Path of segment `id` in `dir`.
pub(crate) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(file_name(id))
}

/// The id of a segment file name, or `None` for any other file.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Frame length on disk of a record carrying `payload_len` bytes.
pub(crate) fn frame_len(payload_len: usize) -> u64 {
    (FRAME_HEADER_LEN + payload_len) as u64
}

/// Appends the frame of `payload` to `buf`. The caller has checked the length
/// (non-empty, at most [`MAX_RECORD_LEN`]), so it fits a u32.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, payload: &[u8]) {
    encode_frame_parts(buf, &[payload]);
}

/// Appends one frame whose payload is the concatenation of `parts`, without first copying
/// them into one buffer.
pub(crate) fn encode_frame_parts(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert!(len > 0 && len <= MAX_RECORD_LEN);
    let mut crc = crc32fast::Hasher::new();
    parts.iter().for_each(|p| crc.update(p));
    buf.reserve(8 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    parts.iter().for_each(|p| buf.extend_from_slice(p));
}

/// Fsyncs a directory so that a create, rename or unlink in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Ids of the segment files in `dir`, ascending. Removes `*.wal.tmp` leftovers of a
/// creation that a crash interrupted (they were never renamed, so never held a record).
pub(crate) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = parse_file_name(name) {
            ids.push(id);
        } else if name.ends_with(TMP_SUFFIX) {
            tracing::warn!(path = %entry.path().display(), "removing unfinished wal segment");
            fs::remove_file(entry.path())?;
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Creates segment `id` holding only its header, durably: the header is written and
/// synced under a temporary name, renamed into place, and the directory is synced. A
/// segment file therefore never exists without a complete header. The returned handle is
/// positioned after the header.
pub(crate) fn create(dir: &Path, id: u64) -> io::Result<File> {
    let final_path = path(dir, id);
    if final_path.try_exists()? {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "segment file already exists"));
    }
    let tmp = dir.join(format!("{id:020}{TMP_SUFFIX}"));
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    file.write_all(&MAGIC)?;
    file.sync_all()?;
    fs::rename(&tmp, &final_path)?;
    sync_dir(dir)?;
    Ok(file)
}

/// Cuts the segment at `path` back to `keep` bytes and syncs it. A `keep` inside the header
/// means the header itself was torn: the file is rewritten as an empty, valid segment.
pub(crate) fn repair(path: &Path, keep: u64) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    if keep < HEADER_LEN {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&MAGIC)?;
    } else {
        file.set_len(keep)?;
    }
    file.sync_all()
}

/// How a scan of a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte after the header belongs to an intact record.
    Clean,
    /// The bytes from `offset` on do not form an intact record; everything before does.
    Corrupt {
        /// End of the last intact record (0 if the header itself is torn).
        offset: u64,
        /// What was wrong, for the log and the report.
        reason: String,
    },
    /// The file does not start with [`MAGIC`], and is not a torn prefix of it either.
    BadMagic,
}

/// Why a scan stopped early.
#[derive(Debug)]
pub(crate) enum ScanError<E> {
    /// Reading failed.
    Io(io::Error),
    /// The record callback returned an error.
    Stopped(E),
}

/// Walks the records of a segment whose bytes `r` yields (`len` bytes in all, header
/// included), calling `on_record(offset, payload)` for each intact record in order, and
/// stops at the first byte that is not part of one. `len` bounds allocation: a frame
/// claiming more bytes than remain is a torn record, not a reason to allocate.
pub(crate) fn scan<R: Read, E>(
    mut r: R,
    len: u64,
    mut on_record: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<ScanEnd, ScanError<E>> {
    let corrupt = |offset: u64, reason: String| Ok(ScanEnd::Corrupt { offset, reason });
    let mut magic = [0u8; MAGIC.len()];
    let n = read_full(&mut r, &mut magic).map_err(ScanError::Io)?;
    if n < MAGIC.len() {
        if magic[..n] == MAGIC[..n] {
            return corrupt(0, format!("segment header is torn ({n} of 8 bytes)"));
        }
        return Ok(ScanEnd::BadMagic);
    }
    if magic != MAGIC {
        return Ok(ScanEnd::BadMagic);
    }

    let mut offset = HEADER_LEN;
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; FRAME_HEADER_LEN];
        let n = read_full(&mut r, &mut head).map_err(ScanError::Io)?;
        if n == 0 {
            return Ok(ScanEnd::Clean);
        }
        if n < FRAME_HEADER_LEN {
            return corrupt(offset, format!("torn record header ({n} of 8 bytes)"));
        }
        let [l0, l1, l2, l3, c0, c1, c2, c3] = head;
        let payload_len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let stored_crc = u32::from_le_bytes([c0, c1, c2, c3]);
        if payload_len == 0 {
            // Appends never write empty records, so this is a zero-filled tail (a file
            // system can expose those after a crash) or garbage.
            return corrupt(offset, "zero-length record".to_owned());
        }
        if payload_len > MAX_RECORD_LEN {
            return corrupt(offset, format!("record length {payload_len} exceeds the maximum of {MAX_RECORD_LEN}"));
        }
        let remaining = len.saturating_sub(offset + FRAME_HEADER_LEN as u64);
        if payload_len as u64 > remaining {
            return corrupt(offset, format!("torn record: payload needs {payload_len} bytes, {remaining} remain"));
        }
        payload.resize(payload_len, 0);
        let got = read_full(&mut r, &mut payload).map_err(ScanError::Io)?;
        if got < payload_len {
            return corrupt(offset, format!("torn record: payload needs {payload_len} bytes, {got} remain"));
        }
        let crc = crc32fast::hash(&payload);
        if crc != stored_crc {
            return corrupt(offset, format!("crc mismatch: stored {stored_crc:#010x}, computed {crc:#010x}"));
        }
        on_record(offset, &payload).map_err(ScanError::Stopped)?;
        offset += frame_len(payload_len);
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::convert::Infallible;

    fn segment_of(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for p in payloads {
            encode_frame(&mut bytes, p);
        }
        bytes
    }

    fn scan_all(bytes: &[u8]) -> (Vec<(u64, Vec<u8>)>, ScanEnd) {
        let mut seen = Vec::new();
        let end = scan(bytes, bytes.len() as u64, |offset, p| {
            seen.push((offset, p.to_vec()));
            Ok::<_, Infallible>(())
        });
        match end {
            Ok(end) => (seen, end),
            Err(e) => panic!("scan of an in-memory segment failed: {e:?}"),
        }
    }

    #[test]
    fn file_names_sort_like_ids_and_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042.wal");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
        for other in ["LOCK", "42.wal", "00000000000000000042.wal.tmp", "0000000000000000004x.wal", "99999999999999999999.wal"] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn scan_returns_records_with_their_offsets() {
        let bytes = segment_of(&[b"a".to_vec(), b"bcd".to_vec()]);
        let (seen, end) = scan_all(&bytes);
        assert_eq!(end, ScanEnd::Clean);
        assert_eq!(seen, vec![(8, b"a".to_vec()), (17, b"bcd".to_vec())]);
    }

    #[test]
    fn zero_filled_tail_is_corruption_not_empty_records() {
        let mut bytes = segment_of(&[b"ok".to_vec()]);
        bytes.extend_from_slice(&[0; 64]);
        let (seen, end) = scan_all(&bytes);
        assert_eq!(seen.len(), 1);
        assert!(matches!(&end, ScanEnd::Corrupt { offset: 18, reason } if reason.contains("zero-length")), "{end:?}");
    }

    #[test]
    fn oversized_length_is_corruption_without_allocating() {
        let mut bytes = segment_of(&[b"ok".to_vec()]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let (seen, end) = scan_all(&bytes);
        assert_eq!(seen.len(), 1);
        assert!(matches!(&end, ScanEnd::Corrupt { offset: 18, reason } if reason.contains("exceeds the maximum")), "{end:?}");
    }

    #[test]
    fn foreign_file_is_bad_magic_and_torn_header_is_corruption() {
        assert_eq!(scan_all(b"PAR1\0\0\0\0rest").1, ScanEnd::BadMagic);
        assert_eq!(scan_all(b"PAR").1, ScanEnd::BadMagic);
        assert!(matches!(scan_all(&MAGIC[..5]).1, ScanEnd::Corrupt { offset: 0, .. }));
        assert!(matches!(scan_all(&[]).1, ScanEnd::Corrupt { offset: 0, .. }));
    }

    #[test]
    fn callback_error_stops_the_scan() {
        let bytes = segment_of(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        let mut calls = 0;
        let end = scan(&bytes[..], bytes.len() as u64, |offset, _| {
            calls += 1;
            if calls == 2 { Err(offset) } else { Ok(()) }
        });
        assert!(matches!(end, Err(ScanError::Stopped(17))), "{end:?}");
        assert_eq!(calls, 2);
    }

    proptest! {
        /// Cutting a segment anywhere yields exactly the records that end before the cut,
        /// and a corruption at the last record boundary unless the cut is on one.
        #[test]
        fn scan_of_a_cut_segment_is_an_intact_prefix(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 0..20),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = segment_of(&payloads);
            let cut = cut.index(bytes.len() + 1);
            let (seen, end) = scan_all(&bytes[..cut]);

            let mut boundaries = vec![HEADER_LEN];
            for p in &payloads {
                boundaries.push(boundaries[boundaries.len() - 1] + frame_len(p.len()));
            }
            let intact = boundaries.iter().filter(|b| **b <= cut as u64).count().saturating_sub(1);
            prop_assert_eq!(seen.len(), intact);
            for ((offset, p), (boundary, expected)) in seen.iter().zip(boundaries.iter().zip(&payloads)) {
                prop_assert_eq!(offset, boundary);
                prop_assert_eq!(p, expected);
            }
            if boundaries.contains(&(cut as u64)) {
                prop_assert_eq!(end, ScanEnd::Clean);
            } else {
                let good = if (cut as u64) < HEADER_LEN { 0 } else { boundaries[intact] };
                let is_expected_corruption = matches!(end, ScanEnd::Corrupt { offset, .. } if offset == good);
                prop_assert!(is_expected_corruption, "{:?}", end);
            }
        }
    }
}

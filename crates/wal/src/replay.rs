//! Recovery on open: every segment is scanned in id order and its intact records are handed
//! to the caller. The first torn or corrupt record ends its segment; the segment is cut back
//! to the last intact record (so the damage is reported once, not on every start) and replay
//! goes on with the next segment, because a later segment was written after the damaged one
//! was closed and is independent of it.

use crate::error::{Error, Result};
use crate::segment::{self, ScanEnd, ScanError};
use crate::{Corruption, Lsn, ReplayReport};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

const READ_BUFFER: usize = 1 << 20;

/// What recovery found.
pub(crate) struct Recovered {
    /// What the caller gets back.
    pub report: ReplayReport,
    /// Every segment on disk with its size after repair, by id.
    pub sizes: BTreeMap<u64, u64>,
}

/// Replays every segment of `dir` through `replay`, repairing damaged tails.
pub(crate) fn recover<E: Display>(dir: &Path, replay: &mut impl FnMut(Lsn, &[u8]) -> Result<(), E>) -> Result<Recovered> {
    let ids = segment::list(dir).map_err(|source| Error::ReadDir { path: dir.to_owned(), source })?;
    let mut report = ReplayReport::default();
    let mut sizes = BTreeMap::new();
    for id in ids {
        let path = segment::path(dir, id);
        let read_error = |source| Error::Read { segment: id, path: path.clone(), source };
        let file = File::open(&path).map_err(read_error)?;
        let len = file.metadata().map_err(read_error)?.len();
        let (mut records, mut bytes) = (0u64, 0u64);
        let end = segment::scan(BufReader::with_capacity(READ_BUFFER, file), len, |offset, payload| {
            replay(Lsn { segment: id, offset }, payload).map_err(|e| (offset, e.to_string()))?;
            records += 1;
            bytes += segment::frame_len(payload.len());
            Ok(())
        });
        match end {
            Err(ScanError::Io(source)) => return Err(read_error(source)),
            Err(ScanError::Stopped((offset, message))) => {
                return Err(Error::Replay { segment: id, offset, message });
            }
            Ok(ScanEnd::BadMagic) => return Err(Error::BadMagic { segment: id, path }),
            Ok(ScanEnd::Clean) => {
                sizes.insert(id, len);
            }
            Ok(ScanEnd::Corrupt { offset, reason }) => {
                let bytes_dropped = len - offset;
                tracing::error!(
                    path = %path.display(),
                    segment = id,
                    offset,
                    bytes_dropped,
                    %reason,
                    "wal segment is torn or corrupt: keeping the records before the offset \
                     and truncating the segment there"
                );
                segment::repair(&path, offset).map_err(|source| Error::Repair { segment: id, path: path.clone(), offset, source })?;
                sizes.insert(id, offset.max(segment::HEADER_LEN));
                report.corruptions.push(Corruption { segment: id, path, offset, reason, bytes_dropped });
            }
        }
        report.segments += 1;
        report.records += records;
        report.bytes += bytes;
    }
    Ok(Recovered { report, sizes })
}

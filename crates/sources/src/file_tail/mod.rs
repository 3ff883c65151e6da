//! The `file_tail` source: log files matched by glob patterns, read as they grow, turned into
//! OTLP log records with their trace context, and queued like any app's logs.
//!
//! **Files.** Every poll the patterns are expanded and each match is `stat`ed; a file is known
//! by its device and inode and keeps an open handle, so a file renamed away by rotation is
//! read to its end through that handle (for `rotate_wait`) while the new file at the path is
//! read from its start. A file that shrinks below what was read, or whose first bytes change
//! (copy-truncate, then rewritten), is read again from its start. An idle file costs one
//! `stat` per poll and nothing else: no read, no re-hash.
//!
//! **Records.** Lines end at `\n` (a trailing `\r` is dropped). With `multiline_start`, a
//! record starts at a line matching it and takes every following line that does not. A line
//! or record longer than `max_record_size` is cut there (the rest of it is skipped, so memory
//! per file stays bounded), and at most `max_read_per_poll` bytes are read from a file per
//! poll. A partial last line (or an unfinished multiline record) is emitted once the file has
//! been quiet for `flush_after`. Lines are parsed by [`parse`].
//!
//! **Exactly once.** Each poll's records of a file (bytes `from..to`) are a *batch* with one
//! observation time `T` (record `i` is observed at `T + i` ns, which also keeps a file's lines
//! in order). Before a batch is queued, the checkpoint file (`<data_dir>/file_tail/checkpoints.json`,
//! written to a temp file, fsynced and renamed) records, per file, its device, inode, a
//! fingerprint of its first KiB, the offset `from` and the pending batch `(to, T)`. Only after
//! the queue append succeeded does the offset move to `to`. After a crash at any point, the
//! restarted agent re-reads exactly `from..to` and sends it again with the same `T`: the records
//! are byte-for-byte the ones possibly queued before, so the collector's fingerprint dedup
//! (logs are deduplicated by a hash of their encoding) keeps one copy. Nothing before `from`
//! is read again and nothing after `to` was ever sent. Files rotated away while the agent was
//! down are found by inode in their directory and read to the end.

pub mod parse;

use crate::file_tail::parse::LineParser;
use regex::Regex;
use serde::{Deserialize, Serialize};
use skein_core::metrics::{self, Counter, Gauge};
use skein_core::{ByteSize, Duration};
use skein_otlp::ExportLogsServiceRequest;
use skein_otlp::proto::common::v1::KeyValue;
use skein_otlp::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use skein_otlp::proto::resource::v1::Resource;
use skein_otlp::synth::signals::kv;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Bytes of a file's start that identify it beside its inode.
const FINGERPRINT_LEN: u64 = 1024;
/// The checkpoint file's format version.
const CHECKPOINT_VERSION: u32 = 1;
/// Most records made from one file in one poll (1 MiB of empty lines would otherwise be a
/// million records, and one export request of hundreds of MB).
const MAX_RECORDS_PER_FILE_POLL: usize = 8192;

/// `[file_tail]`: where to read and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileTailConfig {
    /// How often the patterns are expanded and the files checked for growth.
    pub poll_interval: Duration,
    /// Most bytes read from one file per poll.
    pub max_read_per_poll: ByteSize,
    /// A line or multiline record longer than this is cut (the rest of it is skipped).
    pub max_record_size: ByteSize,
    /// Where files found at the agent's very first start are read from: `end` (only what is
    /// written from now on) or `beginning`. Files that appear later, or while the agent was
    /// stopped, are always read from their beginning.
    pub start_at: StartAt,
    /// A partial last line or unfinished multiline record is emitted after the file has been
    /// quiet this long.
    pub flush_after: Duration,
    /// How long a file renamed away or deleted is still read (through its open handle).
    pub rotate_wait: Duration,
    /// Most files tailed at once; more matches are counted and skipped.
    pub max_files: usize,
    /// The files to read.
    pub inputs: Vec<TailInput>,
}

impl Default for FileTailConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::millis(500),
            max_read_per_poll: ByteSize::mib(1),
            max_record_size: ByteSize(64 * 1024),
            start_at: StartAt::End,
            flush_after: Duration::secs(1),
            rotate_wait: Duration::secs(5),
            max_files: 4096,
            inputs: Vec::new(),
        }
    }
}

/// Where a newly found file is read from at the very first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From its beginning.
    Beginning,
    /// From its current end.
    End,
}

/// `[[file_tail.inputs]]`: one set of files and how to read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailInput {
    /// Glob patterns (`/var/log/app/*.log`, `/var/log/**/*.log`).
    pub include: Vec<String>,
    /// Glob patterns of paths to leave out (`*.gz`).
    pub exclude: Vec<String>,
    /// `service.name` of the records (empty: none is set).
    pub service: String,
    /// A regex that starts a record; lines that do not match belong to the record before.
    /// Empty: every line is a record.
    pub multiline_start: String,
    /// A regex with named groups `trace_id`, `span_id`, `correlation_id`, tried when the line's
    /// fields and a `traceparent` give no trace id. Empty: none.
    pub trace_regex: String,
    /// Field names (JSON keys, `key=value` words) whose value is the record's `correlation_id`.
    pub correlation_fields: Vec<String>,
}

impl Default for TailInput {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
            service: String::new(),
            multiline_start: String::new(),
            trace_regex: String::new(),
            correlation_fields: [
                "request_id",
                "correlation_id",
                "x-request-id",
                "x_request_id",
                "requestId",
                "correlationId",
                "request.id",
                "http.request.id",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl FileTailConfig {
    /// Checks the patterns and regexes; the error names the input and the field.
    pub fn validate(&self) -> Result<(), String> {
        for (i, input) in self.inputs.iter().enumerate() {
            compile(i, input)?;
        }
        if self.max_record_size.bytes() == 0 || self.max_read_per_poll.bytes() < self.max_record_size.bytes() {
            return Err(format!(
                "file_tail.max_read_per_poll ({}) must be at least file_tail.max_record_size ({}), which must be positive",
                self.max_read_per_poll, self.max_record_size
            ));
        }
        if self.poll_interval.0.is_zero() {
            return Err("file_tail.poll_interval must be positive (e.g. \"500ms\")".into());
        }
        Ok(())
    }
}

/// An input with its patterns and regexes compiled.
struct Input {
    include: Vec<String>,
    exclude: Vec<glob::Pattern>,
    parser: LineParser,
    start: Option<regex::bytes::Regex>,
    resource: Resource,
}

fn compile(i: usize, input: &TailInput) -> Result<Input, String> {
    let at = |field: &str| format!("file_tail.inputs[{i}].{field}");
    if input.include.is_empty() {
        return Err(format!("{} is empty: name at least one glob pattern, e.g. [\"/var/log/app/*.log\"]", at("include")));
    }
    for p in &input.include {
        glob::Pattern::new(p).map_err(|e| format!("{} has an invalid pattern {p:?}: {e}", at("include")))?;
    }
    let exclude = input
        .exclude
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| format!("{} has an invalid pattern {p:?}: {e}", at("exclude"))))
        .collect::<Result<_, _>>()?;
    let regex = |field: &str, s: &str| -> Result<Option<String>, String> {
        if s.is_empty() {
            return Ok(None);
        }
        Regex::new(s).map_err(|e| format!("{} is not a valid regex: {e}", at(field)))?;
        Ok(Some(s.to_string()))
    };
    let start = regex("multiline_start", &input.multiline_start)?.map(|s| regex::bytes::Regex::new(&s).expect("checked above"));
    let trace_regex = regex("trace_regex", &input.trace_regex)?.map(|s| Regex::new(&s).expect("checked above"));
    if let Some(re) = &trace_regex {
        let names: Vec<&str> = re.capture_names().flatten().collect();
        if !names.iter().any(|n| matches!(*n, "trace_id" | "span_id" | "correlation_id")) {
            return Err(format!("{} has no named group trace_id, span_id or correlation_id", at("trace_regex")));
        }
    }
    let mut attributes = Vec::new();
    if !input.service.is_empty() {
        attributes.push(kv("service.name", &input.service));
    }
    Ok(Input {
        include: input.include.clone(),
        exclude,
        parser: LineParser { trace_regex, correlation_fields: input.correlation_fields.clone() },
        start,
        resource: Resource { attributes, ..Default::default() },
    })
}

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileKey {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

/// CRC-32 of a file's first `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
struct Fingerprint {
    len: u64,
    crc: u32,
}

fn fingerprint(file: &File, size: u64) -> std::io::Result<Fingerprint> {
    let len = size.min(FINGERPRINT_LEN);
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(Fingerprint { len, crc: crc32fast::hash(&buf) })
}

/// A batch sent but not yet known to be queued: bytes `from..to`, observed at `observed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    to: u64,
    observed: u64,
    /// The framing state the batch started with.
    skip: Skip,
    /// The path the records name (`log.file.path`): a replay after the file was renamed must
    /// still make the same records.
    #[serde(default)]
    path: Option<PathBuf>,
}

/// Framing state that must survive a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
struct Skip {
    /// Dropping the rest of an over-long line, up to its `\n`.
    line: bool,
    /// Dropping continuation lines of an over-long multiline record, up to the next start.
    continuation: bool,
}

/// One file's entry in the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    key: FileKey,
    path: PathBuf,
    /// Index of the input that matched it.
    #[serde(default)]
    input: usize,
    fingerprint: Fingerprint,
    offset: u64,
    pending: Option<Pending>,
    #[serde(default)]
    skip: Skip,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointFile {
    version: u32,
    files: Vec<Saved>,
}

struct Tracked {
    input: usize,
    path: PathBuf,
    file: File,
    fingerprint: Fingerprint,
    /// Everything before this was queued (or deliberately skipped).
    offset: u64,
    /// The batch `offset..pending.to` was sent and may or may not be queued.
    pending: Option<Pending>,
    /// The records of the pending batch, kept to send again (None after a restart: re-read).
    pending_records: Option<Arc<Vec<LogRecord>>>,
    /// Bytes read after the last batch, not yet a record (`buf_start..buf_start + buf.len()`).
    buf_start: u64,
    buf: Vec<u8>,
    skip: Skip,
    /// Size at the last look.
    size: u64,
    last_growth: Instant,
    /// When the path stopped leading to this file.
    gone_since: Option<Instant>,
}

impl Tracked {
    fn read_pos(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    fn restart_from_zero(&mut self) {
        self.offset = 0;
        self.buf_start = 0;
        self.buf.clear();
        self.pending = None;
        self.pending_records = None;
        self.skip = Skip::default();
        self.fingerprint = Fingerprint::default();
    }
}

/// The records of one file read in one poll.
#[derive(Debug)]
pub struct Batch {
    /// The file.
    pub key: FileKey,
    /// Index of its input.
    pub input: usize,
    /// Its records.
    pub records: Arc<Vec<LogRecord>>,
}

/// Counters on the agent's `/metrics`.
#[derive(Debug, Default)]
pub struct TailStats {
    /// Files being read.
    pub files: Gauge,
    /// Bytes read from files.
    pub bytes_read: Counter,
    /// Records made.
    pub records: Counter,
    /// Records cut at `max_record_size`.
    pub truncated_records: Counter,
    /// Files seen to be truncated or replaced and read again from the start.
    pub truncations: Counter,
    /// Files renamed away or deleted and read to their end.
    pub rotations: Counter,
    /// Matches skipped because `max_files` were open, or that could not be opened.
    pub skipped_files: Counter,
    /// Checkpoint writes that failed.
    pub checkpoint_errors: Counter,
    /// Records refused for good when queued (invalid), dropped.
    pub refused_records: Counter,
}

impl TailStats {
    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        metrics::family(out, "skein_agent_file_tail_files", "gauge", "Files being tailed.", "", self.files.get());
        let m = |out: &mut String, name: &str, kind: &str, help: &str, c: &Counter| metrics::family(out, name, kind, help, "", c.get());
        m(out, "skein_agent_file_tail_read_bytes_total", "counter", "Bytes read from tailed files.", &self.bytes_read);
        m(out, "skein_agent_file_tail_records_total", "counter", "Log records made from tailed files.", &self.records);
        m(out, "skein_agent_file_tail_truncated_records_total", "counter", "Records cut at max_record_size.", &self.truncated_records);
        m(
            out,
            "skein_agent_file_tail_truncations_total",
            "counter",
            "Files truncated or replaced, read again from the start.",
            &self.truncations,
        );
        m(out, "skein_agent_file_tail_rotations_total", "counter", "Files renamed away or deleted, read to their end.", &self.rotations);
        m(
            out,
            "skein_agent_file_tail_skipped_files_total",
            "counter",
            "Matched files not tailed (max_files, open errors).",
            &self.skipped_files,
        );
        m(out, "skein_agent_file_tail_checkpoint_errors_total", "counter", "Checkpoint writes that failed.", &self.checkpoint_errors);
        m(
            out,
            "skein_agent_file_tail_refused_records_total",
            "counter",
            "Records refused as invalid when queued, dropped.",
            &self.refused_records,
        );
    }
}

/// The tailer: every file of every input, and the checkpoint.
pub struct Tailer {
    cfg: FileTailConfig,
    inputs: Vec<Input>,
    files: HashMap<FileKey, Tracked>,
    /// Checkpoint entries not matched to a file yet (only before the first poll ends).
    saved: HashMap<FileKey, Saved>,
    /// No checkpoint existed: this is the agent's first start.
    first_start: bool,
    polled: bool,
    checkpoint: PathBuf,
    dirty: bool,
    /// Polls so far (which file a poll starts with).
    round: usize,
    /// Counters.
    pub stats: std::sync::Arc<TailStats>,
}

impl Tailer {
    /// A tailer keeping its checkpoint in `<dir>/checkpoints.json`.
    pub fn new(cfg: FileTailConfig, dir: &Path) -> Result<Self, String> {
        cfg.validate()?;
        let inputs = cfg.inputs.iter().enumerate().map(|(i, input)| compile(i, input)).collect::<Result<Vec<_>, _>>()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let checkpoint = dir.join("checkpoints.json");
        let (first_start, saved) = match std::fs::read(&checkpoint) {
            Ok(bytes) => {
                let c: CheckpointFile = serde_json::from_slice(&bytes).map_err(|e| {
                    format!("the file_tail checkpoint {} is unreadable ({e}); move it away to start over", checkpoint.display())
                })?;
                if c.version != CHECKPOINT_VERSION {
                    return Err(format!(
                        "the file_tail checkpoint {} has version {}, expected {CHECKPOINT_VERSION}",
                        checkpoint.display(),
                        c.version
                    ));
                }
                (false, c.files.into_iter().map(|s| (s.key, s)).collect())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (true, HashMap::new()),
            Err(e) => return Err(format!("cannot read the file_tail checkpoint {}: {e}", checkpoint.display())),
        };
        Ok(Self {
            cfg,
            inputs,
            files: HashMap::new(),
            saved,
            first_start,
            polled: false,
            checkpoint,
            dirty: false,
            round: 0,
            stats: Default::default(),
        })
    }

    /// The resource of an input's records.
    pub fn resource(&self, input: usize) -> &Resource {
        &self.inputs[input].resource
    }

    /// Expands the patterns, follows every file and returns the records ready to send. Files
    /// with a pending batch give that batch again (same records) and nothing new.
    pub fn poll(&mut self) -> Vec<Batch> {
        let now = Instant::now();
        self.discover(now);
        let mut out = Vec::new();
        // Files rotated away first: their last lines were written before the new file's.
        let mut keys: Vec<(bool, FileKey)> = self.files.iter().map(|(k, t)| (t.gone_since.is_none(), *k)).collect();
        keys.sort_unstable_by_key(|(live, k)| (*live, k.dev, k.ino));
        // Start at another file each poll, so that busy files cannot starve the rest of the
        // per-poll budget.
        self.round = self.round.wrapping_add(1);
        let gone = keys.iter().filter(|(live, _)| !live).count();
        if keys.len() > gone {
            let live_len = keys.len() - gone;
            keys[gone..].rotate_left(self.round % live_len);
        }
        // New bytes read per poll over all files, so one export request stays a few MiB.
        let mut budget = self.cfg.max_read_per_poll.bytes().saturating_mul(4);
        for (_, key) in keys {
            if let Some(b) = self.read_file(key, now, &mut budget) {
                out.push(b);
            }
        }
        // A file gone from the patterns is dropped once read to its end and quiet for
        // `rotate_wait` (an app may write to the renamed file until it reopens its log).
        let rotate_wait = self.cfg.rotate_wait.0;
        let before = self.files.len();
        self.files.retain(|_, t| {
            let done = t.pending.is_none() && t.buf.is_empty() && t.read_pos() >= t.size;
            let quiet_since = t.gone_since.map(|g| g.max(t.last_growth));
            !(done && quiet_since.is_some_and(|q| now.duration_since(q) >= rotate_wait))
        });
        if self.files.len() != before {
            self.dirty = true;
        }
        self.stats.files.set(self.files.len() as i64);
        self.polled = true;
        out
    }

    fn discover(&mut self, now: Instant) {
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for (i, input) in self.inputs.iter().enumerate() {
            for pattern in &input.include {
                let Ok(paths) = glob::glob(pattern) else { continue };
                for path in paths.flatten() {
                    if input.exclude.iter().any(|p| p.matches_path(&path)) {
                        continue;
                    }
                    let Ok(meta) = std::fs::metadata(&path) else { continue };
                    let key = FileKey { dev: meta.dev(), ino: meta.ino() };
                    if meta.is_file() && seen.insert(key) {
                        found.push((i, key, path, meta.len()));
                    }
                }
            }
        }
        for (i, key, path, size) in found {
            if let Some(t) = self.files.get_mut(&key) {
                if t.path != path {
                    t.path = path;
                }
                t.size = size;
                t.gone_since = None;
                continue;
            }
            if self.files.len() >= self.cfg.max_files {
                self.stats.skipped_files.inc();
                continue;
            }
            match File::open(&path) {
                // Renamed and replaced between the stat and the open: next poll.
                Ok(file) if file.metadata().is_ok_and(|m| m.dev() != key.dev || m.ino() != key.ino) => {}
                Ok(file) => {
                    let t = self.start_tracking(i, key, path, file, size, now);
                    self.files.insert(key, t);
                    self.dirty = true;
                }
                Err(e) => {
                    self.stats.skipped_files.inc();
                    tracing::warn!(path = %path.display(), error = %e, "cannot open a file to tail");
                }
            }
        }
        // Known files the patterns no longer reach: renamed away or deleted; read to the end.
        for (key, t) in &mut self.files {
            if !seen.contains(key) && t.gone_since.is_none() {
                t.gone_since = Some(now);
                self.stats.rotations.inc();
                if let Ok(m) = t.file.metadata() {
                    t.size = m.len();
                }
            } else if t.gone_since.is_some()
                && let Ok(m) = t.file.metadata()
            {
                t.size = m.len();
            }
        }
        if !self.polled {
            // Checkpointed files the patterns did not find: rotated away while the agent was
            // stopped. Look for the inode in the directory it was in and finish it.
            let left: Vec<Saved> = self.saved.drain().map(|(_, s)| s).collect();
            for s in left {
                if let Some((path, file, size)) = find_by_inode(&s) {
                    let (key, input) = (s.key, s.input.min(self.inputs.len() - 1));
                    let mut t = self.resume(input, s, path, file, size, now);
                    t.gone_since = Some(now);
                    self.stats.rotations.inc();
                    self.files.insert(key, t);
                }
            }
            self.dirty = true;
        }
    }

    fn start_tracking(&mut self, input: usize, key: FileKey, path: PathBuf, file: File, size: u64, now: Instant) -> Tracked {
        if let Some(s) = self.saved.remove(&key) {
            let same = s.fingerprint.len <= size && fingerprint(&file, s.fingerprint.len).is_ok_and(|f| f == s.fingerprint);
            if same {
                return self.resume(input, s, path, file, size, now);
            }
        }
        let from_end = !self.polled && self.first_start && self.cfg.start_at == StartAt::End;
        let offset = if from_end { size } else { 0 };
        Tracked {
            input,
            path,
            fingerprint: fingerprint(&file, size).unwrap_or_default(),
            file,
            offset,
            pending: None,
            pending_records: None,
            buf_start: offset,
            buf: Vec::new(),
            skip: Skip::default(),
            size,
            last_growth: now,
            gone_since: None,
        }
    }

    fn resume(&mut self, input: usize, s: Saved, path: PathBuf, file: File, size: u64, now: Instant) -> Tracked {
        Tracked {
            input,
            path,
            file,
            fingerprint: s.fingerprint,
            offset: s.offset,
            pending: s.pending,
            pending_records: None,
            buf_start: s.offset,
            buf: Vec::new(),
            skip: s.skip,
            size,
            last_growth: now,
            gone_since: None,
        }
    }

    fn read_file(&mut self, key: FileKey, now: Instant, budget: &mut u64) -> Option<Batch> {
        let max_record = self.cfg.max_record_size.bytes() as usize;
        let cap = self.cfg.max_read_per_poll.bytes().min(*budget);
        let flush_after = self.cfg.flush_after.0;
        let t = self.files.get_mut(&key)?;
        let input = &self.inputs[t.input];
        // A batch sent but not known to be queued goes again first, as it was, even if the
        // file was truncated meanwhile (its lines are not lost to the truncation).
        if let (Some(_), Some(records)) = (&t.pending, &t.pending_records) {
            return Some(Batch { key, input: t.input, records: Arc::clone(records) });
        }
        // Truncated (copy-truncate), or replaced with other content of at least the same size.
        let mut changed = t.size < t.read_pos();
        if !changed && t.size != t.read_pos() && t.fingerprint.len > 0 {
            changed = fingerprint(&t.file, t.fingerprint.len).is_ok_and(|f| f != t.fingerprint);
        }
        if changed {
            t.restart_from_zero();
            self.stats.truncations.inc();
            self.dirty = true;
        }
        if t.fingerprint.len < FINGERPRINT_LEN
            && t.size > t.fingerprint.len
            && let Ok(f) = fingerprint(&t.file, t.size)
        {
            t.fingerprint = f;
            self.dirty = true;
        }
        if let Some(p) = t.pending.clone() {
            // After a restart: make the pending batch again from the file, byte for byte, with
            // the path and observation time it had.
            let len = p.to.saturating_sub(t.offset);
            if p.to > t.size || len > self.cfg.max_read_per_poll.bytes() + self.cfg.max_record_size.bytes() {
                // The file no longer holds the batch (rotated or truncated while the agent was
                // down), or the checkpoint is damaged: whatever was queued before stands.
                t.pending = None;
                t.buf_start = t.offset;
                self.dirty = true;
                return None;
            }
            let mut bytes = vec![0u8; usize::try_from(len).ok()?];
            if t.file.read_exact_at(&mut bytes, t.offset).is_err() {
                t.pending = None;
                t.buf_start = t.offset;
                self.dirty = true;
                return None;
            }
            let attrs = file_attributes(p.path.as_deref().unwrap_or(&t.path));
            // The checkpointed framing state is the one after the batch: keep it.
            let mut framer = Framer { start: input.start.as_ref(), max: max_record, max_records: usize::MAX, skip: p.skip };
            let (recs, _) = framer.frame(&bytes, true);
            let records = Arc::new(make_records(&input.parser, &bytes, &recs, p.observed, &attrs));
            t.buf_start = p.to;
            t.pending_records = Some(Arc::clone(&records));
            return Some(Batch { key, input: t.input, records });
        }
        let attrs = file_attributes(&t.path);
        // Read what is new, up to the cap.
        let pos = t.read_pos();
        if t.size > pos {
            let n = (t.size - pos).min(cap) as usize;
            let old = t.buf.len();
            t.buf.resize(old + n, 0);
            match t.file.read_at(&mut t.buf[old..], pos) {
                Ok(got) => {
                    t.buf.truncate(old + got);
                    self.stats.bytes_read.add(got as u64);
                    *budget = budget.saturating_sub(got as u64);
                    if got > 0 {
                        t.last_growth = now;
                    }
                }
                Err(e) => {
                    t.buf.truncate(old);
                    tracing::warn!(path = %t.path.display(), error = %e, "reading a tailed file failed");
                }
            }
        }
        if t.buf.is_empty() {
            return None;
        }
        let at_end = t.read_pos() >= t.size;
        let quiet = now.duration_since(t.last_growth) >= flush_after;
        let flush = at_end && (quiet || t.gone_since.is_some_and(|g| now.duration_since(g) >= flush_after));
        let skip_before = t.skip;
        let mut framer = Framer { start: input.start.as_ref(), max: max_record, max_records: MAX_RECORDS_PER_FILE_POLL, skip: t.skip };
        let (recs, consumed) = framer.frame(&t.buf, flush);
        t.skip = framer.skip;
        if consumed == 0 {
            return None;
        }
        let observed = crate::otlp_build::now_unix_ns();
        let records = Arc::new(make_records(&input.parser, &t.buf, &recs, observed, &attrs));
        self.stats.records.add(records.len() as u64);
        self.stats.truncated_records.add(recs.iter().filter(|r| r.truncated).count() as u64);
        t.buf.drain(..consumed);
        let to = t.buf_start + consumed as u64;
        t.buf_start = to;
        self.dirty = true;
        if records.is_empty() {
            // Only skipped bytes: nothing to send, the offset moves on.
            t.offset = to;
            return None;
        }
        t.pending = Some(Pending { to, observed, skip: skip_before, path: Some(t.path.clone()) });
        t.pending_records = Some(Arc::clone(&records));
        Some(Batch { key, input: t.input, records })
    }

    /// The batches of `keys` are queued: their files' offsets move past them.
    pub fn commit(&mut self, keys: &[FileKey]) {
        for k in keys {
            if let Some(t) = self.files.get_mut(k)
                && let Some(p) = t.pending.take()
            {
                t.offset = p.to;
                t.pending_records = None;
                self.dirty = true;
            }
        }
    }

    /// Whether the checkpoint on disk is behind.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Writes the checkpoint (temp file, fsync, rename, fsync of the directory).
    pub fn save_checkpoint(&mut self) -> std::io::Result<()> {
        let files = self
            .files
            .iter()
            .map(|(key, t)| Saved {
                key: *key,
                path: t.path.clone(),
                input: t.input,
                fingerprint: t.fingerprint,
                offset: t.offset,
                pending: t.pending.clone(),
                skip: t.skip,
            })
            .collect();
        let bytes = serde_json::to_vec(&CheckpointFile { version: CHECKPOINT_VERSION, files }).map_err(std::io::Error::other)?;
        let tmp = self.checkpoint.with_extension("json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
        drop(f);
        std::fs::rename(&tmp, &self.checkpoint)?;
        if let Some(dir) = self.checkpoint.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.dirty = false;
        Ok(())
    }

    /// The export request of some batches: one resource per input.
    pub fn request(&self, batches: &[Batch]) -> ExportLogsServiceRequest {
        let mut per_input: Vec<(usize, Vec<LogRecord>)> = Vec::new();
        for b in batches {
            match per_input.iter_mut().find(|(i, _)| *i == b.input) {
                Some((_, v)) => v.extend(b.records.iter().cloned()),
                None => per_input.push((b.input, b.records.as_ref().clone())),
            }
        }
        ExportLogsServiceRequest {
            resource_logs: per_input
                .into_iter()
                .map(|(i, log_records)| ResourceLogs {
                    resource: Some(self.inputs[i].resource.clone()),
                    scope_logs: vec![ScopeLogs { scope: Some(crate::otlp_build::scope("file_tail")), log_records, ..Default::default() }],
                    ..Default::default()
                })
                .collect(),
        }
    }
}

/// A checkpointed file no pattern matched: the same inode under another name in its directory.
fn find_by_inode(s: &Saved) -> Option<(PathBuf, File, u64)> {
    let dir = s.path.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.ino() == s.key.ino && meta.dev() == s.key.dev && meta.is_file() {
            let file = File::open(entry.path()).ok()?;
            let same = s.fingerprint.len <= meta.len() && fingerprint(&file, s.fingerprint.len).is_ok_and(|f| f == s.fingerprint);
            return same.then(|| (entry.path(), file, meta.len()));
        }
    }
    None
}

fn file_attributes(path: &Path) -> Vec<KeyValue> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    vec![kv("log.file.path", &path.to_string_lossy()), kv("log.file.name", &name)]
}

fn make_records(parser: &LineParser, buf: &[u8], recs: &[Rec], observed: u64, attrs: &[KeyValue]) -> Vec<LogRecord> {
    recs.iter().enumerate().map(|(i, r)| parser.parse(&buf[r.range.clone()]).into_record(observed + i as u64, attrs)).collect()
}

/// One record's bytes in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    range: std::ops::Range<usize>,
    truncated: bool,
}

/// Cuts a buffer into records.
struct Framer<'a> {
    start: Option<&'a regex::bytes::Regex>,
    max: usize,
    /// Stop after this many records (the rest stays in the buffer for the next poll).
    max_records: usize,
    skip: Skip,
}

fn trim_cr(end: usize, buf: &[u8], start: usize) -> usize {
    if end > start && buf[end - 1] == b'\r' { end - 1 } else { end }
}

impl Framer<'_> {
    fn rec(&self, s: usize, e: usize) -> Rec {
        if e - s > self.max { Rec { range: s..s + self.max, truncated: true } } else { Rec { range: s..e, truncated: false } }
    }

    /// The complete records at the start of `buf` and how many bytes they (and skipped bytes)
    /// take. With `flush`, an unfinished record and a partial last line are complete too.
    fn frame(&mut self, buf: &[u8], flush: bool) -> (Vec<Rec>, usize) {
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut pos = 0;
        // The multiline record being gathered: [start, end of its last line).
        let mut cur: Option<(usize, usize)> = None;
        while let Some(i) = buf[pos..].iter().position(|&b| b == b'\n') {
            if out.len() >= self.max_records {
                // `consumed` is the end of the last record (or the start of the one being
                // gathered): the rest is framed again next time, from the same state.
                return (out, consumed);
            }
            let (line_end, next) = (pos + i, pos + i + 1);
            if self.skip.line {
                self.skip.line = false;
                pos = next;
                consumed = next;
                continue;
            }
            let end = trim_cr(line_end, buf, pos);
            match self.start {
                None => {
                    out.push(self.rec(pos, end));
                    consumed = next;
                }
                Some(re) => {
                    let is_start = re.is_match(&buf[pos..end]);
                    if is_start || (cur.is_none() && !self.skip.continuation) {
                        if let Some((s, e)) = cur.take() {
                            out.push(self.rec(s, e));
                        }
                        self.skip.continuation = false;
                        consumed = pos;
                        cur = Some((pos, end));
                    } else if self.skip.continuation {
                        consumed = next;
                    } else if let Some((s, e)) = cur.as_mut() {
                        *e = end;
                        if *e - *s > self.max {
                            out.push(self.rec(*s, *e));
                            cur = None;
                            self.skip.continuation = true;
                            consumed = next;
                        }
                    }
                }
            }
            pos = next;
        }
        let partial = buf.len() - pos;
        if let Some((s, e)) = cur {
            if flush || (partial > self.max && !self.skip.line) {
                // Complete, or followed by an over-long partial line that is cut below: the
                // record before it must not be lost with it.
                out.push(self.rec(s, e));
                consumed = pos;
            } else if e - s > self.max {
                out.push(self.rec(s, e));
                self.skip.continuation = true;
                consumed = pos;
            }
        }
        if self.skip.line {
            consumed = buf.len();
        } else if partial > self.max {
            out.push(self.rec(pos, buf.len()));
            self.skip.line = true;
            consumed = buf.len();
        } else if flush && partial > 0 && consumed == pos {
            out.push(self.rec(pos, trim_cr(buf.len(), buf, pos)));
            consumed = buf.len();
        }
        (out, consumed)
    }
}

/// Raises the soft limit of open files to the hard limit: a tailer holds one handle per file.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        let _ = setrlimit(Resource::Nofile, rustix::process::Rlimit { current: l.maximum, maximum: l.maximum });
    }
}

/// Why queueing a batch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportError {
    /// It may work later (the queue is full or busy): the batch is sent again, unchanged.
    Retry(String),
    /// Refused for good (every record invalid): sending it again would refuse it again and
    /// hold the file back forever, so it is dropped, counted and logged.
    Refused(String),
}

/// Runs the tailer until `stop`: poll, checkpoint, queue through `export`, commit. A batch
/// that could not be queued is sent again, unchanged, at the next poll; one refused for good
/// is dropped (counted in `skein_agent_file_tail_refused_records_total`).
pub async fn run<F, Fut>(tailer: Tailer, export: F, mut stop: tokio::sync::watch::Receiver<bool>)
where
    F: Fn(ExportLogsServiceRequest) -> Fut,
    Fut: std::future::Future<Output = Result<(), ExportError>>,
{
    raise_open_file_limit();
    let every = tailer.cfg.poll_interval.0;
    let stats = std::sync::Arc::clone(&tailer.stats);
    let tailer = std::sync::Arc::new(std::sync::Mutex::new(tailer));
    loop {
        let t2 = std::sync::Arc::clone(&tailer);
        let step = tokio::task::spawn_blocking(move || {
            let mut t = t2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let batches = t.poll();
            let saved = if !batches.is_empty() || t.dirty() { Some(t.save_checkpoint()) } else { None };
            let req = (!batches.is_empty()).then(|| t.request(&batches));
            let records: usize = batches.iter().map(|b| b.records.len()).sum();
            (batches.iter().map(|b| b.key).collect::<Vec<_>>(), saved, req, records)
        })
        .await;
        match step {
            Ok((keys, saved, req, records)) => {
                let saved_ok = match saved {
                    Some(Err(e)) => {
                        stats.checkpoint_errors.inc();
                        tracing::warn!(error = %e, "writing the file_tail checkpoint failed; not sending until it works");
                        false
                    }
                    _ => true,
                };
                if let (true, Some(req)) = (saved_ok, req) {
                    match export(req).await {
                        Ok(()) => tailer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).commit(&keys),
                        Err(ExportError::Retry(e)) => {
                            tracing::warn!(error = %e, "queueing tailed log records failed; they are sent again at the next poll");
                        }
                        Err(ExportError::Refused(e)) => {
                            stats.refused_records.add(records as u64);
                            tracing::error!(error = %e, records, "tailed log records refused; dropping them");
                            tailer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).commit(&keys);
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "the file_tail poll failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|v| *v) => break,
        }
    }
    // Leave a checkpoint that says what was committed.
    let t = std::sync::Arc::clone(&tailer);
    let _ = tokio::task::spawn_blocking(move || {
        let mut t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if t.dirty() {
            let _ = t.save_checkpoint();
        }
    })
    .await;
}

#[cfg(test)]
mod tests;

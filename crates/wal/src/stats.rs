//! The WAL's own metrics and their Prometheus rendering.

use skein_core::metrics::{Counter, Gauge, Histogram, header, sample};

/// Counters and gauges of one [`crate::Wal`], updated lock-free by the writer.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Bytes appended to segments, frame headers included.
    pub bytes_written: Counter,
    /// Records appended and acknowledged.
    pub records: Counter,
    /// Fsyncs of appended data (one per group-committed batch under `SyncPolicy::Always`).
    pub fsyncs: Counter,
    /// Duration of those fsyncs.
    pub fsync_duration: Histogram,
    /// Segment files on disk, the active one included.
    pub segments: Gauge,
    /// Bytes of all segment files on disk.
    pub size_bytes: Gauge,
    /// Corrupt or torn segment tails found (and cut off) when the WAL was opened.
    pub replay_corruptions: Counter,
}

impl WalStats {
    /// Appends the Prometheus text exposition of every metric to `out`.
    pub fn render(&self, out: &mut String) {
        let counters = [
            ("skein_wal_bytes_written_total", "Bytes appended to WAL segments, frame headers included.", &self.bytes_written),
            ("skein_wal_records_total", "Records appended to the WAL and acknowledged.", &self.records),
            ("skein_wal_fsyncs_total", "Fsyncs of appended WAL data (one per group commit).", &self.fsyncs),
        ];
        for (name, help, counter) in counters {
            header(out, name, "counter", help);
            sample(out, name, "", counter.get());
        }
        let name = "skein_wal_fsync_duration_seconds";
        header(out, name, "histogram", "Duration of WAL data fsyncs.");
        self.fsync_duration.render(out, name, "");
        let gauges = [
            ("skein_wal_segments", "WAL segment files on disk.", &self.segments),
            ("skein_wal_size_bytes", "Bytes of WAL segment files on disk.", &self.size_bytes),
        ];
        for (name, help, gauge) in gauges {
            header(out, name, "gauge", help);
            sample(out, name, "", gauge.get());
        }
        let name = "skein_wal_replay_corruptions_total";
        header(out, name, "counter", "Corrupt or torn WAL segment tails cut off during replay.");
        sample(out, name, "", self.replay_corruptions.get());
    }
}

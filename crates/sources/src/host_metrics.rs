//! The `host_metrics` source: the node's CPU, memory, swap, load, network, disk and process
//! figures read from `/proc`, as OTLP metrics named after the OpenTelemetry semantic
//! conventions (`system.cpu.time`, `system.cpu.utilization`, `system.memory.usage`, …).
//!
//! A [`Sampler`] reads a few small files per scrape (no process walk), so a scrape costs a
//! fraction of a millisecond. Counters (`system.cpu.time`, `system.network.io`,
//! `system.disk.io`, …) are cumulative sums since boot; `system.cpu.utilization` is the share of
//! each CPU mode since the previous scrape (absent on the first). Parsing is separate from
//! reading, so the parsers are tested on fixed text and the sampler on the real `/proc`.
//!
//! File system usage (`system.filesystem.usage`, `.utilization`) comes from `statvfs` (through
//! `rustix`) on every mount of `/proc/self/mounts` that is a real file system (not `proc`,
//! `sysfs`, `cgroup`, `tmpfs`, …), once per device.

use crate::otlp_build::gauge;
use skein_otlp::ExportMetricsServiceRequest;
use skein_otlp::proto::common::v1::KeyValue;
use skein_otlp::proto::metrics::v1::{Metric, NumberDataPoint, Sum, metric::Data, number_data_point};
use skein_otlp::synth::signals::kv;
use std::path::PathBuf;

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on every Linux ABI Skein runs on).
const USER_HZ: f64 = 100.0;

/// CPU modes of the `cpu` line of `/proc/stat`, in order.
const CPU_MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "interrupt", "softirq", "steal"];

/// CPU time per mode, in ticks, summed over all CPUs.
pub type CpuTicks = [u64; 8];

/// The aggregate `cpu` line of `/proc/stat`.
pub fn parse_cpu(stat: &str) -> Option<CpuTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let mut out = [0u64; 8];
    for (slot, v) in out.iter_mut().zip(line.split_whitespace().skip(1)) {
        *slot = v.parse().ok()?;
    }
    Some(out)
}

/// `/proc/meminfo` as (key, bytes).
pub fn parse_meminfo(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            let mut it = rest.split_whitespace();
            let n: u64 = it.next()?.parse().ok()?;
            let mult = if it.next() == Some("kB") { 1024 } else { 1 };
            Some((k.trim().to_string(), n * mult))
        })
        .collect()
}

/// `/proc/loadavg`: the three load averages and the number of processes.
pub fn parse_loadavg(text: &str) -> Option<([f64; 3], u64)> {
    let mut it = text.split_whitespace();
    let l = [it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?];
    let procs = it.next()?.split_once('/')?.1.parse().ok()?;
    Some((l, procs))
}

/// One interface of `/proc/net/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDev {
    /// Interface name.
    pub name: String,
    /// Bytes, packets, errors and drops received.
    pub rx: [u64; 4],
    /// Bytes, packets, errors and drops sent.
    pub tx: [u64; 4],
}

/// `/proc/net/dev`, every interface but `lo`.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let name = name.trim().to_string();
            (name != "lo" && v.len() >= 12).then(|| NetDev { name, rx: [v[0], v[1], v[2], v[3]], tx: [v[8], v[9], v[10], v[11]] })
        })
        .collect()
}

/// `/proc/diskstats` as (device, bytes read, bytes written) for whole disks (not partitions,
/// loop or RAM devices).
pub fn parse_diskstats(text: &str) -> Vec<(String, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.get(2)?;
            let skip = name.starts_with("loop") || name.starts_with("ram") || name.starts_with("dm-") || is_partition(name);
            if skip {
                return None;
            }
            let read: u64 = f.get(5)?.parse().ok()?;
            let written: u64 = f.get(9)?.parse().ok()?;
            Some((name.to_string(), read * 512, written * 512))
        })
        .collect()
}

/// File system types that hold no user data (or only memory): left out of file system usage.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "devtmpfs",
    "tmpfs",
    "mqueue",
    "tracefs",
    "debugfs",
    "securityfs",
    "pstore",
    "bpf",
    "autofs",
    "fusectl",
    "configfs",
    "binfmt_misc",
    "hugetlbfs",
    "nsfs",
    "rpc_pipefs",
    "ramfs",
    "efivarfs",
    "selinuxfs",
    "squashfs",
    "nfsd",
    "fuse.lxcfs",
    "overlay_internal",
];

/// One mount of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The device (`/dev/vda1`, `overlay`).
    pub device: String,
    /// Where it is mounted.
    pub mountpoint: String,
    /// File system type (`ext4`, `xfs`, `overlay`).
    pub fs_type: String,
}

/// The real file systems of a `/proc/<pid>/mounts` text, first mount of each device only.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let [device, mountpoint, fs_type, ..] = f[..] else { continue };
        if PSEUDO_FS.contains(&fs_type) || out.iter().any(|m| m.device == device && device != "overlay") {
            continue;
        }
        out.push(Mount { device: unescape(device), mountpoint: unescape(mountpoint), fs_type: fs_type.to_string() });
    }
    out
}

/// `/proc/mounts` writes a space as `\040`, a tab as `\011`, a backslash as `\134`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `sda1`, `vda2`, `nvme0n1p1`: a partition of a disk listed too.
fn is_partition(name: &str) -> bool {
    if name.starts_with("nvme") || name.starts_with("mmcblk") {
        return name
            .rsplit_once('p')
            .is_some_and(|(head, tail)| head.contains('n') && !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()));
    }
    name.bytes().last().is_some_and(|b| b.is_ascii_digit()) && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
}

/// Reads `/proc` (under `root`, `/` on a real node) and keeps the last CPU sample.
pub struct Sampler {
    root: PathBuf,
    prev_cpu: Option<CpuTicks>,
    started: u64,
}

fn point(now: u64, start: u64, v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        time_unix_nano: now,
        start_time_unix_nano: start,
        value: Some(number_data_point::Value::AsDouble(v)),
        attributes: attrs,
        ..Default::default()
    }
}

fn counter(name: &str, unit: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(Data::Sum(Sum { data_points: points, aggregation_temporality: 2, is_monotonic: true })),
        ..Default::default()
    }
}

impl Sampler {
    /// A sampler of the `/proc` under `root`; `boot_unix_nano` starts the cumulative sums.
    pub fn new(root: impl Into<PathBuf>, boot_unix_nano: u64) -> Self {
        Self { root: root.into(), prev_cpu: None, started: boot_unix_nano }
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }

    /// One scrape at `now` (Unix ns). A file that cannot be read leaves its metrics out.
    pub fn sample(&mut self, now: u64) -> ExportMetricsServiceRequest {
        let start = self.started;
        let mut metrics = Vec::new();
        if let Some(cpu) = self.read("proc/stat").as_deref().and_then(parse_cpu) {
            let mode = |i: usize| vec![kv("cpu.mode", CPU_MODES[i])];
            metrics.push(counter("system.cpu.time", "s", (0..8).map(|i| point(now, start, cpu[i] as f64 / USER_HZ, mode(i))).collect()));
            if let Some(prev) = self.prev_cpu {
                let d: Vec<f64> = (0..8).map(|i| cpu[i].saturating_sub(prev[i]) as f64).collect();
                let total: f64 = d.iter().sum();
                if total > 0.0 {
                    metrics.push(gauge("system.cpu.utilization", "1", (0..8).map(|i| point(now, 0, d[i] / total, mode(i))).collect()));
                }
            }
            self.prev_cpu = Some(cpu);
        }
        if let Some(mem) = self.read("proc/meminfo").map(|t| parse_meminfo(&t)) {
            let get = |k: &str| mem.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
            if let (Some(total), Some(free)) = (get("MemTotal"), get("MemFree")) {
                let (buffers, cached) = (get("Buffers").unwrap_or(0), get("Cached").unwrap_or(0) + get("SReclaimable").unwrap_or(0));
                let used = total.saturating_sub(free + buffers + cached);
                let states = [("used", used), ("free", free), ("buffers", buffers), ("cached", cached)];
                let st = |s: &str| vec![kv("system.memory.state", s)];
                metrics.push(gauge("system.memory.usage", "By", states.iter().map(|(s, v)| point(now, 0, *v as f64, st(s))).collect()));
                metrics.push(gauge("system.memory.limit", "By", vec![point(now, 0, total as f64, vec![])]));
                if total > 0 {
                    let u = states.iter().map(|(s, v)| point(now, 0, *v as f64 / total as f64, st(s))).collect();
                    metrics.push(gauge("system.memory.utilization", "1", u));
                }
            }
            if let (Some(total), Some(free)) = (get("SwapTotal"), get("SwapFree")) {
                let st = |s: &str| vec![kv("system.paging.state", s)];
                let pts = vec![point(now, 0, total.saturating_sub(free) as f64, st("used")), point(now, 0, free as f64, st("free"))];
                metrics.push(gauge("system.paging.usage", "By", pts));
            }
        }
        if let Some((load, procs)) = self.read("proc/loadavg").as_deref().and_then(parse_loadavg) {
            for (name, v) in ["system.cpu.load_average.1m", "system.cpu.load_average.5m", "system.cpu.load_average.15m"].iter().zip(load) {
                metrics.push(gauge(name, "{thread}", vec![point(now, 0, v, vec![])]));
            }
            metrics.push(gauge("system.process.count", "{process}", vec![point(now, 0, procs as f64, vec![])]));
        }
        if let Some(up) = self.read("proc/uptime").and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok()) {
            metrics.push(gauge("system.uptime", "s", vec![point(now, 0, up, vec![])]));
        }
        if let Some(devs) = self.read("proc/net/dev").map(|t| parse_net_dev(&t)) {
            let (mut io, mut errors, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
            for d in &devs {
                for (dir, v) in [("receive", d.rx), ("transmit", d.tx)] {
                    let a = || vec![kv("network.interface.name", &d.name), kv("network.io.direction", dir)];
                    io.push(point(now, start, v[0] as f64, a()));
                    errors.push(point(now, start, v[2] as f64, a()));
                    dropped.push(point(now, start, v[3] as f64, a()));
                }
            }
            if !io.is_empty() {
                metrics.push(counter("system.network.io", "By", io));
                metrics.push(counter("system.network.errors", "{error}", errors));
                metrics.push(counter("system.network.dropped", "{packet}", dropped));
            }
        }
        if let Some(disks) = self.read("proc/diskstats").map(|t| parse_diskstats(&t)) {
            let pts: Vec<NumberDataPoint> = disks
                .iter()
                .flat_map(|(dev, r, w)| {
                    [("read", *r), ("write", *w)]
                        .map(|(dir, v)| point(now, start, v as f64, vec![kv("system.device", dev), kv("disk.io.direction", dir)]))
                })
                .collect();
            if !pts.is_empty() {
                metrics.push(counter("system.disk.io", "By", pts));
            }
        }
        if let Some(mounts) = self.read("proc/self/mounts").map(|t| parse_mounts(&t)) {
            let (mut usage, mut util) = (Vec::new(), Vec::new());
            for m in &mounts {
                let Ok(v) = rustix::fs::statvfs(self.root.join(m.mountpoint.trim_start_matches('/')).as_path()) else { continue };
                if v.f_blocks == 0 {
                    continue;
                }
                let (used, free) = (v.f_blocks.saturating_sub(v.f_bfree) * v.f_frsize, v.f_bavail * v.f_frsize);
                let reserved = v.f_bfree.saturating_sub(v.f_bavail) * v.f_frsize;
                let a = |state: Option<&str>| {
                    let mut a = vec![
                        kv("system.device", &m.device),
                        kv("system.filesystem.mountpoint", &m.mountpoint),
                        kv("system.filesystem.type", &m.fs_type),
                    ];
                    if let Some(s) = state {
                        a.push(kv("system.filesystem.state", s));
                    }
                    a
                };
                for (state, v) in [("used", used), ("free", free), ("reserved", reserved)] {
                    usage.push(point(now, 0, v as f64, a(Some(state))));
                }
                if used + free > 0 {
                    util.push(point(now, 0, used as f64 / (used + free) as f64, a(None)));
                }
            }
            if !usage.is_empty() {
                metrics.push(gauge("system.filesystem.usage", "By", usage));
                metrics.push(gauge("system.filesystem.utilization", "1", util));
            }
        }
        crate::otlp_build::metrics_request(Default::default(), "host_metrics", metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_read_proc_text() {
        let stat = "cpu  100 2 30 400 5 6 7 8 0 0\ncpu0 50 1 15 200 2 3 3 4 0 0\nintr 1 2\n";
        assert_eq!(parse_cpu(stat), Some([100, 2, 30, 400, 5, 6, 7, 8]));
        let mem = parse_meminfo("MemTotal:       16000 kB\nMemFree:         4000 kB\nHugePages_Total:       0\n");
        assert_eq!(mem[0], ("MemTotal".to_string(), 16000 * 1024));
        assert_eq!(mem[2], ("HugePages_Total".to_string(), 0));
        assert_eq!(parse_loadavg("0.52 0.40 0.33 2/345 12345\n"), Some(([0.52, 0.40, 0.33], 345)));
        let net = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n";
        assert_eq!(parse_net_dev(net), vec![NetDev { name: "eth0".into(), rx: [1000, 10, 1, 2], tx: [2000, 20, 3, 4] }]);
        let disks = "   8       0 sda 100 0 10 0 50 0 20 0 0 0 0\n   8       1 sda1 90 0 9 0 40 0 18 0 0 0 0\n   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0\n 259 0 nvme0n1 1 0 4 0 1 0 8 0 0 0 0\n 259 1 nvme0n1p1 1 0 4 0 1 0 8 0 0 0 0\n";
        let mounts = "proc /proc proc rw 0 0\n/dev/vda1 / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n/dev/vda1 /var/lib/x ext4 rw 0 0\n/dev/vdb /mnt/my\\040disk xfs rw 0 0\n";
        assert_eq!(
            parse_mounts(mounts),
            vec![
                Mount { device: "/dev/vda1".into(), mountpoint: "/".into(), fs_type: "ext4".into() },
                Mount { device: "/dev/vdb".into(), mountpoint: "/mnt/my disk".into(), fs_type: "xfs".into() },
            ]
        );
        assert_eq!(parse_diskstats(disks), vec![("sda".to_string(), 10 * 512, 20 * 512), ("nvme0n1".to_string(), 4 * 512, 8 * 512)]);
    }

    #[test]
    fn a_scrape_of_this_machine_matches_proc() {
        let mut s = Sampler::new("/", 1);
        let first = s.sample(10);
        let names = |r: &ExportMetricsServiceRequest| -> Vec<String> {
            r.resource_metrics[0].scope_metrics[0].metrics.iter().map(|m| m.name.clone()).collect()
        };
        let n1 = names(&first);
        for want in [
            "system.cpu.time",
            "system.memory.usage",
            "system.filesystem.usage",
            "system.cpu.load_average.1m",
            "system.process.count",
            "system.uptime",
        ] {
            assert!(n1.iter().any(|n| n == want), "{want} missing from {n1:?}");
        }
        assert!(!n1.iter().any(|n| n == "system.cpu.utilization"), "no utilisation before a second sample");
        // the memory limit is MemTotal
        let total = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap())[0].1 as f64;
        let limit = first.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == "system.memory.limit").unwrap();
        let Some(Data::Gauge(g)) = &limit.data else { panic!("limit is a gauge") };
        assert_eq!(g.data_points[0].value, Some(number_data_point::Value::AsDouble(total)));
        // the root file system's used bytes agree with df's (within 1 % and 64 MiB: files change)
        let df = std::process::Command::new("df").args(["-B1", "--output=used", "/"]).output().unwrap();
        let df_used: f64 = String::from_utf8_lossy(&df.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
        let fs = first.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == "system.filesystem.usage").unwrap();
        let Some(Data::Gauge(g)) = &fs.data else { panic!("usage is a gauge") };
        let attr = |p: &NumberDataPoint, k: &str| {
            p.attributes.iter().find(|a| a.key == k).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                skein_otlp::proto::common::v1::any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
        };
        let used = g
            .data_points
            .iter()
            .find(|p| {
                attr(p, "system.filesystem.mountpoint").as_deref() == Some("/")
                    && attr(p, "system.filesystem.state").as_deref() == Some("used")
            })
            .and_then(|p| match p.value {
                Some(number_data_point::Value::AsDouble(v)) => Some(v),
                _ => None,
            })
            .expect("a used point for /");
        assert!((used - df_used).abs() < (df_used * 0.01).max(64.0 * 1024.0 * 1024.0), "statvfs {used} vs df {df_used}");
        // spend a little CPU so the second sample has a delta, then utilisation sums to 1
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box((0..1000).sum::<u64>());
        }
        let second = s.sample(20);
        let util = second.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == "system.cpu.utilization");
        if let Some(Metric { data: Some(Data::Gauge(g)), .. }) = util {
            let sum: f64 = g
                .data_points
                .iter()
                .filter_map(|p| match p.value {
                    Some(number_data_point::Value::AsDouble(v)) => Some(v),
                    _ => None,
                })
                .sum();
            assert!((sum - 1.0).abs() < 1e-9, "{sum}");
        }
        // validation accepts what the sampler makes
        let mut req = second;
        let v = skein_otlp::validate_metrics(&mut req, &skein_otlp::Limits::default());
        assert_eq!(v.rejected, 0, "{}", v.message());
    }
}

//! Which collector gets what: a consistent-hash ring over the configured endpoints, and the
//! split of one OTLP request into one request per endpoint. Spans and log records go by trace
//! id (so every span of a trace, from every agent, lands on the same collector); metrics, and
//! log records without a trace id, go by the node's identity.

use prost::Message;
use skein_otlp::{ExportLogsServiceRequest, ExportMetricsServiceRequest, ExportTraceServiceRequest};

/// Points per endpoint on the ring: enough that keys spread within a few percent.
const VNODES: u64 = 128;

/// 64-bit FNV-1a followed by a finaliser, so short keys spread over the whole ring. Fixed
/// here (not `std`'s hasher, whose algorithm may change) so every agent routes alike.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A consistent-hash ring: adding or removing one endpoint moves only the keys of that
/// endpoint. Endpoints are identified by their address, so every agent with the same list
/// (in any order) builds the same ring.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, usize)>,
    len: usize,
}

impl Ring {
    /// A ring over `endpoints` (indices into that slice are what [`Ring::pick`] returns).
    pub fn new(endpoints: &[String]) -> Self {
        let mut points = Vec::with_capacity(endpoints.len() * VNODES as usize);
        for (i, e) in endpoints.iter().enumerate() {
            for v in 0..VNODES {
                points.push((hash(format!("{e}#{v}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Self { points, len: endpoints.len() }
    }

    /// Endpoints on the ring.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the ring has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The endpoint owning `key`.
    pub fn pick(&self, key: &[u8]) -> usize {
        if self.len <= 1 {
            return 0;
        }
        let h = hash(key);
        let i = self.points.partition_point(|&(p, _)| p < h);
        self.points.get(i).or_else(|| self.points.first()).map_or(0, |&(_, e)| e)
    }

    /// Splits a trace export by trace id: one request per endpoint that gets spans, each
    /// keeping the resource and scope of its spans. `(endpoint, protobuf bytes)`.
    pub fn split_traces(&self, req: ExportTraceServiceRequest) -> Vec<(usize, Vec<u8>)> {
        if self.len <= 1 {
            return vec![(0, req.encode_to_vec())];
        }
        let mut out: Vec<ExportTraceServiceRequest> = vec![ExportTraceServiceRequest::default(); self.len];
        for rs in req.resource_spans {
            let mut parts: Vec<Option<_>> = vec![None; self.len];
            for ss in rs.scope_spans {
                let mut by: Vec<Vec<_>> = vec![Vec::new(); self.len];
                for span in ss.spans {
                    by[self.pick(&span.trace_id)].push(span);
                }
                for (e, spans) in by.into_iter().enumerate() {
                    if spans.is_empty() {
                        continue;
                    }
                    let part = parts[e].get_or_insert_with(|| skein_otlp::proto::trace::v1::ResourceSpans {
                        resource: rs.resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: rs.schema_url.clone(),
                    });
                    part.scope_spans.push(skein_otlp::proto::trace::v1::ScopeSpans {
                        scope: ss.scope.clone(),
                        spans,
                        schema_url: ss.schema_url.clone(),
                    });
                }
            }
            for (e, p) in parts.into_iter().enumerate() {
                if let Some(p) = p {
                    out[e].resource_spans.push(p);
                }
            }
        }
        out.into_iter().enumerate().filter(|(_, r)| !r.resource_spans.is_empty()).map(|(e, r)| (e, r.encode_to_vec())).collect()
    }

    /// Splits a log export: records with a trace id by it, the others by `node`.
    pub fn split_logs(&self, req: ExportLogsServiceRequest, node: &str) -> Vec<(usize, Vec<u8>)> {
        if self.len <= 1 {
            return vec![(0, req.encode_to_vec())];
        }
        let by_node = self.pick(node.as_bytes());
        let mut out: Vec<ExportLogsServiceRequest> = vec![ExportLogsServiceRequest::default(); self.len];
        for rl in req.resource_logs {
            let mut parts: Vec<Option<_>> = vec![None; self.len];
            for sl in rl.scope_logs {
                let mut by: Vec<Vec<_>> = vec![Vec::new(); self.len];
                for rec in sl.log_records {
                    let e = if rec.trace_id.iter().any(|&b| b != 0) { self.pick(&rec.trace_id) } else { by_node };
                    by[e].push(rec);
                }
                for (e, log_records) in by.into_iter().enumerate() {
                    if log_records.is_empty() {
                        continue;
                    }
                    let part = parts[e].get_or_insert_with(|| skein_otlp::proto::logs::v1::ResourceLogs {
                        resource: rl.resource.clone(),
                        scope_logs: Vec::new(),
                        schema_url: rl.schema_url.clone(),
                    });
                    part.scope_logs.push(skein_otlp::proto::logs::v1::ScopeLogs {
                        scope: sl.scope.clone(),
                        log_records,
                        schema_url: sl.schema_url.clone(),
                    });
                }
            }
            for (e, p) in parts.into_iter().enumerate() {
                if let Some(p) = p {
                    out[e].resource_logs.push(p);
                }
            }
        }
        out.into_iter().enumerate().filter(|(_, r)| !r.resource_logs.is_empty()).map(|(e, r)| (e, r.encode_to_vec())).collect()
    }

    /// Metrics all go to the endpoint of `node`, so each node's series live on one collector.
    pub fn split_metrics(&self, req: &ExportMetricsServiceRequest, node: &str) -> Vec<(usize, Vec<u8>)> {
        vec![(self.pick(node.as_bytes()), req.encode_to_vec())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn endpoints(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://collector-{i}:4317")).collect()
    }

    #[test]
    fn keys_spread_and_move_little_when_an_endpoint_joins() {
        let three = Ring::new(&endpoints(3));
        let four = Ring::new(&endpoints(4));
        let mut counts = [0usize; 3];
        let mut moved = 0;
        let n = 30_000u32;
        for k in 0..n {
            let key = k.to_be_bytes();
            let a = three.pick(&key);
            counts[a] += 1;
            if four.pick(&key) != a {
                moved += 1;
            }
        }
        // each of three gets a third, within 20 %
        assert!(counts.iter().all(|&c| c > 8_000 && c < 12_000), "{counts:?}");
        // a fourth endpoint takes about a quarter of the keys, from the others; no more moves
        assert!(moved > 5_000 && moved < 10_000, "{moved}");
        // the order of the list does not matter
        let mut rev = endpoints(3);
        rev.reverse();
        let rev_ring = Ring::new(&rev);
        for k in 0..1000u32 {
            assert_eq!(endpoints(3)[three.pick(&k.to_be_bytes())], rev[rev_ring.pick(&k.to_be_bytes())]);
        }
    }

    #[test]
    fn a_trace_export_is_split_by_trace_id_keeping_resource_and_scope() {
        let ring = Ring::new(&endpoints(3));
        let spans: Vec<Span> = (0..60u8).map(|i| Span { trace_id: vec![i / 3; 16], span_id: vec![i; 8], ..Default::default() }).collect();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Default::default()),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                schema_url: "s".into(),
            }],
        };
        let parts = ring.split_traces(req);
        let mut total = 0;
        for (e, bytes) in &parts {
            let r = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
            assert_eq!(r.resource_spans.len(), 1);
            assert_eq!(r.resource_spans[0].schema_url, "s");
            for s in r.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
                assert_eq!(ring.pick(&s.trace_id), *e);
                total += 1;
            }
        }
        assert_eq!(total, 60);
        assert!(parts.len() > 1, "20 traces over 3 endpoints use more than one");
    }

    #[test]
    fn logs_go_by_trace_id_or_else_by_node_and_metrics_by_node() {
        use skein_otlp::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        let ring = Ring::new(&endpoints(3));
        // 30 records with a trace id, 10 without (all zero or empty)
        let log_records: Vec<LogRecord> = (0..40u8)
            .map(|i| LogRecord {
                trace_id: match i {
                    0..30 => vec![i + 1; 16],
                    30..35 => vec![0; 16],
                    _ => Vec::new(),
                },
                time_unix_nano: u64::from(i),
                ..Default::default()
            })
            .collect();
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Default::default()),
                scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
                schema_url: "s".into(),
            }],
        };
        let by_node = ring.pick(b"web-1");
        let parts = ring.split_logs(req, "web-1");
        assert!(parts.len() > 1);
        let mut seen = 0;
        for (e, bytes) in &parts {
            let r = ExportLogsServiceRequest::decode(&bytes[..]).unwrap();
            assert_eq!(r.resource_logs[0].schema_url, "s");
            for rec in r.resource_logs.iter().flat_map(|r| &r.scope_logs).flat_map(|s| &s.log_records) {
                let want = if rec.time_unix_nano < 30 { ring.pick(&rec.trace_id) } else { by_node };
                assert_eq!(*e, want, "record {}", rec.time_unix_nano);
                seen += 1;
            }
        }
        assert_eq!(seen, 40);
        let parts = ring.split_metrics(&ExportMetricsServiceRequest::default(), "web-1");
        assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), vec![by_node]);
    }
}

"""One "node" of a cross-process trace, instrumented with the OpenTelemetry Python SDK.

Used by the end-to-end test `python_sdk` (tests/tests/e2e/python_sdk.rs). The test runs the
first node; each node then runs the next one as a separate Python process while one of its
own spans is open, passing the W3C `traceparent` of that span on the command line, so the
processes form one trace:

    node 1 (root SERVER span) -> CLIENT span -> node 2 (SERVER span) -> CLIENT span -> node 3 ...

Each node has its own `service.name` and `host.name`, exports with the exporter named in its
spec (OTLP/gRPC, OTLP/HTTP protobuf, optionally gzip), and gives every span an int, a bool, a
double, a string-array and an int-array attribute. With `"signals": true` in its spec a node
also emits two log records through Python's `logging` (inside its spans, so they carry the
trace context, and with a `request_id` attribute) and a counter `app.requests` (one per
process, exported once at the end), over the same protocol. After a successful export each
node prints one JSON line on stdout describing its spans, logs and metrics; it exits
non-zero if any export failed.

    python otel_node.py --chain '[{"service": "web", "host": "node-a", "protocol": "grpc",
                                   "endpoint": "127.0.0.1:4317"}, ...]' [--traceparent TP]
"""

import argparse
import json
import os
import subprocess
import sys

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


class CheckedExporter(SpanExporter):
    """Wraps an exporter and remembers whether every export succeeded."""

    def __init__(self, inner):
        self.inner = inner
        self.exported = 0
        self.failures = 0

    def export(self, spans):
        result = self.inner.export(spans)
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failures += 1
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


def checked(cls):
    """A subclass of exporter class `cls` that counts successful and failed exports."""

    class Checked(cls):
        exported_batches = 0
        failed_batches = 0

        def export(self, batch, *args, **kwargs):
            result = super().export(batch, *args, **kwargs)
            if getattr(result, "name", "") == "SUCCESS":
                type(self).exported_batches += 1
            else:
                type(self).failed_batches += 1
            return result

    return Checked


def signal_exporters(spec):
    """(log exporter, metric exporter) for the node's protocol."""
    protocol = spec["protocol"]
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        kw = {"endpoint": spec["endpoint"], "insecure": True, "timeout": 20}
        return checked(OTLPLogExporter)(**kw), checked(OTLPMetricExporter)(**kw)
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    compression = Compression.Gzip if protocol == "http-gzip" else Compression.NoCompression
    base = "http://%s" % spec["endpoint"]
    return (
        checked(OTLPLogExporter)(endpoint=base + "/v1/logs", timeout=20, compression=compression),
        checked(OTLPMetricExporter)(endpoint=base + "/v1/metrics", timeout=20, compression=compression),
    )


def make_exporter(spec):
    protocol = spec["protocol"]
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=spec["endpoint"], insecure=True, timeout=20)
    if protocol in ("http", "http-gzip"):
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        compression = Compression.Gzip if protocol == "http-gzip" else Compression.NoCompression
        return OTLPSpanExporter(
            endpoint="http://%s/v1/traces" % spec["endpoint"], timeout=20, compression=compression
        )
    raise SystemExit("unknown protocol %r" % protocol)


def hex_id(n, width):
    return format(n, "0%dx" % width)


def set_typed_attributes(span, index):
    span.set_attribute("app.items", 3 + index)
    span.set_attribute("app.cached", index % 2 == 0)
    span.set_attribute("app.ratio", 200.0)
    span.set_attribute("app.tags", ["a", "b"])
    span.set_attribute("app.codes", [1, 2, 3])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chain", required=True, help="JSON list of node specs, this node first")
    parser.add_argument("--traceparent", help="W3C traceparent of the calling span")
    args = parser.parse_args()

    chain = json.loads(args.chain)
    spec, rest = chain[0], chain[1:]

    exporter = CheckedExporter(make_exporter(spec))
    resource = Resource.create({"service.name": spec["service"], "host.name": spec["host"]})
    provider = TracerProvider(resource=resource)
    signals = bool(spec.get("signals"))
    log, counter, logger_provider, meter_provider = None, None, None, None
    if signals:
        import logging

        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        log_exporter, metric_exporter = signal_exporters(spec)
        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        log = logging.getLogger("skein-e2e." + spec["service"])
        log.setLevel(logging.INFO)
        log.propagate = False
        log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))
        # Exported once, by the force_flush at the end (the interval is longer than a run).
        reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=600_000)
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        counter = meter_provider.get_meter("skein-e2e").create_counter("app.requests", unit="1")
    logs = []  # (body, severity, span)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("skein-e2e", "1.0")

    parent_ctx = None
    if args.traceparent:
        parent_ctx = TraceContextTextMapPropagator().extract({"traceparent": args.traceparent})

    made = []  # (span, name)

    def record(span):
        made.append(span)
        set_typed_attributes(span, len(made) - 1)

    server_name = spec.get("operation", "handle " + spec["service"])
    request_id = "req-%s" % os.urandom(4).hex()

    def emit(level, body, span):
        if log is not None:
            log.log(level, body, extra={"request_id": request_id})
            logs.append((body, span))

    with tracer.start_as_current_span(server_name, context=parent_ctx, kind=SpanKind.SERVER) as server:
        record(server)
        emit(20, "%s handling %s" % (spec["service"], server_name), server)
        if counter is not None:
            counter.add(1, {"route": server_name})
        with tracer.start_as_current_span("work " + spec["service"], kind=SpanKind.INTERNAL) as work:
            record(work)
            emit(30, "%s work was slow" % spec["service"], work)
        if rest:
            with tracer.start_as_current_span("call " + rest[0]["service"], kind=SpanKind.CLIENT) as call:
                record(call)
                carrier = {}
                TraceContextTextMapPropagator().inject(carrier)
                env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
                subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--chain", json.dumps(rest),
                     "--traceparent", carrier["traceparent"]],
                    check=True,
                    env=env,
                    timeout=120,
                )

    ok = provider.force_flush(30000)
    provider.shutdown()
    if not ok or exporter.failures or exporter.exported != len(made):
        sys.stderr.write(
            "%s: export failed (flushed=%s, failures=%d, exported=%d of %d)\n"
            % (spec["service"], ok, exporter.failures, exporter.exported, len(made))
        )
        return 3
    if signals:
        logger_provider.force_flush(30000)
        meter_provider.force_flush(30000)
        logger_provider.shutdown()
        meter_provider.shutdown(30000)
        for name, exp in (("logs", log_exporter), ("metrics", metric_exporter)):
            if exp.failed_batches or not exp.exported_batches:
                sys.stderr.write(
                    "%s: %s export failed (%d exported, %d failed batches)\n"
                    % (spec["service"], name, exp.exported_batches, exp.failed_batches)
                )
                return 4

    spans = []
    for s in made:
        sc = s.get_span_context()
        parent = s.parent.span_id if s.parent is not None else None
        spans.append(
            {
                "span_id": hex_id(sc.span_id, 16),
                "parent_span_id": hex_id(parent, 16) if parent else None,
                "name": s.name,
            }
        )
    line = {
        "service": spec["service"],
        "host": spec["host"],
        "protocol": spec["protocol"],
        "trace_id": hex_id(made[0].get_span_context().trace_id, 32),
        "spans": spans,
        "request_id": request_id,
        "logs": [
            {
                "body": body,
                "trace_id": hex_id(span.get_span_context().trace_id, 32),
                "span_id": hex_id(span.get_span_context().span_id, 16),
            }
            for body, span in logs
        ],
        "counters": {"app.requests": 1} if signals else {},
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

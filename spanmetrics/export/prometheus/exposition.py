"""The ``/metrics`` formats: text 0.0.4 (classic buckets) and protobuf (native histograms)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from spanmetrics.export.prometheus.native import spans_and_deltas
from spanmetrics.export.prometheus.proto import metrics_pb2 as pb
from spanmetrics.export.prometheus.remote_write import format_float
from spanmetrics.export.prometheus.series import Labels, Series

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROTOBUF_CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)

Renderer = Callable[[list[Series]], bytes]


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint: the length prefix of a delimited message."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    # Empty values are written out: with honor_labels an explicit instance="" keeps the
    # scraper's own instance label off the series.
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return format_float(float(value))


def _families(series: Iterable[Series]) -> dict[str, list[Series]]:
    families: dict[str, list[Series]] = {}
    for s in series:
        families.setdefault(s.name, []).append(s)
    return families


def render_text(series: Iterable[Series]) -> bytes:
    """Prometheus text format 0.0.4. Histograms as classic buckets (all the format has)."""
    lines: list[str] = []
    for name, members in _families(series).items():
        kind = members[0].kind
        lines.append(f"# TYPE {name} {kind}")
        for s in members:
            if kind != "histogram":
                lines.append(f"{name}{_label_text(s.labels)} {_number(s.value)}")
                continue
            for bound, count in s.classic or ():
                le = "+Inf" if math.isinf(bound) else format_float(bound)
                labels = (*s.labels, ("le", le))
                lines.append(f"{name}_bucket{_label_text(labels)} {count}")
            lines.append(f"{name}_sum{_label_text(s.labels)} {_number(s.sum)}")
            lines.append(f"{name}_count{_label_text(s.labels)} {s.count}")
    return ("\n".join(lines) + "\n").encode()


def render_protobuf(series: Iterable[Series]) -> bytes:
    """Length-delimited ``io.prometheus.client.MetricFamily`` messages: histograms carry
    both native buckets and classic ones, so a scraper with or without native histograms
    reads them."""
    out = bytearray()
    for name, members in _families(series).items():
        family = pb.MetricFamily(name=name)
        kind = members[0].kind
        family.type = {"counter": pb.COUNTER, "gauge": pb.GAUGE, "histogram": pb.HISTOGRAM}[kind]
        for s in members:
            metric = family.metric.add()
            for key, value in s.labels:
                metric.label.add(name=key, value=value)
            if kind == "counter":
                metric.counter.value = s.value
            elif kind == "gauge":
                metric.gauge.value = s.value
            else:
                h = metric.histogram
                h.sample_count = s.count
                h.sample_sum = s.sum
                for bound, count in s.classic or ():
                    if not math.isinf(bound):
                        h.bucket.add(cumulative_count=count, upper_bound=bound)
                if s.native is not None:
                    n = s.native
                    h.schema = n.schema
                    h.zero_threshold = n.zero_threshold
                    h.zero_count = n.zero_count
                    spans, deltas = spans_and_deltas(n.buckets)
                    for offset, length in spans:
                        h.positive_span.add(offset=offset, length=length)
                    h.positive_delta.extend(deltas)
        data = family.SerializeToString()
        out += _varint(len(data)) + data
    return bytes(out)


def negotiate(accept: str | None) -> tuple[str, Renderer]:
    """Content type and renderer for a scraper's ``Accept`` header: protobuf when it asks
    for delimited ``io.prometheus.client.MetricFamily`` (Prometheus does when native
    histograms are enabled), text otherwise."""
    for part in (accept or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        params = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
        if (
            fields[0] == "application/vnd.google.protobuf"
            and params.get("proto") == "io.prometheus.client.MetricFamily"
            and params.get("encoding", "delimited") == "delimited"
        ):
            return PROTOBUF_CONTENT_TYPE, render_protobuf
    return TEXT_CONTENT_TYPE, render_text

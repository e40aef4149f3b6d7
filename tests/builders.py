"""Small builders for OTLP trace requests used across tests.

A request built with ``request(resource(...spans...), ...)`` reads like the trace it holds::

    request(
        resource({"service.name": "checkout"},
                 span("GET /cart", kind=SERVER, duration_ms=12),
                 span("GET /cart", kind=SERVER, duration_ms=40, status=ERROR)),
    )
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 1, 2, 3, 4, 5
UNSET, OK, ERROR = 0, 1, 2
T0 = 1_700_000_000_000_000_000

_ids = itertools.count(1)


def any_value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    return AnyValue(string_value=str(value))


def attrs(mapping: dict[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in mapping.items()]


def span(
    name: str = "op",
    kind: int = SERVER,
    status: int = UNSET,
    duration_ms: float = 1.0,
    start_ns: int = T0,
    attributes: dict[str, object] | None = None,
    trace_state: str = "",
    trace_id: bytes | None = None,
    span_id: bytes | None = None,
    events: list[dict[str, object]] | None = None,
    end_ns: int | None = None,
) -> Span:
    n = next(_ids)
    s = Span(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        trace_id=trace_id if trace_id is not None else n.to_bytes(16, "big"),
        span_id=span_id if span_id is not None else n.to_bytes(8, "big"),
        start_time_unix_nano=start_ns,
        end_time_unix_nano=end_ns if end_ns is not None else start_ns + round(duration_ms * 1e6),
        trace_state=trace_state,
        attributes=attrs(attributes or {}),
    )
    s.status.code = status  # type: ignore[assignment]
    for event in events or []:
        e = s.events.add()
        e.name = str(event.get("name", "event"))
        e.attributes.extend(attrs({k: v for k, v in event.items() if k != "name"}))
    return s


@dataclass
class Scope:
    name: str = ""
    version: str = ""
    spans: list[Span] = field(default_factory=list)


def scope(name: str, *spans: Span, version: str = "") -> Scope:
    return Scope(name, version, list(spans))


def resource(attributes: dict[str, object], *items: Span | Scope) -> ResourceSpans:
    rs = ResourceSpans()
    rs.resource.attributes.extend(attrs(attributes))
    loose = [i for i in items if isinstance(i, Span)]
    if loose:
        rs.scope_spans.add().spans.extend(loose)
    for item in items:
        if isinstance(item, Scope):
            ss = rs.scope_spans.add()
            ss.scope.name = item.name
            ss.scope.version = item.version
            ss.spans.extend(item.spans)
    return rs


def request(*resources: ResourceSpans) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=list(resources))

"""Spans as plain facts, for rules that look at any attribute of a few spans.

The span-metrics engine reads columns (:mod:`spanmetrics.decode.batch`); derived metrics
(``derive``) read whole spans, of the components a topology selects, with the attributes
its rules name. Kubernetes components sample their traces, so these spans are few; this
reader is plain Python on the decoded request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.model.attributes import any_value_to_str

#: Attribute values by key, as strings.
AttributeMap = dict[str, str]


@dataclass(frozen=True, slots=True)
class SpanFacts:
    """What rules may read of one span."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    name: str
    kind: int
    """OTLP span kind number."""
    status: int
    """OTLP status code number."""
    start_ns: int
    end_ns: int
    attributes: AttributeMap
    """The attributes the rules name (all of them when the reader is given no keys)."""
    events: tuple[str, ...] = ()
    """Names of the span's events that the rules name."""

    @property
    def duration_ns(self) -> int:
        """End minus start; 0 for a span that ends before it starts."""
        return max(self.end_ns - self.start_ns, 0)


@dataclass(frozen=True, slots=True)
class ResourceSpans:
    """The spans of one resource in a request."""

    resource: Resource
    resource_attributes: AttributeMap
    spans: list[SpanFacts]


def read_facts(
    request: ExportTraceServiceRequest,
    keys: frozenset[str] | None = None,
    events: frozenset[str] = frozenset(),
    services: frozenset[str] | None = None,
) -> Iterator[ResourceSpans]:
    """The spans of ``request`` per resource, with the attributes in ``keys`` (None: all)
    and the events named in ``events``. With ``services``, resources whose
    ``service.name`` is not one of them are skipped whole."""
    for rs in request.resource_spans:
        resource_attributes = {kv.key: any_value_to_str(kv.value) for kv in rs.resource.attributes}
        if services is not None and resource_attributes.get("service.name") not in services:
            continue
        spans: list[SpanFacts] = []
        for ss in rs.scope_spans:
            for span in ss.spans:
                attributes = {
                    kv.key: any_value_to_str(kv.value)
                    for kv in span.attributes
                    if keys is None or kv.key in keys
                }
                names = tuple(e.name for e in span.events if e.name in events) if events else ()
                spans.append(
                    SpanFacts(
                        span.trace_id,
                        span.span_id,
                        span.parent_span_id,
                        span.name,
                        span.kind,
                        span.status.code,
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        attributes,
                        names,
                    )
                )
        yield ResourceSpans(rs.resource, resource_attributes, spans)


def count_spans(request: ExportTraceServiceRequest) -> int:
    """Spans in a request, whatever their resource."""
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)

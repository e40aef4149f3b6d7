"""The columnar span batch: the one interface between decoding and aggregation.

A batch holds, per span, only what the topology needs: its resource and scope, name, kind,
status code, duration, trace state, and the values of the attribute keys asked for; trace
and span ids and events only when asked for. Per resource it holds the serialized resource
(its identity is derived once per distinct resource, not per span) and the resource's value
of each asked-for key; per scope its name and version.

Two readers build the same batch:

- the compiled scanner (``_scan.c``), straight from ``otlp_proto`` record bytes, skipping
  everything else on the wire without materialising it;
- the pure-Python reader, from a decoded ``ExportTraceServiceRequest`` (upb), used for
  ``otlp_json``, when the extension is not built, and with ``SPANMETRICS_NATIVE=0``.

Attribute values are rendered as the Collector renders them (``AsString``, see
:func:`spanmetrics.model.attributes.any_value_to_str`); when a key is repeated, its first
occurrence wins on both paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from types import ModuleType
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

from spanmetrics.decode.errors import DecodeError
from spanmetrics.decode.traces import Encoding, decode_traces
from spanmetrics.model.attributes import any_value_to_str

#: A dimension value as read: a str, or None when neither the span nor its resource has
#: the key and it has no default.
Values = tuple[str | None, ...]
#: Every attribute of a span or resource, rendered: ``((key, value), ...)``.
Pairs = tuple[tuple[str, str], ...]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """What a topology needs read of each span."""

    keys: tuple[str, ...] = ()
    """Attribute keys whose values are read: span first, then resource, then default."""
    defaults: Values = ()
    """The value of each key when neither the span nor its resource has it."""
    multiplier_key: str | None = None
    """Attribute holding a count multiplier (``span_multiplier_key``), kept raw."""
    ids: bool = False
    """Trace id, span id and end time of every span (exemplars)."""
    events: bool = False
    """Each span's events, as the values of ``event_keys``."""
    event_keys: tuple[str, ...] = ()
    event_defaults: Values = ()
    all_attributes: bool = False
    """Every attribute of every span and resource (glob dimensions)."""


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """How the compiled scanner builds series keys itself, saving a Python pass over the
    spans: ``(resource id, scope id, name, kind, code, *values)``, an excluded intrinsic as
    None (the layout of ``DimensionPlan.keys``)."""

    resolve: Callable[[bytes], int]
    """The resource id of a serialized resource (-1: its spans are dropped)."""
    scope_id: Callable[[str, str], int] | None = None
    """The scope id of a scope's name and version; None: every scope is 0."""
    keep_name: bool = True
    keep_kind: bool = True
    keep_status: bool = True

    @property
    def keep(self) -> int:
        """The intrinsics kept, as the scanner takes them (1 name, 2 kind, 4 status)."""
        return self.keep_name | self.keep_kind << 1 | self.keep_status << 2


@dataclass(slots=True)
class SpanBatch:
    """The spans of one record, column by column (see the module docstring).

    Resource ``i`` holds scopes ``scope_end[i-1]`` (0 for the first) to
    ``resource_scope_end[i]``; scope ``j`` holds spans ``scope_span_end[j-1]`` to
    ``scope_span_end[j]``.
    """

    resources: list[bytes]
    """Serialized Resource of each ResourceSpans."""
    resource_values: list[Values]
    """Per resource: its value of each key (else the key's default)."""
    resource_multipliers: list[bytes | None]
    """Per resource: the serialized AnyValue of the multiplier key, if present."""
    resource_scope_end: list[int]
    scopes: list[tuple[str, str]]
    """Name and version of each scope."""
    scope_span_end: list[int]
    names: list[str] | None
    """Per span (None when ``keys`` hold them)."""
    kinds: list[int] | None
    codes: list[int] | None
    durations: NDArray[np.float64]
    """``end - start`` in ns (negative when a span ends before it starts)."""
    trace_states: list[str]
    values: list[Values] | None = None
    """Per span: its value of each key, else its resource's (None when no keys asked)."""
    multipliers: list[bytes | None] | None = None
    """Per span: the serialized AnyValue of the multiplier key (when a key is set)."""
    span_ids: list[bytes | None] = field(default_factory=list)
    """Per span: its id, when ids are asked for or it may weigh more than one span (a
    trace state or a multiplier); else None."""
    trace_ids: list[bytes] | None = None
    end_times: list[int] | None = None
    events: list[list[Values] | None] | None = None
    """Per span: the ``event_keys`` values of each of its events (None: it has none)."""
    pairs: list[Pairs] | None = None
    """Per span: all its attributes (``all_attributes``)."""
    resource_pairs: list[Pairs] | None = None
    keys: list[tuple[object, ...]] | None = None
    """Per span: its series key, when read with a :class:`KeyLayout` (then ``values`` is
    None)."""
    resource_ids: list[int] | None = None
    """Per resource: its id from :attr:`KeyLayout.resolve`, with ``keys``."""

    def __len__(self) -> int:
        return len(self.durations)


# ---------------------------------------------------------------- pure Python


def _first_values(
    attributes: Sequence[KeyValue], keys: tuple[str, ...], base: Values
) -> Values | None:
    """``base`` overlaid with the values of ``keys`` in ``attributes`` (first occurrence
    wins); None when none of the keys is there."""
    # Each attribute costs a KeyValue wrapper and a new str for its key, so the loop reads
    # the key once and stops once all are found. ``in`` on a short list of names compares
    # lengths first: cheaper than hashing each new key.
    remaining = list(keys)
    values: list[str | None] | None = None
    for kv in attributes:
        key = kv.key
        if key in remaining:
            remaining.remove(key)
            if values is None:
                values = list(base)
            values[keys.index(key)] = any_value_to_str(kv.value)
            if not remaining:
                break
    return None if values is None else tuple(values)


def _pairs(attributes: Sequence[KeyValue]) -> Pairs:
    return tuple((kv.key, any_value_to_str(kv.value)) for kv in attributes)


def _may_hold(scope_spans: ScopeSpans, keys_utf8: tuple[bytes, ...]) -> bool:
    """False when no span of the scope can carry one of the keys: an attribute key is
    serialized verbatim, so a key absent from the serialized scope is absent from all its
    spans (whole scopes, gRPC or database ones, often carry none of the HTTP keys)."""
    raw = scope_spans.SerializeToString()
    return any(key in raw for key in keys_utf8)


def _raw_multiplier(attributes: Sequence[KeyValue], key: str) -> bytes | None:
    for kv in attributes:
        if kv.key == key:
            return kv.value.SerializeToString()
    return None


def batch_from_request(request: ExportTraceServiceRequest, spec: BatchSpec) -> SpanBatch:
    """The batch of a decoded request (the pure-Python reader)."""
    keys = spec.keys
    keys_utf8 = tuple(k.encode("utf-8", "surrogatepass") for k in keys)
    resources: list[bytes] = []
    resource_values: list[Values] = []
    resource_multipliers: list[bytes | None] = []
    resource_pairs: list[Pairs] = []
    resource_scope_end: list[int] = []
    scopes: list[tuple[str, str]] = []
    scope_span_end: list[int] = []
    rows: list[tuple[str, int, int, int, str]] = []
    values: list[Values] | None = [] if keys else None
    multipliers: list[bytes | None] | None = [] if spec.multiplier_key else None
    span_ids: list[bytes | None] = []
    trace_ids: list[bytes] | None = [] if spec.ids else None
    end_times: list[int] | None = [] if spec.ids else None
    events: list[list[Values] | None] | None = [] if spec.events else None
    pairs: list[Pairs] | None = [] if spec.all_attributes else None
    for rs in request.resource_spans:
        resource = rs.resource
        resources.append(resource.SerializeToString())
        found = _first_values(resource.attributes, keys, spec.defaults) if keys else None
        fallback = spec.defaults if found is None else found
        resource_values.append(fallback)
        resource_multiplier = (
            _raw_multiplier(resource.attributes, spec.multiplier_key)
            if spec.multiplier_key
            else None
        )
        resource_multipliers.append(resource_multiplier)
        if spec.all_attributes:
            resource_pairs.append(_pairs(resource.attributes))
        for ss in rs.scope_spans:
            scopes.append((ss.scope.name, ss.scope.version))
            spans = list(ss.spans)
            rows += [
                (
                    s.name, s.kind, s.status.code, s.end_time_unix_nano - s.start_time_unix_nano,
                    s.trace_state,
                )
                for s in spans
            ]  # fmt: skip
            if values is not None:
                if _may_hold(ss, keys_utf8):
                    for s in spans:
                        own = _first_values(s.attributes, keys, fallback)
                        values.append(fallback if own is None else own)
                else:
                    values += repeat(fallback, len(spans))
            span_multipliers: list[bytes | None] = []
            if multipliers is not None:
                key = str(spec.multiplier_key)
                span_multipliers = [_raw_multiplier(s.attributes, key) for s in spans]
                multipliers += span_multipliers
            if spec.ids:
                span_ids += [s.span_id for s in spans]
            else:
                may_weigh = resource_multiplier is not None
                span_ids += [
                    s.span_id
                    if may_weigh
                    or s.trace_state
                    or (span_multipliers and span_multipliers[i] is not None)
                    else None
                    for i, s in enumerate(spans)
                ]
            if trace_ids is not None and end_times is not None:
                trace_ids += [s.trace_id for s in spans]
                end_times += [s.end_time_unix_nano for s in spans]
            if events is not None:
                events += [
                    [
                        _first_values(e.attributes, spec.event_keys, spec.event_defaults)
                        or spec.event_defaults
                        for e in s.events
                    ]
                    if s.events
                    else None
                    for s in spans
                ]
            if pairs is not None:
                pairs += [_pairs(s.attributes) for s in spans]
            scope_span_end.append(len(rows))
        resource_scope_end.append(len(scopes))
    n = len(rows)
    return SpanBatch(
        resources=resources,
        resource_values=resource_values,
        resource_multipliers=resource_multipliers,
        resource_scope_end=resource_scope_end,
        scopes=scopes,
        scope_span_end=scope_span_end,
        names=[r[0] for r in rows],
        kinds=[r[1] for r in rows],
        codes=[r[2] for r in rows],
        durations=np.fromiter((r[3] for r in rows), np.float64, n),
        trace_states=[r[4] for r in rows],
        values=values,
        multipliers=multipliers,
        span_ids=span_ids,
        trace_ids=trace_ids,
        end_times=end_times,
        events=events,
        pairs=pairs,
        resource_pairs=resource_pairs if spec.all_attributes else None,
    )


def select(batch: SpanBatch, spans: list[int]) -> SpanBatch:
    """The span columns of ``batch`` at ``spans`` (resource and scope columns are kept as
    they are; the scope boundaries no longer apply)."""

    def pick(column: list[_T] | None) -> list[_T] | None:
        return None if column is None else [column[i] for i in spans]

    return replace(
        batch,
        names=pick(batch.names),
        kinds=pick(batch.kinds),
        codes=pick(batch.codes),
        durations=batch.durations[spans],
        trace_states=[batch.trace_states[i] for i in spans],
        values=pick(batch.values),
        multipliers=pick(batch.multipliers),
        span_ids=[batch.span_ids[i] for i in spans],
        trace_ids=pick(batch.trace_ids),
        end_times=pick(batch.end_times),
        events=pick(batch.events),
        pairs=pick(batch.pairs),
        keys=pick(batch.keys),
    )


# --------------------------------------------------------------------- native


def _load_native() -> ModuleType | None:
    if os.environ.get("SPANMETRICS_NATIVE", "1") == "0":
        return None
    try:
        from spanmetrics.decode import _scan  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _scan  # type: ignore[no-any-return]


_native = _load_native()

#: Which reader ``otlp_proto`` records go through: ``native`` or ``python``.
PATH = "native" if _native is not None else "python"


def _render(value: object) -> object:
    """A value the scanner left raw (the bytes of an AnyValue): rendered as on the pure path."""
    if isinstance(value, bytes):
        return any_value_to_str(AnyValue.FromString(value))
    return value


def _render_tuple(values: Values) -> Values:
    if any(isinstance(v, bytes) for v in values):
        return tuple(_render(v) for v in values)  # type: ignore[misc]
    return values


def _render_pairs(pairs: Pairs) -> Pairs:
    if any(isinstance(v, bytes) for _, v in pairs):
        return tuple((k, _render(v)) for k, v in pairs)  # type: ignore[misc]
    return pairs


def scan_record(value: bytes, spec: BatchSpec, layout: KeyLayout | None = None) -> SpanBatch:
    """The batch of one ``otlp_proto`` record value, read by the compiled scanner; with a
    ``layout`` (and no ``all_attributes``), its series keys too.

    Raises:
        DecodeError: truncated or corrupt input, or strings that are not UTF-8.
        RuntimeError: the extension is not available (see :data:`PATH`).
    """
    if _native is None:
        raise RuntimeError("the compiled scanner is not available")
    if layout is not None and spec.all_attributes:
        layout = None  # glob dimensions: keys are built in Python
    extra: tuple[object, ...] = (
        () if layout is None else (layout.resolve, layout.scope_id, layout.keep)
    )
    try:
        out = _native.scan(
            value, spec.keys, spec.defaults, spec.multiplier_key, spec.ids, spec.events,
            spec.event_keys, spec.event_defaults, spec.all_attributes, *extra,
        )  # fmt: skip
    except ValueError as err:
        reason, _, detail = str(err).partition(": ")
        if reason == "invalid_utf8":
            raise DecodeError("invalid_utf8", detail) from None
        if reason == "invalid_protobuf":
            raise DecodeError("invalid_protobuf", detail) from None
        raise
    (resources, resource_values, resource_multipliers, resource_pairs, resource_scope_end,
     scopes, scope_span_end, names, kinds, codes, durations, states, values, multipliers,
     trace_ids, span_ids, end_times, events, pairs, n_raw, keys, resource_ids) = out  # fmt: skip
    if n_raw:
        # Doubles, bytes, arrays and maps as dimension values: rare, rendered here.
        resource_values = [_render_tuple(v) for v in resource_values]
        if values is not None:
            values = [_render_tuple(v) for v in values]
        if keys is not None:
            keys = [_render_tuple(k) for k in keys]
        if events is not None:
            events = [
                None if span_events is None else [_render_tuple(v) for v in span_events]
                for span_events in events
            ]
        if pairs is not None:
            pairs = [_render_pairs(p) for p in pairs]
            resource_pairs = [_render_pairs(p) for p in resource_pairs]
    return SpanBatch(
        resources=resources,
        resource_values=resource_values,
        resource_multipliers=resource_multipliers,
        resource_scope_end=resource_scope_end,
        scopes=scopes,
        scope_span_end=scope_span_end,
        names=names,
        kinds=kinds,
        codes=codes,
        durations=np.frombuffer(durations, np.float64).copy(),
        trace_states=states,
        values=values,
        multipliers=multipliers,
        span_ids=span_ids,
        trace_ids=trace_ids,
        end_times=end_times,
        events=events,
        pairs=pairs,
        resource_pairs=resource_pairs if spec.all_attributes else None,
        keys=keys,
        resource_ids=resource_ids,
    )


def read_batch(
    value: bytes, encoding: Encoding, spec: BatchSpec, layout: KeyLayout | None = None
) -> SpanBatch:
    """The batch of one record value: the compiled scanner for ``otlp_proto`` when it is
    available, else upb (or OTLP/JSON) and the pure-Python reader.

    Raises:
        DecodeError: the value is not valid in ``encoding``; nothing was read.
    """
    if encoding == "otlp_proto" and _native is not None:
        return scan_record(value, spec, layout)
    return batch_from_request(decode_traces(value, encoding), spec)


__all__ = [
    "PATH",
    "BatchSpec",
    "KeyLayout",
    "Pairs",
    "SpanBatch",
    "Values",
    "batch_from_request",
    "read_batch",
    "scan_record",
    "select",
]

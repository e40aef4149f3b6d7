"""The fleet's stored and internal formats: series state, delta records, cut positions.

Everything is msgpack, versioned by a leading format number, and encoded the same way
every time for the same content: stage 1 must be able to cut a delta again, byte for byte,
after a crash (see :func:`encode_delta_parts`).

- **Series state** (one Redis hash field per series): ``[FORMAT, rid, kind, labels,
  start_ns, last_seen_ns, last_sent_ns, calls, histogram, exemplars]``.
- **Resource state**: ``[FORMAT, resource (OTLP protobuf), last_seen_ns]``.
- **Delta record** (one record of the internal topic, one shard's part of a cut):
  ``[FORMAT, header, resources, series, events]``; ``header`` is a :class:`CutHeader`,
  ``resources`` a list of OTLP ``Resource`` bytes, a series entry ``[resource index,
  labels, calls, histogram, exemplars]`` and an events entry ``[resource index, labels,
  count]``; optionally a sixth item, the spans a cut still held for joins (``derive``):
  entries ``[resource index, last_ns, [held span, ...]]`` (see :func:`encode_held`).
- **Join buffer** of a shard (``derive``): ``[FORMAT, [[resource, last_ns, [held span,
  ...]], ...]]``, oldest group first.
- Histograms: ``None``, ``[0, scale, zero_count, count, sum, min, max, offset, counts,
  max_size]`` (exponential) or ``[1, count, sum, min, max, counts, bounds]`` (explicit);
  without the last item (earlier state), the topology's. Labels: a flat list
  ``[key, value, key, value, ...]``.

Decoding errors are :class:`CodecError` naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from spanmetrics.aggregate.cumulative import Histogram
from spanmetrics.aggregate.explicit import ExplicitHistogram
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.join import HeldGroup, HeldSpan
from spanmetrics.aggregate.points import Attributes, EventsPoint, Exemplar, SeriesPoint
from spanmetrics.aggregate.registry import KINDS, Kind, SeriesState
from spanmetrics.decode.facts import SpanFacts

#: Format of everything below; bumped on any incompatible change.
FORMAT = 1

#: Bytes kept free in every delta record for its header and array framing, whatever the
#: header's values, so that the split of a cut into parts depends only on its content.
DELTA_HEADER_RESERVE = 256

_KIND_CODES: dict[Kind, int] = {"series": 0, "events": 1}


class CodecError(ValueError):
    """Stored or internal data that cannot be read; the message names the field."""


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """What a decoded histogram needs from the topology."""

    max_size: int
    """Exponential ``max_size``."""
    bounds: tuple[float, ...] | None = None
    """Explicit bounds, in the histogram's unit; None for exponential histograms."""


@dataclass(frozen=True, slots=True)
class CutHeader:
    """Which cut of which input partition a delta record belongs to."""

    partition: int
    """Input partition the spans were read from."""
    epoch: int
    """Epoch of the partition's owner that cut it (for logs; dedup does not need it)."""
    start: int
    """First offset of the cut."""
    end: int
    """Offset after the last record of the cut."""
    part: int
    """Index of this record among the cut's records for this shard."""
    parts: int
    """Number of records the cut has for this shard."""
    interval_start_ns: int
    """When the cut's interval started (the owner's clock)."""
    interval_end_ns: int
    """When it was cut."""


@dataclass(slots=True)
class DeltaRecord:
    """A decoded delta record."""

    header: CutHeader
    resources: list[bytes]
    series: list[tuple[int, SeriesPoint]]
    events: list[tuple[int, EventsPoint]]
    held: list[tuple[int, HeldGroup]] = field(default_factory=list)
    """Spans the cut still held for joins, by resource index (``derive`` only)."""


def _packb(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _unpackb(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as err:
        raise CodecError(f"{what}: not valid msgpack ({err})") from err


def _flat(labels: Attributes) -> list[str]:
    return [item for pair in labels for item in pair]


def _pairs(flat: Sequence[str], what: str) -> Attributes:
    if len(flat) % 2:
        raise CodecError(f"{what}.labels: odd number of items")
    return tuple(zip(flat[0::2], flat[1::2], strict=True))


def encode_histogram(hist: Histogram | None) -> list[Any] | None:
    """The histogram as a msgpack-ready list (module docstring)."""
    if hist is None:
        return None
    if isinstance(hist, ExpoHistogram):
        return [
            0,
            hist.scale,
            hist.zero_count,
            hist.count,
            hist.sum,
            hist.min,
            hist.max,
            hist.offset,
            hist.counts,
            hist.max_size,
        ]
    return [1, hist.count, hist.sum, hist.min, hist.max, hist.counts, list(hist.bounds)]


def decode_histogram(value: Any, spec: HistogramSpec, what: str) -> Histogram | None:
    """The inverse of :func:`encode_histogram`."""
    if value is None:
        return None
    try:
        # The bucket budget and bounds are stored since views choose them per stream;
        # state written before that has the topology's.
        if value[0] == 0:
            _, scale, zero, count, total, lo, hi, offset, counts, *size = value
            max_size = int(size[0]) if size else spec.max_size
            return ExpoHistogram(max_size, scale, zero, count, total, lo, hi, offset, list(counts))
        if value[0] == 1:
            _, count, total, lo, hi, counts, *stored = value
            bounds = tuple(float(b) for b in stored[0]) if stored else spec.bounds
            if bounds is None:
                raise CodecError(f"{what}.duration: explicit histogram, topology is exponential")
            return ExplicitHistogram(bounds, list(counts), count, total, lo, hi)
    except CodecError:
        raise
    except (TypeError, ValueError) as err:
        raise CodecError(f"{what}.duration: {err}") from err
    raise CodecError(f"{what}.duration: unknown histogram kind {value[0]!r}")


def _encode_exemplars(exemplars: tuple[Exemplar, ...]) -> list[list[Any]]:
    return [[e.trace_id, e.span_id, e.value, e.time_unix_nano] for e in exemplars]


def _decode_exemplars(value: Any, what: str) -> tuple[Exemplar, ...]:
    try:
        return tuple(Exemplar(bytes(t), bytes(s), float(v), int(ts)) for t, s, v, ts in value)
    except (TypeError, ValueError) as err:
        raise CodecError(f"{what}.exemplars: {err}") from err


def _check_format(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise CodecError(f"{what}: expected a list")
    if value[0] != FORMAT:
        raise CodecError(f"{what}.format: {value[0]!r}, this version reads {FORMAT}")
    return value


# ------------------------------------------------------------------ series state


def encode_series_state(rid: bytes, kind: Kind, labels: Attributes, state: SeriesState) -> bytes:
    """One stored series."""
    return _packb(
        [
            FORMAT,
            rid,
            _KIND_CODES[kind],
            _flat(labels),
            state.start_ns,
            state.last_seen_ns,
            state.last_sent_ns,
            state.calls,
            encode_histogram(state.duration),
            _encode_exemplars(state.exemplars),
        ]
    )


def decode_series_state(
    data: bytes, spec: HistogramSpec
) -> tuple[bytes, Kind, Attributes, SeriesState]:
    """The inverse of :func:`encode_series_state`: ``(rid, kind, labels, state)``."""
    what = "series"
    value = _check_format(_unpackb(data, what), what)
    try:
        _, rid, kind, labels, start, seen, sent, calls, hist, exemplars = value
    except ValueError as err:
        raise CodecError(f"{what}: {len(value)} fields, expected 10") from err
    if kind not in (0, 1):
        raise CodecError(f"{what}.kind: {kind!r}")
    state = SeriesState(
        start_ns=start,
        last_seen_ns=seen,
        calls=calls,
        duration=decode_histogram(hist, spec, what),
        exemplars=_decode_exemplars(exemplars, what),
        last_sent_ns=sent,
    )
    return bytes(rid), KINDS[kind], _pairs(labels, what), state


def encode_resource_state(resource: bytes, last_seen_ns: int) -> bytes:
    """One stored resource: its OTLP bytes and when spans of it were last seen."""
    return _packb([FORMAT, resource, last_seen_ns])


def decode_resource_state(data: bytes) -> tuple[bytes, int]:
    """The inverse of :func:`encode_resource_state`."""
    value = _check_format(_unpackb(data, "resource"), "resource")
    if len(value) != 3:
        raise CodecError(f"resource: {len(value)} fields, expected 3")
    return bytes(value[1]), int(value[2])


# ------------------------------------------------------------------ held spans


def encode_held(held: HeldSpan) -> list[Any]:
    """A span held for a join: its facts, weight and join state."""
    f = held.facts
    return [f.trace_id, f.span_id, f.parent_span_id, f.name, f.kind, f.status, f.start_ns,
            f.end_ns, [i for kv in sorted(f.attributes.items()) for i in kv], list(f.events),
            held.weight, held.waiting, list(held.partner_of), list(held.selected_by),
            held.taken]  # fmt: skip


def decode_held(value: Any, what: str) -> HeldSpan:
    """Read what :func:`encode_held` wrote."""
    try:
        (trace_id, span_id, parent, name, kind, status, start, end, attributes, events,
         weight, waiting, partner_of, selected_by, taken) = value  # fmt: skip
        facts = SpanFacts(bytes(trace_id), bytes(span_id), bytes(parent), str(name), int(kind),
                          int(status), int(start), int(end), dict(_pairs(attributes, what)),
                          tuple(events))  # fmt: skip
        return HeldSpan(facts, int(weight), [int(m) for m in waiting],
                        tuple(int(m) for m in partner_of), tuple(int(m) for m in selected_by),
                        [int(m) for m in taken])  # fmt: skip
    except (TypeError, ValueError) as err:
        raise CodecError(f"{what}.held: {err}") from err


def encode_join(groups: Sequence[HeldGroup]) -> bytes:
    """A shard's whole join buffer."""
    return _packb(
        [FORMAT, [[g.resource, g.last_ns, [encode_held(h) for h in g.spans]] for g in groups]]
    )


def decode_join(data: bytes) -> list[HeldGroup]:
    """Read what :func:`encode_join` wrote."""
    what = "join"
    value = _check_format(_unpackb(data, what), what)
    try:
        _, groups = value
        return [
            HeldGroup(bytes(resource), int(last_ns), [decode_held(h, what) for h in spans])
            for resource, last_ns, spans in groups
        ]
    except (TypeError, ValueError) as err:
        raise CodecError(f"{what}: {err}") from err


# ------------------------------------------------------------------ delta records

#: One resource's delta points in a cut: its OTLP bytes, series points, events points, and
#: the groups of its spans still held for joins.
ResourceDelta = tuple[bytes, Sequence[SeriesPoint], Sequence[EventsPoint], Sequence[HeldGroup]]


class DeltaParts(NamedTuple):
    """One shard's deltas of a cut as records, and what none of them could hold."""

    records: list[bytes]
    dropped_spans: int
    """Calls (or events, or held spans) of entries that fit in no record, dropped."""


def encode_delta_parts(
    header: CutHeader, resources: Sequence[ResourceDelta], max_bytes: int
) -> DeltaParts:
    """One shard's deltas of a cut as records of at most ``max_bytes`` each.

    The split depends only on the content, in the order given: each entry's size is
    fixed by its content, and the header has a fixed reserve. So the same content gives
    the same records, whatever the header's epoch or times.

    An entry (a series, an events series or a held span, with its resource) that does not
    fit in ``max_bytes`` is dropped and counted in ``dropped_spans``: a cut that can never
    be sent would stop its partition for good. The engines' size bounds
    (:mod:`spanmetrics.aggregate.oversize`) keep this for input no bound foresaw.
    """
    budget = max_bytes - DELTA_HEADER_RESERVE
    parts: list[tuple[list[bytes], list[bytes], list[bytes], list[bytes]]] = []
    current: tuple[list[bytes], list[bytes], list[bytes], list[bytes]] = ([], [], [], [])
    size = 0
    dropped = 0
    for resource, series, events, held in resources:
        packed_resource = _packb(resource)
        index = -1  # this resource's index in the current part, once added
        entries = [
            (1, p.calls, [_flat(p.attributes), p.calls, encode_histogram(p.duration),
                          _encode_exemplars(p.exemplars)])
            for p in series
        ] + [(2, e.count, [_flat(e.attributes), e.count]) for e in events] + [
            # One entry per span, not per group: a trace's spans may not fit one record,
            # and the shard regroups them by trace anyway.
            (3, 1, [g.last_ns, [encode_held(h)]]) for g in held for h in g.spans
        ]  # fmt: skip
        for table, weight, body in entries:
            entry_size = len(_packb([0xFFFF, *body]))  # the index at its widest (< 65536)
            if entry_size + len(packed_resource) > budget:
                dropped += weight
                continue
            extra = 0 if index >= 0 else len(packed_resource)
            if size + entry_size + extra > budget and (current[1] or current[2] or current[3]):
                parts.append(current)
                current, size, index, extra = ([], [], [], []), 0, -1, len(packed_resource)
            if index < 0:
                current[0].append(packed_resource)
                index = len(current[0]) - 1
                size += len(packed_resource)
            current[table].append(_packb([index, *body]))
            size += entry_size
    if current[1] or current[2] or current[3]:
        parts.append(current)
    records = []
    for i, (res, series_entries, event_entries, held_entries) in enumerate(parts):
        head = [
            header.partition, header.epoch, header.start, header.end, i, len(parts),
            header.interval_start_ns, header.interval_end_ns,
        ]  # fmt: skip
        # The sixth item only when there is one: records without joins stay as they were.
        records.append(
            _array(6 if held_entries else 5)
            + _packb(FORMAT)
            + _packb(head)
            + _array(len(res))
            + b"".join(res)
            + _array(len(series_entries))
            + b"".join(series_entries)
            + _array(len(event_entries))
            + b"".join(event_entries)
            + ((_array(len(held_entries)) + b"".join(held_entries)) if held_entries else b"")
        )
    return DeltaParts(records, dropped)


def _array(n: int) -> bytes:
    """msgpack array header of ``n`` items: pre-encoded items follow it."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _entries(
    entries: Sequence[Any], width: int, n_resources: int, table: str
) -> Iterator[tuple[int, list[Any]]]:
    """The entries of one table of a delta record: each ``[resource index, *fields]`` with
    ``width`` fields and an index into the record's resources."""
    for entry in entries:
        try:
            index, *fields = entry
        except (TypeError, ValueError) as err:
            raise CodecError(f"delta.{table}: {err}") from err
        if len(fields) != width:
            raise CodecError(f"delta.{table}: {len(fields) + 1} fields, expected {width + 1}")
        if not 0 <= index < n_resources:
            raise CodecError(f"delta.{table}.resource: index {index} of {n_resources}")
        yield index, fields


def decode_delta(data: bytes, spec: HistogramSpec) -> DeltaRecord:
    """Read a delta record written by :func:`encode_delta_parts`."""
    what = "delta"
    value = _check_format(_unpackb(data, what), what)
    try:
        _, head, resources, series, events, *rest = value
        header = CutHeader(*head)
        held_entries = rest[0] if rest else []
    except (TypeError, ValueError) as err:
        raise CodecError(f"{what}.header: {err}") from err
    n_resources = len(resources)
    out_series: list[tuple[int, SeriesPoint]] = []
    for index, (labels, calls, hist, exemplars) in _entries(series, 4, n_resources, "series"):
        point = SeriesPoint(
            _pairs(labels, what),
            0,
            0,
            calls,
            decode_histogram(hist, spec, what),
            _decode_exemplars(exemplars, what),
        )
        out_series.append((index, point))
    out_events = [
        (index, EventsPoint(_pairs(labels, what), 0, 0, count))
        for index, (labels, count) in _entries(events, 2, n_resources, "events")
    ]
    out_held = [
        (index, HeldGroup(bytes(resources[index]), int(last_ns),
                          [decode_held(h, what) for h in spans]))
        for index, (last_ns, spans) in _entries(held_entries, 2, n_resources, "held")
    ]  # fmt: skip
    return DeltaRecord(header, [bytes(r) for r in resources], out_series, out_events, out_held)


# --------------------------------------------------------------- shard metadata

#: Per input partition: the end of the latest cut applied, and which of its parts were.
Applied = dict[int, tuple[int, frozenset[int]]]


def encode_applied(applied: Applied) -> bytes:
    """What a shard has applied of each input partition's cuts."""
    return _packb(
        [FORMAT, [[p, end, sorted(parts)] for p, (end, parts) in sorted(applied.items())]]
    )


def decode_applied(data: bytes) -> Applied:
    """The inverse of :func:`encode_applied`."""
    value = _check_format(_unpackb(data, "applied"), "applied")
    try:
        return {int(p): (int(end), frozenset(parts)) for p, end, parts in value[1]}
    except (TypeError, ValueError, IndexError) as err:
        raise CodecError(f"applied: {err}") from err


#: An output record: the index of its sink in the topology's sinks, and its value.
OutputRecord = tuple[int, bytes]


def encode_pending(records: Sequence[OutputRecord]) -> bytes:
    """Output records written ahead of their send."""
    return _packb([FORMAT, [[sink, value] for sink, value in records]])


def decode_pending(data: bytes) -> list[OutputRecord]:
    """The inverse of :func:`encode_pending`."""
    value = _check_format(_unpackb(data, "pending"), "pending")
    try:
        return [(int(sink), bytes(record)) for sink, record in value[1]]
    except (TypeError, ValueError, IndexError) as err:
        raise CodecError(f"pending: {err}") from err

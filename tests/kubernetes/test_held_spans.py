"""Spans held for joins on their way from a cut to a shard, and in a shard's checkpoint."""

from __future__ import annotations

from spanmetrics.aggregate.join import HeldGroup, HeldSpan
from spanmetrics.aggregate.points import SeriesPoint
from spanmetrics.decode.facts import read_facts
from spanmetrics.dev.kubernetes import APISERVER_RESOURCE, as_request, traces
from spanmetrics.state.codec import (
    CutHeader,
    HistogramSpec,
    decode_delta,
    decode_join,
    encode_delta_parts,
    encode_join,
)


def held_group() -> HeldGroup:
    """Every span of one apiserver trace, as a cut hands them on."""
    trace = traces("1.33")[0]
    (rs,) = read_facts(as_request([(APISERVER_RESOURCE, trace.spans)]))
    spans = [HeldSpan(f, 1, [0, 1] if f.kind == 2 else [], (), (0,) if f.kind == 2 else ())
             for f in rs.spans]  # fmt: skip
    return HeldGroup(rs.resource.SerializeToString(), 123, spans)


def test_a_trace_larger_than_a_record_is_split_by_span_and_read_back_whole() -> None:
    group = held_group()
    assert len(group.spans) > 5
    header = CutHeader(0, 1, 0, 10, 0, 1, 0, 0)
    records = encode_delta_parts(header, [(group.resource, [], [], [group])], 1024).records
    assert len(records) > 1  # the group alone is larger than a 1 KiB record
    got = [h for r in records for _, g in decode_delta(r, HistogramSpec(160)).held for h in g.spans]
    assert [h.facts for h in got] == [h.facts for h in group.spans]
    assert [h.waiting for h in got] == [h.waiting for h in group.spans]


def test_records_without_held_spans_keep_the_old_layout() -> None:
    header = CutHeader(0, 1, 0, 10, 0, 1, 0, 0)
    point = SeriesPoint((("__name__", "m"),), 0, 0, 1, None)
    (record,) = encode_delta_parts(header, [(b"\n\x00", [point], [], [])], 1024).records
    assert record[0] == 0x95  # a msgpack array of 5: what earlier versions wrote and read
    assert decode_delta(record, HistogramSpec(160)).held == []


def test_the_join_buffer_round_trips_through_a_checkpoint() -> None:
    group = held_group()
    (back,) = decode_join(encode_join([group]))
    assert back == group

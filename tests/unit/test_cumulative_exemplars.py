"""Exemplars survive the fleet's checkpoints: stored form, merge across partitions, deltas."""

from __future__ import annotations

from spanmetrics.aggregate.cumulative import CumulativeShard
from spanmetrics.aggregate.resources import resource_identity
from tests.builders import T0, request, resource, span
from tests.unit.test_engine import CHECKOUT, make_engine, only


def shard_from(spans_ms: list[float], start_ns: int) -> tuple[CumulativeShard, list[bytes]]:
    """A cumulative shard made from one engine flush of spans ending after ``start_ns``."""
    engine, _ = make_engine(
        exemplars={"enabled": True, "max_per_data_point": 2},
        aggregation_temporality="AGGREGATION_TEMPORALITY_DELTA",
    )
    spans = [
        span(duration_ms=ms, start_ns=start_ns + i * 1_000_000) for i, ms in enumerate(spans_ms)
    ]
    engine.consume(request(resource(CHECKOUT, *spans)))
    snapshot = engine.flush()
    shard = CumulativeShard()
    for rp in snapshot.resources:
        identity = resource_identity(rp.resource, frozenset())
        assert identity is not None
        shard.add_points(identity, rp.resource, rp.series)
    return shard, [s.span_id for s in spans]


def test_exemplars_round_trip_through_the_stored_form() -> None:
    shard, span_ids = shard_from([3.0, 5.0, 7.0], T0)
    engine, _ = make_engine()
    stored = CumulativeShard.decode(shard.encode(engine.names), engine.names, 160)
    (series,) = stored.series.values()
    assert [e.span_id for e in series.exemplars] == span_ids[:2]
    assert [e.value for e in series.exemplars] == [3.0, 5.0]


def test_merge_keeps_the_most_recent_exemplars() -> None:
    older, _ = shard_from([1.0, 2.0], T0)
    newer, newer_ids = shard_from([8.0, 9.0], T0 + 60 * 10**9)
    older.merge(newer)
    (series,) = older.series.values()
    assert series.calls == 4
    assert [e.span_id for e in series.exemplars] == newer_ids


def test_delta_carries_only_exemplars_not_published_before() -> None:
    first, first_ids = shard_from([1.0], T0)
    engine, _ = make_engine()
    published = CumulativeShard()
    published.merge(first)
    now = CumulativeShard()
    now.merge(first)
    later, later_ids = shard_from([4.0], T0 + 10**9)
    now.merge(later)
    point = only(now.delta_since(published, {}, engine.names, T0 + 2 * 10**9))
    assert point.calls == 1
    assert [e.span_id for e in point.exemplars] == later_ids
    assert first_ids[0] not in [e.span_id for e in point.exemplars]

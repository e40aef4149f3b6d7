"""The series registry: start times, exemplars kept across merges, delta exemplars, and
what a checkpoint writes."""

from __future__ import annotations

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.points import SeriesPoint
from spanmetrics.aggregate.registry import SeriesRegistry
from spanmetrics.aggregate.resources import resource_identity
from spanmetrics.config.defaults import MAX_SERIES_LABEL_BYTES
from spanmetrics.state.codec import HistogramSpec, decode_series_state, encode_series_state
from tests.builders import T0, request, resource, span
from tests.unit.test_engine import CHECKOUT, make_engine, only


def delta_points(spans_ms: list[float], start_ns: int) -> tuple[object, list[bytes]]:
    """One stage-1 flush of spans ending after ``start_ns``, with two exemplars kept."""
    engine, _ = make_engine(
        exemplars={"enabled": True, "max_per_data_point": 2},
        aggregation_temporality="AGGREGATION_TEMPORALITY_DELTA",
    )
    spans = [
        span(duration_ms=ms, start_ns=start_ns + i * 1_000_000) for i, ms in enumerate(spans_ms)
    ]
    engine.consume(request(resource(CHECKOUT, *spans)))
    return engine.flush(), [s.span_id for s in spans]


def apply(registry: SeriesRegistry, snapshot: object, now: int) -> None:
    for rp in snapshot.resources:  # type: ignore[attr-defined]
        identity = resource_identity(rp.resource)
        assert identity is not None
        registry.apply(identity, rp.resource, rp.series, rp.events, now, now)


def registry(**kwargs: object) -> SeriesRegistry:
    engine, _ = make_engine()
    return SeriesRegistry(engine.names, exemplar_limit=2, **kwargs)  # type: ignore[arg-type]


def test_the_start_time_is_the_creation_and_never_moves() -> None:
    reg = registry()
    apply(reg, delta_points([1.0], T0)[0], now=T0 + 5)
    apply(reg, delta_points([2.0], T0)[0], now=T0 + 2)  # an earlier delta, applied later
    point = only(reg.cumulative(reg.stamp(T0 + 10)))
    assert point.start_time_unix_nano == T0 + 5
    assert point.calls == 2


def test_exemplars_round_trip_through_the_stored_form() -> None:
    reg = registry()
    snapshot, span_ids = delta_points([3.0, 5.0, 7.0], T0)
    apply(reg, snapshot, T0)
    ((_, res),) = reg.resources.items()
    ((labels, state),) = res.series.items()
    _, _, _, back = decode_series_state(
        encode_series_state(res.rid, "series", labels, state), HistogramSpec(160)
    )
    assert [e.span_id for e in back.exemplars] == span_ids[:2]
    assert [e.value for e in back.exemplars] == [3.0, 5.0]


def test_the_most_recent_exemplars_are_kept() -> None:
    reg = registry()
    apply(reg, delta_points([1.0, 2.0], T0)[0], T0)
    newer, newer_ids = delta_points([8.0, 9.0], T0 + 60 * 10**9)
    apply(reg, newer, T0 + 60 * 10**9)
    point = only(reg.cumulative(reg.stamp(T0 + 61 * 10**9)))
    assert point.calls == 4
    assert [e.span_id for e in point.exemplars] == newer_ids


def test_a_delta_carries_only_exemplars_not_published_before() -> None:
    reg = registry(delta_output=True)
    first, first_ids = delta_points([1.0], T0)
    apply(reg, first, T0)
    reg.take_delta(reg.stamp(T0 + 10**9))
    later, later_ids = delta_points([4.0], T0 + 10**9)
    apply(reg, later, T0 + 2 * 10**9)
    snapshot, _ = reg.take_delta(reg.stamp(T0 + 3 * 10**9))
    point = only(snapshot)
    assert point.calls == 1
    assert [e.span_id for e in point.exemplars] == later_ids
    assert first_ids[0] not in [e.span_id for e in point.exemplars]


def test_a_checkpoint_writes_only_what_changed_since_the_last_one() -> None:
    reg = registry()
    apply(reg, delta_points([1.0], T0)[0], T0)
    first = reg.changes()
    assert len(first.series) == 1 and len(first.resources) == 1
    reg.committed(first)
    assert reg.changes().empty
    snapshot = delta_points([2.0], T0)[0]
    changes = reg.changes()
    apply(reg, snapshot, T0 + 1)  # changed again after the changes were taken
    reg.committed(changes)
    assert len(reg.changes().series) == 1  # so still to be written


def test_a_series_with_oversized_labels_goes_to_the_overflow_series() -> None:
    """The derived engines' stage 1 is a registry: its series must fit a delta record too."""
    reg = registry()
    res = Resource()
    res.attributes.add(key="service.name").value.string_value = "checkout"
    identity = resource_identity(res)
    assert identity is not None
    huge = SeriesPoint((("user.id", "x" * (MAX_SERIES_LABEL_BYTES + 1)),), 0, 0, 3, None)
    fine = SeriesPoint((("user.id", "u1"),), 0, 0, 2, None)
    assert reg.apply(identity, res, [huge, fine], [], T0, T0) == 3
    (rp,) = reg.cumulative(T0 + 1).resources
    assert {s.attributes: s.calls for s in rp.series} == {
        (("otel.metric.overflow", "true"),): 3,
        (("user.id", "u1"),): 2,
    }

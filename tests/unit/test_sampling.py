"""Adjusted counts from OTel probability-sampling thresholds, and deterministic rounding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spanmetrics.aggregate.sampling import adjusted_count, parse_multiplier, stochastic_round


@pytest.mark.parametrize(
    ("tracestate", "expected"),
    [
        ("", 1.0),
        ("ot=th:0", 1.0),  # 100% sampling
        ("ot=th:8", 2.0),  # 50%
        ("ot=th:c", 4.0),  # 25%
        ("ot=th:e", 8.0),  # 12.5%
        ("ot=rv:abcdabcdabcdff;th:8", 2.0),
        ("vendor=x,ot=th:c;rv:0123", 4.0),
        ("other=value", 1.0),
        ("ot=rv:abcdabcdabcdff", 1.0),  # no threshold
        ("ot=th:zz", 1.0),  # invalid hex
        ("ot=th:123456789abcdef", 1.0),  # more than 14 digits
        ("ot=th:", 1.0),
    ],
)
def test_adjusted_count(tracestate: str, expected: float) -> None:
    assert adjusted_count(tracestate) == expected


def test_threshold_pads_right() -> None:
    # th:aa means 0xaa000000000000 / 2^56 rejected, so keep probability 0x56/0x100.
    assert adjusted_count("ot=th:aa") == pytest.approx(256 / 0x56)


def test_integer_counts_are_not_rounded() -> None:
    assert stochastic_round(4.0, b"\xff" * 8) == 4


def test_rounding_uses_span_id_as_the_draw() -> None:
    low, high = b"\x00" * 8, b"\xff" * 8
    assert stochastic_round(2.5, low) == 3  # draw 0.0 < 0.5: up
    assert stochastic_round(2.5, high) == 2  # draw ~1.0 >= 0.5: down


@given(st.floats(min_value=1.0, max_value=1e6), st.binary(min_size=8, max_size=8))
def test_rounding_is_floor_or_ceil_and_repeatable(value: float, span_id: bytes) -> None:
    rounded = stochastic_round(value, span_id)
    assert rounded in (int(value), int(value) + 1)
    assert stochastic_round(value, span_id) == rounded


def test_rounding_is_unbiased_over_random_span_ids() -> None:
    import random

    rng = random.Random(7)
    draws = [stochastic_round(3.3, rng.randbytes(8)) for _ in range(20_000)]
    assert sum(draws) / len(draws) == pytest.approx(3.3, abs=0.02)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2, 2.0),
        (1.5, 1.5),
        ("4", 4.0),
        ("x", None),
        (0, None),
        (-1, None),
        (None, None),
        (True, None),
        (float("nan"), None),
    ],
)
def test_parse_multiplier(value: object, expected: float | None) -> None:
    assert parse_multiplier(value) == expected  # type: ignore[arg-type]


def test_an_incredible_adjusted_count_is_capped_not_a_crash() -> None:
    """A multiplier of 1e19 used to overflow the 64-bit weights and raise from numpy,
    stopping the consumer on one span."""
    from spanmetrics.aggregate.engine import ADJUSTED_COUNT_CAPPED
    from spanmetrics.aggregate.sampling import MAX_ADJUSTED_COUNT
    from tests.builders import request, resource, span
    from tests.unit.test_engine import make_engine, only

    engine, _ = make_engine(span_multiplier_key="m")
    engine.consume(request(resource({"service.name": "a"}, span(attributes={"m": 1e19}), span())))
    assert only(engine.flush()).calls == MAX_ADJUSTED_COUNT + 1
    assert engine.counters[ADJUSTED_COUNT_CAPPED] == 1


def test_a_span_that_rounds_to_zero_counts_nothing() -> None:
    """A multiplier below 1 may round a span to 0 spans: that used to raise "weights must
    be positive" from the series table."""
    from tests.builders import request, resource, span
    from tests.unit.test_engine import make_engine, only

    engine, _ = make_engine(span_multiplier_key="m")
    # span id 0xff..: the draw is just below 1, above the fraction 1e-9: rounds down to 0.
    spans = [span(attributes={"m": 1e-9}, span_id=b"\xff" * 8), span(duration_ms=5)]
    engine.consume(request(resource({"service.name": "a"}, *spans)))
    point = only(engine.flush())
    assert point.calls == 1
    assert point.duration is not None and point.duration.count == 1

"""Output records stay under the size limit, and nothing is lost or repeated by the split."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.aggregate.points import MetricsSnapshot
from spanmetrics.config.load import parse_topology
from spanmetrics.decode import decode_metrics
from spanmetrics.export.otlp import encode_records, snapshot_to_request, snapshot_to_requests
from tests.builders import request, resource, span
from tests.clock import FakeClock

pytestmark = pytest.mark.property

spans = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 400), st.floats(0.001, 1e5)),
    min_size=1,
    max_size=300,
)


def snapshot(specs: list[Any]) -> MetricsSnapshot:
    config = parse_topology(
        {"spanmetrics": {"dimensions": [{"name": "user"}], "events": {"enabled": True}}}
    ).spanmetrics
    engine = SpanMetricsEngine(config, FakeClock())
    engine.consume(
        request(
            *(
                resource(
                    {"service.name": f"svc{svc}"},
                    span("op", attributes={"user": f"u{user}"}, duration_ms=ms,
                         events=[{"name": "retry"}] if user % 7 == 0 else None),
                )
                for svc, user, ms in specs
            )
        )
    )  # fmt: skip
    return engine.flush()


def points(requests: list[ExportMetricsServiceRequest]) -> Counter[Any]:
    """Every data point of the requests, with its resource and metric."""
    out: Counter[Any] = Counter()
    for r in requests:
        for rm in r.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    data = getattr(m, m.WhichOneof("data"))
                    for p in data.data_points:
                        out[(rm.resource.SerializeToString(), m.name, p.SerializeToString())] += 1
    return out


@given(spans, st.integers(min_value=600, max_value=200_000))
def test_requests_fit_and_hold_every_point_once(specs: list[Any], max_bytes: int) -> None:
    snap = snapshot(specs)
    whole = snapshot_to_request(snap)
    try:
        parts = snapshot_to_requests(snap, max_bytes)
    except ValueError:
        return  # one series larger than the limit: refused, not cut
    assert all(p.ByteSize() <= max_bytes for p in parts)
    assert points(parts) == points([whole])


@given(
    spans,
    st.integers(min_value=2_000, max_value=200_000),
    st.sampled_from(["otlp_proto", "otlp_json"]),
)
def test_records_fit_in_either_encoding(specs: list[Any], max_bytes: int, encoding: str) -> None:
    whole = snapshot_to_request(snapshot(specs))
    try:
        records = encode_records(whole, encoding, max_bytes)
    except ValueError:
        return
    assert all(len(r) <= max_bytes for r in records)
    assert points([decode_metrics(r, encoding) for r in records]) == points([whole])  # type: ignore[arg-type]

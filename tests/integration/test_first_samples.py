"""First increments count: a new series starts with a 0 sample in Prometheus, so that
``increase()`` sees its first spans; a series that moves to another worker gets none.

Driven through the worker's real Prometheus sinks and the real series registry, into a
real Prometheus (remote write) and through the scrape provider.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from spanmetrics.aggregate.registry import SeriesRegistry
from spanmetrics.aggregate.resources import resource_identity
from spanmetrics.config.load import parse_topology
from spanmetrics.export.otlp import snapshot_to_request
from spanmetrics.fleet.prometheus_sinks import PrometheusSinks
from tests.builders import request, resource, span
from tests.integration.prometheus import Prometheus, wait_for
from tests.unit.test_engine import make_engine

pytestmark = pytest.mark.integration

CALLS = "traces_span_metrics_calls_total"
COUNT = "traces_span_metrics_duration_milliseconds_count"
BUCKET = "traces_span_metrics_duration_milliseconds_bucket"


class Shard:
    """One shard's registry, fed with spans per service the way stage 2 is."""

    def __init__(self) -> None:
        engine, _ = make_engine()
        self.names = engine.names
        self.registry = SeriesRegistry(engine.names)

    def add(self, service: str, n: int, now_ns: int) -> None:
        engine, _ = make_engine(aggregation_temporality="AGGREGATION_TEMPORALITY_DELTA")
        engine.consume(request(resource({"service.name": service}, *(span() for _ in range(n)))))
        for rp in engine.flush().resources:
            identity = resource_identity(rp.resource)
            assert identity is not None
            self.registry.apply(identity, rp.resource, rp.series, rp.events, now_ns, now_ns)

    def state(self, now_ns: int) -> tuple[list[Any], int]:
        stamp = self.registry.stamp(now_ns)
        return [snapshot_to_request(self.registry.cumulative(stamp))], stamp


def sinks_for(prom: Prometheus) -> PrometheusSinks:
    topology = parse_topology(
        {"sinks": [{"prometheus_remote_write": {"endpoint": f"{prom.url}/api/v1/write"}}]}
    )
    return PrometheusSinks(topology, Counter())


def samples(prom: Prometheus, metric: str, service: str, at: float) -> list[float]:
    result = prom.query(f'{metric}{{service_name="{service}"}}[1h]', at)
    assert len(result) <= 1
    return [float(v) for _, v in result[0]["values"]] if result else []


def test_new_series_start_at_zero_and_moved_series_do_not(prometheus_factory: Any) -> None:
    prom: Prometheus = prometheus_factory()
    shard = Shard()
    t = time.time_ns() - 60 * 10**9  # a minute ago, 10 s per flush
    step = 10 * 10**9

    async def run() -> float:
        sinks = sinks_for(prom)
        try:
            shard.add("a", 5, t)
            requests, stamp = shard.state(t + step)
            sinks.set_shard(0, requests, stamp, 0)  # a new shard: nothing published yet
            await sinks.push(stamp // 10**6)
            shard.add("a", 2, t + step + 1)
            shard.add("b", 3, t + step + 2)  # created after the first publish
            requests, stamp = shard.state(t + 2 * step)
            sinks.set_shard(0, requests, stamp, 0)
            await sinks.push(stamp // 10**6)
        finally:
            await sinks.stop()
        # The shard moves: the new owner starts from the checkpoint's stamp. Series "a"
        # and "b" were published before it; "c" is created after it.
        moved = sinks_for(prom)
        try:
            taken_at = shard.registry.last_stamp_ns
            shard.add("a", 1, t + 2 * step + 1)
            shard.add("c", 4, t + 2 * step + 2)
            requests, stamp = shard.state(t + 3 * step)
            moved.set_shard(0, requests, stamp, taken_at)
            await moved.push(stamp // 10**6)
        finally:
            await moved.stop()
        return (stamp // 10**6) / 1000  # the last sample's time, to the millisecond

    last = asyncio.run(run())
    wait_for(lambda: samples(prom, CALLS, "c", last), 30, "the moved shard's samples")
    # Each new series: one 0, then its values; a moved one continues without a 0.
    assert samples(prom, CALLS, "a", last) == [0, 5, 7, 8]
    assert samples(prom, CALLS, "b", last) == [0, 3, 3]
    assert samples(prom, CALLS, "c", last) == [0, 4]
    # So increase() over the whole history sees every span, at the last sample's time
    # (where Prometheus does not extrapolate: the 0 stops it at the start).
    for service, spans in {"a": 8, "b": 3, "c": 4}.items():
        (result,) = prom.query(f'increase({CALLS}{{service_name="{service}"}}[1h])', last)
        assert float(result["value"][1]) == pytest.approx(spans), service
    # Histograms too, native and classic: their 0 comes first as well.
    assert samples(prom, COUNT, "b", last) == [0, 3, 3]
    plus_inf = prom.query(f'{BUCKET}{{service_name="c", le="+Inf"}}[1h]', last)
    assert [float(v) for _, v in plus_inf[0]["values"]] == [0, 4]
    native = prom.query('traces_span_metrics_duration_milliseconds{service_name="c"}[1h]', last)
    assert [float(h["count"]) for _, h in native[0]["histograms"]] == [0, 4]


def test_the_scrape_endpoint_serves_a_new_series_as_zero_once() -> None:
    shard = Shard()
    topology = parse_topology({"sinks": [{"prometheus": {"port": 0}}]})
    sinks = PrometheusSinks(topology, Counter(), host="127.0.0.1")
    provider = sinks._scrape[0][1]._provider
    t = time.time_ns()

    def calls() -> dict[str, float]:
        return {dict(s.labels)["service_name"]: s.value for s in provider() if s.name == CALLS}

    shard.add("a", 5, t)
    requests, stamp = shard.state(t + 10)
    sinks.set_shard(0, requests, stamp, 0)
    assert calls() == {"a": 0}
    assert calls() == {"a": 5}
    shard.add("b", 2, t + 20)
    requests, stamp = shard.state(t + 30)
    sinks.set_shard(0, requests, stamp, 0)
    assert calls() == {"a": 5, "b": 0}
    assert calls() == {"a": 5, "b": 2}
    # Another worker takes the shard over from this state: nothing starts at 0 again.
    other = PrometheusSinks(topology, Counter(), host="127.0.0.1")
    other.set_shard(0, requests, stamp, shard.registry.last_stamp_ns)
    assert {
        dict(s.labels)["service_name"]: s.value
        for s in other._scrape[0][1]._provider()
        if s.name == CALLS
    } == {"a": 5, "b": 2}

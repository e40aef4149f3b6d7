"""Remote write into a real Prometheus: native and classic histograms, both naming
profiles, target_info, exemplars, and the client's retry rules against a real server."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import defaultdict
from typing import Any

import pytest
from aiohttp import web

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.config.load import parse_topology
from spanmetrics.export.otlp import snapshot_to_request
from spanmetrics.export.prometheus import (
    PrometheusConverter,
    RemoteWriteClient,
    RemoteWriteError,
    encode_write_request,
)
from tests.builders import ERROR, SERVER, UNSET, request, resource, span
from tests.clock import FakeClock
from tests.integration.prometheus import Prometheus, wait_for

pytestmark = pytest.mark.integration

SERVICES = {"checkout": 40.0, "cart": 8.0}  # median duration, ms
PODS = 3


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


class Load:
    """Spans from several pods per service through the real engine (cumulative)."""

    def __init__(self, unit: str = "ms") -> None:
        config = parse_topology(
            {"spanmetrics": {"histogram": {"unit": unit}, "exemplars": {"enabled": True}}}
        ).spanmetrics
        self.engine = SpanMetricsEngine(config, FakeClock())
        self.rng = random.Random(7)
        self.durations: dict[str, list[float]] = defaultdict(list)
        self.calls: dict[str, int] = defaultdict(int)

    def send(self, spans_per_pod: int) -> None:
        now_ns = time.time_ns()
        for service, median in SERVICES.items():
            for pod in range(PODS):
                spans = []
                for _ in range(spans_per_pod):
                    ms = self.rng.lognormvariate(math.log(median), 0.8)
                    self.durations[service].append(ms)
                    status = ERROR if self.rng.random() < 0.05 else UNSET
                    spans.append(span("GET /api", SERVER, status, ms, now_ns - 10**9))
                self.calls[service] += spans_per_pod
                attrs = {
                    "service.name": service,
                    "service.instance.id": f"{service}-{pod}",
                    "k8s.pod.name": f"{service}-{pod}",
                    "k8s.namespace.name": "shop",
                }
                self.engine.consume(request(resource(attrs, *spans)))

    def body(self, converter: PrometheusConverter, ts_ms: int, native: bool = True) -> bytes:
        snapshot = self.engine.flush()
        series = converter.convert(snapshot_to_request(snapshot), ts_ms)
        return encode_write_request(series, "native" if native else "classic")


def write(prom: Prometheus, body: bytes) -> None:
    async def go() -> None:
        client = RemoteWriteClient(f"{prom.url}/api/v1/write")
        try:
            await client.send(body)
        finally:
            await client.close()

    asyncio.run(go())


def two_writes(prom: Prometheus, converter: PrometheusConverter, native: bool, unit: str = "ms"):
    """A first sample, then 30 s later one with more spans; returns the load, the spans
    between the two samples (what rate() sees) and the evaluation time."""
    load = Load(unit)
    now_ms = int(time.time() * 1000)
    load.send(5)
    write(prom, load.body(converter, now_ms - 30_000, native))
    before = {s: list(v) for s, v in load.durations.items()}
    load.send(400)
    write(prom, load.body(converter, now_ms, native))
    between = {s: load.durations[s][len(before[s]) :] for s in SERVICES}
    return load, between, now_ms / 1000


def test_native_histograms_give_fleet_wide_quantiles_and_exact_counts(
    prometheus_factory: Any,
) -> None:
    prom: Prometheus = prometheus_factory()
    converter = PrometheusConverter("traces.span.metrics", "ms", "otel", "native")
    load, between, at = two_writes(prom, converter, native=True)
    name = "traces_span_metrics_duration_milliseconds"

    calls = wait_for(
        lambda: prom.query("sum by (service_name) (traces_span_metrics_calls_total)", at),
        30, "calls",
    )  # fmt: skip
    assert {r["metric"]["service_name"]: float(r["value"][1]) for r in calls} == {
        s: float(n) for s, n in load.calls.items()
    }
    raw = prom.query(f"sum by (service_name) ({name})", at)
    q95 = prom.query(f"histogram_quantile(0.95, sum by (service_name) (rate({name}[1m])))", at)
    estimates = {r["metric"]["service_name"]: float(r["value"][1]) for r in q95}
    assert set(estimates) == set(SERVICES)
    for result in raw:
        service = result["metric"]["service_name"]
        histogram = result["histogram"][1]
        assert float(histogram["count"]) == load.calls[service]
        # Bucket boundaries are [rule, lower, upper, count]: their ratio is the base.
        lower, upper = (float(x) for x in histogram["buckets"][-1][1:3])
        base = upper / lower
        estimate = estimates[service]
        exact = nearest_rank(between[service], 0.95)
        assert abs(estimate / exact - 1) <= base - 1, (service, estimate, exact, base)
    errors = prom.query('sum(traces_span_metrics_calls_total{status_code="STATUS_CODE_ERROR"})', at)
    assert float(errors[0]["value"][1]) > 0
    info = prom.query('target_info{job="checkout"}', at)
    assert {r["metric"]["instance"] for r in info} == {f"checkout-{i}" for i in range(PODS)}
    assert {r["metric"]["k8s_pod_name"] for r in info} == {f"checkout-{i}" for i in range(PODS)}
    exemplars = prom.api("query_exemplars", query=name, start=at - 120, end=at + 1)
    trace_ids = {e["labels"]["trace_id"] for group in exemplars for e in group["exemplars"]}
    assert trace_ids and all(len(t) == 32 for t in trace_ids)


def test_classic_buckets_and_tempo_names(prometheus_factory: Any) -> None:
    prom: Prometheus = prometheus_factory()
    converter = PrometheusConverter("traces.span.metrics", "s", "tempo", "classic")
    load, between, at = two_writes(prom, converter, native=False, unit="s")
    calls = wait_for(
        lambda: prom.query("sum by (service) (traces_spanmetrics_calls_total)", at), 30, "calls"
    )
    assert {r["metric"]["service"]: float(r["value"][1]) for r in calls} == {
        s: float(n) for s, n in load.calls.items()
    }
    q95 = prom.query(
        "histogram_quantile(0.95, sum by (le, service) "
        "(rate(traces_spanmetrics_latency_bucket[1m])))",
        at,
    )
    for result in q95:
        service = result["metric"]["service"]
        exact = nearest_rank(between[service], 0.95) / 1000  # seconds
        estimate = float(result["value"][1])
        # Classic buckets four per doubling: the estimate lies in the bucket of the exact
        # value, so within a factor 2**(1/4) of it.
        ratio = 2 ** (1 / 4)
        assert exact / ratio <= estimate <= exact * ratio, (service, estimate, exact)
    counts = prom.query("sum by (service) (traces_spanmetrics_latency_count)", at)
    assert {r["metric"]["service"]: float(r["value"][1]) for r in counts} == {
        s: float(n) for s, n in load.calls.items()
    }
    assert len(q95) == len(SERVICES)


class FlakyEndpoint:
    """A real HTTP server answering remote writes with scripted statuses."""

    def __init__(self, statuses: list[tuple[int, dict[str, str]]]) -> None:
        self.statuses = statuses
        self.arrivals: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrivals.append(time.monotonic())
        status, headers = self.statuses.pop(0) if self.statuses else (204, {})
        return web.Response(status=status, headers=headers, text="" if status < 300 else "no")

    async def run(self, coro_factory: Any) -> Any:
        app = web.Application()
        app.router.add_post("/api/v1/write", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        client = RemoteWriteClient(f"http://127.0.0.1:{port}/api/v1/write", backoff_s=0.05)
        try:
            return await coro_factory(client), client
        finally:
            await client.close()
            await runner.cleanup()


def test_retries_on_5xx_and_429_and_stops_on_400() -> None:
    endpoint = FlakyEndpoint([(503, {}), (429, {"Retry-After": "0.3"}), (204, {})])
    _, client = asyncio.run(endpoint.run(lambda c: c.send(b"x")))
    assert len(endpoint.arrivals) == 3
    assert endpoint.arrivals[2] - endpoint.arrivals[1] >= 0.3  # Retry-After honoured
    assert client.counters["remote_write_retries"] == 2

    refused = FlakyEndpoint([(400, {})])

    async def send(c: RemoteWriteClient) -> None:
        await c.send(b"x")

    with pytest.raises(RemoteWriteError) as err:
        asyncio.run(refused.run(send))
    assert err.value.status == 400
    assert len(refused.arrivals) == 1  # not retried

    down = FlakyEndpoint([(500, {})] * 10)

    async def send_limited(c: RemoteWriteClient) -> None:
        c.max_attempts = 3
        await c.send(b"x")

    with pytest.raises(RemoteWriteError, match="gave up after 3 attempts"):
        asyncio.run(down.run(send_limited))
    assert len(down.arrivals) == 3

"""End to end into a real Prometheus: spans from several pods, through a fleet of workers
that rebalances while it runs, remote-written with the default settings (native and
classic histograms).

Checks what a user reads in Grafana and in Jaeger's Monitor tab: exact counts, exact
``increase()`` from each series' first span on (every series starts with a 0 sample), a
fleet-wide p95 within the histogram's bucket error of the exact p95 of the raw durations,
Jaeger's own three queries with its p95 within 10%, exemplars, no refused (out-of-order or
duplicate) writes and no counter that ever goes down while workers join and leave, and
data behind every panel of the shipped dashboards.
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from spanmetrics.dev.synth import encode_request
from spanmetrics.kafka.admin import ensure_topics
from tests.builders import ERROR, SERVER, UNSET, request, resource, span
from tests.integration.prometheus import Prometheus, wait_for
from tests.integration.test_fleet_exactness import Fleet

pytestmark = pytest.mark.integration

PARTITIONS = 4
SERVICES = {"checkout": 40.0, "cart": 8.0, "frontend": 20.0}  # median duration, ms
PODS = 2
ROUTES = ("GET /api", "POST /api")
OUTCOMES = ((UNSET, 200), (ERROR, 500))
DURATION = "traces_span_metrics_duration_milliseconds"
CALLS = "traces_span_metrics_calls_total"


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


class Spans:
    """Span records of three services with two pods each, and what they should give."""

    def __init__(self) -> None:
        self.rng = random.Random(3)
        self.calls: Counter[tuple[str, str]] = Counter()  # (service, status code) -> spans
        self.durations: dict[str, list[float]] = defaultdict(list)
        self.operations: set[tuple[str, str]] = set()

    def _record(self, items: list[tuple[str, int, str, int, int, float]]) -> bytes:
        by_pod: dict[tuple[str, int], list[Any]] = defaultdict(list)
        now_ns = time.time_ns()
        for service, pod, route, status, code, ms in items:
            s = span(route, SERVER, status, ms, now_ns - 2 * 10**9,
                     attributes={"http.request.method": route.split()[0],
                                 "http.response.status_code": code})  # fmt: skip
            by_pod[(service, pod)].append(s)
            name = "STATUS_CODE_ERROR" if status == ERROR else "STATUS_CODE_UNSET"
            self.calls[(service, name)] += 1
        resources = [
            resource({"service.name": service, "service.instance.id": f"{service}-{pod}",
                      "k8s.pod.name": f"{service}-{pod}", "k8s.namespace.name": "shop",
                      "k8s.deployment.name": service}, *spans)
            for (service, pod), spans in by_pod.items()
        ]  # fmt: skip
        return encode_request(request(*resources), "otlp_proto")

    def batch(self, n: int) -> bytes:
        items = []
        for _ in range(n):
            service = self.rng.choice(list(SERVICES))
            ms = self.rng.lognormvariate(math.log(SERVICES[service]), 0.7)
            status, code = OUTCOMES[1] if self.rng.random() < 0.04 else OUTCOMES[0]
            route = self.rng.choice(ROUTES)
            items.append((service, self.rng.randrange(PODS), route, status, code, ms))
            self.durations[service].append(ms)
            self.operations.add((service, route))
        return self._record(items)


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


def write_refusals(prom: Prometheus) -> list[str]:
    """Prometheus's own count of non-2xx answers to remote writes (out of order,
    duplicate or out of bounds samples are refused with 400)."""
    return [
        line
        for line in prom.self_metrics().splitlines()
        if line.startswith("prometheus_http_requests_total")
        and 'handler="/api/v1/write"' in line
        and 'code="2' not in line
        and not line.endswith(" 0")
    ]


@pytest.mark.once  # as the fleet exactness test: the protocol, not the reader
def test_fleet_into_prometheus_through_rebalances(
    broker: Any, tmp_path: Path, prometheus_factory: Any, redis_url: str, redis_prefix: str
) -> None:
    prom: Prometheus = prometheus_factory()
    suffix = redis_prefix[-8:]
    topic, metrics_topic, dlq = f"spans-{suffix}", f"metrics-{suffix}", f"dlq-{suffix}"
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "source": {"topic": topic, "broker": broker.url, "group": redis_prefix,
                           "dead_letter_topic": dlq},
                "spanmetrics": {
                    "metrics_flush_interval": "1s",
                    "dimensions": [{"name": "http.request.method"},
                                   {"name": "http.response.status_code"}],
                    "exemplars": {"enabled": True},
                },
                "sinks": [
                    {"kafka": {"topic": metrics_topic}},
                    {"prometheus_remote_write": {"endpoint": f"{prom.url}/api/v1/write"}},
                ],
                "state": redis_url,
            }
        )
    )  # fmt: skip
    fleet = Fleet(topology, tmp_path)
    spans = Spans()
    asyncio.run(ensure_topics(broker.bootstrap, {topic: PARTITIONS, metrics_topic: 1, dlq: 1}))

    def total() -> float:
        result = prom.query(f"sum({CALLS})")
        return float(result[0]["value"][1]) if result else 0.0

    try:
        fleet.start("a")
        fleet.start("b")
        asyncio.run(produce(broker.bootstrap, topic, [spans.batch(300) for _ in range(15)]))
        # Every series is created by now (and published with its 0 first): a series created
        # in the flush just before its shard moves gets no 0 (see the README).
        first = sum(spans.calls.values())
        wait_for(lambda: total() == first, 120, "the first spans in Prometheus")
        # Rebalances while spans flow: c joins, a leaves (SIGTERM), then b is killed.
        fleet.start("c")
        asyncio.run(produce(broker.bootstrap, topic, [spans.batch(300) for _ in range(15)]))
        fleet.signal("a", signal.SIGTERM)
        asyncio.run(produce(broker.bootstrap, topic, [spans.batch(300) for _ in range(10)]))
        missing_service = encode_request(request(resource({}, span("orphan"))), "otlp_proto")
        asyncio.run(produce(broker.bootstrap, topic, [missing_service, b"\x00not otlp"]))
        fleet.signal("b", signal.SIGKILL)
        expected_total = sum(spans.calls.values())
        wait_for(lambda: total() == expected_total, 180, f"{expected_total} calls")
        at = time.time()
        # Counts per service and status code are exact.
        calls = prom.query(f"sum by (service_name, status_code) ({CALLS})", at)
        got = {(r["metric"]["service_name"], r["metric"]["status_code"]): float(r["value"][1])
               for r in calls}  # fmt: skip
        assert got == {k: float(v) for k, v in spans.calls.items()}
        # increase() sees every span: each series starts with a 0, so at its last sample
        # (where Prometheus extrapolates nowhere) it is exactly the spans of the series.
        increases: Counter[tuple[str, str]] = Counter()
        for series in prom.api("query", query=f"{CALLS}[30m]", time=at)["result"]:
            labels = series["metric"]
            values = series["values"]
            assert float(values[0][1]) == 0, (labels, values[:3])
            selector = ",".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__")
            (result,) = prom.query(f"increase({CALLS}{{{selector}}}[30m])", values[-1][0])
            increases[(labels["service_name"], labels["status_code"])] += float(result["value"][1])
        assert increases == {k: pytest.approx(v) for k, v in spans.calls.items()}
        check_jaeger(prom, spans, at)
        # The fleet-wide p95 from merged native histograms is as true as a bucket allows.
        q95 = prom.query(
            f"histogram_quantile(0.95, sum by (service_name) (rate({DURATION}[10m])))", at
        )
        estimates = {r["metric"]["service_name"]: float(r["value"][1]) for r in q95}
        raw = prom.query(f"sum by (service_name) ({DURATION})", at)
        assert set(estimates) == set(SERVICES) == {r["metric"]["service_name"] for r in raw}
        for result in raw:
            service = result["metric"]["service_name"]
            buckets = result["histogram"][1]["buckets"]
            base = max(float(b[2]) / float(b[1]) for b in buckets if float(b[1]) > 0)
            exact = nearest_rank(spans.durations[service], 0.95)
            error = abs(estimates[service] / exact - 1)
            assert error <= base - 1, (service, estimates[service], exact, base)
        # Exemplars link the latency to traces.
        exemplars = prom.api("query_exemplars", query=DURATION, start=at - 600, end=at + 1)
        assert any(e["labels"].get("trace_id") for g in exemplars for e in g["exemplars"])
        # One writer at a time: nothing refused, no counter ever went down.
        assert write_refusals(prom) == []
        assert not prom.query("spanmetrics_worker_remote_write_failures_total > 0", at)
        history = prom.api("query", query=f"{CALLS}[10m]", time=at)["result"]
        for series in history:
            values = [float(v) for _, v in series["values"]]
            assert values == sorted(values), (series["metric"], values)
        # Every panel of the shipped dashboards has data.
        check_dashboards(prom, at)
    finally:
        fleet.stop_all()


def check_jaeger(prom: Prometheus, spans: Spans, at: float) -> None:
    """Jaeger's Monitor tab: its three queries, as it renders them, with its shipped SPM
    naming config, per service and per operation."""
    from tests.jaeger import JaegerConfig, JaegerQueries

    services = tuple(sorted(SERVICES))
    jaeger = JaegerQueries(JaegerConfig(), services)

    def by_service(expr: str) -> dict[str, float]:
        return {r["metric"]["service_name"]: float(r["value"][1]) for r in prom.query(expr, at)}

    p95 = by_service(jaeger.latencies(0.95))
    calls = by_service(jaeger.call_rates())
    errors = by_service(jaeger.error_rates())
    assert set(p95) == set(calls) == set(errors) == set(services)
    for service in services:
        exact = nearest_rank(spans.durations[service], 0.95)
        assert abs(p95[service] / exact - 1) <= 0.10, (service, p95[service], exact)
        n_errors = spans.calls[(service, "STATUS_CODE_ERROR")]
        n_all = n_errors + spans.calls[(service, "STATUS_CODE_UNSET")]
        # rate() extrapolates each series a little past its samples; the ratio of two
        # rates over the same series stays within a small fraction of the exact one.
        assert errors[service] == pytest.approx(n_errors / n_all, rel=0.02), service
        assert calls[service] > 0
    per_operation = JaegerQueries(JaegerConfig(), services, by_operation=True)
    found = {
        (r["metric"]["service_name"], r["metric"]["span_name"])
        for r in prom.query(per_operation.latencies(0.95), at)
    }
    assert found == spans.operations


def check_dashboards(prom: Prometheus, at: float) -> None:
    from tests.dashboards import KUBERNETES_DASHBOARD, load_dashboards, panel_queries

    variables = {"service": "checkout", "span_name": ".*", "__rate_interval": "1m",
                 "__interval": "15s", "__range": "10m"}  # fmt: skip
    empty = []
    for uid, dashboard in load_dashboards().items():
        if uid == KUBERNETES_DASHBOARD:
            continue  # other metrics: tests/integration/test_kubernetes_dashboard.py
        for title, expr in panel_queries(dashboard, variables):
            if not prom.query(expr, at):
                empty.append(f"{uid} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


@pytest.mark.once  # fleet behaviour, not the reader's: see test_fleet_exactness
def test_jaeger_and_tempo_names_side_by_side(
    broker: Any, tmp_path: Path, prometheus_factory: Any, redis_url: str, redis_prefix: str
) -> None:
    """One Prometheus filled with both naming profiles (seconds, as Tempo's needs): Jaeger's
    three queries read the otel names, Tempo's and Grafana's usual queries the tempo ones,
    classic and native, each with every service and a true p95."""
    from tests.jaeger import JaegerConfig, JaegerQueries

    prom: Prometheus = prometheus_factory()
    suffix = redis_prefix[-8:]
    topic = f"spans-names-{suffix}"
    write = f"{prom.url}/api/v1/write"
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "source": {"topic": topic, "broker": broker.url, "group": redis_prefix,
                           "dead_letter_topic": f"dlq-names-{suffix}"},
                "spanmetrics": {"metrics_flush_interval": "1s", "histogram": {"unit": "s"}},
                "sinks": [
                    {"prometheus_remote_write": {"endpoint": write}},
                    {"prometheus_remote_write": {"endpoint": write, "naming": "tempo"}},
                ],
                "state": redis_url,
            }
        )
    )  # fmt: skip
    spans = Spans()
    asyncio.run(ensure_topics(broker.bootstrap, {topic: PARTITIONS}))
    asyncio.run(produce(broker.bootstrap, topic, [spans.batch(400) for _ in range(8)]))
    expected = float(sum(spans.calls.values()))
    fleet = Fleet(topology, tmp_path)

    def total(metric: str) -> float:
        result = prom.query(f"sum({metric})")
        return float(result[0]["value"][1]) if result else 0.0

    try:
        fleet.start("solo")
        wait_for(lambda: total("traces_span_metrics_calls_total") == expected, 120, "otel names")
        wait_for(lambda: total("traces_spanmetrics_calls_total") == expected, 30, "tempo names")
    finally:
        fleet.stop_all()
    at = time.time()
    services = tuple(sorted(SERVICES))
    exact_s = {s: nearest_rank(spans.durations[s], 0.95) / 1000 for s in services}

    def by(label: str, expr: str) -> dict[str, float]:
        return {r["metric"][label]: float(r["value"][1]) for r in prom.query(expr, at)}

    jaeger = JaegerQueries(JaegerConfig(latency_unit="s"), services)
    tempo = {
        "classic p95": "histogram_quantile(0.95, sum by (le, service) "
        "(rate(traces_spanmetrics_latency_bucket[10m])))",
        "native p95": "histogram_quantile(0.95, sum by (service) "
        "(rate(traces_spanmetrics_latency[10m])))",
    }
    for name, p95 in {
        "jaeger": by("service_name", jaeger.latencies(0.95)),
        **{f"tempo {k}": by("service", v) for k, v in tempo.items()},
    }.items():
        assert set(p95) == set(services), name
        for service in services:
            assert abs(p95[service] / exact_s[service] - 1) <= 0.10, (name, service, p95)
    assert set(by("service_name", jaeger.call_rates())) == set(services)
    assert set(by("service_name", jaeger.error_rates())) == set(services)
    tempo_calls = by("service", "sum by (service) (rate(traces_spanmetrics_calls_total[10m]))")
    tempo_errors = by(
        "service",
        'sum by (service) (rate(traces_spanmetrics_calls_total{status_code="STATUS_CODE_ERROR"}'
        "[10m]))",
    )
    assert set(tempo_calls) == set(tempo_errors) == set(services)
    counts = by("service", "sum by (service) (traces_spanmetrics_latency_count)")
    assert counts == {
        s: float(spans.calls[(s, "STATUS_CODE_UNSET")] + spans.calls[(s, "STATUS_CODE_ERROR")])
        for s in services
    }
    assert write_refusals(prom) == []


@pytest.mark.once  # fleet behaviour, not the reader's: see test_fleet_exactness
def test_worker_serves_its_shards_on_metrics(
    broker: Any, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """The worker's /metrics endpoint: text for plain scrapers, protobuf for Prometheus with
    native histograms, both with exact counts of what was sent."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from spanmetrics.net import find_free_port

    suffix = redis_prefix[-8:]
    topic = f"spans-scrape-{suffix}"
    port = find_free_port()
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "source": {"topic": topic, "broker": broker.url, "group": redis_prefix,
                           "dead_letter_topic": f"dlq-scrape-{suffix}"},
                "spanmetrics": {"metrics_flush_interval": "1s"},
                "sinks": [{"prometheus": {"port": 9464}}],
                "state": redis_url,
            }
        )
    )  # fmt: skip
    spans = Spans()
    asyncio.run(ensure_topics(broker.bootstrap, {topic: PARTITIONS}))
    asyncio.run(produce(broker.bootstrap, topic, [spans.batch(200) for _ in range(5)]))
    fleet = Fleet(topology, tmp_path, extra_args=["--scrape-port", str(port)])

    def scrape(accept: str | None = None) -> tuple[str, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.headers["Content-Type"], r.read()
        except OSError:
            return "", b""

    def calls() -> dict[tuple[str, str], float]:
        _, body = scrape()
        out: dict[tuple[str, str], float] = defaultdict(float)
        for family in text_string_to_metric_families(body.decode()):
            if family.name == "traces_span_metrics_calls":
                for sample in family.samples:
                    key = (sample.labels["service_name"], sample.labels["status_code"])
                    out[key] += sample.value
        return dict(out)

    expected = {k: float(v) for k, v in spans.calls.items()}
    try:
        fleet.start("solo")
        wait_for(lambda: calls() == expected, 90, "exact counts on /metrics")
        content_type, body = scrape(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
            "encoding=delimited"
        )
        assert content_type.startswith("application/vnd.google.protobuf")
        assert b"traces_span_metrics_duration_milliseconds" in body
    finally:
        fleet.stop_all()

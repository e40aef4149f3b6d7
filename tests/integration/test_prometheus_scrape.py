"""A real Prometheus scrapes the /metrics endpoint: protobuf with native histograms when
it has them enabled, text with classic buckets when not."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from spanmetrics.export.otlp import snapshot_to_request
from spanmetrics.export.prometheus import PrometheusConverter, ScrapeServer, Series
from tests.builders import request, resource, span
from tests.integration.prometheus import Prometheus, wait_for
from tests.integration.test_prometheus_remote_write import Load

pytestmark = pytest.mark.integration


@pytest.fixture
def endpoint() -> Iterator[tuple[int, Load]]:
    """A ScrapeServer on a free port, on its own event loop thread, serving a real load."""
    load = Load()
    load.send(50)
    # A resource without service.instance.id: its series must not get the scraper's
    # instance label (honor_labels with an explicit empty instance).
    load.engine.consume(request(resource({"service.name": "nopod"}, span("GET /x"))))
    converter = PrometheusConverter("traces.span.metrics", "ms", "otel", "native")
    series: list[Series] = converter.convert(snapshot_to_request(load.engine.flush()), 0)
    loop = asyncio.new_event_loop()
    server = ScrapeServer("127.0.0.1", 0, lambda: series)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.port, load
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def config(port: int) -> str:
    return f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: spanmetrics-workers
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def test_native_histograms_by_protobuf(prometheus_factory: Any, endpoint: Any) -> None:
    port, load = endpoint
    prom: Prometheus = prometheus_factory(config(port))
    counts = wait_for(
        lambda: prom.query(
            "sum by (service_name) (histogram_count(traces_span_metrics_duration_milliseconds))"
        ),
        60, "native histograms scraped",
    )  # fmt: skip
    got = {r["metric"]["service_name"]: float(r["value"][1]) for r in counts}
    assert got == {**{s: float(n) for s, n in load.calls.items()}, "nopod": 1.0}
    nopod = prom.query('traces_span_metrics_calls_total{service_name="nopod"}')
    assert "instance" not in nopod[0]["metric"]
    assert nopod[0]["metric"]["job"] == "nopod"


def test_classic_buckets_by_text(prometheus_factory: Any, endpoint: Any) -> None:
    port, load = endpoint
    prom: Prometheus = prometheus_factory(config(port), flags=())
    buckets = wait_for(
        lambda: prom.query(
            'sum by (service_name) (traces_span_metrics_duration_milliseconds_bucket{le="+Inf"})'
        ),
        60, "classic buckets scraped",
    )  # fmt: skip
    got = {r["metric"]["service_name"]: float(r["value"][1]) for r in buckets}
    assert got == {**{s: float(n) for s, n in load.calls.items()}, "nopod": 1.0}
    assert not prom.query("histogram_count(traces_span_metrics_duration_milliseconds)")

"""The remote-write endpoint down for 2 minutes (issue #13, item 4): a real Prometheus is
stopped while spans flow, then started again on the same port with its data. The worker
retries, gives up on each flush's write, keeps running, and once Prometheus is back it
sends the newer cumulative state: the counts in Prometheus are exact, and nothing it was
sent was refused."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from spanmetrics.kafka.admin import ensure_topics
from tests.integration.prometheus import Prometheus, wait_for
from tests.integration.test_fleet_exactness import Fleet
from tests.integration.test_fleet_prometheus import CALLS, Spans, produce, write_refusals

pytestmark = [pytest.mark.integration, pytest.mark.once]

#: How long the endpoint is down, as the issue has it.
OUTAGE_S = 120.0


def calls_by_service(prom: Prometheus) -> Counter[str]:
    return Counter(
        {r["metric"]["service_name"]: round(float(r["value"][1]))
         for r in prom.query(f"sum by (service_name) ({CALLS})")}
    )  # fmt: skip


def test_remote_write_endpoint_down_for_2_minutes(
    broker: Any, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic = f"spans-{suffix}"
    workdir = tmp_path / "prometheus"
    prom = Prometheus(workdir)
    topology = tmp_path / "topology.yaml"
    topology.write_text(yaml.safe_dump({
        "source": {"topic": topic, "broker": broker.url, "group": redis_prefix,
                   "dead_letter_topic": f"dlq-{suffix}"},
        "state": redis_url,
        "spanmetrics": {"metrics_flush_interval": "2s"},
        "sinks": [{"prometheus_remote_write": {"endpoint": f"{prom.url}/api/v1/write"}}],
    }))  # fmt: skip
    fleet = Fleet(topology, tmp_path)
    spans = Spans()

    def expected() -> Counter[str]:
        out: Counter[str] = Counter()
        for (service, _), n in spans.calls.items():
            out[service] += n
        return out

    def send(records: int) -> None:
        asyncio.run(produce(broker.bootstrap, topic, [spans.batch(100) for _ in range(records)]))

    try:
        asyncio.run(ensure_topics(broker.bootstrap, {topic: 2}))
        fleet.start("a")
        send(10)
        wait_for(lambda: calls_by_service(prom) == expected(), 120, "the first counts")
        prom.stop()
        down_at = time.monotonic()
        print(f"\nPrometheus stopped at {time.strftime('%X')}")
        log = tmp_path / "a.log"
        before = log.read_text().count("gave up after")
        send(10)  # at the start of the outage
        wait_for(lambda: log.read_text().count("gave up after") > before, 60, "a failed write")
        time.sleep(max(OUTAGE_S / 2 - (time.monotonic() - down_at), 0))  # the outage itself
        send(10)  # in its middle
        time.sleep(max(OUTAGE_S - (time.monotonic() - down_at), 0))
        failed = log.read_text().count("gave up after") - before
        assert fleet.procs["a"].poll() is None, "the worker died during the outage"
        prom = Prometheus(workdir, port=prom.port)
        print(f"Prometheus back after {time.monotonic() - down_at:.0f} s; the worker gave up "
              f"{failed} writes meanwhile")  # fmt: skip
        got = wait_for(
            lambda: (c := calls_by_service(prom)) == expected() and c, 120, "the newer state"
        )
        print(f"calls in Prometheus after the outage: {dict(got)}")
        # 4xx refuses samples (out of order, duplicate); a 503 while Prometheus replays
        # its WAL after the restart is "not yet", which the worker retries.
        refused = [line for line in write_refusals(prom) if 'code="4' in line]
        assert not refused, refused
    finally:
        fleet.stop_all()
        prom.stop()
    text = (tmp_path / "a.log").read_text()
    assert failed >= 2, text[-3000:]
    assert re.search(r"remote write to \S+: error", text), text[-3000:]
    assert "Traceback" not in text, text[-3000:]

"""The broker paused for 30 s mid-stream (SIGSTOP, then SIGCONT; issue #13, item 4): two
workers wait, reconnect and catch up, and every span is counted exactly."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from spanmetrics.dev.broker import EmbeddedBroker
from spanmetrics.kafka.admin import ensure_topics
from tests.integration.batches import Batches
from tests.integration.test_fleet_exactness import Fleet, Output, expected_counts

pytestmark = [pytest.mark.integration, pytest.mark.once]

#: How long the outage lasts, as the issue has it.
OUTAGE_S = 30.0


def test_broker_frozen_for_30_seconds(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, metrics = f"bout-{suffix}", f"bout-metrics-{suffix}"
    seen: list[str] = []
    with EmbeddedBroker() as own:  # this test's own broker: it freezes it
        topology = tmp_path / "t.yaml"
        topology.write_text(yaml.safe_dump({
            "source": {"topic": topic, "broker": own.url, "group": redis_prefix,
                       "dead_letter_topic": f"dlq-{suffix}"},
            "state": redis_url,
            "spanmetrics": {"metrics_flush_interval": "1s"},
            "sinks": [{"kafka": {"topic": metrics}}],
        }))  # fmt: skip
        fleet = Fleet(topology, tmp_path)

        async def scenario() -> tuple[bool, Any, Output]:
            await ensure_topics(own.bootstrap, {topic: 4, metrics: 1})
            output = Output(own.bootstrap, metrics)
            await output.consumer.start()
            batches = Batches(own.bootstrap, topic, seed=22)
            await batches.start()
            try:
                fleet.start("a")
                fleet.start("b")
                await batches.send(10)
                assert await output.wait_for(expected_counts(batches.sent), False, 120)
                await batches.send(10)  # read, maybe not yet cut, when the broker stops
                assert own.pid is not None
                os.kill(own.pid, signal.SIGSTOP)
                seen.append(f"broker frozen at {time.strftime('%X')}")
                await asyncio.sleep(OUTAGE_S)  # the outage itself: nothing to await
                os.kill(own.pid, signal.SIGCONT)
                seen.append(f"broker back at {time.strftime('%X')}")
                await batches.send(10)
                expected = expected_counts(batches.sent)
                done = await output.wait_for(expected, False, 150)
                seen.append(f"output complete: {done} at {time.strftime('%X')}")
                return done, expected, output
            finally:
                await batches.stop()
                await output.consumer.stop()

        try:
            done, expected, output = asyncio.run(scenario())
            alive = {name: proc.poll() is None for name, proc in fleet.procs.items()}
        finally:
            if own.pid:
                os.kill(own.pid, signal.SIGCONT)
            fleet.stop_all()
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    print("\n" + "\n".join(seen))
    tail = "\n".join(text[-4000:] for text in logs.values())
    assert all(alive.values()), f"a worker died during the outage: {alive}\n{tail}"
    assert done, f"{output.totals(False)} != {expected}\n{tail}"

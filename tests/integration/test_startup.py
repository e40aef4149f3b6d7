"""A worker started before Redis and the broker (issue #13, item 7): it logs one line per
attempt naming the setting and the address, retries with a growing delay, never prints a
traceback, and once both are up (and the input topic exists) counts every span."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from spanmetrics.dev.broker import EmbeddedBroker
from spanmetrics.kafka.admin import ensure_topics
from spanmetrics.net import find_free_port
from tests.integration.batches import Batches
from tests.integration.test_fleet_exactness import Fleet, Output, expected_counts

pytestmark = [pytest.mark.integration, pytest.mark.once]


def _wait_for_line(log: Path, pattern: str, timeout_s: float = 60.0) -> str:
    """The first line of ``log`` matching ``pattern``, once written."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = log.read_text() if log.exists() else ""
        if match := re.search(pattern, text):
            return text[text.rfind("\n", 0, match.start()) + 1 : text.find("\n", match.end())]
        assert time.monotonic() < deadline, f"no line matching {pattern!r} in:\n{text[-3000:]}"
        time.sleep(0.2)


def test_a_worker_waits_for_redis_the_broker_and_its_topic_then_counts_everything(
    tmp_path: Path,
) -> None:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed")
    redis_port, broker_port = find_free_port(), find_free_port()
    suffix = uuid.uuid4().hex[:8]
    topic, metrics_topic = f"spans-{suffix}", f"metrics-{suffix}"
    topology = tmp_path / "topology.yaml"
    topology.write_text(yaml.safe_dump({
        "source": {"topic": topic, "broker": f"kafka://127.0.0.1:{broker_port}",
                   "group": f"startup-{suffix}", "dead_letter_topic": f"dlq-{suffix}"},
        "state": f"redis://127.0.0.1:{redis_port}/0",
        "spanmetrics": {"metrics_flush_interval": "1s"},
        "sinks": [{"kafka": {"topic": metrics_topic}}],
    }))  # fmt: skip
    log = tmp_path / "a.log"
    fleet = Fleet(topology, tmp_path)
    redis_proc = None
    try:
        fleet.start("a")
        line = _wait_for_line(log, r"state: cannot reach")
        assert f"redis://127.0.0.1:{redis_port}/0" in line and "retrying in 1 s" in line, line
        redis_proc = subprocess.Popen(
            [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        line = _wait_for_line(log, r"source\.broker: cannot reach")
        assert f"127.0.0.1:{broker_port}" in line, line
        with EmbeddedBroker(port=broker_port) as broker:
            line = _wait_for_line(log, r"source\.topic: topic '[^']+' does not exist")
            assert topic in line, line

            async def scenario() -> tuple[bool, Output, Batches]:
                await ensure_topics(broker.bootstrap, {topic: 2, metrics_topic: 1})
                batches = Batches(broker.bootstrap, topic, seed=13)
                await batches.start()
                try:
                    await batches.send(20)
                finally:
                    await batches.stop()
                output = Output(broker.bootstrap, metrics_topic)
                await output.consumer.start()
                try:
                    done = await output.wait_for(expected_counts(batches.sent), False, 120)
                finally:
                    await output.consumer.stop()
                return done, output, batches

            done, output, batches = asyncio.run(scenario())
            # Before the broker goes: what the worker logs once it is gone is not start-up.
            fleet.stop_all()
    finally:
        fleet.stop_all()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    text = log.read_text()
    assert done, f"{output.totals(False)} != {expected_counts(batches.sent)}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    # One line per attempt, and the delay grows.
    assert re.search(r"retrying in 2 s", text), text[-3000:]
    assert not re.search(r"ERROR aiokafka Unable connect", text), text[-3000:]

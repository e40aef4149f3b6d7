"""The worker's wait for the broker at start: the delays grow to 30 s and stay there, and
each failed attempt is one warning naming the setting."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import KafkaConnectionError

from spanmetrics.config.load import parse_topology
from spanmetrics.fleet.startup import NotThereYet, when_reachable


def test_the_delay_doubles_up_to_30_seconds(caplog: pytest.LogCaptureFixture) -> None:
    topology = parse_topology({"state": "memory://"})
    failures = [KafkaConnectionError("Unable to bootstrap")] * 7 + [NotThereYet("source.topic: x")]
    slept: list[float] = []

    async def prepare() -> int:
        if failures:
            raise failures.pop(0)
        return 4

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    with caplog.at_level(logging.WARNING, "spanmetrics.worker"):
        shards = asyncio.run(when_reachable(topology, "b:9092", prepare, sleep))
    assert shards == 4
    assert slept == [1, 2, 4, 8, 16, 30, 30, 30]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "source.broker: cannot reach b:9092 (KafkaConnectionError: Unable to bootstrap); "
        "retrying in 1 s"
    )
    assert lines[-1] == "source.topic: x; retrying in 30 s"
    assert len(lines) == 8

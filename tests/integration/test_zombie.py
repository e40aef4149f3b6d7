"""A worker frozen past its session (SIGSTOP) and then resumed (issue #13, item 4): the
group gives its partitions and shards to the other worker, and when it wakes, its late
checkpoint writes are fenced off, so it publishes nothing stale. Counts stay exact, each
stream keeps one start time, and no cumulative value goes down."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from spanmetrics.dev.synth import SpanGenerator
from spanmetrics.fleet.app import GROUP_TIMEOUT_S
from spanmetrics.kafka.admin import ensure_topics
from tests.integration.test_fleet_exactness import Fleet, Output, expected_counts, produce

pytestmark = [pytest.mark.integration, pytest.mark.once]


def test_a_worker_frozen_past_its_session_is_fenced_when_it_wakes(
    broker: Any, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, metrics_topic = f"spans-{suffix}", f"metrics-{suffix}"
    topology = tmp_path / "topology.yaml"
    topology.write_text(yaml.safe_dump({
        "source": {"topic": topic, "broker": broker.url, "group": redis_prefix,
                   "dead_letter_topic": f"dlq-{suffix}"},
        "state": redis_url,
        "spanmetrics": {"metrics_flush_interval": "1s"},
        "sinks": [{"kafka": {"topic": metrics_topic}}],
    }))  # fmt: skip
    fleet = Fleet(topology, tmp_path)
    generator = SpanGenerator(seed=5)

    def log(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text()

    async def scenario() -> tuple[bool, Output, Any, float]:
        await ensure_topics(broker.bootstrap, {topic: 4, metrics_topic: 1})
        output = Output(broker.bootstrap, metrics_topic)
        await output.consumer.start()
        try:
            fleet.start("a")
            fleet.start("b")
            sent = await produce(broker.bootstrap, topic, generator, 20)
            assert await output.wait_for(expected_counts(sent), False, 120), "no first output"
            deadline = time.monotonic() + 60
            while not re.search(r"shard \d+ from offset", log("a")):
                assert time.monotonic() < deadline, "a owns no shard"
                await output.poll()
            fleet.procs["a"].send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            print(f"\nSIGSTOP a at {time.strftime('%X')}")
            sent += await produce(broker.bootstrap, topic, generator, 20)
            # Only b can publish these: it must have taken a's partitions and shards.
            assert await output.wait_for(expected_counts(sent), False, 120), "b never took over"
            frozen_s = time.monotonic() - frozen_at
            print(f"b published everything after {frozen_s:.1f} s; SIGCONT a")
            fleet.procs["a"].send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 60
            while "released (fenced)" not in log("a") and "released (revoked)" not in log("a"):
                assert time.monotonic() < deadline, f"a never let go:\n{log('a')[-3000:]}"
                await output.poll()
            sent += await produce(broker.bootstrap, topic, generator, 10)
            done = await output.wait_for(expected_counts(sent), False, 120)
            return done, output, expected_counts(sent), frozen_s
        finally:
            await output.consumer.stop()

    try:
        done, output, expected, frozen_s = asyncio.run(scenario())
    finally:
        fleet.stop_all()
    a_log = log("a")
    tail = a_log[-3000:] + "\n" + log("b")[-3000:]
    assert done, f"{output.totals(False)} != {expected}\n{tail}"
    assert frozen_s > GROUP_TIMEOUT_S, "a was not frozen past its session"
    # What a did when it woke: its writes for shards it no longer owned were refused.
    fenced = re.findall(r"(?:shard|partition) \d+ released \(fenced\)", a_log)
    print(f"a on waking: {fenced}")
    assert fenced, f"a was never fenced:\n{tail}"
    for key, points in output.history.items():
        assert len({start for start, _, _ in points}) == 1, f"{key}: {points}"
        values = [v for _, _, v in sorted(points, key=lambda p: p[1])]
        assert values == sorted(values), f"{key} went down: {values}"

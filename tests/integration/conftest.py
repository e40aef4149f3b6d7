"""Fixtures for tests that start real components: the embedded broker, Redis.

- ``broker``: one embedded Tansu broker for the whole session (on a free port), stopped at
  the end. Tests share it, so each test uses its own topics (``unique_topic``).
- ``redis_url`` / ``redis_prefix``: the local Redis (db 7, or ``$SPANMETRICS_TEST_REDIS_URL``);
  tests name every key they create with ``redis_prefix``, and only those keys are deleted
  at teardown, so tests never touch anyone else's data. Skipped when Redis does not answer.
- ``private_redis``: a Redis of the test's own, on a free port, with an ACL user.
- :func:`consume_until`: read a topic from the beginning until a predicate holds.

Tests are plain functions that call ``asyncio.run(...)`` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spanmetrics.dev.broker import EmbeddedBroker
from spanmetrics.kafka.admin import bootstrap_servers, topic_partitions
from tests.integration.redis_server import private_redis_server

#: Redis used by the integration tests; a db of its own, and still only prefixed keys.
REDIS_URL = os.environ.get("SPANMETRICS_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """An embedded broker on a free port for the whole session, stopped at teardown."""
    with EmbeddedBroker() as embedded:
        yield embedded


def _topic_name(request: pytest.FixtureRequest, suffix: str = "") -> str:
    # Kafka topic names: [a-zA-Z0-9._-], at most 249 characters.
    base = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:60].strip("-")
    return f"t-{base}{suffix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses (test name + random suffix); not created."""
    return _topic_name(request)


@pytest.fixture
def topic_factory(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Makes more unique topic names, for tests that need several."""
    return lambda suffix="": _topic_name(request, f"-{suffix}" if suffix else "")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of this test's own, with an ACL user and password only: its URL and process
    (see :func:`tests.integration.redis_server.private_redis_server`)."""
    yield from private_redis_server(tmp_path)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis; skips the test when Redis does not answer."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as err:
        pytest.skip(f"Redis at {REDIS_URL} does not answer ({err}); start redis-server")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique string to put in every Redis key (or group name) a test creates.

    At teardown every key of the test db *containing* the prefix is deleted: state stores
    put a group name inside their keys (``spanmetrics:<group>:...``), so using the prefix
    as the group name is enough.
    """
    import redis

    prefix = f"spanmetrics-test-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


async def consume_until(
    bootstrap: str,
    topic: str,
    predicate: Callable[[list[Any]], bool],
    *,
    timeout_s: float = 20.0,
    settle_s: float = 0.0,
) -> list[Any]:
    """Read ``topic`` (all partitions, from the beginning) until ``predicate(records)`` holds.

    ``records`` is the list of aiokafka ``ConsumerRecord`` read so far (per partition in
    offset order). Polls; never sleeps a fixed time. With ``settle_s``, keeps reading that
    much longer once the predicate holds, so that a test can assert nothing *more* arrived
    (e.g. duplicates). Uses no consumer group and commits nothing.

    Raises:
        TimeoutError: the predicate did not hold within ``timeout_s`` (the message says how
            many records were read).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    deadline = time.monotonic() + timeout_s
    # Wait for the topic without creating it (a consumer's metadata request would).
    while (partitions := await topic_partitions(bootstrap, topic)) is None:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topic {topic!r} did not appear within {timeout_s:g}s")
        await asyncio.sleep(0.05)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(bootstrap),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Records of 1000 spans are ~0.5 MB (protobuf) to ~1 MB (JSON).
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        settle_deadline: float | None = None
        while True:
            now = time.monotonic()
            if settle_deadline is None and predicate(records):
                if settle_s <= 0:
                    return records
                settle_deadline = now + settle_s
            if settle_deadline is not None and now >= settle_deadline:
                return records
            if now >= deadline and settle_deadline is None:
                raise TimeoutError(
                    f"predicate not met on topic {topic!r} after {len(records)} records "
                    f"in {timeout_s:g}s"
                )
            limit = settle_deadline if settle_deadline is not None else deadline
            wait_ms = max(1, min(200, int((limit - now) * 1000)))
            batches = await consumer.getmany(timeout_ms=wait_ms)
            for tp in sorted(batches, key=lambda tp: tp.partition):
                records.extend(batches[tp])
    finally:
        await consumer.stop()


@pytest.fixture
def consume() -> Callable[..., Awaitable[list[Any]]]:
    """:func:`consume_until` as a fixture, for tests that prefer not to import conftest."""
    return consume_until


@pytest.fixture
def prometheus_factory(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """Starts real Prometheus processes (``tests/integration/prometheus.py``); all are
    stopped at teardown."""
    from tests.integration.prometheus import Prometheus

    started: list[Prometheus] = []

    def start(config: str = "", **kwargs: Any) -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus-{len(started)}", config, **kwargs)
        started.append(prom)
        return prom

    yield start
    for prom in started:
        prom.stop()

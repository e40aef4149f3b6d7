"""The embedded broker (Tansu): start, topics, a produce/consume round trip, clean stops."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from spanmetrics.dev.broker import BrokerError, EmbeddedBroker, find_free_port, resolve_binary
from spanmetrics.kafka.admin import create_topic, ensure_topics, topic_partitions
from tests.integration.conftest import consume_until

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    """True if no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return not Path(f"/proc/{pid}").exists()
    return False


def test_broker_serves_requests(broker: EmbeddedBroker) -> None:
    assert broker.running
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.url == f"kafka://127.0.0.1:{broker.port}"
    with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
        pass


def test_create_topic_with_three_partitions(broker: EmbeddedBroker, unique_topic: str) -> None:
    async def scenario() -> None:
        assert await topic_partitions(broker.bootstrap, unique_topic) is None
        assert await create_topic(broker.url, unique_topic, 3) is True
        assert await topic_partitions(broker.bootstrap, unique_topic) == 3
        # Creating it again is not an error, and never changes its partitions.
        assert await create_topic(broker.url, unique_topic, 5) is False
        assert await ensure_topics(broker.bootstrap, {unique_topic: 8}) == {unique_topic: 3}

    asyncio.run(scenario())


def test_ensure_topics_creates_missing_ones(
    broker: EmbeddedBroker, topic_factory: Callable[[str], str]
) -> None:
    a, b = topic_factory("a"), topic_factory("b")

    async def scenario() -> None:
        assert await ensure_topics(broker.bootstrap, {a: 2, b: 1}) == {a: 2, b: 1}
        assert await topic_partitions(broker.bootstrap, a) == 2

    asyncio.run(scenario())


def test_invalid_partition_count_is_refused(broker: EmbeddedBroker, unique_topic: str) -> None:
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        asyncio.run(create_topic(broker.bootstrap, unique_topic, 0))


def test_tansu_auto_creates_topics_with_four_partitions(
    broker: EmbeddedBroker, unique_topic: str
) -> None:
    """Documents the broker: a produce to an unknown topic creates it, with 4 partitions."""
    from aiokafka import AIOKafkaProducer

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(unique_topic, b"x")
        finally:
            await producer.stop()
        assert await topic_partitions(broker.bootstrap, unique_topic) == 4

    asyncio.run(scenario())


def test_produce_consume_round_trip(broker: EmbeddedBroker, unique_topic: str) -> None:
    from aiokafka import AIOKafkaProducer

    sent = {(f"k{i % 7}".encode(), f"value-{i}".encode()) for i in range(60)}

    async def scenario() -> list[object]:
        await create_topic(broker.bootstrap, unique_topic, 3)
        # linger_ms batches several records per request: the case Tansu's end offsets get
        # wrong, which fetching must not care about.
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
        await producer.start()
        try:
            futures = [await producer.send(unique_topic, v, key=k) for k, v in sorted(sent)]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return await consume_until(
            broker.bootstrap, unique_topic, lambda r: len(r) >= len(sent), settle_s=0.2
        )

    records = asyncio.run(scenario())
    assert len(records) == len(sent)
    assert {(r.key, r.value) for r in records} == sent  # type: ignore[attr-defined]
    partition_of: dict[bytes, set[int]] = {}
    for r in records:
        partition_of.setdefault(r.key, set()).add(r.partition)  # type: ignore[attr-defined]
    assert all(len(ps) == 1 for ps in partition_of.values())  # a key stays in its partition
    assert {p for ps in partition_of.values() for p in ps} <= {0, 1, 2}


def test_consume_until_times_out_with_a_count(broker: EmbeddedBroker, unique_topic: str) -> None:
    async def scenario() -> None:
        await create_topic(broker.bootstrap, unique_topic, 1)
        await consume_until(broker.bootstrap, unique_topic, lambda r: len(r) > 0, timeout_s=0.3)

    with pytest.raises(TimeoutError, match="after 0 records"):
        asyncio.run(scenario())


def test_stop_leaves_no_process() -> None:
    broker = EmbeddedBroker()
    with broker:
        pid = broker.pid
        assert pid is not None and not _gone(pid)
    assert _gone(pid)
    assert broker.pid is None and not broker.running
    assert broker.returncode is not None
    assert broker.stop() == broker.returncode  # idempotent


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stop_escalates_and_stops_the_whole_process_group(tmp_path: Path) -> None:
    # A wrapper that runs the real broker as a child and itself ignores SIGTERM: stop() must
    # escalate to SIGKILL, and must not leave the wrapped broker behind.
    script = tmp_path / "wrapper.sh"
    script.write_text(
        f"#!/bin/sh\ntrap '' TERM\n'{resolve_binary()}' \"$@\" &\nwhile true; do sleep 0.05; done\n"
    )
    script.chmod(0o755)
    broker = EmbeddedBroker(binary=str(script), stop_timeout_s=0.5)
    with broker:
        wrapper_pid = broker.pid
        assert wrapper_pid is not None
        tansu = [
            c for c in _children(wrapper_pid) if "tansu" in Path(f"/proc/{c}/comm").read_text()
        ]
        assert len(tansu) == 1
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert broker.returncode == -signal.SIGKILL  # the wrapper ignored SIGTERM
    assert _gone(wrapper_pid) and _gone(tansu[0])


def test_start_reports_the_log_of_a_broker_that_exits(tmp_path: Path) -> None:
    script = tmp_path / "broken.sh"
    script.write_text("#!/bin/sh\necho 'cannot open storage' >&2\nexit 3\n")
    script.chmod(0o755)
    broker = EmbeddedBroker(binary=str(script), startup_timeout_s=5)
    with pytest.raises(BrokerError, match=r"(?s)exited with status 3.*cannot open storage"):
        broker.start()
    assert broker.pid is None


def test_start_refuses_a_port_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker(port).start()


def test_cli_broker_runs_until_sigint() -> None:
    port = find_free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spanmetrics", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == f"kafka://127.0.0.1:{port}"
        match = re.search(r"pid (\d+)", proc.stderr.readline())
        assert match, "the broker command names the broker's pid"
        broker_pid = int(match.group(1))
        assert asyncio.run(create_topic(f"127.0.0.1:{port}", "cli-check", 2)) is True
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "broker stopped" in proc.stderr.read()
        assert _gone(broker_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

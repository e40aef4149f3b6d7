"""The fleet's core promise, on a real broker and real Redis: kill workers with SIGKILL,
stop others with SIGTERM, scale out, restart the whole fleet, and every series still ends
at exactly the spans that were sent, published with one start time by one writer at a time
(its cumulative values never go down), with delta outputs that sum to the same totals and
follow each other without gaps or overlaps."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from spanmetrics.decode import decode_metrics
from spanmetrics.dev.synth import SpanGenerator, encode_request
from spanmetrics.kafka.admin import ensure_topics
from spanmetrics.model.attributes import any_value_to_str
from spanmetrics.model.enums import span_kind_name, status_code_name

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/7"
PARTITIONS = 4
Labels = tuple[str, str, str, str]


class Fleet:
    """Worker processes of one topology; every one is killed at teardown."""

    def __init__(self, topology: Path, logs: Path, extra_args: list[str] | None = None) -> None:
        self.topology = topology
        self.logs = logs
        self.extra_args = extra_args or []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[Any] = []

    def start(self, name: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self._files.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "spanmetrics", "worker", "--topology", str(self.topology),
             "--worker-id", name, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        for log in self._files:
            log.close()
        self._files.clear()


def expected_counts(requests: list[Any]) -> Counter[Labels]:
    counts: Counter[Labels] = Counter()
    for req in requests:
        for rs in req.resource_spans:
            service = next(
                any_value_to_str(kv.value)
                for kv in rs.resource.attributes
                if kv.key == "service.name"
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    key = (service, s.name, span_kind_name(s.kind), status_code_name(s.status.code))
                    counts[key] += 1
    return counts


async def produce(bootstrap: str, topic: str, generator: SpanGenerator, records: int) -> list[Any]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    sent = []
    try:
        for _ in range(records):
            req = generator.batch_request(200)
            # Nil key, as the Collector's Kafka exporter writes by default.
            await producer.send_and_wait(topic, encode_request(req, "otlp_proto"))
            sent.append(req)
    finally:
        await producer.stop()
    return sent


class Output:
    """Everything published on the metrics topic, read as it arrives."""

    def __init__(self, bootstrap: str, topic: str, **options: Any) -> None:
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
            **options,
        )  # fmt: skip
        self.history: dict[tuple[str, Any], list[tuple[int, int, int]]] = defaultdict(list)
        self.records = 0

    async def poll(self, timeout_ms: int = 500) -> None:
        batches = await self.consumer.getmany(timeout_ms=timeout_ms)
        for records in batches.values():
            for record in records:
                self.records += 1
                request = decode_metrics(record.value, "otlp_proto")
                for rm in request.resource_metrics:
                    resource = tuple(
                        sorted(
                            (kv.key, any_value_to_str(kv.value)) for kv in rm.resource.attributes
                        )
                    )
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            if not metric.name.endswith(".calls"):
                                continue
                            for p in metric.sum.data_points:
                                labels = dict(
                                    (kv.key, kv.value.string_value) for kv in p.attributes
                                )
                                key = (
                                    labels["service.name"],
                                    labels["span.name"],
                                    labels["span.kind"],
                                    labels["status.code"],
                                )
                                self.history[(str(resource), key)].append(
                                    (p.start_time_unix_nano, p.time_unix_nano, p.as_int)
                                )

    async def wait_for(self, expected: Counter[Labels], delta: bool, timeout_s: float) -> bool:
        """Read the output until its totals are ``expected``; False when they are not
        within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.totals(delta) != expected:
            if time.monotonic() > deadline:
                return False
            await self.poll()
        return True

    def totals(self, delta: bool) -> Counter[Labels]:
        totals: Counter[Labels] = Counter()
        for (_, labels), points in self.history.items():
            if delta:
                # A resent pending record repeats a point exactly: same interval, same value.
                totals[labels] += sum(v for _, _, v in set(points))
            else:
                totals[labels] += points[-1][2]
        return totals


@pytest.fixture
def redis_cleanup() -> Iterator[list[str]]:
    groups: list[str] = []
    yield groups
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for group in groups:
        keys = list(client.scan_iter(f"spanmetrics:{group}:*"))
        if keys:
            client.delete(*keys)
    client.close()


# `once`: the fleet's protocol is what this tests; both readers build the same batches
# (tests/property/test_native_scan.py), and the pure pass keeps the shorter fleet tests.
@pytest.mark.once
@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_exact_counts_through_sigkill_and_rebalances(
    broker: Any, tmp_path: Path, temporality: str, redis_cleanup: list[str]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, metrics_topic, group = f"spans-{suffix}", f"metrics-{suffix}", f"fleet-{suffix}"
    redis_cleanup.append(group)
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "source": {"topic": topic, "broker": broker.url, "group": group,
                           "dead_letter_topic": f"dlq-{suffix}"},
                "spanmetrics": {
                    "metrics_flush_interval": "1s",
                    "aggregation_temporality": f"AGGREGATION_TEMPORALITY_{temporality.upper()}",
                },
                "sinks": [{"kafka": {"topic": metrics_topic}}],
                "state": REDIS_URL,
            }
        )
    )  # fmt: skip
    fleet = Fleet(topology, tmp_path)
    generator = SpanGenerator(seed=11)

    def cuts_of(name: str) -> int:
        """The cuts a worker has made, from the counters its last flush logged."""
        found = re.findall(r"'cuts': (\d+)", (tmp_path / f"{name}.log").read_text())
        return int(found[-1]) if found else 0

    async def scenario() -> tuple[Counter[Labels], Output]:
        await ensure_topics(broker.bootstrap, {topic: PARTITIONS, metrics_topic: 1})
        output = Output(broker.bootstrap, metrics_topic)
        await output.consumer.start()
        try:
            sent = await produce(broker.bootstrap, topic, generator, 40)
            fleet.start("a")
            fleet.start("b")
            # Wait until the fleet has published something, then kill a worker mid-stream.
            deadline = time.monotonic() + 90
            while output.records == 0:
                assert time.monotonic() < deadline, "the fleet published nothing"
                await output.poll()
            # Each kill follows new input at once, so the victim dies with records it has
            # read but not yet checkpointed (checkpoints are 1 s apart). The first victim
            # is killed only once it cut some of the new input: its partitions' last cuts
            # then hold records, which their next owner must re-read.
            before = cuts_of("a")
            sent += await produce(broker.bootstrap, topic, generator, 30)
            deadline = time.monotonic() + 60
            while cuts_of("a") <= before:
                assert time.monotonic() < deadline, "a never cut the new input"
                await output.poll(timeout_ms=100)  # reading the output meanwhile
            sent += await produce(broker.bootstrap, topic, generator, 5)
            fleet.signal("a", signal.SIGKILL)
            fleet.start("c")
            sent += await produce(broker.bootstrap, topic, generator, 30)
            fleet.signal("b", signal.SIGTERM)
            fleet.start("d")
            sent += await produce(broker.bootstrap, topic, generator, 30)
            fleet.signal("c", signal.SIGKILL)
            sent += await produce(broker.bootstrap, topic, generator, 10)
            fleet.start("e")  # scale out
            sent += await produce(broker.bootstrap, topic, generator, 10)
            # The whole fleet restarts: everything resumes from Redis.
            fleet.signal("d", signal.SIGKILL)
            fleet.signal("e", signal.SIGTERM)
            fleet.start("f")
            fleet.start("g")
            sent += await produce(broker.bootstrap, topic, generator, 10)
            expected = expected_counts(sent)
            delta = temporality == "delta"
            await output.wait_for(expected, delta, 120)  # the checks below say what differs
            return expected, output
        finally:
            await output.consumer.stop()
            fleet.stop_all()

    try:
        expected, output = asyncio.run(scenario())
    finally:
        fleet.stop_all()
    delta = temporality == "delta"
    full_logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    logs = "\n".join(text[-2000:] for text in full_logs.values())
    # Each new owner resumed exactly at its checkpoint: faust's seek landed on the offset
    # committed at takeover, with no jump over unread records and no failed commit.
    for name, text in full_logs.items():
        assert "jumped from offset" not in text, f"{name} skipped records:\n{text[-3000:]}"
        assert "commit of" not in text, f"{name} failed to commit:\n{text[-3000:]}"
    # Killed workers' partitions were re-read from their last cuts, and shards resumed
    # from their checkpoints.
    assert any("re-reading its last cut" in text for text in full_logs.values())
    assert re.search(
        r"shard \d+ from offset [1-9]\d*, [1-9]\d* series", "\n".join(full_logs.values())
    )
    got = output.totals(delta)
    missing = {k: (expected[k], got.get(k, 0)) for k in expected if got.get(k, 0) != expected[k]}
    assert not missing, f"series with wrong totals (expected, got): {missing}\n{logs}"
    assert set(got) == set(expected)
    assert sum(expected.values()) == 165 * 200
    if not delta:
        for key, points in output.history.items():
            # One start time per stream, through every kill, stop, scale-out and restart.
            assert len({start for start, _, _ in points}) == 1, f"{key}: {points}"
            # One writer at a time: a series' cumulative value never goes down.
            ordered = sorted(points, key=lambda p: p[1])
            values = [v for _, _, v in ordered]
            assert values == sorted(values), f"{key} went down: {values}"
    else:
        for key, points in output.history.items():
            unique = sorted(set(points))
            for start, end, value in unique:
                assert start < end and value > 0, key
            # Each delta point starts where the previous one ended.
            for (_, end, _), (start, _, _) in itertools.pairwise(unique):
                assert start == end, f"{key}: {unique}"

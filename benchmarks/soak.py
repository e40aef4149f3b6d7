"""Soak benchmark: `make soak` (not part of CI).

One worker reads spans at about 80% of what one worker can do, for 10 minutes, and is
killed (SIGKILL) every 2 minutes and replaced at once, as Kubernetes would restart it.
Every 10 s it prints the worker's and the broker's RSS, the consumer lag (records
produced and not yet committed by the group) and the calls published; at the end, once
the output has caught up, whether the published calls add up to every span sent.

The rate: first a calibration, one worker draining a backlog of the soak's own records
(``bench_fleet.run_fleet``'s steady figure), then 80% of it (``--load``), or ``--rate``.

The embedded broker keeps every record in memory, so the soak's records are small (1,000
spans each, with names, kinds, statuses and times but no ids or attributes) and sent
zstd-compressed: about 12 bytes a span in the broker, where the synthetic shop's records
take 440. At 300,000 spans/s, 10 minutes of those would need 80 GB.

    python benchmarks/soak.py [--minutes 10] [--kill-every 120] [--load 0.8 | --rate N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from bench_fleet import REDIS_URL, Published, drop_state, fill, run_fleet  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)

from spanmetrics.dev.broker import EmbeddedBroker  # noqa: E402
from spanmetrics.dev.up import resident_mib  # noqa: E402
from spanmetrics.kafka.admin import ensure_topics  # noqa: E402

SPANS_PER_RECORD = 1_000
#: Backlog the calibration's worker drains: long enough for several telemetry samples.
CALIBRATION_RECORDS = 4_000
PARTITIONS = 4
SERVICES = ("checkout", "cart", "frontend", "payment", "search")
OPERATIONS = tuple(f"{verb} /api/{noun}" for verb in ("GET", "POST") for noun in
                   ("cart", "items", "orders", "users", "search"))  # fmt: skip


def soak_record(rng: random.Random) -> bytes:
    """1,000 spans of two services, with the fields the engine reads and nothing else."""
    request = ExportTraceServiceRequest()
    now = time.time_ns()
    for service in rng.sample(SERVICES, 2):
        rs = request.resource_spans.add()
        for key, value in (("service.name", service), ("service.instance.id", f"{service}-0")):
            rs.resource.attributes.add(key=key).value.string_value = value
        spans = rs.scope_spans.add().spans
        for _ in range(SPANS_PER_RECORD // 2):
            start = now - rng.randrange(10**9)
            s = spans.add(name=rng.choice(OPERATIONS), kind=2, start_time_unix_nano=start,
                          end_time_unix_nano=start + int(rng.lognormvariate(16, 1)))  # fmt: skip
            if rng.random() < 0.03:
                s.status.code = 2  # type: ignore[assignment]
    return request.SerializeToString()


class Soak:
    """The worker under test, the producer at a fixed rate, and what was sent."""

    def __init__(self, broker: EmbeddedBroker, workdir: Path, pool: list[bytes]) -> None:
        self.broker = broker
        suffix = uuid.uuid4().hex[:8]
        self.topic, self.metrics_topic, self.group = (
            f"soak-{suffix}", f"soak-metrics-{suffix}", f"soak-{suffix}")  # fmt: skip
        self.topology = workdir / "soak.yaml"
        self.topology.write_text(yaml.safe_dump({
            "source": {"topic": self.topic, "broker": broker.url, "group": self.group},
            "spanmetrics": {"metrics_flush_interval": "5s"},
            "sinks": [{"kafka": {"topic": self.metrics_topic}}],
            "state": REDIS_URL,
        }))  # fmt: skip
        self.workdir = workdir
        self.pool = pool
        self.sent_spans = 0
        self.sent_records = [0] * PARTITIONS
        self.generation = 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        name = f"w{self.generation}"
        self.generation += 1
        log = (self.workdir / f"{name}.log").open("wb")
        return subprocess.Popen(
            [sys.executable, "-m", "spanmetrics", "worker", "--topology", str(self.topology),
             "--worker-id", name, "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kill_and_replace(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = self._start()

    async def produce(self, rate: float, seconds: float) -> None:
        """``rate`` spans/s for ``seconds``, records round-robin over the partitions."""
        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap,
                                    compression_type="zstd", linger_ms=50)  # fmt: skip
        await producer.start()
        try:
            started = time.monotonic()
            i = 0
            while (elapsed := time.monotonic() - started) < seconds:
                due = int(elapsed * rate / SPANS_PER_RECORD) - i
                for _ in range(min(due, PARTITIONS * 10)):  # back to the clock often
                    partition = i % PARTITIONS
                    await producer.send(self.topic, self.pool[i % len(self.pool)],
                                        partition=partition)  # fmt: skip
                    self.sent_records[partition] += 1
                    self.sent_spans += SPANS_PER_RECORD
                    i += 1
                if due <= PARTITIONS * 10:
                    await asyncio.sleep(0.05)
            await producer.flush()
        finally:
            await producer.stop()

    async def lag(self, consumer: AIOKafkaConsumer) -> int:
        """Records produced and not yet committed by the worker's group."""
        behind = 0
        for p in range(PARTITIONS):
            committed = await consumer.committed(TopicPartition(self.topic, p)) or 0
            behind += max(self.sent_records[p] - committed, 0)
        return behind


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(7)
    pool = [soak_record(rng) for _ in range(100)]
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rate = args.rate
        if rate is None:
            calibration = f"soak-calibration-{uuid.uuid4().hex[:8]}"
            await ensure_topics(broker.bootstrap, {calibration: PARTITIONS})
            await fill(broker.bootstrap, calibration, pool, CALIBRATION_RECORDS)
            measured = await run_fleet(broker.bootstrap, broker.url, calibration, 1,
                                       CALIBRATION_RECORDS * SPANS_PER_RECORD, workdir)  # fmt: skip
            # Steady is between telemetry samples; a backlog read within one has none.
            measured["steady"] = measured["steady"] or measured["wall"]
            rate = args.load * measured["steady"]
            print(
                f"calibration: one worker reads {measured['steady']:,.0f} spans/s of these "
                f"records; the soak runs at {args.load:.0%} of it, {rate:,.0f} spans/s"
            )
        else:
            print(f"the soak runs at {rate:,.0f} spans/s (--rate)")
        run = Soak(broker, workdir, pool)
        await ensure_topics(broker.bootstrap, {run.topic: PARTITIONS, run.metrics_topic: 1})
        output = AIOKafkaConsumer(run.metrics_topic, bootstrap_servers=broker.bootstrap,
                                  auto_offset_reset="earliest", group_id=None,
                                  max_partition_fetch_bytes=16 << 20)  # fmt: skip
        offsets = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=run.group,
                                   enable_auto_commit=False)  # fmt: skip
        await output.start()
        await offsets.start()
        published = Published()
        seconds = args.minutes * 60
        started = time.monotonic()
        producing = asyncio.create_task(run.produce(rate, seconds))
        next_kill, next_sample = args.kill_every, 0.0
        print(f"{'t (s)':>6} {'worker':>6} {'RSS MB':>7} {'broker MB':>9} {'lag (records)':>13} "
              f"{'sent':>12} {'published':>12}")  # fmt: skip
        try:
            while True:
                for records in (await output.getmany(timeout_ms=500)).values():
                    for record in records:
                        published.add(record.key, record.value)
                t = time.monotonic() - started
                if t >= next_sample:
                    next_sample += 10
                    rss = resident_mib(run.proc.pid) or 0.0
                    broker_rss = resident_mib(broker.pid) or 0.0
                    print(f"{t:6.0f} {'w' + str(run.generation - 1):>6} {rss:7.0f} "
                          f"{broker_rss:9.0f} {await run.lag(offsets):13,} "
                          f"{run.sent_spans:12,} {published.total:12,}", flush=True)  # fmt: skip
                if t >= next_kill and not producing.done():
                    next_kill += args.kill_every
                    print(f"{t:6.0f} SIGKILL w{run.generation - 1}, start w{run.generation}")
                    run.kill_and_replace()
                if producing.done() and published.total >= run.sent_spans:
                    break
                if t > seconds + args.catch_up:
                    break
        finally:
            await producing
            run.proc.terminate()
            run.proc.wait(timeout=60)
            await output.stop()
            await offsets.stop()
            drop_state(run.group)
        exact = published.total == run.sent_spans > 0
        verdict = "exact" if exact else "NOT EXACT"
        print(f"sent {run.sent_spans / seconds:,.0f} spans/s on average (asked {rate:,.0f})")
        print(
            f"exactness: {published.total:,} calls published for {run.sent_spans:,} spans "
            f"sent, through {run.generation - 1} kills: {verdict}"
        )
        return 0 if exact else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long spans flow")
    parser.add_argument("--kill-every", type=float, default=120.0, metavar="SECONDS",
                        help="SIGKILL the worker this often (default 120)")  # fmt: skip
    parser.add_argument("--load", type=float, default=0.8,
                        help="fraction of the calibrated throughput (default 0.8)")  # fmt: skip
    parser.add_argument("--rate", type=float, help="spans/s, instead of calibrating")
    parser.add_argument("--catch-up", type=float, default=300.0, metavar="SECONDS",
                        help="how long to wait for the output after the spans stop")  # fmt: skip
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

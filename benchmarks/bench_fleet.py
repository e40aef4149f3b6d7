"""Fleet benchmark: `make bench-fleet`.

Puts 3M spans into the embedded broker, then measures, in one run:

- baselines on the same records: a bare aiokafka consumer draining the topic, and the
  engine alone (decode + aggregate + flush, in this process, no Kafka);
- 1 worker, then 2 workers (each run with its own consumer group and Redis state), end to
  end: from the topic, through both stages and the checkpoints, to published metrics. A
  run ends when the published calls add up to every span in the topic. Reported: wall
  (worker start to complete output, start-up included), steady spans/s (between the first
  telemetry sample that counted spans and the first that counted them all), per worker and
  as a ratio of the engine alone, peak RSS, and checkpoint bytes written per flush;
- state size: the same workload through one worker with 1 and with 8 input partitions,
  and the Redis bytes of state per series (``MEMORY USAGE`` of the group's keys).

Targets: Redis bytes per series at 8 partitions within 1.5x of 1 partition; per-worker
throughput no lower than before the two-stage fleet (150k spans/s was the issue's target).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import yaml  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from spanmetrics.aggregate.engine import SpanMetricsEngine  # noqa: E402
from spanmetrics.aggregate.points import MetricNames  # noqa: E402
from spanmetrics.config.load import parse_topology  # noqa: E402
from spanmetrics.dev.broker import EmbeddedBroker  # noqa: E402
from spanmetrics.dev.live import FleetView  # noqa: E402
from spanmetrics.dev.synth import SpanGenerator, encode_request  # noqa: E402
from spanmetrics.kafka.admin import ensure_topics  # noqa: E402
from spanmetrics.model.clock import SystemClock  # noqa: E402

TARGET_PER_WORKER = 150_000
TARGET_STATE_RATIO = 1.5
REDIS_URL = "redis://127.0.0.1:6379/7"


def make_pool(spans_per_record: int, records: int = 50, seed: int = 5) -> list[bytes]:
    generator = SpanGenerator(seed=seed)
    return [
        encode_request(generator.batch_request(spans_per_record), "otlp_proto")
        for _ in range(records)
    ]


async def fill(bootstrap: str, topic: str, pool: list[bytes], records: int) -> None:
    """Produce ``records`` records round-robin from ``pool``."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, max_request_size=8 << 20
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, pool[i % len(pool)]) for i in range(records)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def drain(bootstrap: str, topic: str, partitions: int, records: int) -> float:
    """Seconds a bare aiokafka consumer takes to read ``records`` records."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, max_partition_fetch_bytes=16 << 20
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        started = time.perf_counter()
        while seen < records:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                seen += len(batch)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def engine_alone(pool: list[bytes], records: int) -> float:
    """Seconds the engine takes for the same records in this process."""
    config = parse_topology({"spanmetrics": {}}).spanmetrics
    engine = SpanMetricsEngine(config, SystemClock())
    started = time.perf_counter()
    for i in range(records):
        engine.consume_record(pool[i % len(pool)], "otlp_proto")
    engine.flush()
    return time.perf_counter() - started


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def state_bytes(group: str) -> tuple[int, int]:
    """Redis bytes used by a group's keys, and the number of keys."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(f"spanmetrics:{group}:*", count=1000))
        return sum(int(client.memory_usage(k, samples=0) or 0) for k in keys), len(keys)
    finally:
        client.close()


def drop_state(group: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(f"spanmetrics:{group}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class Published:
    """The metrics topic as the live view reads it, and the workers' span count sampled at
    each of their telemetry records."""

    def __init__(self) -> None:
        self.view = FleetView(MetricNames.for_namespace("traces.span.metrics", "ms"))
        self.samples: list[tuple[float, int]] = []

    def add(self, key: bytes | None, value: bytes) -> None:
        self.view.add_record(key, value)
        if key and key.startswith(b"worker-"):
            workers = self.view.workers.values()
            self.samples.append(
                (time.monotonic(), sum(int(t.get("spans_received", 0)) for t in workers))
            )

    @property
    def total(self) -> int:
        """Calls published so far."""
        return self.view.total_calls


async def run_fleet(
    bootstrap: str,
    url: str,
    topic: str,
    workers: int,
    total: int,
    workdir: Path,
    profile: Path | None = None,
) -> dict[str, float]:
    suffix = uuid.uuid4().hex[:8]
    metrics_topic, group = f"metrics-{suffix}", f"bench-{suffix}"
    await ensure_topics(bootstrap, {metrics_topic: 1})
    topology = workdir / f"{group}.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "source": {"topic": topic, "broker": url, "group": group},
                "spanmetrics": {"metrics_flush_interval": "1s"},
                "sinks": [{"kafka": {"topic": metrics_topic}}],
                "state": REDIS_URL,
            }
        )
    )
    consumer = AIOKafkaConsumer(
        metrics_topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    started = time.monotonic()
    # With a profile, the first worker runs under cProfile (written when it exits).
    profiled = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                *(profiled if i == 0 else []),
                "-m",
                "spanmetrics",
                "worker",
                "--topology",
                str(topology),
                "--worker-id",
                f"w{i}",
                "--log-level",
                "warning",
            ],
        )
        for i in range(workers)
    ]
    published = Published()
    try:
        while published.total < total:
            if time.monotonic() - started > 600:
                raise TimeoutError(f"only {published.total:,} of {total:,} published")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    published.add(record.key, record.value)
        wall = time.monotonic() - started
        rss = [peak_rss_mb(p.pid) for p in procs]
        # One more flush of telemetry after the output is complete.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    published.add(record.key, record.value)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        await consumer.stop()
    # From the first sample that counted spans to the first that counted them all (the
    # samples after it only wait for the last flush of output).
    busy = [(t, n) for t, n in published.samples if n > 0]
    final = max(n for _, n in busy)
    first, last = busy[0], next((t, n) for t, n in busy if n == final)
    steady = (last[1] - first[1]) / max(last[0] - first[0], 1e-9)
    flushes = max(wall, 1.0)  # 1 s flushes
    written = sum(t.get("checkpoint_bytes_written", 0) for t in published.view.workers.values())
    series = len(published.view.streams)
    stored, _ = state_bytes(group)
    drop_state(group)
    return {
        "wall": total / wall,
        "steady": steady,
        "rss_max": max(rss),
        "seconds": wall,
        "written_per_flush": written / flushes / workers,
        "series": series,
        "stored": stored,
    }


async def state_size(
    broker: EmbeddedBroker, workdir: Path, partitions: int, records: int
) -> dict[str, float]:
    """Redis bytes of state after one worker read the same workload from ``partitions``."""
    topic = f"state-{partitions}-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker.bootstrap, {topic: partitions})
    pool = make_pool(1000, records=records, seed=9)
    await fill(broker.bootstrap, topic, pool, records)
    result = await run_fleet(broker.bootstrap, broker.url, topic, 1, records * 1000, workdir)
    return result


async def profile_worker(
    broker: EmbeddedBroker, topic: str, total: int, workdir: Path, out: Path
) -> None:
    """One worker under cProfile through the whole topic: where its time goes."""
    import pstats

    r = await run_fleet(broker.bootstrap, broker.url, topic, 1, total, workdir, profile=out)
    print(f"1 worker under cProfile: steady {r['steady']:,.0f} spans/s; profile in {out}")
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(25)


async def main_async(args: argparse.Namespace) -> None:
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        topic = f"bench-spans-{uuid.uuid4().hex[:8]}"
        await ensure_topics(broker.bootstrap, {topic: args.partitions})
        pool = make_pool(args.spans_per_record)
        t = time.monotonic()
        await fill(broker.bootstrap, topic, pool, args.records)
        total = args.records * args.spans_per_record
        print(
            f"filled {topic}: {total:,} spans in {args.records:,} records, "
            f"{args.partitions} partitions ({time.monotonic() - t:.1f}s)"
        )
        if args.profile_worker:
            await profile_worker(broker, topic, total, Path(tmp), args.profile_worker)
            return
        drain_s = await drain(broker.bootstrap, topic, args.partitions, args.records)
        engine_s = engine_alone(pool, args.records)
        engine_rate = total / engine_s
        print(f"baseline: bare aiokafka drain {total / drain_s:>10,.0f} spans/s")
        print(f"baseline: engine alone        {engine_rate:>10,.0f} spans/s (same records)")
        results = {}
        for workers in (1, 2):
            r = await run_fleet(broker.bootstrap, broker.url, topic, workers, total, Path(tmp))
            results[workers] = r
            per = r["steady"] / workers
            verdict = "meets" if per >= TARGET_PER_WORKER else "MISSES"
            print(
                f"{workers} worker(s): wall {r['wall']:>10,.0f} spans/s ({r['seconds']:.1f}s), "
                f"steady {r['steady']:>10,.0f} spans/s = {per:,.0f}/worker "
                f"= {per / engine_rate:.2f}x the engine alone, "
                f"{per / (total / drain_s):.2f}x the bare consumer (issue 10's target 0.70) "
                f"(target {TARGET_PER_WORKER:,}: {verdict}), peak RSS {r['rss_max']:.0f} MiB, "
                f"checkpoint {r['written_per_flush'] / 1024:,.1f} KiB/flush/worker, "
                f"{r['series']:,.0f} series"
            )
        scaling = results[2]["steady"] / results[1]["steady"]
        print(
            f"scaling 1 -> 2 workers: {scaling:.2f}x (machine has 2 cores; the broker and "
            "this benchmark share them)"
        )
        sizes = {}
        for partitions in (1, 8):
            r = await state_size(broker, Path(tmp), partitions, args.state_records)
            sizes[partitions] = r
            per_series = r["stored"] / max(r["series"], 1)
            print(
                f"state with {partitions} partition(s): {r['stored'] / 1024:,.0f} KiB in Redis "
                f"for {r['series']:,.0f} series = {per_series:,.0f} B/series, "
                f"checkpoint {r['written_per_flush'] / 1024:,.1f} KiB/flush"
            )
        ratio = (sizes[8]["stored"] / max(sizes[8]["series"], 1)) / (
            sizes[1]["stored"] / max(sizes[1]["series"], 1)
        )
        verdict = "meets" if ratio <= TARGET_STATE_RATIO else "MISSES"
        print(
            f"state per series, 8 partitions / 1 partition: {ratio:.2f}x "
            f"(target <= {TARGET_STATE_RATIO}: {verdict})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 3M spans: telemetry comes once a flush (1 s), so a shorter run is measured coarsely.
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--spans-per-record", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--profile-worker",
        type=Path,
        metavar="FILE",
        help="run one worker under cProfile instead of the figures, write its profile to "
        "FILE and print where its time goes",
    )
    parser.add_argument(
        "--state-records", type=int, default=200, help="records of the state-size workload"
    )
    args = parser.parse_args()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

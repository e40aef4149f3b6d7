"""Fleet benchmark: `make bench-fleet`.

Puts >= 1M spans into the embedded broker, then runs 1 worker and then 2 workers (each run
with its own consumer group and Redis state) and measures end-to-end spans/s: from the
topic, through aggregation and checkpoints, to published metrics. A run ends when the
published calls add up to every span in the topic. Reported per run:

- wall: from worker start (process start, group join included) to complete output;
- steady: spans/s between the first and the last telemetry sample of the workers
  (startup excluded);
- peak RSS of each worker (VmHWM).

Target: >= 150k spans/s per worker process.
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

import yaml  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from spanmetrics.decode import decode_metrics  # noqa: E402
from spanmetrics.kafka.admin import ensure_topics  # noqa: E402
from spanmetrics.kafka.broker import EmbeddedBroker  # noqa: E402
from spanmetrics.synth import SpanGenerator, encode_request  # noqa: E402

TARGET_PER_WORKER = 150_000
REDIS_URL = "redis://127.0.0.1:6379/7"


async def fill(bootstrap: str, topic: str, records: int, spans_per_record: int) -> int:
    """Produce ``records`` records from a pool of 50 distinct ones; returns spans sent."""
    generator = SpanGenerator(seed=5)
    pool = [
        encode_request(generator.batch_request(spans_per_record), "otlp_proto") for _ in range(50)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = [await producer.send(topic, pool[i % len(pool)]) for i in range(records)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return records * spans_per_record


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_fleet(
    bootstrap: str, url: str, topic: str, workers: int, total: int, workdir: Path
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
        metrics_topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
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
    received: dict[bytes, int] = {}
    samples: list[tuple[float, int]] = []
    published: dict[bytes, int] = {}
    try:
        while sum(published.values()) < total:
            if time.monotonic() - started > 600:
                raise TimeoutError(f"only {sum(published.values()):,} of {total:,} published")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    request = decode_metrics(record.value, "otlp_proto")
                    if record.key.startswith(b"worker-"):
                        for rm in request.resource_metrics:
                            for m in rm.scope_metrics[0].metrics:
                                if m.name.endswith("spans_received"):
                                    received[record.key] = sum(p.as_int for p in m.sum.data_points)
                        samples.append((time.monotonic(), sum(received.values())))
                    else:
                        published[record.key] = sum(
                            p.as_int
                            for rm in request.resource_metrics
                            for sm in rm.scope_metrics
                            for m in sm.metrics
                            if m.name.endswith(".calls")
                            for p in m.sum.data_points
                        )
        wall = time.monotonic() - started
        rss = [peak_rss_mb(p.pid) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        await consumer.stop()
    busy = [(t, n) for t, n in samples if n > 0]
    first, last = busy[0], busy[-1]
    steady = (last[1] - first[1]) / max(last[0] - first[0], 1e-9)
    return {"wall": total / wall, "steady": steady, "rss_max": max(rss), "seconds": wall}


async def main_async(args: argparse.Namespace) -> None:
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        topic = f"bench-spans-{uuid.uuid4().hex[:8]}"
        await ensure_topics(broker.bootstrap, {topic: args.partitions})
        t = time.monotonic()
        total = await fill(broker.bootstrap, topic, args.records, args.spans_per_record)
        print(
            f"filled {topic}: {total:,} spans in {args.records:,} records, "
            f"{args.partitions} partitions ({time.monotonic() - t:.1f}s)"
        )
        results = {}
        for workers in (1, 2):
            r = await run_fleet(broker.bootstrap, broker.url, topic, workers, total, Path(tmp))
            results[workers] = r
            per = r["steady"] / workers
            verdict = "meets" if per >= TARGET_PER_WORKER else "MISSES"
            print(
                f"{workers} worker(s): wall {r['wall']:>10,.0f} spans/s ({r['seconds']:.1f}s), "
                f"steady {r['steady']:>10,.0f} spans/s = {per:,.0f}/worker "
                f"(target {TARGET_PER_WORKER:,}: {verdict})"
                f", peak RSS {r['rss_max']:.0f} MiB"
            )
        scaling = results[2]["steady"] / results[1]["steady"]
        print(
            f"scaling 1 -> 2 workers: {scaling:.2f}x (machine has 2 cores; the broker and "
            "this benchmark share them)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--spans-per-record", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

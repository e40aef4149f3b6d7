"""``make run``: embedded broker, load generator and a worker, with the live view.

Everything runs on this machine: the broker in-process as a child binary, the load
generator and the worker as child processes (as they would be deployed), and the live view
in the foreground. Ctrl-C or SIGTERM stops the children and the broker; nothing is left
behind.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from spanmetrics.aggregate.points import MetricNames
from spanmetrics.config.model import Topology
from spanmetrics.fleet.live import run_live
from spanmetrics.kafka.admin import ensure_topics
from spanmetrics.kafka.broker import EmbeddedBroker


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "spanmetrics", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run_up(
    topology_path: str,
    topology: Topology,
    rate: int,
    partitions: int,
    run_dir: Path,
    flush_interval: str = "2s",
) -> None:
    """Start everything and show the live view until interrupted."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    metrics_topic = next(
        (s.kafka.topic for s in topology.sinks if s.kafka is not None), "otlp_metrics"
    )
    with EmbeddedBroker() as broker:
        await ensure_topics(broker.bootstrap, {topology.source.topic: partitions, metrics_topic: 1})
        procs = [
            _spawn(
                ["loadgen", "--broker", broker.url, "--topic", topology.source.topic,
                 "--rate", str(rate), "--encoding", topology.source.encoding],
                run_dir / "loadgen.log",
            ),
            _spawn(
                ["worker", "--topology", topology_path, "--broker", broker.url,
                 "--state", "memory://", "--flush-interval", flush_interval],
                run_dir / "worker.log",
            ),
        ]  # fmt: skip
        try:
            names = MetricNames.for_namespace(
                topology.spanmetrics.namespace, topology.spanmetrics.histogram.unit
            )
            await run_live(broker.bootstrap, metrics_topic, names, stop)
        finally:
            _stop(procs)
    print(f"\nstopped; logs in {run_dir}/")

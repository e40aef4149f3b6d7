"""``make run``: embedded broker, load generator and a worker, with the live view.

Everything runs on this machine: the broker as a child binary, the load generator and the
worker as child processes (as they would be deployed), and the live view in the
foreground. A supervisor watches all three: if one of them exits, the run stops at once,
the screen says which one and how, with the last lines of its log, and the exit status is
non-zero. Ctrl-C or SIGTERM stops the children and the broker; nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spanmetrics.aggregate.points import MetricNames
from spanmetrics.config.model import Topology
from spanmetrics.dev.broker import EmbeddedBroker
from spanmetrics.dev.live import run_live
from spanmetrics.kafka.admin import ensure_topics

#: Lines of a dead process's log shown on the screen.
_LOG_LINES = 25


@dataclass(slots=True)
class Child:
    """A process of the run and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass(slots=True)
class Death:
    """How a process of the run ended."""

    name: str
    status: int | None
    log: Path
    tail: str

    def report(self) -> str:
        """What the screen says."""
        how = "stopped" if self.status is None else f"exited with status {self.status}"
        return (
            f"!! {self.name} {how} at {time.strftime('%H:%M:%S')}: the run is stopped.\n"
            f"!! last lines of {self.log}:\n{self.tail}"
        )


def log_tail(path: Path, lines: int = _LOG_LINES) -> str:
    """The end of a log, errors first: the last traceback or error line, then the tail."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [i for i, line in enumerate(text) if "Traceback" in line or " ERROR " in line]
    start = max(len(text) - lines, 0)
    if errors and errors[-1] < start:
        start = max(errors[-1], 0)
    return "\n".join(text[start : start + lines * 2])


def resident_mib(pid: int | None) -> float | None:
    """Resident memory of a process in MiB, where ``/proc`` tells."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Supervisor:
    """Watches the processes of the run; the first one that ends is the run's death."""

    def __init__(
        self,
        children: list[Child],
        broker_alive: Callable[[], bool],
        broker_pid: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.children = children
        self._broker_alive = broker_alive
        self._broker_pid = broker_pid
        self.death: Death | None = None

    def check(self) -> Death | None:
        """The first process found dead, if any."""
        if self.death is None:
            for child in self.children:
                status = child.proc.poll()
                if status is not None:
                    self.death = Death(child.name, status, child.log, log_tail(child.log))
                    break
            else:
                if not self._broker_alive():
                    self.death = Death("broker", None, Path("(broker)"), "")
        return self.death

    def status(self) -> str:
        """What the screen says about the processes."""
        death = self.check()
        if death:
            return death.report()
        lines = []
        for child in self.children:
            mib = resident_mib(child.proc.pid)
            lines.append(f"{child.name} pid {child.proc.pid}" + (f" {mib:,.0f} MiB" if mib else ""))
        mib = resident_mib(self._broker_pid())
        if mib:
            # Memory only: it keeps every record it was sent until it stops.
            lines.append(f"broker {mib:,.0f} MiB (keeps every record in memory)")
        return "processes: " + ", ".join(lines)

    async def watch(self, stop: asyncio.Event, every_s: float = 0.5) -> None:
        """Set ``stop`` as soon as a process dies."""
        while not stop.is_set():
            if self.check() is not None and not stop.is_set():
                stop.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    def stop_all(self, timeout_s: float = 20.0) -> None:
        """Terminate every child, then kill what did not stop."""
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in self.children:
            try:
                child.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()


def _spawn(name: str, args: list[str], log: Path) -> Child:
    proc = subprocess.Popen(
        [sys.executable, "-m", "spanmetrics", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        # Its own session: Ctrl-C reaches only this process, which stops the children in
        # order (a child that exits on the terminal's SIGINT would look like a crash).
        start_new_session=True,
    )
    return Child(name, proc, log)


async def run_up(
    topology_path: str,
    topology: Topology,
    rate: int,
    partitions: int,
    run_dir: Path,
    flush_interval: str = "2s",
    pod_churn_s: float | None = None,
) -> int:
    """Start everything and show the live view until interrupted; returns the exit status
    (1 when a process of the run died)."""
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
        loadgen = ["loadgen", "--broker", broker.url, "--topic", topology.source.topic,
                   "--rate", str(rate), "--encoding", topology.source.encoding]  # fmt: skip
        if pod_churn_s is not None:
            loadgen += ["--pod-churn", str(pod_churn_s)]
        children = [
            _spawn("loadgen", loadgen, run_dir / "loadgen.log"),
            _spawn(
                "worker",
                ["worker", "--topology", topology_path, "--broker", broker.url,
                 "--state", "memory://", "--flush-interval", flush_interval],
                run_dir / "worker.log",
            ),
        ]  # fmt: skip
        supervisor = Supervisor(children, lambda: broker.running, lambda: broker.pid)
        watcher = asyncio.create_task(supervisor.watch(stop))
        try:
            names = MetricNames.for_namespace(
                topology.spanmetrics.namespace, topology.spanmetrics.histogram.unit
            )
            await run_live(broker.bootstrap, metrics_topic, names, stop, status=supervisor.status)
        finally:
            watcher.cancel()
            supervisor.stop_all()
    death = supervisor.check() if supervisor.death is not None else None
    if death is not None:
        print(f"\n{death.report()}\nlogs in {run_dir}/", file=sys.stderr)
        return 1
    print(f"\nstopped; logs in {run_dir}/")
    return 0

"""The faust-streaming runtime of a worker: consumer group, agent, flush timer, shutdown.

Faust owns the Kafka side: group membership, rebalances, fetching and the event loop. The
:class:`~spanmetrics.fleet.worker.Worker` owns everything that must be exact. The seams:

- the agent hands every input record to :meth:`Worker.consume`;
- the ``on_partitions_assigned`` / ``on_partitions_revoked`` signals call
  :meth:`Worker.assign` / :meth:`Worker.revoke`;
- a timer calls :meth:`Worker.flush` every ``metrics_flush_interval``;
- the input topic is declared with ``acks=False``, so faust never commits offsets of its
  own. The worker commits each partition's checkpoint offset after the checkpoint is
  saved, and again when it takes the partition over, so that faust's seek to the committed
  offset after a rebalance lands exactly on the checkpoint. Nothing exact depends on the
  commit: records below the checkpoint offset are skipped whatever faust delivers.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Set
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer
from faust.types import TP

from spanmetrics.config.model import Topology
from spanmetrics.fleet.worker import Headers, Worker
from spanmetrics.kafka.admin import topic_partitions
from spanmetrics.kafka.broker import find_free_port

log = logging.getLogger("spanmetrics.worker")

#: Largest fetch per partition: OTLP records from the Collector's exporter can be large.
MAX_FETCH_BYTES = 8 * 1024 * 1024


#: Session and rebalance timeout of the consumer group: how long a crashed worker's
#: partitions wait before the group reassigns them, and how long a join may wait.
GROUP_TIMEOUT_S = 10.0


class _Positions:
    """Commits and high watermarks through faust's consumer."""

    def __init__(self, app: faust.App, topic: str) -> None:
        self._app = app
        self._topic = topic

    async def commit(self, offsets: dict[int, int]) -> None:
        # faust's public commit() commits what its streams acked; our topic has acks off,
        # so the consumer's underlying commit is called with the checkpoint's offsets.
        consumer: Any = self._app.consumer
        await consumer._commit({TP(self._topic, p): offset for p, offset in offsets.items()})

    def highwater(self, partition: int) -> int | None:
        try:
            value = self._app.consumer.highwater(TP(self._topic, partition))
        except Exception:  # unknown before the first fetch
            return None
        return int(value) if value is not None and value >= 0 else None


class _Sender:
    """The worker's own aiokafka producer (faust's is reserved for faust's topics)."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect (on the running loop, which aiokafka binds to)."""
        self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, linger_ms=5)
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await self._producer.stop()

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> None:
        if self._producer is None:
            raise RuntimeError("producer used before the app started")
        await self._producer.send_and_wait(topic, value=value, key=key, headers=list(headers))


class _App(faust.App):
    """A faust app that flushes and checkpoints before faust stops its consumer."""

    spanmetrics_worker: Worker
    spanmetrics_sender: _Sender

    async def on_start(self) -> None:
        await self.spanmetrics_sender.start()
        await self.spanmetrics_worker.prometheus.start()
        await super().on_start()

    async def on_stop(self) -> None:
        # Runs before faust leaves the group (faust skips the revoke callback once it is
        # stopping), so the last records read are checkpointed by their owner.
        try:
            await self.spanmetrics_worker.flush()
        except Exception:
            log.exception("final flush failed; the next owner resumes from the last checkpoint")
        await super().on_stop()
        await self.spanmetrics_sender.stop()
        await self.spanmetrics_worker.prometheus.stop()
        await self.spanmetrics_worker.store.close()


def build_app(worker: Worker, n_partitions: int, datadir: str) -> faust.App:
    """The faust app of one worker: its agent, timer and rebalance handlers."""
    topology: Topology = worker.topology
    source = topology.source
    app = _App(
        source.group,
        broker=f"kafka://{worker.bootstrap}",
        datadir=datadir,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset=source.initial_offset,
        consumer_max_fetch_size=MAX_FETCH_BYTES,
        topic_disable_leader=True,
        topic_allow_declare=False,
        stream_wait_empty=False,
        stream_recovery_delay=0.0,
        # A joining member waits up to the rebalance timeout for the others to rejoin;
        # faust's 60 s default makes every start and every rebalance that slow.
        broker_session_timeout=GROUP_TIMEOUT_S,
        broker_rebalance_timeout=GROUP_TIMEOUT_S,
        broker_heartbeat_interval=GROUP_TIMEOUT_S / 4,
        web_enabled=False,
        web_port=find_free_port(),  # faust binds it even when its web server is off
        web_bind="127.0.0.1",
    )
    app.spanmetrics_worker = worker
    app.spanmetrics_sender = _Sender(worker.bootstrap)
    worker.attach(_Positions(app, source.topic), app.spanmetrics_sender, n_partitions)
    spans = app.topic(source.topic, key_type=bytes, value_type=bytes, acks=False)

    @app.agent(spans)
    async def consume(stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            message = event.message
            await worker.consume(
                message.partition, message.offset, message.value, message.key, message.topic
            )
        yield None  # pragma: no cover - makes this an async generator, as faust expects

    async def flush() -> None:
        await worker.flush()

    # faust's timer decorator is untyped; registering through it keeps mypy strict here.
    app.timer(topology.spanmetrics.metrics_flush_interval)(flush)

    def ours(partitions: Set[TP]) -> list[int]:
        return sorted(tp.partition for tp in partitions if tp.topic == source.topic)

    async def assigned(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        await worker.assign(ours(args[0]))

    async def revoked(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        await worker.revoke(ours(args[0]))

    # (faust types receivers as plain functions; coroutine receivers are awaited all the same)
    app.on_partitions_assigned.connect(cast(Any, assigned))
    app.on_partitions_revoked.connect(cast(Any, revoked))

    return app


def run_app(worker: Worker) -> None:
    """Run the worker under faust until SIGTERM or SIGINT (blocking)."""
    source = worker.topology.source
    n_partitions = asyncio.run(topic_partitions(worker.bootstrap, source.topic)) or 0
    if n_partitions <= 0:
        raise SystemExit(f"source.topic: topic {source.topic!r} does not exist on the broker")
    datadir = tempfile.mkdtemp(prefix=f"spanmetrics-{worker.worker_id}-")
    asyncio.set_event_loop(asyncio.new_event_loop())  # the one faust and aiokafka will use
    try:
        app = build_app(worker, n_partitions, datadir)
        faust_worker = faust.Worker(
            app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False
        )
        faust_worker.spinner = None  # a terminal spinner would end up in log files
        faust_worker.execute_from_commandline()
    finally:
        shutil.rmtree(datadir, ignore_errors=True)

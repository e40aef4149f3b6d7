"""The faust-streaming runtime of a worker: consumer group, agents, flush timer, shutdown.

Faust owns the Kafka side: group membership, rebalances, fetching and the event loop. The
:class:`~spanmetrics.fleet.worker.Worker` owns everything that must be exact. The seams:

- one agent hands every record of the input topic, another every record of the internal
  topic (``<group>-spanmetrics-deltas``), to :meth:`Worker.consume`; the group spreads the
  partitions of both over its members;
- a rebalance calls :meth:`Worker.revoke` (faust's ``on_partitions_revoked`` signal, sent
  once the agents are idle) and :meth:`Worker.assign` (before faust resumes fetching, see
  ``_App._on_partitions_assigned``);
- a timer calls :meth:`Worker.flush` every ``metrics_flush_interval``;
- both topics are declared with ``acks=False``, so faust never commits offsets of its
  own. The worker commits positions after its checkpoints, and again when it takes a
  partition over, so that faust's seek to the committed offset after a rebalance lands
  exactly on the checkpoint. Nothing exact depends on the commit: records below the
  checkpoint are skipped whatever faust delivers.
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
from spanmetrics.fleet.health import HealthServer
from spanmetrics.fleet.startup import NotThereYet, when_reachable
from spanmetrics.fleet.worker import INTERNAL_MAX_RECORD_BYTES, Headers, Worker
from spanmetrics.kafka.admin import ensure_topics, topic_partitions
from spanmetrics.kafka.security import client_options, faust_credentials
from spanmetrics.net import find_free_port

#: Seconds between two reads of the fleet's control document (views).
CONTROL_POLL_S = 1.0

log = logging.getLogger("spanmetrics.worker")

#: Largest fetch per partition: OTLP records from the Collector's exporter can be large.
MAX_FETCH_BYTES = 8 * 1024 * 1024


#: Records read ahead of the agent, at most (faust's ``stream_buffer_maxsize``). Faust's
#: default, 4096, holds that many records in memory whenever the worker falls behind: with
#: the Collector's records of up to 1 MB, gigabytes. 64 keep the worker busy, since one
#: fetch brings whole batches, and bound the read-ahead at 64 records.
STREAM_BUFFER_RECORDS = 64

#: Session and rebalance timeout of the consumer group: how long a crashed worker's
#: partitions wait before the group reassigns them, and how long a join may wait.
GROUP_TIMEOUT_S = 10.0


class _Positions:
    """Commits and high watermarks through faust's consumer."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        # faust's public commit() commits what its streams acked; our topics have acks off,
        # so the consumer's underlying commit is called with the checkpoints' offsets.
        consumer: Any = self._app.consumer
        await consumer._commit({TP(topic, p): offset for (topic, p), offset in offsets.items()})

    def highwater(self, topic: str, partition: int) -> int | None:
        try:
            value = self._app.consumer.highwater(TP(topic, partition))
        except Exception:  # unknown before the first fetch
            return None
        return int(value) if value is not None and value >= 0 else None


class _Sender:
    """The worker's own aiokafka producer (faust's is reserved for faust's topics)."""

    def __init__(
        self, bootstrap: str, max_record_bytes: int, options: dict[str, Any] | None = None
    ) -> None:
        self._bootstrap = bootstrap
        self._options = options or {}
        self._max_request_size = max_record_bytes + 64 * 1024  # + batch and record framing
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect (on the running loop, which aiokafka binds to)."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            linger_ms=5,
            max_request_size=self._max_request_size,
            **self._options,
        )
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await self._producer.stop()

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> None:
        if self._producer is None:
            raise RuntimeError("producer used before the app started")
        await self._producer.send_and_wait(
            topic, value=value, key=key, headers=list(headers), partition=partition
        )


class _App(faust.App):
    """A faust app that takes partitions over before faust resumes reading them, and
    flushes and checkpoints before faust stops its consumer."""

    spanmetrics_worker: Worker
    spanmetrics_sender: _Sender
    spanmetrics_health: HealthServer | None
    spanmetrics_topics: tuple[str, ...] = ()

    async def _on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # Before faust's own handler: that one starts the recovery service, which seeks to
        # the committed offsets and resumes fetching concurrently with faust's
        # ``on_partitions_assigned`` signal. Taking the partitions over first means every
        # record faust delivers is for a partition the worker already owns, read from the
        # position it committed.
        if not self.should_stop:
            try:
                await self.spanmetrics_worker.assign(
                    sorted(
                        (tp.topic, tp.partition)
                        for tp in assigned
                        if tp.topic in self.spanmetrics_topics
                    )
                )
            except Exception as exc:
                log.exception("taking partitions over failed")
                await self.crash(exc)
                return
        await super()._on_partitions_assigned(assigned, generation_id)

    async def on_start(self) -> None:
        await self.spanmetrics_sender.start()
        await self.spanmetrics_worker.prometheus.start()
        if self.spanmetrics_health is not None:
            await self.spanmetrics_health.start()
        # The fleet's current views before any shard is taken (none to switch yet).
        await self.spanmetrics_worker.refresh_control()
        self.spanmetrics_worker.adopt_control()
        await super().on_start()

    async def on_stop(self) -> None:
        # Runs before faust leaves the group (faust skips the revoke callback once it is
        # stopping), so the last records read are checkpointed by their owner.
        try:
            await self.spanmetrics_worker.stop()
        except Exception:
            log.exception("final flush failed; the next owners resume from the last checkpoints")
        await super().on_stop()
        await self.spanmetrics_sender.stop()
        await self.spanmetrics_worker.prometheus.stop()
        if self.spanmetrics_health is not None:
            await self.spanmetrics_health.stop()
        await self.spanmetrics_worker.store.close()


def build_app(
    worker: Worker, n_shards: int, datadir: str, health_port: int | None = None
) -> faust.App:
    """The faust app of one worker: its agents, timers, rebalance handlers and, on
    ``health_port``, its probes."""
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
        stream_buffer_maxsize=STREAM_BUFFER_RECORDS,
        topic_disable_leader=True,
        topic_allow_declare=False,
        stream_wait_empty=False,
        stream_recovery_delay=0.0,
        # A joining member waits up to the rebalance timeout for the others to rejoin;
        # faust's 60 s default makes every start and every rebalance that slow.
        broker_session_timeout=GROUP_TIMEOUT_S,
        broker_rebalance_timeout=GROUP_TIMEOUT_S,
        broker_heartbeat_interval=GROUP_TIMEOUT_S / 4,
        broker_credentials=faust_credentials(source),
        web_enabled=False,
        web_port=find_free_port(),  # faust binds it even when its web server is off
        web_bind="127.0.0.1",
    )
    app.spanmetrics_worker = worker
    # Checkpoints and broker acknowledgements older than three flushes (30 s at least)
    # make the worker unready.
    window = max(3 * topology.spanmetrics.metrics_flush_interval, 30.0)
    app.spanmetrics_health = (
        HealthServer("0.0.0.0", health_port, worker.health, worker.clock, window,
                     worker.store.ping)
        if health_port is not None
        else None
    )  # fmt: skip
    max_record = max(worker.output.max_message_bytes, INTERNAL_MAX_RECORD_BYTES)
    app.spanmetrics_sender = _Sender(worker.bootstrap, max_record, client_options(source))
    worker.attach(_Positions(app), app.spanmetrics_sender, n_shards)
    spans = app.topic(source.topic, key_type=bytes, value_type=bytes, acks=False)
    deltas = app.topic(worker.deltas_topic, key_type=bytes, value_type=bytes, acks=False)

    async def consume(stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            message = event.message
            await worker.consume(
                message.topic, message.partition, message.offset, message.key, message.value
            )
        yield None  # pragma: no cover - makes this an async generator, as faust expects

    # Two agents, so that applying deltas never waits behind reading spans.
    app.agent(spans, name="spanmetrics.spans")(consume)
    app.agent(deltas, name="spanmetrics.deltas")(consume)

    async def flush() -> None:
        await worker.flush()

    async def poll_control() -> None:
        # A new views version takes effect at a flush: flush now rather than at the next
        # tick, so that the fleet runs it within seconds.
        if await worker.refresh_control():
            await worker.flush()

    # faust's timer decorator is untyped; registering through it keeps mypy strict here.
    app.timer(topology.spanmetrics.metrics_flush_interval)(flush)
    app.timer(CONTROL_POLL_S)(poll_control)

    app.spanmetrics_topics = (source.topic, worker.deltas_topic)

    def ours(partitions: Set[TP]) -> list[tuple[str, int]]:
        topics = app.spanmetrics_topics
        return sorted((tp.topic, tp.partition) for tp in partitions if tp.topic in topics)

    async def revoked(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        await worker.revoke(ours(args[0]))

    # (faust types receivers as plain functions; coroutine receivers are awaited all the same)
    # (Assignments are taken in _App._on_partitions_assigned.)
    app.on_partitions_revoked.connect(cast(Any, revoked))

    return app


async def prepare_topics(worker: Worker) -> int:
    """Check the input topic and create the internal topic if missing; returns the number
    of shards (the internal topic's partitions: the input's partition count when it is
    created, fixed from then on)."""
    source = worker.topology.source
    options = client_options(source)
    n_partitions = await topic_partitions(worker.bootstrap, source.topic, options) or 0
    if n_partitions <= 0:
        raise NotThereYet(f"source.topic: topic {source.topic!r} does not exist on the broker")
    counts = await ensure_topics(
        worker.bootstrap, {worker.deltas_topic: n_partitions}, options=options
    )
    return counts[worker.deltas_topic]


def run_app(worker: Worker, health_port: int | None = None) -> None:
    """Run the worker under faust until SIGTERM or SIGINT (blocking); with
    ``health_port``, its probes on that port (0: a free one, logged)."""
    topology = worker.topology
    try:
        n_shards = asyncio.run(
            when_reachable(topology, worker.bootstrap, lambda: prepare_topics(worker))
        )
    except KeyboardInterrupt:
        log.info("%s: stopped before it could start", worker.worker_id)
        return
    datadir = tempfile.mkdtemp(prefix=f"spanmetrics-{worker.worker_id}-")
    asyncio.set_event_loop(asyncio.new_event_loop())  # the one faust and aiokafka will use
    try:
        app = build_app(worker, n_shards, datadir, health_port)
        faust_worker = faust.Worker(
            app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False
        )
        faust_worker.spinner = None  # a terminal spinner would end up in log files
        faust_worker.execute_from_commandline()
    finally:
        shutil.rmtree(datadir, ignore_errors=True)

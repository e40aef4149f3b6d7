"""Load generator: synthetic OTLP spans into a Kafka topic, as the Collector's Kafka exporter
writes them. Modelled on the Collector's ``telemetrygen``.

Each record value is one ``ExportTraceServiceRequest`` (``otlp_proto``) or its OTLP/JSON form
(``otlp_json``) made by :class:`spanmetrics.dev.synth.SpanGenerator`. Keys follow the exporter:

- ``nil`` (the exporter's default): no key, ``spans_per_record`` spans of many traces,
  services and pods per record;
- ``trace-id`` (the exporter's ``partition_traces_by_id``): one whole trace per record, keyed
  by its 32-char lowercase hex trace id, so a trace stays in one partition. Records are made
  in groups of traces adding up to about ``spans_per_record`` spans, as the exporter splits
  each batch it receives into one message per trace.

**Speed.** Generating spans costs about 30 us each; producing pre-encoded bytes is an order
of magnitude cheaper. So a pool of distinct records (``pool_records`` groups) is generated up
front and then sent round-robin, **verbatim**: the same record value (with the same trace and
span ids and timestamps) is sent again each time the round comes back to it. For the
span-metrics pipeline that is harmless (it counts spans, it does not deduplicate them), and
the expected counts below count a pool record every time it is sent. To keep timestamps
fresh, one group of the pool is replaced every ``pool_refresh_s`` seconds by a newly
generated one (in a thread, so sending goes on), starting about a second before "now": span
timestamps are at most about ``pool_records * pool_refresh_s`` seconds old.

**Exact accounting.** :func:`produce` counts a record only once the broker acknowledged it
(its send future resolved), and returns how many spans it sent per
(``service.name``, span name, ``span.kind``, ``status.code``): the calls a span-metrics
pipeline must report for the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from spanmetrics.decode import ENCODINGS, Encoding
from spanmetrics.dev.synth import DEFAULT_SERVICES, SpanGenerator, encode_request
from spanmetrics.kafka.admin import bootstrap_servers, ensure_topics
from spanmetrics.model.enums import span_kind_name, status_code_name

__all__ = [
    "DEFAULT_RATE",
    "KEY_MODES",
    "Chunk",
    "KeyMode",
    "LoadgenConfig",
    "LoadgenResult",
    "LoadgenStats",
    "PoolRecord",
    "SpanKey",
    "TokenBucket",
    "count_spans",
    "expected_to_json",
    "load_expected",
    "make_chunk",
    "pod_generations",
    "pool_size",
    "produce",
    "schedule",
]

#: How record keys are chosen (see the module docstring).
KeyMode = Literal["nil", "trace-id"]
KEY_MODES: tuple[str, ...] = get_args(KeyMode)

#: Default rate, spans per second. Not unlimited: the embedded broker keeps everything in
#: memory, and an unthrottled endless run fills it at over 100 MB/s.
DEFAULT_RATE = 10_000.0

#: Spans start this long before the moment their group is generated, so that most of a
#: group's simulated traces (about 2 ms apart) have ended by the time they are sent.
_BACKDATE_NS = 1_000_000_000


class SpanKey(NamedTuple):
    """The identity a span is counted under: the connector's intrinsic dimensions."""

    service: str
    span_name: str
    #: ``SPAN_KIND_*``, spelled as the connector writes the ``span.kind`` dimension.
    span_kind: str
    #: ``STATUS_CODE_*``, spelled as the connector writes ``status.code``.
    status_code: str


def count_spans(request: ExportTraceServiceRequest) -> Counter[SpanKey]:
    """Spans of ``request`` per :class:`SpanKey`.

    A resource without ``service.name`` counts under the service ``""`` (the connector drops
    such spans; the generator never makes them).
    """
    counts: Counter[SpanKey] = Counter()
    for resource_spans in request.resource_spans:
        service = ""
        for attribute in resource_spans.resource.attributes:
            if attribute.key == "service.name":
                service = attribute.value.string_value
                break
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                key = SpanKey(
                    service,
                    span.name,
                    span_kind_name(span.kind),
                    status_code_name(span.status.code),
                )
                counts[key] += 1
    return counts


class TokenBucket:
    """Token bucket: ``rate`` tokens per second, at most ``capacity`` saved up.

    :meth:`reserve` takes tokens at once and says how long to wait before acting on them; a
    request larger than what is saved up puts the bucket in debt, so requests of any size are
    served and the long-run rate is exactly ``rate``. Nothing polls: the caller sleeps the
    returned delay once.
    """

    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start full (``capacity`` tokens).

        Raises:
            ValueError: ``rate`` or ``capacity`` not positive.
        """
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if not capacity > 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while in debt)."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def reserve(self, n: float) -> float:
        """Take ``n`` tokens; return the seconds to wait until they are actually earned."""
        self._refill()
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self, n: float) -> None:
        """Take ``n`` tokens, sleeping until they are earned."""
        delay = self.reserve(n)
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class LoadgenConfig:
    """What to produce, how fast and for how long. Validated on construction."""

    topic: str = "otlp_spans"
    encoding: Encoding = "otlp_proto"
    #: Spans per second; 0 means as fast as the broker takes them.
    rate: float = DEFAULT_RATE
    #: Spans per record (``nil`` keys), or per group of one-trace records (``trace-id``).
    spans_per_record: int = 1000
    keys: KeyMode = "nil"
    #: Spans to send; 0 means no limit. Exact with ``nil`` keys; with ``trace-id`` keys,
    #: whole traces are sent until at least this many spans (overshoot < one trace).
    total: int = 0
    #: Stop after this many seconds of sending (pool generation excluded); 0: no limit.
    duration_s: float = 0.0
    #: Create the topic with this many partitions if it does not exist; None leaves a
    #: missing topic to the broker's auto-creation (Tansu: 4 partitions).
    partitions: int | None = None
    seed: int = 0
    #: Groups of records generated up front and reused round-robin.
    pool_records: int = 16
    #: Replace one pool group every this many seconds; 0 never refreshes (a run is then
    #: fully determined by the seed and the count of records sent).
    pool_refresh_s: float = 1.0
    #: Every this many seconds one service rolls out new pods (the services take turns),
    #: as deployments do in a cluster: new resources, so new series, and old ones that go
    #: idle. 0: the pods never change.
    pod_churn_s: float = 30.0
    #: Tokens saved up by the rate limiter, in seconds of ``rate``: the largest burst.
    burst_s: float = 0.1
    #: Bytes of records sent but not yet acknowledged before sending waits for acks.
    max_in_flight_bytes: int = 32 << 20
    linger_ms: int = 5
    #: Producer batch size: small (trace-id) records share batches up to this size.
    max_batch_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}, supported: {ENCODINGS}")
        if self.keys not in KEY_MODES:
            raise ValueError(f"unknown key mode {self.keys!r}, supported: {KEY_MODES}")
        if not self.topic:
            raise ValueError("topic must not be empty")
        checks = (
            ("rate", self.rate >= 0),
            ("spans_per_record", self.spans_per_record >= 1),
            ("total", self.total >= 0),
            ("duration_s", self.duration_s >= 0),
            ("partitions", self.partitions is None or self.partitions >= 1),
            ("pool_records", self.pool_records >= 1),
            ("pool_refresh_s", self.pool_refresh_s >= 0),
            ("pod_churn_s", self.pod_churn_s >= 0),
            ("burst_s", self.burst_s > 0),
            ("max_in_flight_bytes", self.max_in_flight_bytes >= 1),
            ("linger_ms", self.linger_ms >= 0),
            ("max_batch_bytes", self.max_batch_bytes >= 1),
        )
        for name, ok in checks:
            if not ok:
                raise ValueError(f"{name} out of range: {getattr(self, name)!r}")


@dataclass(frozen=True)
class PoolRecord:
    """One Kafka record, encoded, with what it holds."""

    key: bytes | None
    value: bytes
    spans: int
    counts: Counter[SpanKey]


#: Records generated together: one record with ``nil`` keys, one per trace with ``trace-id``.
Chunk = tuple[PoolRecord, ...]


def _chunk_seed(seed: int, index: int) -> int:
    """A seed per pool group, so groups differ from each other and across seeds."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _record(key: bytes | None, request: ExportTraceServiceRequest, encoding: str) -> PoolRecord:
    counts = count_spans(request)
    return PoolRecord(key, encode_request(request, encoding), counts.total(), counts)


def pod_generations(config: LoadgenConfig, elapsed_s: float) -> list[int]:
    """Rollouts of each service after ``elapsed_s`` seconds: one service every
    ``pod_churn_s``, the last one first, then the one before it, and so on."""
    n = len(DEFAULT_SERVICES)
    if not config.pod_churn_s:
        return [0] * n
    turns = int(elapsed_s / config.pod_churn_s)
    return [(turns + n - 1 - i) // n for i in range(n)]


def make_chunk(
    config: LoadgenConfig,
    index: int,
    n_spans: int | None = None,
    now_ns: int | None = None,
    elapsed_s: float = 0.0,
) -> Chunk:
    """Generate pool group ``index``: ``n_spans`` (default ``spans_per_record``) spans, with
    the pods the services have ``elapsed_s`` seconds into the run.

    With ``nil`` keys one record of exactly ``n_spans`` spans; with ``trace-id`` keys one
    record per whole trace, traces added until they hold at least ``n_spans`` spans.
    Deterministic for a given ``config.seed``, ``index``, ``now_ns`` (default: now) and
    ``elapsed_s``.
    """
    n = config.spans_per_record if n_spans is None else n_spans
    start = (time.time_ns() if now_ns is None else now_ns) - _BACKDATE_NS
    generator = SpanGenerator(
        seed=_chunk_seed(config.seed, index),
        start_unix_nano=start,
        pods=(config.seed, pod_generations(config, elapsed_s)),
    )
    if config.keys == "nil":
        return (_record(None, generator.batch_request(n), config.encoding),)
    records: list[PoolRecord] = []
    spans = 0
    while spans < n:
        for trace_id, request in generator.trace_requests(1):
            record = _record(trace_id.encode("ascii"), request, config.encoding)
            records.append(record)
            spans += record.spans
    return tuple(records)


def pool_size(config: LoadgenConfig) -> int:
    """Number of groups to generate up front: ``pool_records``, or fewer for a short run."""
    if config.total == 0:
        return config.pool_records
    if config.keys == "nil":
        # The remainder (total % spans_per_record) is a separate, smaller tail record.
        needed = config.total // config.spans_per_record
    else:
        needed = math.ceil(config.total / config.spans_per_record)
    return min(config.pool_records, needed)


#: Index of the tail record's group, out of the range of pool group indices.
_TAIL_INDEX = -1


def schedule(chunks: Sequence[Chunk], tail: Chunk, config: LoadgenConfig) -> Iterator[PoolRecord]:
    """The records to send, in order: the pool round-robin, then the tail, up to ``total``.

    ``chunks`` is read as iteration goes, so groups replaced meanwhile are picked up.
    With ``nil`` keys, ``total // spans_per_record`` pool records and then ``tail`` (the
    remainder, possibly empty) make exactly ``total`` spans; with ``trace-id`` keys, records
    come until at least ``total`` spans. ``total == 0`` never ends.
    """
    if config.keys == "nil" and config.total:
        full = config.total // config.spans_per_record
        sent = 0
        while sent < full:
            for i in range(len(chunks)):
                if sent >= full:
                    break
                yield from chunks[i]
                sent += 1
        yield from tail
        return
    spans = 0
    while not config.total or spans < config.total:
        for i in range(len(chunks)):
            for record in chunks[i]:
                yield record
                spans += record.spans
                if config.total and spans >= config.total:
                    return


class LoadgenStats(NamedTuple):
    """Progress so far: acknowledged records and spans."""

    records: int
    spans: int
    failed_records: int
    elapsed_s: float

    @property
    def spans_per_s(self) -> float:
        """Acknowledged spans per second of sending."""
        return self.spans / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class LoadgenResult:
    """What the broker acknowledged, exactly."""

    records: int = 0
    spans: int = 0
    #: Spans acknowledged per (service, span name, span kind, status code).
    calls: Counter[SpanKey] = field(default_factory=Counter)
    #: Records whose send failed (not counted above).
    failed_records: int = 0
    #: The first send error, if any.
    error: str | None = None
    #: Seconds from the first send to the last acknowledgement.
    elapsed_s: float = 0.0
    topic: str = ""

    @property
    def spans_per_s(self) -> float:
        """Acknowledged spans per second of sending."""
        return self.spans / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def per_service(self) -> Counter[str]:
        """Acknowledged spans per ``service.name``."""
        out: Counter[str] = Counter()
        for key, n in self.calls.items():
            out[key.service] += n
        return out

    def stats(self) -> LoadgenStats:
        """The counters as a :class:`LoadgenStats`."""
        return LoadgenStats(self.records, self.spans, self.failed_records, self.elapsed_s)

    def _ack(self, record: PoolRecord, tally: dict[int, list[Any]]) -> None:
        self.records += 1
        self.spans += record.spans
        # Times each pool record was acknowledged, by identity: adding its Counter to
        # ``calls`` on every ack would cost more than the send itself for one-trace records.
        entry = tally.get(id(record))
        if entry is None:
            tally[id(record)] = [record, 1]
        else:
            entry[1] += 1

    def _add_tally(self, tally: dict[int, list[Any]]) -> None:
        for record, n in tally.values():
            for key, count in record.counts.items():
                self.calls[key] += count * n

    def write_expected(self, path: str | Path) -> None:
        """Write :func:`expected_to_json` of this result to ``path``."""
        Path(path).write_text(json.dumps(expected_to_json(self), indent=1) + "\n")


def expected_to_json(result: LoadgenResult) -> dict[str, Any]:
    """The acknowledged counts as a JSON document (``--dump-expected``).

    ``{"topic", "records", "spans", "failed_records", "calls": [{"service.name",
    "span.name", "span.kind", "status.code", "calls"}, ...]}`` with ``calls`` sorted by key.
    """
    return {
        "topic": result.topic,
        "records": result.records,
        "spans": result.spans,
        "failed_records": result.failed_records,
        "calls": [
            {
                "service.name": key.service,
                "span.name": key.span_name,
                "span.kind": key.span_kind,
                "status.code": key.status_code,
                "calls": n,
            }
            for key, n in sorted(result.calls.items())
        ],
    }


def load_expected(path: str | Path) -> Counter[SpanKey]:
    """The ``calls`` of a file written by :meth:`LoadgenResult.write_expected`."""
    document = json.loads(Path(path).read_text())
    return Counter(
        {
            SpanKey(e["service.name"], e["span.name"], e["span.kind"], e["status.code"]): int(
                e["calls"]
            )
            for e in document["calls"]
        }
    )


class _MemoPartitioner:
    """aiokafka's default partitioner (murmur2 of the key, as Java clients), memoised.

    Pool records repeat their keys, and the pure-Python murmur2 costs more than the rest of
    a send of a one-trace record.
    """

    _MAX_ENTRIES = 1 << 17

    def __init__(self) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        self._default = DefaultPartitioner()
        self._cache: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        # The default partitioner's answer depends on the key and the number of partitions.
        cache_key = (key, len(all_partitions))
        partition = self._cache.get(cache_key)
        if partition is None:
            if len(self._cache) >= self._MAX_ENTRIES:  # pool refreshes bring new keys
                self._cache.clear()
            partition = self._cache[cache_key] = int(self._default(key, all_partitions, available))
        return partition


async def _sleep_or_stop(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep ``seconds``, waking early if ``stop`` is set."""
    if seconds <= 0:
        return
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _build_pool(config: LoadgenConfig) -> tuple[list[Chunk], Chunk]:
    chunks = [make_chunk(config, i) for i in range(pool_size(config))]
    tail: Chunk = ()
    if config.keys == "nil" and config.total % config.spans_per_record:
        tail = make_chunk(config, _TAIL_INDEX, config.total % config.spans_per_record)
    return chunks, tail


async def _refresh(chunks: list[Chunk], config: LoadgenConfig, stop: asyncio.Event) -> None:
    """Replace pool groups one at a time, oldest first, until ``stop``."""
    index = len(chunks)
    started = time.monotonic()
    while not stop.is_set():
        await _sleep_or_stop(config.pool_refresh_s, stop)
        if stop.is_set():
            return
        # Generation runs in a thread so the event loop keeps sending meanwhile.
        elapsed = time.monotonic() - started
        chunk = await asyncio.to_thread(make_chunk, config, index, None, None, elapsed)
        chunks[index % len(chunks)] = chunk
        index += 1


async def _report(
    result: LoadgenResult,
    started: float,
    interval_s: float,
    progress: Callable[[LoadgenStats], None],
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        await _sleep_or_stop(interval_s, stop)
        if not stop.is_set():
            result.elapsed_s = time.monotonic() - started
            progress(result.stats())


async def produce(
    broker: str,
    config: LoadgenConfig | None = None,
    *,
    progress: Callable[[LoadgenStats], None] | None = None,
    progress_interval_s: float = 5.0,
    stop: asyncio.Event | None = None,
) -> LoadgenResult:
    """Produce synthetic spans to ``broker`` until ``total``, ``duration_s`` or ``stop``.

    Args:
        broker: ``kafka://host:port`` or ``host:port`` (comma-separated for several).
        config: what to send; default :class:`LoadgenConfig()`.
        progress: called every ``progress_interval_s`` with the acknowledged counts so far.
        progress_interval_s: seconds between progress calls.
        stop: set it to stop early (e.g. from a signal handler); records already sent are
            still awaited and counted.

    Returns:
        Exactly what the broker acknowledged. A failed send stops the run; it is counted
        in ``failed_records`` and described in ``error`` (no exception is raised, so the
        counts of what did arrive are not lost).

    Raises:
        TopicError: ``config.partitions`` is set and the topic could not be created.
        aiokafka.errors.KafkaError: the broker cannot be reached at the start
            (``KafkaConnectionError``).
    """
    from aiokafka import AIOKafkaProducer

    config = config or LoadgenConfig()
    bootstrap = bootstrap_servers(broker)
    if config.partitions is not None:
        await ensure_topics(bootstrap, {config.topic: config.partitions})
    chunks, tail = await asyncio.to_thread(_build_pool, config)
    largest = max((len(r.value) for chunk in [*chunks, tail] for r in chunk), default=0)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="spanmetrics-loadgen",
        # acks=all without idempotence: Tansu has no idempotent producer.
        acks="all",
        enable_idempotence=False,
        linger_ms=config.linger_ms,
        max_batch_size=config.max_batch_bytes,
        # A record of 1000 spans in OTLP/JSON is close to Kafka's usual 1 MB limit; allow what
        # we generate (brokers still enforce their own limit and answer with an error).
        max_request_size=max(1 << 20, largest + (64 << 10)),
        partitioner=_MemoPartitioner(),
    )
    result = LoadgenResult(topic=config.topic)
    done = asyncio.Event()
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # a half-started producer still holds connections and tasks
        raise
    started = time.monotonic()
    background = []
    if config.pool_refresh_s > 0 and chunks:
        background.append(asyncio.create_task(_refresh(chunks, config, done)))
    if progress is not None:
        background.append(
            asyncio.create_task(_report(result, started, progress_interval_s, progress, done))
        )
    pending: deque[tuple[asyncio.Future[Any], PoolRecord]] = deque()
    pending_bytes = 0
    # Holds the records it counts, so their ids stay unique while counted.
    tally: dict[int, list[Any]] = {}

    async def settle() -> None:
        nonlocal pending_bytes
        future, record = pending.popleft()
        pending_bytes -= len(record.value)
        try:
            await future
        except Exception as err:  # any send failure: count it, keep the acked counts
            result.failed_records += 1
            result.error = result.error or f"{type(err).__name__}: {err}"
        else:
            result._ack(record, tally)

    deadline = started + config.duration_s if config.duration_s else math.inf
    bucket = (
        TokenBucket(config.rate, max(1.0, config.rate * config.burst_s)) if config.rate else None
    )

    def finished() -> bool:
        return (
            (stop is not None and stop.is_set())
            or result.error is not None
            or time.monotonic() >= deadline
        )

    try:
        for record in schedule(chunks, tail, config):
            if finished():
                break
            if bucket is not None:
                delay = bucket.reserve(record.spans)
                if delay > 0:
                    await _sleep_or_stop(min(delay, deadline - time.monotonic()), stop)
                    if finished():
                        break
            try:
                future = await producer.send(config.topic, record.value, key=record.key)
            except Exception as err:  # e.g. message too large: nothing was queued
                result.failed_records += 1
                result.error = f"{type(err).__name__}: {err}"
                break
            pending.append((future, record))
            pending_bytes += len(record.value)
            # Settle acknowledged sends as they come (keeps the counts current for progress)
            # and wait for acks when too many bytes are in flight.
            while pending and (pending_bytes > config.max_in_flight_bytes or pending[0][0].done()):
                await settle()
        while pending:
            await settle()
        result.elapsed_s = time.monotonic() - started
    finally:
        done.set()
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await producer.stop()
        result._add_tally(tally)
    return result

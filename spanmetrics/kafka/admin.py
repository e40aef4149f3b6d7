"""Topic administration: create topics with a chosen number of partitions.

Brokers that auto-create topics (Tansu does, with 4 partitions, on the first metadata request
or produce naming them) pick the partition count themselves, and the partition count is what
bounds how many workers can share a topic. So anything that cares creates its topics first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "TopicError",
    "bootstrap_servers",
    "create_topic",
    "ensure_topics",
    "topic_partitions",
]

#: Kafka error code TOPIC_ALREADY_EXISTS.
_TOPIC_ALREADY_EXISTS = 36


class TopicError(RuntimeError):
    """A topic could not be created or did not appear in the cluster metadata in time."""


def bootstrap_servers(url: str) -> str:
    """``kafka://host:port[,host:port]`` (or a bare ``host:port``) in aiokafka's form."""
    return url.strip().removeprefix("kafka://").rstrip("/")


async def _admin(bootstrap: str, options: Mapping[str, Any] | None = None) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(bootstrap), client_id="spanmetrics-admin",
        **(options or {}),
    )  # fmt: skip
    try:
        await admin.start()
    except BaseException:
        await admin.close()  # a half-started client still holds connections
        raise
    return admin


async def _partitions(admin: Any, name: str) -> int | None:
    """Partition count of ``name`` if the metadata shows it with a leader for every partition.

    Asks for the metadata of *all* topics: a metadata request naming the topic is sent with
    ``allow_auto_topic_creation`` (aiokafka sets it), and Tansu would then create the very
    topic we are asking about, with its default partition count.
    """
    described = await admin.describe_topics()
    for topic in described:
        if topic.get("topic") != name or topic.get("error_code", 0) != 0:
            continue
        partitions = topic.get("partitions") or []
        if partitions and all(p.get("leader", -1) >= 0 for p in partitions):
            return len(partitions)
    return None


async def topic_partitions(
    bootstrap: str, name: str, options: Mapping[str, Any] | None = None
) -> int | None:
    """Number of partitions of topic ``name``, or None if it does not exist.

    ``bootstrap`` is ``host:port`` or ``kafka://host:port``. Does not create the topic.

    Raises:
        aiokafka.errors.KafkaError: the broker cannot be reached.
    """
    admin = await _admin(bootstrap, options)
    try:
        return await _partitions(admin, name)
    finally:
        await admin.close()


async def _wait_visible(admin: Any, name: str, deadline: float) -> int:
    # Kafka creates topics asynchronously: CreateTopics can answer before every broker's
    # metadata shows the new partitions with leaders.
    while True:
        count = await _partitions(admin, name)
        if count is not None:
            return count
        if time.monotonic() >= deadline:
            raise TopicError(f"topic {name!r} did not appear in the cluster metadata")
        await asyncio.sleep(0.05)


async def _create(
    admin: Any, topics: Mapping[str, int], replication_factor: int, timeout_s: float
) -> dict[str, bool]:
    from aiokafka.admin import NewTopic

    response = await admin.create_topics(
        [NewTopic(name, partitions, replication_factor) for name, partitions in topics.items()],
        timeout_ms=int(timeout_s * 1000),
    )
    created: dict[str, bool] = {}
    # Entries are (topic, error_code[, error_message]) depending on the protocol version.
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        if code == 0:
            created[name] = True
        elif code == _TOPIC_ALREADY_EXISTS:
            created[name] = False
        else:
            raise TopicError(f"cannot create topic {name!r}: error {code} {message or ''}".strip())
    return created


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    *,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
) -> bool:
    """Create topic ``name`` with ``partitions`` partitions and wait until it is usable.

    Returns True if this call created it, False if it already existed (whatever its partition
    count: use :func:`ensure_topics` to learn it).

    Raises:
        ValueError: ``partitions`` or ``replication_factor`` below 1.
        TopicError: the broker refused, or the topic did not show up within ``timeout_s``.
        aiokafka.errors.KafkaError: the broker cannot be reached.
    """
    return (
        await _create_many(
            bootstrap,
            {name: partitions},
            replication_factor=replication_factor,
            timeout_s=timeout_s,
        )
    )[name][0]


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
    options: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Make sure each topic exists, creating missing ones with the given partition count.

    ``topics`` maps topic name to the partition count to create it with. Returns each topic's
    actual partition count, which differs from the one asked for when the topic existed
    before (partitions are never added or removed here).

    Raises:
        ValueError: a partition count or ``replication_factor`` below 1.
        TopicError: the broker refused, or a topic did not show up within ``timeout_s``.
        aiokafka.errors.KafkaError: the broker cannot be reached.
    """
    result = await _create_many(
        bootstrap, topics, replication_factor=replication_factor, timeout_s=timeout_s,
        options=options,
    )  # fmt: skip
    return {name: count for name, (_, count) in result.items()}


async def _create_many(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int,
    timeout_s: float,
    options: Mapping[str, Any] | None = None,
) -> dict[str, tuple[bool, int]]:
    for name, partitions in topics.items():
        if partitions < 1:
            raise ValueError(f"topic {name!r}: partitions must be >= 1, got {partitions}")
    if replication_factor < 1:
        raise ValueError(f"replication_factor must be >= 1, got {replication_factor}")
    if not topics:
        return {}
    deadline = time.monotonic() + timeout_s
    admin = await _admin(bootstrap, options)
    try:
        missing = {}
        existing: dict[str, int] = {}
        for name, partitions in topics.items():
            count = await _partitions(admin, name)
            if count is None:
                missing[name] = partitions
            else:
                existing[name] = count
        created = await _create(admin, missing, replication_factor, timeout_s) if missing else {}
        result = {name: (False, count) for name, count in existing.items()}
        for name in missing:
            result[name] = (created.get(name, False), await _wait_visible(admin, name, deadline))
        return result
    finally:
        await admin.close()

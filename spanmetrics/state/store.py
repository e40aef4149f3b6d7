"""Durable fleet state: per-partition checkpoints and per-shard publish records, fenced.

Two implementations share one protocol: :class:`RedisStateStore` (``redis://``), for a
fleet, and :class:`MemoryStateStore` (``memory://``), for a single process.

Keys under ``spanmetrics:<group>:`` (``group`` is the consumer group):

- ``epoch:<P>``: fencing token of input partition P, incremented by each new owner;
- ``ckpt:<P>``: hash with ``offset`` (next record to read) and ``shard:<s>`` blobs (the
  partition's cumulative state for shard s, OTLP protobuf);
- ``pub:<s>``: hash with ``state`` (what was last published for shard s) and
  ``pending`` (a delta record written but maybe not yet sent).

Every write checks the writer's epoch inside one Redis script, so a checkpoint and its
offset land together or not at all, and never from a worker that lost the partition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, cast
from urllib.parse import urlparse

#: Lua: write hash fields only if the caller's epoch is still the partition's epoch.
#: KEYS[1] hash, KEYS[2] epoch key; ARGV[1] epoch, ARGV[2..] field/value pairs.
_FENCED_HSET = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
return 1
"""

#: Lua: delete hash fields under the same fence. ARGV[2..] field names.
_FENCED_HDEL = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
return 1
"""


@dataclass(slots=True)
class PartitionCheckpoint:
    """What a partition's last checkpoint holds."""

    offset: int | None = None
    """Offset of the next record to read; None when the partition was never checkpointed."""
    shards: dict[int, bytes] = field(default_factory=dict)
    """Cumulative state per shard, as stored blobs."""


@dataclass(slots=True)
class PublishRecord:
    """What the publisher of a shard last published, and a send that may not have happened."""

    state: bytes | None = None
    pending: bytes | None = None


class FencedError(Exception):
    """The writer's epoch is stale: another worker owns the partition now."""


class StateStore(Protocol):
    """Durable state of one consumer group."""

    async def claim(self, partition: int) -> int:
        """Become the owner of ``partition``: a new epoch that fences out older owners."""
        ...

    async def load(self, partition: int) -> PartitionCheckpoint:
        """The partition's last checkpoint (empty if none)."""
        ...

    async def save(self, partition: int, epoch: int, offset: int, shards: dict[int, bytes]) -> None:
        """Atomically store ``shards`` and the next ``offset``, if ``epoch`` is current.

        Raises:
            FencedError: another worker owns the partition.
        """
        ...

    async def shard_blobs(self, shard: int, partitions: Iterable[int]) -> list[bytes]:
        """Shard ``shard`` of these partitions' checkpoints (partitions without it skipped)."""
        ...

    async def load_published(self, shard: int) -> PublishRecord:
        """The shard's publish record."""
        ...

    async def save_published(
        self, shard: int, epoch: int, state: bytes, pending: bytes | None
    ) -> None:
        """Store what is being published, fenced by the epoch of partition ``shard``.

        Raises:
            FencedError: another worker owns the partition and so the shard.
        """
        ...

    async def clear_pending(self, shard: int, epoch: int) -> None:
        """Forget the pending record once it was sent (fenced like :meth:`save_published`)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryStateStore:
    """State in this process only (``memory://``): exact while the process lives."""

    def __init__(self) -> None:
        self._epochs: dict[int, int] = {}
        self._checkpoints: dict[int, PartitionCheckpoint] = {}
        self._published: dict[int, PublishRecord] = {}

    async def claim(self, partition: int) -> int:
        """See :meth:`StateStore.claim`."""
        self._epochs[partition] = self._epochs.get(partition, 0) + 1
        return self._epochs[partition]

    def _check(self, partition: int, epoch: int) -> None:
        if self._epochs.get(partition) != epoch:
            raise FencedError(f"partition {partition}: epoch {epoch} is stale")

    async def load(self, partition: int) -> PartitionCheckpoint:
        """See :meth:`StateStore.load`."""
        ckpt = self._checkpoints.get(partition)
        return (
            PartitionCheckpoint()
            if ckpt is None
            else PartitionCheckpoint(ckpt.offset, dict(ckpt.shards))
        )

    async def save(self, partition: int, epoch: int, offset: int, shards: dict[int, bytes]) -> None:
        """See :meth:`StateStore.save`."""
        self._check(partition, epoch)
        ckpt = self._checkpoints.setdefault(partition, PartitionCheckpoint())
        ckpt.offset = offset
        ckpt.shards.update(shards)

    async def shard_blobs(self, shard: int, partitions: Iterable[int]) -> list[bytes]:
        """See :meth:`StateStore.shard_blobs`."""
        blobs = []
        for p in partitions:
            ckpt = self._checkpoints.get(p)
            if ckpt is not None and shard in ckpt.shards:
                blobs.append(ckpt.shards[shard])
        return blobs

    async def load_published(self, shard: int) -> PublishRecord:
        """See :meth:`StateStore.load_published`."""
        record = self._published.get(shard)
        return PublishRecord() if record is None else PublishRecord(record.state, record.pending)

    async def save_published(
        self, shard: int, epoch: int, state: bytes, pending: bytes | None
    ) -> None:
        """See :meth:`StateStore.save_published`."""
        self._check(shard, epoch)
        self._published[shard] = PublishRecord(state, pending)

    async def clear_pending(self, shard: int, epoch: int) -> None:
        """See :meth:`StateStore.clear_pending`."""
        self._check(shard, epoch)
        record = self._published.get(shard)
        if record is not None:
            record.pending = None

    async def close(self) -> None:
        """Nothing to release."""


class RedisStateStore:
    """State in Redis (``redis://host:port/db``), shared by the fleet."""

    def __init__(self, url: str, group: str) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url)
        self.prefix = f"spanmetrics:{group}"
        self._hset = self._redis.register_script(_FENCED_HSET)
        self._hdel = self._redis.register_script(_FENCED_HDEL)

    def _key(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    async def claim(self, partition: int) -> int:
        """See :meth:`StateStore.claim`."""
        return int(await self._redis.incr(self._key("epoch", partition)))

    async def load(self, partition: int) -> PartitionCheckpoint:
        """See :meth:`StateStore.load`."""
        fields = cast(dict[bytes, bytes], await self._redis.hgetall(self._key("ckpt", partition)))
        ckpt = PartitionCheckpoint()
        for name, value in fields.items():
            if name == b"offset":
                ckpt.offset = int(value)
            elif name.startswith(b"shard:"):
                ckpt.shards[int(name[6:])] = value
        return ckpt

    async def save(self, partition: int, epoch: int, offset: int, shards: dict[int, bytes]) -> None:
        """See :meth:`StateStore.save`."""
        args: list[bytes | str | int] = [epoch, "offset", offset]
        for shard, blob in shards.items():
            args += [f"shard:{shard}", blob]
        keys = [self._key("ckpt", partition), self._key("epoch", partition)]
        if not await self._hset(keys=keys, args=args):
            raise FencedError(f"partition {partition}: epoch {epoch} is stale")

    async def shard_blobs(self, shard: int, partitions: Iterable[int]) -> list[bytes]:
        """See :meth:`StateStore.shard_blobs`."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.hget(self._key("ckpt", p), f"shard:{shard}")
            values: list[bytes | None] = await pipe.execute()
        return [v for v in values if v is not None]

    async def load_published(self, shard: int) -> PublishRecord:
        """See :meth:`StateStore.load_published`."""
        values = await self._redis.hmget(self._key("pub", shard), ["state", "pending"])
        state, pending = cast(list[bytes | None], values)
        return PublishRecord(state, pending)

    async def save_published(
        self, shard: int, epoch: int, state: bytes, pending: bytes | None
    ) -> None:
        """See :meth:`StateStore.save_published`."""
        args: list[bytes | str | int] = [epoch, "state", state]
        if pending is not None:
            args += ["pending", pending]
        keys = [self._key("pub", shard), self._key("epoch", shard)]
        if not await self._hset(keys=keys, args=args):
            raise FencedError(f"shard {shard}: epoch {epoch} is stale")

    async def clear_pending(self, shard: int, epoch: int) -> None:
        """See :meth:`StateStore.clear_pending`."""
        keys = [self._key("pub", shard), self._key("epoch", shard)]
        if not await self._hdel(keys=keys, args=[epoch, "pending"]):
            raise FencedError(f"shard {shard}: epoch {epoch} is stale")

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def open_store(url: str, group: str) -> StateStore:
    """A store for ``memory://`` or ``redis://host:port/db``.

    Raises:
        ValueError: unknown scheme.
    """
    scheme = urlparse(url).scheme
    if scheme == "memory":
        return MemoryStateStore()
    if scheme in ("redis", "rediss", "unix"):
        return RedisStateStore(url, group)
    raise ValueError(f"state: unknown URL scheme {scheme!r}, expected memory:// or redis://")

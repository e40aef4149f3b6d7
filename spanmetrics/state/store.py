"""Durable fleet state: stage 1's cuts and stage 2's shard checkpoints, fenced.

Two implementations share one protocol: :class:`RedisStateStore` (``redis://``), for a
fleet, and :class:`MemoryStateStore` (``memory://``), for a single process.

Keys under ``spanmetrics:<group>:`` (``group`` is the consumer group). The braces are Redis
Cluster hash tags: the keys of one shard live in one slot, so one script can write them.

- ``{part:<P>}``: hash with ``epoch`` (fencing token of input partition P, incremented by
  each new owner), ``start`` and ``end``: P's last cut, records [start, end) sent (or
  being sent) as deltas;
- ``{shard:<S>}``: hash with ``epoch`` (of shard S's owner), ``offset`` (next record of
  the internal topic's partition S to read), ``applied`` (per input partition, the last
  cut part applied) and ``pending`` (delta output written ahead of its send);
- ``{shard:<S>}:series``: one field per series of the shard: its state;
- ``{shard:<S>}:resources``: one field per resource of the shard.

Every write checks the writer's epoch inside one Redis script, so a checkpoint lands whole
or not at all, and never from a worker that lost the partition or shard.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlparse

from spanmetrics.aggregate.budgets import LeaseRequest
from spanmetrics.net import SENTINEL_SCHEME, parse_sentinel_url, redact_url
from spanmetrics.state.codec import (
    Applied,
    OutputRecord,
    decode_applied,
    decode_pending,
    encode_applied,
    encode_pending,
)

#: Lua: set hash fields of KEYS[1] if its ``epoch`` field is still ARGV[1].
_FENCED_HSET = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
return 1
"""

#: Lua: one shard checkpoint. KEYS: meta, series, resources hashes. ARGV[1] epoch, then
#: five counts (meta pairs, series pairs, series deletions, resource pairs, resource
#: deletions), then the items in that order. Fields are written in chunks: ``unpack`` of
#: too many values at once overflows Lua's stack.
#: The next version of the control document and its audit entry, in one step.
_SAVE_CONTROL = """
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'document', ARGV[1])
local entry = cjson.decode(ARGV[2])
entry['version'] = version
redis.call('RPUSH', KEYS[2], cjson.encode(entry))
return version
"""

#: Budget leases: one hash, field ``<budget key>#<shard>``; each request is granted what
#: the budget has left after every other shard's lease.
_LEASE_BUDGETS = """
local shard = ARGV[1]
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 2, #ARGV, 3 do
  local key, want, size = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local others = 0
  for j = 1, #all, 2 do
    local field = all[j]
    local sep = string.find(field, '#', 1, true)
    if sep and string.sub(field, 1, sep - 1) == key and string.sub(field, sep + 1) ~= shard then
      others = others + tonumber(all[j + 1])
    end
  end
  local grant = math.max(math.min(want, size - others), 0)
  redis.call('HSET', KEYS[1], key .. '#' .. shard, grant)
  table.insert(out, grant)
end
return out
"""

_SAVE_SHARD = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
local i = 7
local function hset(key, n)
  local done = 0
  while done < n do
    local m = math.min(n - done, 256)
    redis.call('HSET', key, unpack(ARGV, i, i + 2 * m - 1))
    i = i + 2 * m
    done = done + m
  end
end
local function hdel(key, n)
  local done = 0
  while done < n do
    local m = math.min(n - done, 512)
    redis.call('HDEL', key, unpack(ARGV, i, i + m - 1))
    i = i + m
    done = done + m
  end
end
hset(KEYS[1], tonumber(ARGV[2]))
hset(KEYS[2], tonumber(ARGV[3]))
hdel(KEYS[2], tonumber(ARGV[4]))
hset(KEYS[3], tonumber(ARGV[5]))
hdel(KEYS[3], tonumber(ARGV[6]))
return 1
"""


@dataclass(frozen=True, slots=True)
class Cut:
    """An input partition's last cut: records [start, end) sent, or being sent, as deltas."""

    start: int
    end: int


@dataclass(slots=True)
class ShardCheckpoint:
    """What a shard's checkpoint holds."""

    offset: int | None = None
    """Next offset of the shard's internal partition; None when never checkpointed."""
    applied: Applied = field(default_factory=dict)
    """Per input partition, the end of the latest cut applied and its parts applied."""
    series: dict[bytes, bytes] = field(default_factory=dict)
    """Series id -> stored series state."""
    resources: dict[bytes, bytes] = field(default_factory=dict)
    """Resource id -> stored resource state."""
    pending: list[OutputRecord] = field(default_factory=list)
    """Delta output records stored but maybe not sent."""
    stamp: int = 0
    """Time of the last points published by the shard (a new owner publishes after it)."""
    join: bytes = b""
    """The shard's join buffer (``derive``), whole; empty when it has none."""
    views_version: int = 0
    """Version of the fleet's views the shard's streams were made with (0: the topology's)."""


@dataclass(slots=True)
class ShardWrite:
    """One incremental checkpoint of a shard."""

    offset: int
    applied: Applied
    series: dict[bytes, bytes] = field(default_factory=dict)
    """Series written (new or changed)."""
    removed_series: list[bytes] = field(default_factory=list)
    resources: dict[bytes, bytes] = field(default_factory=dict)
    removed_resources: list[bytes] = field(default_factory=list)
    pending: list[OutputRecord] = field(default_factory=list)
    """Delta output to send after this write; replaces any earlier pending output."""
    stamp: int = 0
    """Time of the points this flush publishes."""
    join: bytes | None = None
    """The shard's whole join buffer (``derive``); None when unchanged."""
    views_version: int = 0
    """Version of the views the checkpointed streams were made with."""

    @property
    def size(self) -> int:
        """Bytes of data in the write."""
        return (
            sum(len(k) + len(v) for k, v in self.series.items())
            + sum(len(k) + len(v) for k, v in self.resources.items())
            + 16 * (len(self.removed_series) + len(self.removed_resources))
            + sum(len(r) for _, r in self.pending)
            + len(self.join or b"")
        )


@dataclass(frozen=True, slots=True)
class Control:
    """A version of the fleet-wide control document (``spanmetrics views apply``)."""

    version: int
    document: str
    """YAML with ``views``, ``span_filters`` and ``span_names``, as in a topology."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who changed the control document, when, and what changed."""

    version: int
    who: str
    when_unix: float
    summary: str

    def encode(self) -> str:
        """As stored (JSON)."""
        return json.dumps({"version": self.version, "who": self.who, "when": self.when_unix,
                           "summary": self.summary})  # fmt: skip

    @classmethod
    def decode(cls, data: str | bytes) -> AuditEntry:
        """The inverse of :meth:`encode`."""
        value = json.loads(data)
        return cls(int(value["version"]), str(value["who"]), float(value["when"]),
                   str(value["summary"]))  # fmt: skip


class FencedError(Exception):
    """The writer's epoch is stale: another worker owns the partition or shard now."""


class StateStore(Protocol):
    """Durable state of one consumer group."""

    bytes_written: int
    """Bytes of checkpoint data written so far by this process."""

    async def claim_partition(self, partition: int) -> int:
        """Become the owner of input ``partition``: a new epoch that fences out older owners."""
        ...

    async def load_cut(self, partition: int) -> Cut | None:
        """The partition's last recorded cut, if any."""
        ...

    async def save_cut(self, partition: int, epoch: int, cut: Cut) -> None:
        """Record a cut before its deltas are sent, if ``epoch`` is still current.

        Raises:
            FencedError: another worker owns the partition.
        """
        ...

    async def claim_shard(self, shard: int) -> int:
        """Become the owner of ``shard``: a new epoch that fences out older owners."""
        ...

    async def load_shard(self, shard: int) -> ShardCheckpoint:
        """The shard's checkpoint (empty if none)."""
        ...

    async def save_shard(self, shard: int, epoch: int, write: ShardWrite) -> None:
        """Apply ``write`` atomically, if ``epoch`` is still current. An empty write only
        checks the epoch.

        Raises:
            FencedError: another worker owns the shard.
        """
        ...

    async def clear_pending(self, shard: int, epoch: int) -> None:
        """Forget the pending output once it was sent (fenced like :meth:`save_shard`)."""
        ...

    async def stored_bytes(self) -> int:
        """Bytes of state held for this group."""
        ...

    async def load_control(self) -> Control | None:
        """The fleet's current control document (views), or None when none was applied."""
        ...

    async def ping(self) -> None:
        """Raise when the store does not answer (for the readiness probe)."""
        ...

    async def lease_budgets(self, shard: int, requests: list[LeaseRequest]) -> list[int]:
        """Grant ``shard`` as many of the slots it asks for as its budgets have left once
        every other shard's lease is counted (its own lease is replaced); all in one step,
        so that the leases of a budget never add up to more than its size."""
        ...

    async def save_control(self, document: str, audit: AuditEntry) -> int:
        """Store ``document`` as the next version, with its audit entry; returns the version.
        The version, the document and the audit entry are written in one step."""
        ...

    async def control_audit(self) -> list[AuditEntry]:
        """Every applied change, oldest first."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@dataclass(slots=True)
class _MemoryShard:
    epoch: int = 0
    offset: int | None = None
    applied: bytes = b""
    pending: bytes = b""
    stamp: int = 0
    join: bytes = b""
    views_version: int = 0
    series: dict[bytes, bytes] = field(default_factory=dict)
    resources: dict[bytes, bytes] = field(default_factory=dict)


class MemoryStateStore:
    """State in this process only (``memory://``): exact while the process lives.

    Stored values are bytes, as in Redis, so what is read back is a copy.
    """

    def __init__(self) -> None:
        self._partitions: dict[int, tuple[int, Cut | None]] = {}
        self._shards: dict[int, _MemoryShard] = {}
        self._control: Control | None = None
        self._audit: list[AuditEntry] = []
        self._leases: dict[str, dict[int, int]] = {}
        self.bytes_written = 0

    async def load_control(self) -> Control | None:
        """See :meth:`StateStore.load_control`."""
        return self._control

    async def ping(self) -> None:
        """See :meth:`StateStore.ping`: memory always answers."""

    async def lease_budgets(self, shard: int, requests: list[LeaseRequest]) -> list[int]:
        """See :meth:`StateStore.lease_budgets`."""
        granted = []
        for key, want, size in requests:
            leases = self._leases.setdefault(key, {})
            others = sum(n for s, n in leases.items() if s != shard)
            leases[shard] = max(min(want, size - others), 0)
            granted.append(leases[shard])
        return granted

    async def save_control(self, document: str, audit: AuditEntry) -> int:
        """See :meth:`StateStore.save_control`."""
        version = (self._control.version if self._control else 0) + 1
        self._control = Control(version, document)
        self._audit.append(dataclasses.replace(audit, version=version))
        return version

    async def control_audit(self) -> list[AuditEntry]:
        """See :meth:`StateStore.control_audit`."""
        return list(self._audit)

    async def claim_partition(self, partition: int) -> int:
        """See :meth:`StateStore.claim_partition`."""
        epoch, cut = self._partitions.get(partition, (0, None))
        self._partitions[partition] = (epoch + 1, cut)
        return epoch + 1

    async def load_cut(self, partition: int) -> Cut | None:
        """See :meth:`StateStore.load_cut`."""
        return self._partitions.get(partition, (0, None))[1]

    async def save_cut(self, partition: int, epoch: int, cut: Cut) -> None:
        """See :meth:`StateStore.save_cut`."""
        current, _ = self._partitions.get(partition, (0, None))
        if current != epoch:
            raise FencedError(f"partition {partition}: epoch {epoch} is stale")
        self._partitions[partition] = (epoch, cut)
        self.bytes_written += 16

    async def claim_shard(self, shard: int) -> int:
        """See :meth:`StateStore.claim_shard`."""
        state = self._shards.setdefault(shard, _MemoryShard())
        state.epoch += 1
        return state.epoch

    async def load_shard(self, shard: int) -> ShardCheckpoint:
        """See :meth:`StateStore.load_shard`."""
        state = self._shards.get(shard)
        if state is None:
            return ShardCheckpoint()
        return ShardCheckpoint(
            state.offset,
            decode_applied(state.applied) if state.applied else {},
            dict(state.series),
            dict(state.resources),
            decode_pending(state.pending) if state.pending else [],
            state.stamp,
            state.join,
            state.views_version,
        )

    def _owned(self, shard: int, epoch: int) -> _MemoryShard:
        state = self._shards.get(shard)
        if state is None or state.epoch != epoch:
            raise FencedError(f"shard {shard}: epoch {epoch} is stale")
        return state

    async def save_shard(self, shard: int, epoch: int, write: ShardWrite) -> None:
        """See :meth:`StateStore.save_shard`."""
        state = self._owned(shard, epoch)
        state.offset = write.offset
        state.applied = encode_applied(write.applied)
        state.pending = encode_pending(write.pending) if write.pending else b""
        state.stamp = write.stamp
        if write.join is not None:
            state.join = write.join
        state.views_version = write.views_version
        for sid in write.removed_series:
            state.series.pop(sid, None)
        state.series.update(write.series)
        for rid in write.removed_resources:
            state.resources.pop(rid, None)
        state.resources.update(write.resources)
        self.bytes_written += write.size

    async def clear_pending(self, shard: int, epoch: int) -> None:
        """See :meth:`StateStore.clear_pending`."""
        self._owned(shard, epoch).pending = b""

    async def stored_bytes(self) -> int:
        """See :meth:`StateStore.stored_bytes`."""
        total = 16 * len(self._partitions)
        for s in self._shards.values():
            total += len(s.applied) + len(s.pending) + len(s.join) + 16
            total += sum(len(k) + len(v) for k, v in s.series.items())
            total += sum(len(k) + len(v) for k, v in s.resources.items())
        return total

    async def close(self) -> None:
        """Nothing to release."""


class RedisStateStore:
    """State in Redis (``redis://host:port/db``), shared by the fleet."""

    def __init__(self, url: str, group: str) -> None:
        self._redis = _client(url)
        #: The URL without its password (for messages).
        self.url = redact_url(url)
        self.prefix = f"spanmetrics:{group}"
        self._hset = self._redis.register_script(_FENCED_HSET)
        self._save_shard = self._redis.register_script(_SAVE_SHARD)
        self._save_control = self._redis.register_script(_SAVE_CONTROL)
        self._lease = self._redis.register_script(_LEASE_BUDGETS)
        self.bytes_written = 0

    def _control_key(self, suffix: str = "") -> str:
        return f"{self.prefix}:{{control}}{suffix}"

    async def ping(self) -> None:
        """See :meth:`StateStore.ping`."""
        await self._redis.ping()

    async def lease_budgets(self, shard: int, requests: list[LeaseRequest]) -> list[int]:
        """See :meth:`StateStore.lease_budgets`."""
        if not requests:
            return []
        args: list[str | int] = [shard]
        for key, want, size in requests:
            args += [key, want, size]
        granted = await self._lease(keys=[self._control_key(":budgets")], args=args)
        return [int(n) for n in granted]

    async def load_control(self) -> Control | None:
        """See :meth:`StateStore.load_control`."""
        version, document = await self._redis.hmget(self._control_key(), ["version", "document"])
        if version is None or document is None:
            return None
        text = document.decode() if isinstance(document, bytes) else str(document)
        return Control(int(version), text)

    async def save_control(self, document: str, audit: AuditEntry) -> int:
        """See :meth:`StateStore.save_control`."""
        keys = [self._control_key(), self._control_key(":audit")]
        return int(await self._save_control(keys=keys, args=[document, audit.encode()]))

    async def control_audit(self) -> list[AuditEntry]:
        """See :meth:`StateStore.control_audit`."""
        entries = await self._redis.lrange(self._control_key(":audit"), 0, -1)
        return [AuditEntry.decode(e) for e in entries]

    def _partition_key(self, partition: int) -> str:
        return f"{self.prefix}:{{part:{partition}}}"

    def _shard_key(self, shard: int, suffix: str = "") -> str:
        return f"{self.prefix}:{{shard:{shard}}}{suffix}"

    async def claim_partition(self, partition: int) -> int:
        """See :meth:`StateStore.claim_partition`."""
        return int(await self._redis.hincrby(self._partition_key(partition), "epoch", 1))

    async def load_cut(self, partition: int) -> Cut | None:
        """See :meth:`StateStore.load_cut`."""
        values = await self._redis.hmget(self._partition_key(partition), ["start", "end"])
        start, end = cast(list[bytes | None], values)
        return None if start is None or end is None else Cut(int(start), int(end))

    async def save_cut(self, partition: int, epoch: int, cut: Cut) -> None:
        """See :meth:`StateStore.save_cut`."""
        args: list[str | int] = [epoch, "start", cut.start, "end", cut.end]
        if not await self._hset(keys=[self._partition_key(partition)], args=args):
            raise FencedError(f"partition {partition}: epoch {epoch} is stale")
        self.bytes_written += 16

    async def claim_shard(self, shard: int) -> int:
        """See :meth:`StateStore.claim_shard`."""
        return int(await self._redis.hincrby(self._shard_key(shard), "epoch", 1))

    async def stored_shards(self) -> list[int]:
        """Shards with state in the store (for tools that read the fleet's state)."""
        found = set()
        async for key in self._redis.scan_iter(match=f"{self.prefix}:{{shard:*}}", count=1000):
            text = key.decode() if isinstance(key, bytes) else str(key)
            found.add(int(text.split("{shard:", 1)[1].split("}", 1)[0]))
        return sorted(found)

    async def load_shard(self, shard: int) -> ShardCheckpoint:
        """See :meth:`StateStore.load_shard`."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(
                self._shard_key(shard), ["offset", "applied", "pending", "stamp", "join", "views"]
            )
            pipe.hgetall(self._shard_key(shard, ":series"))
            pipe.hgetall(self._shard_key(shard, ":resources"))
            meta, series, resources = await pipe.execute()
        offset, applied, pending, stamp, join, views = cast(list[bytes | None], meta)
        return ShardCheckpoint(
            int(offset) if offset is not None else None,
            decode_applied(applied) if applied else {},
            cast(dict[bytes, bytes], series),
            cast(dict[bytes, bytes], resources),
            decode_pending(pending) if pending else [],
            int(stamp) if stamp else 0,
            join or b"",
            int(views) if views else 0,
        )

    async def save_shard(self, shard: int, epoch: int, write: ShardWrite) -> None:
        """See :meth:`StateStore.save_shard`."""
        meta: list[bytes | str | int] = [
            "offset",
            write.offset,
            "applied",
            encode_applied(write.applied),
            "pending",
            encode_pending(write.pending) if write.pending else b"",
            "stamp",
            write.stamp,
            "views",
            write.views_version,
        ]
        if write.join is not None:
            meta += ["join", write.join]
        args: list[bytes | str | int] = [
            epoch,
            len(meta) // 2,
            len(write.series),
            len(write.removed_series),
            len(write.resources),
            len(write.removed_resources),
            *meta,
        ]
        for sid, blob in write.series.items():
            args += (sid, blob)
        args += write.removed_series
        for rid, blob in write.resources.items():
            args += (rid, blob)
        args += write.removed_resources
        keys = [
            self._shard_key(shard),
            self._shard_key(shard, ":series"),
            self._shard_key(shard, ":resources"),
        ]
        if not await self._save_shard(keys=keys, args=args):
            raise FencedError(f"shard {shard}: epoch {epoch} is stale")
        self.bytes_written += write.size

    async def clear_pending(self, shard: int, epoch: int) -> None:
        """See :meth:`StateStore.clear_pending`."""
        if not await self._hset(keys=[self._shard_key(shard)], args=[epoch, "pending", b""]):
            raise FencedError(f"shard {shard}: epoch {epoch} is stale")

    async def stored_bytes(self) -> int:
        """See :meth:`StateStore.stored_bytes` (Redis ``MEMORY USAGE`` of every key)."""
        total = 0
        async for key in self._redis.scan_iter(match=f"{self.prefix}:*", count=1000):
            total += int(await self._redis.memory_usage(key, samples=0) or 0)
        return total

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def _client(url: str) -> Any:
    """A Redis client for ``redis://``, ``rediss://``, ``unix://``, or
    ``redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``: the current
    primary of SERVICE, found through the Sentinels, and found again after a failover."""
    import redis.asyncio as aioredis

    if not url.startswith(SENTINEL_SCHEME + "://"):
        return aioredis.Redis.from_url(url)
    from redis.asyncio.sentinel import Sentinel

    sentinels, service, db, username, password = parse_sentinel_url(url)
    sentinel = Sentinel(sentinels, socket_timeout=5.0)  # type: ignore[no-untyped-call]
    return sentinel.master_for(service, db=db, username=username, password=password)


def open_store(url: str, group: str) -> StateStore:
    """A store for ``memory://`` or ``redis://host:port/db``.

    Raises:
        ValueError: unknown scheme.
    """
    scheme = urlparse(url).scheme
    if scheme == "memory":
        return MemoryStateStore()
    if scheme in ("redis", "rediss", "unix", SENTINEL_SCHEME):
        return RedisStateStore(url, group)
    raise ValueError(f"state: unknown URL scheme {scheme!r}, expected memory:// or redis://")

"""State stores against the real Redis at 127.0.0.1:6379 (and the in-memory twin)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from spanmetrics.state.store import (
    Cut,
    FencedError,
    MemoryStateStore,
    RedisStateStore,
    ShardWrite,
    StateStore,
    open_store,
)

REDIS_URL = "redis://127.0.0.1:6379/7"


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore()
        return
    if not _redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    group = f"test-{uuid.uuid4().hex}"
    yield RedisStateStore(REDIS_URL, group)
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"spanmetrics:{group}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_cuts_round_trip_and_are_fenced(store: StateStore) -> None:
    async def scenario() -> None:
        assert await store.load_cut(3) is None
        first = await store.claim_partition(3)
        await store.save_cut(3, first, Cut(100, 120))
        await store.save_cut(3, first, Cut(120, 150))
        assert await store.load_cut(3) == Cut(120, 150)
        second = await store.claim_partition(3)  # a new owner fences the old one out
        assert second > first
        with pytest.raises(FencedError):
            await store.save_cut(3, first, Cut(150, 999))
        assert await store.load_cut(3) == Cut(120, 150)  # nothing of the zombie's write
        await store.save_cut(3, second, Cut(150, 160))
        assert await store.load_cut(3) == Cut(150, 160)
        assert await store.load_cut(4) is None  # partitions are independent
        await store.close()

    run(scenario())


def test_shard_checkpoints_are_incremental_atomic_and_fenced(store: StateStore) -> None:
    async def scenario() -> None:
        assert (await store.load_shard(1)).offset is None
        epoch = await store.claim_shard(1)
        series = {f"s{i}".encode(): f"v{i}".encode() for i in range(1200)}  # past one chunk
        await store.save_shard(
            1,
            epoch,
            ShardWrite(
                offset=10,
                applied={0: (120, frozenset({0, 1}))},
                series=series,
                resources={b"r1": b"res"},
                pending=[(0, b"out1"), (1, b"out2")],
                stamp=77,
            ),
        )
        ckpt = await store.load_shard(1)
        assert (ckpt.offset, ckpt.applied, ckpt.stamp) == (10, {0: (120, frozenset({0, 1}))}, 77)
        assert ckpt.series == series and ckpt.resources == {b"r1": b"res"}
        assert ckpt.pending == [(0, b"out1"), (1, b"out2")]
        # Only what changed is written; removals go.
        await store.save_shard(
            1,
            epoch,
            ShardWrite(
                offset=12,
                applied={0: (150, frozenset({0}))},
                series={b"s0": b"v0-new"},
                removed_series=[b"s1", b"s2"],
                removed_resources=[b"r1"],
            ),
        )
        ckpt = await store.load_shard(1)
        assert ckpt.offset == 12 and ckpt.series[b"s0"] == b"v0-new"
        assert len(ckpt.series) == 1198 and ckpt.resources == {} and ckpt.pending == []
        await store.clear_pending(1, epoch)
        newer = await store.claim_shard(1)
        with pytest.raises(FencedError):
            await store.save_shard(1, epoch, ShardWrite(offset=99, applied={}, series={b"z": b"z"}))
        with pytest.raises(FencedError):
            await store.clear_pending(1, epoch)
        ckpt = await store.load_shard(1)
        assert ckpt.offset == 12 and b"z" not in ckpt.series  # nothing of the zombie's write
        await store.save_shard(1, newer, ShardWrite(offset=13, applied={}))
        assert (await store.load_shard(1)).offset == 13
        assert await store.stored_bytes() > 1198 * 4
        assert store.bytes_written > 0
        await store.close()

    run(scenario())


def test_open_store_schemes() -> None:
    assert isinstance(open_store("memory://", "g"), MemoryStateStore)
    with pytest.raises(ValueError, match="unknown URL scheme 'postgres'"):
        open_store("postgres://x", "g")

"""State stores against the real Redis at 127.0.0.1:6379 (and the in-memory twin)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from spanmetrics.state.store import (
    FencedError,
    MemoryStateStore,
    RedisStateStore,
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


def test_checkpoint_round_trip_and_fencing(store: StateStore) -> None:
    async def scenario() -> None:
        assert (await store.load(3)).offset is None
        first = await store.claim(3)
        await store.save(3, first, 120, {0: b"a", 2: b"b"})
        await store.save(3, first, 150, {2: b"c"})
        ckpt = await store.load(3)
        assert ckpt.offset == 150 and ckpt.shards == {0: b"a", 2: b"c"}

        second = await store.claim(3)  # a new owner fences the old one out
        assert second > first
        with pytest.raises(FencedError):
            await store.save(3, first, 999, {0: b"zombie"})
        ckpt = await store.load(3)
        assert ckpt.offset == 150 and ckpt.shards[0] == b"a"  # nothing of the zombie's write
        await store.save(3, second, 160, {})
        assert (await store.load(3)).offset == 160
        await store.close()

    run(scenario())


def test_shard_blobs_across_partitions(store: StateStore) -> None:
    async def scenario() -> None:
        for p in range(3):
            epoch = await store.claim(p)
            await store.save(p, epoch, 1, {1: f"p{p}".encode()} if p != 1 else {0: b"x"})
        assert sorted(await store.shard_blobs(1, range(3))) == [b"p0", b"p2"]
        assert await store.shard_blobs(1, [2]) == [b"p2"]
        assert await store.shard_blobs(5, range(3)) == []
        await store.close()

    run(scenario())


def test_publish_record_and_pending(store: StateStore) -> None:
    async def scenario() -> None:
        epoch = await store.claim(2)
        assert (await store.load_published(2)).state is None
        await store.save_published(2, epoch, b"state1", b"delta1")
        record = await store.load_published(2)
        assert (record.state, record.pending) == (b"state1", b"delta1")
        await store.clear_pending(2, epoch)
        record = await store.load_published(2)
        assert (record.state, record.pending) == (b"state1", None)
        newer = await store.claim(2)
        with pytest.raises(FencedError):
            await store.save_published(2, epoch, b"zombie", None)
        with pytest.raises(FencedError):
            await store.clear_pending(2, epoch)
        await store.save_published(2, newer, b"state2", None)
        assert (await store.load_published(2)).state == b"state2"
        await store.close()

    run(scenario())


def test_open_store_schemes() -> None:
    assert isinstance(open_store("memory://", "g"), MemoryStateStore)
    with pytest.raises(ValueError, match="unknown URL scheme 'postgres'"):
        open_store("postgres://x", "g")

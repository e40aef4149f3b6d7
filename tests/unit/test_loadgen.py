"""The load generator's pure parts: token bucket, pool, schedule and exact bookkeeping."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from spanmetrics.decode import decode_traces
from spanmetrics.dev.loadgen import (
    LoadgenConfig,
    LoadgenResult,
    PoolRecord,
    SpanKey,
    TokenBucket,
    _MemoPartitioner,
    count_spans,
    expected_to_json,
    load_expected,
    make_chunk,
    pool_size,
    schedule,
)
from tests.builders import CLIENT, ERROR, OK, SERVER, request, resource, span

NOW = 1_800_000_000_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- token bucket -----------------------------------------------------------------------------


def test_bucket_starts_full_and_serves_a_burst_without_waiting() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, capacity=100, clock=clock)
    assert bucket.reserve(60) == 0
    assert bucket.reserve(40) == 0
    assert bucket.tokens == 0


def test_bucket_debt_is_paid_back_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, capacity=100, clock=clock)
    assert bucket.reserve(100) == 0
    # A request larger than the capacity is served, with a wait for the whole deficit.
    assert bucket.reserve(500) == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.tokens == pytest.approx(0)
    assert bucket.reserve(10) == pytest.approx(0.01)


def test_bucket_saves_up_at_most_its_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, capacity=100, clock=clock)
    bucket.reserve(100)
    clock.now += 60.0
    assert bucket.tokens == 100
    assert bucket.reserve(150) == pytest.approx(0.05)


def test_bucket_long_run_rate_is_exact() -> None:
    # A sender that sleeps exactly the returned delay sends `rate` tokens per second.
    clock = FakeClock()
    bucket = TokenBucket(rate=2000, capacity=200, clock=clock)
    start = clock.now
    for _ in range(1000):
        clock.now += bucket.reserve(37)
    assert clock.now - start == pytest.approx((1000 * 37 - 200) / 2000)


@pytest.mark.parametrize(("rate", "capacity"), [(0, 1), (-1, 1), (1, 0)])
def test_bucket_rejects_non_positive_arguments(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity)


# --- counting -----------------------------------------------------------------------------------


def test_count_spans_uses_the_connector_spellings() -> None:
    req = request(
        resource(
            {"service.name": "checkout"},
            span("GET /cart", kind=SERVER),
            span("GET /cart", kind=SERVER),
            span("GET /cart", kind=SERVER, status=ERROR),
        ),
        resource({"service.name": "cart"}, span("HGET", kind=CLIENT, status=OK)),
        resource({"k8s.pod.name": "nameless"}, span("work")),
    )
    assert count_spans(req) == Counter(
        {
            SpanKey("checkout", "GET /cart", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"): 2,
            SpanKey("checkout", "GET /cart", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR"): 1,
            SpanKey("cart", "HGET", "SPAN_KIND_CLIENT", "STATUS_CODE_OK"): 1,
            SpanKey("", "work", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"): 1,
        }
    )


# --- pool ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["otlp_proto", "otlp_json"])
def test_nil_chunk_is_one_record_of_exactly_n_spans(encoding: str) -> None:
    config = LoadgenConfig(encoding=encoding, spans_per_record=300)  # type: ignore[arg-type]
    (record,) = make_chunk(config, 0, now_ns=NOW)
    assert record.key is None and record.spans == 300
    assert record.counts == count_spans(decode_traces(record.value, encoding))
    assert record.counts.total() == 300
    assert len({k.service for k in record.counts}) > 3  # many services in one record


def test_chunks_are_deterministic_and_distinct() -> None:
    config = LoadgenConfig(spans_per_record=50, seed=3)
    assert make_chunk(config, 1, now_ns=NOW) == make_chunk(config, 1, now_ns=NOW)
    assert make_chunk(config, 1, now_ns=NOW) != make_chunk(config, 2, now_ns=NOW)
    other_seed = LoadgenConfig(spans_per_record=50, seed=4)
    assert make_chunk(config, 1, now_ns=NOW) != make_chunk(other_seed, 1, now_ns=NOW)


def test_chunk_timestamps_are_fresh() -> None:
    config = LoadgenConfig(spans_per_record=100)
    (record,) = make_chunk(config, 0, now_ns=NOW)
    starts = [
        s.start_time_unix_nano
        for rs in decode_traces(record.value, "otlp_proto").resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    assert min(starts) > NOW - 2_000_000_000 and max(starts) < NOW + 5_000_000_000


def test_trace_id_chunk_has_one_trace_per_record_keyed_by_its_id() -> None:
    config = LoadgenConfig(keys="trace-id", spans_per_record=200)
    chunk = make_chunk(config, 0, now_ns=NOW)
    assert sum(r.spans for r in chunk) >= 200
    assert sum(r.spans for r in chunk[:-1]) < 200  # stops at the first trace reaching n
    for record in chunk:
        assert record.key is not None and len(record.key) == 32
        request = decode_traces(record.value, "otlp_proto")
        ids = {
            s.trace_id.hex()
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        }
        assert ids == {record.key.decode()}
        assert record.counts.total() == record.spans


@pytest.mark.parametrize(
    ("keys", "total", "expected"),
    [
        ("nil", 0, 16),
        ("nil", 2500, 2),  # the 500 rest is a separate tail record
        ("nil", 400, 0),
        ("nil", 10**9, 16),
        ("trace-id", 2500, 3),
        ("trace-id", 1, 1),
    ],
)
def test_pool_size(keys: str, total: int, expected: int) -> None:
    config = LoadgenConfig(keys=keys, total=total, spans_per_record=1000)  # type: ignore[arg-type]
    assert pool_size(config) == expected


# --- schedule -----------------------------------------------------------------------------------


def _record(name: str, spans: int) -> PoolRecord:
    return PoolRecord(None, name.encode(), spans, Counter({SpanKey(name, "op", "k", "s"): spans}))


def test_nil_schedule_is_round_robin_then_the_tail_and_exact() -> None:
    config = LoadgenConfig(total=4500, spans_per_record=1000)
    chunks = [(_record("a", 1000),), (_record("b", 1000),), (_record("c", 1000),)]
    tail = (_record("tail", 500),)
    sent = list(schedule(chunks, tail, config))
    assert [r.value for r in sent] == [b"a", b"b", b"c", b"a", b"tail"]
    assert sum(r.spans for r in sent) == 4500


def test_nil_schedule_only_the_tail() -> None:
    config = LoadgenConfig(total=300, spans_per_record=1000)
    assert [r.value for r in schedule([], (_record("t", 300),), config)] == [b"t"]


def test_trace_schedule_sends_whole_records_until_the_total() -> None:
    config = LoadgenConfig(keys="trace-id", total=10, spans_per_record=5)
    chunks = [(_record("a", 4), _record("b", 4)), (_record("c", 4),)]
    sent = list(schedule(chunks, (), config))
    assert [r.value for r in sent] == [b"a", b"b", b"c"]  # 12 >= 10: overshoot < one trace


def test_endless_schedule_picks_up_replaced_chunks() -> None:
    config = LoadgenConfig(total=0)
    chunks = [(_record("a", 1),), (_record("b", 1),)]
    records = schedule(chunks, (), config)
    assert [r.value for r in itertools.islice(records, 3)] == [b"a", b"b", b"a"]
    chunks[1] = (_record("new", 1),)
    assert [r.value for r in itertools.islice(records, 3)] == [b"new", b"a", b"new"]


# --- result bookkeeping -------------------------------------------------------------------------


def test_result_counts_each_pool_record_every_time_it_is_acknowledged(tmp_path: Path) -> None:
    a, b = _record("a", 3), _record("b", 5)
    result = LoadgenResult(topic="t")
    tally: dict[int, list[object]] = {}
    for record in (a, b, a, a):
        result._ack(record, tally)  # type: ignore[arg-type]
    result._add_tally(tally)  # type: ignore[arg-type]
    assert (result.records, result.spans) == (4, 14)
    assert result.calls == Counter(
        {SpanKey("a", "op", "k", "s"): 9, SpanKey("b", "op", "k", "s"): 5}
    )
    assert result.per_service() == Counter({"a": 9, "b": 5})

    document = expected_to_json(result)
    assert document["records"] == 4 and document["spans"] == 14 and document["topic"] == "t"
    assert document["calls"][0] == {
        "service.name": "a",
        "span.name": "op",
        "span.kind": "k",
        "status.code": "s",
        "calls": 9,
    }
    path = tmp_path / "expected.json"
    result.write_expected(path)
    assert json.loads(path.read_text()) == document
    assert load_expected(path) == result.calls


def test_spans_per_s() -> None:
    assert LoadgenResult(spans=1000, elapsed_s=0.5).spans_per_s == 2000
    assert LoadgenResult().spans_per_s == 0


# --- config and partitioner ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"encoding": "xml"},
        {"keys": "random"},
        {"topic": ""},
        {"rate": -1},
        {"spans_per_record": 0},
        {"total": -5},
        {"duration_s": -1},
        {"partitions": 0},
        {"pool_records": 0},
        {"pool_refresh_s": -1},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LoadgenConfig(**kwargs)  # type: ignore[arg-type]


def test_memo_partitioner_agrees_with_the_default() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    memo, default = _MemoPartitioner(), DefaultPartitioner()
    for i in range(200):
        key = f"{i:032x}".encode()
        for n in (1, 3, 4):
            parts = list(range(n))
            assert memo(key, parts, parts) == default(key, parts, parts)
            assert memo(key, parts, parts) == default(key, parts, parts)  # cached answer
    assert memo(None, [0, 1], [1]) == 1  # no key: an available partition

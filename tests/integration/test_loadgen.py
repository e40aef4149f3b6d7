"""The load generator against the embedded broker: what it says it sent is what the topic holds."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from spanmetrics.cli import main
from spanmetrics.decode import decode_traces
from spanmetrics.dev.broker import EmbeddedBroker
from spanmetrics.dev.loadgen import (
    LoadgenConfig,
    LoadgenResult,
    LoadgenStats,
    SpanKey,
    count_spans,
    load_expected,
    produce,
)
from spanmetrics.kafka.admin import topic_partitions
from tests.integration.conftest import consume_until

pytestmark = pytest.mark.integration

HEX_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def _read_back(broker: EmbeddedBroker, topic: str, records: int) -> list[Any]:
    return asyncio.run(
        consume_until(broker.bootstrap, topic, lambda r: len(r) >= records, settle_s=0.2)
    )


def _counts(records: list[Any], encoding: str) -> Counter[SpanKey]:
    total: Counter[SpanKey] = Counter()
    for record in records:
        total += count_spans(decode_traces(record.value, encoding))
    return total


def test_nil_keys_exact_totals(broker: EmbeddedBroker, unique_topic: str) -> None:
    config = LoadgenConfig(
        topic=unique_topic, rate=0, total=25_500, spans_per_record=1000, partitions=3, seed=7
    )
    result = asyncio.run(produce(broker.url, config))
    # 25 full records from a pool of 16 (so 9 sent twice) plus a 500-span tail.
    assert (result.records, result.spans, result.failed_records) == (26, 25_500, 0)
    assert result.error is None
    assert result.calls.total() == 25_500
    assert sum(result.per_service().values()) == 25_500

    assert asyncio.run(topic_partitions(broker.bootstrap, unique_topic)) == 3
    records = _read_back(broker, unique_topic, result.records)
    assert len(records) == result.records
    assert all(r.key is None for r in records)
    assert _counts(records, "otlp_proto") == result.calls


def test_trace_id_keys_one_trace_per_record(broker: EmbeddedBroker, unique_topic: str) -> None:
    config = LoadgenConfig(
        topic=unique_topic,
        encoding="otlp_json",
        rate=0,
        total=3000,
        spans_per_record=500,
        keys="trace-id",
        partitions=4,
        pool_records=4,
    )
    result = asyncio.run(produce(broker.url, config))
    assert result.failed_records == 0
    assert 3000 <= result.spans < 3000 + 200  # whole traces: overshoot below one trace

    records = _read_back(broker, unique_topic, result.records)
    assert len(records) == result.records
    partition_of: dict[bytes, set[int]] = {}
    for record in records:
        key = record.key.decode()
        assert HEX_TRACE_ID.fullmatch(key)
        request = decode_traces(record.value, "otlp_json")
        trace_ids = {
            span.trace_id.hex()
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        }
        assert trace_ids == {key}  # exactly one trace, the one named by the key
        partition_of.setdefault(record.key, set()).add(record.partition)
    assert all(len(p) == 1 for p in partition_of.values())
    assert _counts(records, "otlp_json") == result.calls


def test_rate_is_respected(broker: EmbeddedBroker, unique_topic: str) -> None:
    # 3000 spans at 6000 spans/s with a 0.1 s burst cannot take less than (3000-600)/6000 s.
    config = LoadgenConfig(
        topic=unique_topic, rate=6000, total=3000, spans_per_record=100, partitions=1
    )
    started = time.monotonic()
    result = asyncio.run(produce(broker.url, config))
    elapsed = time.monotonic() - started
    assert result.spans == 3000
    assert elapsed >= 0.4 * 0.95
    assert result.elapsed_s >= 0.4 * 0.95


def test_duration_and_progress(broker: EmbeddedBroker, unique_topic: str) -> None:
    seen: list[LoadgenStats] = []
    config = LoadgenConfig(
        topic=unique_topic, rate=5000, duration_s=0.6, spans_per_record=100, partitions=2
    )
    started = time.monotonic()
    result = asyncio.run(produce(broker.url, config, progress=seen.append, progress_interval_s=0.2))
    assert 0.5 <= time.monotonic() - started < 10
    assert result.failed_records == 0 and result.spans > 0
    assert seen and all(s.spans <= result.spans for s in seen)
    records = _read_back(broker, unique_topic, result.records)
    assert len(records) == result.records


def test_stop_event_stops_early(broker: EmbeddedBroker, unique_topic: str) -> None:
    async def scenario() -> LoadgenResult:
        stop = asyncio.Event()

        def on_progress(stats: LoadgenStats) -> None:
            if stats.records > 0:  # stop once something was acknowledged
                stop.set()

        # No total, no duration: only the stop event ends this run.
        config = LoadgenConfig(topic=unique_topic, rate=2000, spans_per_record=100, partitions=1)
        return await asyncio.wait_for(
            produce(broker.url, config, progress=on_progress, progress_interval_s=0.05, stop=stop),
            10,
        )

    result = asyncio.run(scenario())
    assert result.failed_records == 0 and result.records > 0
    assert len(_read_back(broker, unique_topic, result.records)) == result.records


def test_unreachable_broker_raises(unique_topic: str) -> None:
    from aiokafka.errors import KafkaConnectionError

    with EmbeddedBroker() as gone:
        url = gone.url
    config = LoadgenConfig(topic=unique_topic, rate=0, total=100, spans_per_record=100)
    with pytest.raises(KafkaConnectionError):
        asyncio.run(asyncio.wait_for(produce(url, config), 10))
    assert main(["loadgen", "--broker", url, "--total", "100", "--rate", "0"]) == 1


def test_cli_loadgen_dump_expected(
    broker: EmbeddedBroker, unique_topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = tmp_path / "expected.json"
    status = main(
        [
            "loadgen",
            "--broker",
            broker.url,
            "--topic",
            unique_topic,
            "--rate",
            "0",
            "--total",
            "2500",
            "--spans-per-record",
            "1000",
            "--partitions",
            "2",
            "--dump-expected",
            str(dump),
        ]
    )
    assert status == 0
    assert "acknowledged 3 records, 2,500 spans" in capsys.readouterr().err
    document = json.loads(dump.read_text())
    assert (document["records"], document["spans"], document["topic"]) == (3, 2500, unique_topic)
    expected = load_expected(dump)
    assert expected.total() == 2500
    records = _read_back(broker, unique_topic, 3)
    assert _counts(records, "otlp_proto") == expected

"""Views for a running fleet: ``spanmetrics views apply|list|diff`` against Redis, then two
worker processes under load on the embedded broker switching to a view that excludes
``user.id``: within 5 s, with no span lost and no flush that mixes the two label sets."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from spanmetrics.cli import main
from spanmetrics.decode import decode_metrics
from spanmetrics.dev.synth import encode_request
from spanmetrics.kafka.admin import ensure_topics
from spanmetrics.state.store import RedisStateStore
from tests.builders import SERVER, request, resource, span
from tests.integration.test_fleet_exactness import Fleet
from tests.metric_points import points as record_points

pytestmark = pytest.mark.integration

DENY = {"views": [{"selector": {"instrument_name": "traces.span.metrics.*"},
                   "stream": {"attribute_keys": {"excluded": ["user.id"]}}}]}  # fmt: skip
CALLS = "traces.span.metrics.calls"


def write_topology(path: Path, state: str, group: str, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({
        "source": {"group": group, **extra.pop("source", {})},
        "state": state,
        "spanmetrics": {"dimensions": [{"name": "user.id"}], "metrics_flush_interval": "1s"},
        **extra,
    }))  # fmt: skip
    return path


def test_apply_list_diff_and_the_audit_trail(
    tmp_path: Path, redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = write_topology(tmp_path / "t.yaml", redis_url, redis_prefix)
    views = tmp_path / "views.yaml"
    views.write_text(yaml.safe_dump(DENY))
    args = ["--topology", str(topology)]
    assert main(["views", "list", *args]) == 0
    assert "no views applied" in capsys.readouterr().out
    assert main(["views", "diff", str(views), *args]) == 1
    assert "+views:" in capsys.readouterr().out
    assert main(["views", "apply", str(views), "--who", "sre@example", *args]) == 0
    assert "views version 1 (views 0 -> 1)" in capsys.readouterr().out
    assert main(["views", "apply", str(views), *args]) == 0
    assert "unchanged: views version 1" in capsys.readouterr().out
    assert main(["views", "diff", str(views), *args]) == 0
    assert capsys.readouterr().out == ""
    # An invalid change is rejected with the field named, and nothing is stored.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"views": [{"selector": {"span_kind": "SERVR"}}]}))
    assert main(["views", "apply", str(bad), *args]) == 2
    assert "views[0].selector.span_kind: unknown span kind 'SERVR'" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"sinks": []}))
    assert main(["views", "apply", str(other), *args]) == 2
    assert "sinks: cannot change while the fleet runs" in capsys.readouterr().err
    assert main(["views", "list", *args]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("views version 1:")
    assert "user.id" in listing and "sre@example  views 0 -> 1" in listing
    assert listing.count("\n  v") == 1  # one change in the trail

    async def stored() -> int:
        store = RedisStateStore(redis_url, redis_prefix)
        try:
            control = await store.load_control()
            return control.version if control else 0
        finally:
            await store.close()

    assert asyncio.run(stored()) == 1


def test_unreachable_redis_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    views = tmp_path / "views.yaml"
    views.write_text(yaml.safe_dump(DENY))
    code = main(["views", "apply", str(views), "--state", "redis://:secret@127.0.0.1:1/0",
                 "--group", "g"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: state redis://:***@127.0.0.1:1/0")
    assert "secret" not in err and "Traceback" not in err


def batch(rng: random.Random, n: int) -> Any:
    start = time.time_ns() - 10**9
    spans = [span("GET /", SERVER, start_ns=start, attributes={"user.id": f"u{rng.randrange(40)}"})
             for _ in range(n)]  # fmt: skip
    shop = {"service.name": "shop", "service.instance.id": "shop-0"}
    cart = {"service.name": "cart", "service.instance.id": "cart-0"}
    return request(resource(shop, *spans), resource(cart, *spans))


@pytest.mark.once  # fleet behaviour, not the reader's: see test_fleet_exactness
def test_two_workers_switch_within_seconds_exactly(
    broker: Any, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, metrics = f"live-{suffix}", f"live-metrics-{suffix}"
    topology = write_topology(
        tmp_path / "t.yaml", redis_url, redis_prefix,
        source={"topic": topic, "broker": broker.url, "dead_letter_topic": f"dlq-{suffix}"},
        sinks=[{"kafka": {"topic": metrics}}],
    )  # fmt: skip
    views = tmp_path / "views.yaml"
    views.write_text(yaml.safe_dump(DENY))
    fleet = Fleet(topology, tmp_path)
    rng = random.Random(3)
    records: list[tuple[float, str, list[Any]]] = []  # arrival, key, calls points
    versions: dict[str, tuple[float, int]] = {}  # worker -> (first time at version 1)

    async def read(consumer: AIOKafkaConsumer) -> None:
        for batch_ in (await consumer.getmany(timeout_ms=200)).values():
            for record in batch_:
                key = (record.key or b"").decode()
                if key.startswith("worker-"):
                    gauges = {m.name: m.gauge.data_points[0].as_double
                              for rm in decode_metrics(record.value, "otlp_proto").resource_metrics
                              for sm in rm.scope_metrics for m in sm.metrics
                              if m.HasField("gauge") and m.gauge.data_points}  # fmt: skip
                    if gauges.get("spanmetrics.worker.views_version") == 1:
                        versions.setdefault(key, (time.monotonic(), 1))
                calls = [((p.service, p.labels), p.start_ns, p.time_ns, p.value)
                         for p in record_points(record.value) if p.metric == CALLS]  # fmt: skip
                records.append((time.monotonic(), key, calls))

    async def scenario() -> tuple[int, float]:
        await ensure_topics(broker.bootstrap, {topic: 4, metrics: 1})
        consumer = AIOKafkaConsumer(metrics, bootstrap_servers=broker.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)  # fmt: skip
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        await producer.start()
        sent = 0
        try:
            fleet.start("a")
            fleet.start("b")
            deadline = time.monotonic() + 120
            while not any(k == "worker-a" for _, k, _ in records) or not any(
                k == "worker-b" for _, k, _ in records
            ):
                assert time.monotonic() < deadline, "the workers published nothing"
                await producer.send_and_wait(topic, encode_request(batch(rng, 20), "otlp_proto"))
                sent += 40
                await read(consumer)
            applied_at = time.monotonic()
            apply = ["views", "apply", str(views), "--topology", str(topology)]
            assert await asyncio.to_thread(main, apply) == 0  # the CLI runs its own loop
            until = time.monotonic() + 8
            while time.monotonic() < until:  # load goes on through the switch
                await producer.send_and_wait(topic, encode_request(batch(rng, 20), "otlp_proto"))
                sent += 40
                await read(consumer)
            return sent, applied_at
        finally:
            await producer.stop()
            await consumer.stop()

    try:
        sent, applied_at = asyncio.run(scenario())

        async def drain() -> None:
            consumer = AIOKafkaConsumer(metrics, bootstrap_servers=broker.bootstrap,
                                        auto_offset_reset="earliest", group_id=None)  # fmt: skip
            await consumer.start()
            try:
                records.clear()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    await read(consumer)
                    if total() == sent:
                        return
            finally:
                await consumer.stop()

        def total() -> int:
            last: dict[Any, dict[int, int]] = defaultdict(dict)
            for _, _, points in records:
                for key, start, _time, value in points:
                    last[key][start] = max(last[key].get(start, 0), value)
            return sum(v for starts in last.values() for v in starts.values())

        asyncio.run(drain())
    finally:
        fleet.stop_all()
    logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
    # Every worker runs the new version within 5 s of apply.
    assert set(versions) == {"worker-a", "worker-b"}, logs
    for worker, (at, _) in versions.items():
        assert at - applied_at < 5.0, (worker, at - applied_at)
    # No span lost: the old streams' last counts plus the new streams' counts.
    assert total() == sent, logs
    # No flush mixes the two label sets, and a shard never goes back.
    for _, key, points in records:
        kinds = {any(k == "user.id" for k, _ in labels) for (_, labels), *_ in points}
        assert len(kinds) <= 1, f"a record of {key} mixes the old and new label sets"
    assert any(pts and all(not any(k == "user.id" for k, _ in lb) for (_, lb), *_ in pts)
               for _, _, pts in records)  # fmt: skip

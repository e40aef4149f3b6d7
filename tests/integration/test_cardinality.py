"""``spanmetrics cardinality`` on a fleet's state in Redis: a service whose ``user.id``
dimension explodes is shown with it as the driver, and the estimates are exact counts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from spanmetrics.aggregate.dimensions import metric_names
from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.aggregate.registry import SeriesRegistry
from spanmetrics.cli import main
from spanmetrics.config.load import parse_topology
from spanmetrics.fleet.output import KafkaOutput
from spanmetrics.fleet.partition import cut_records
from spanmetrics.fleet.shard import ShardOwner
from spanmetrics.state.codec import HistogramSpec
from spanmetrics.state.store import Cut, RedisStateStore
from tests.builders import SERVER, request, resource, span
from tests.clock import FakeClock

pytestmark = pytest.mark.integration


def test_the_driver_of_a_cardinality_explosion_is_named(
    tmp_path: Path, redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    document: dict[str, Any] = {
        "source": {"group": redis_prefix},
        "state": redis_url,
        "spanmetrics": {"dimensions": [{"name": "user.id"}, {"name": "http.request.method"}],
                        "aggregation_cardinality_limit": 500},
        "budgets": [{"service": "auth", "max_series": 1000}],
    }  # fmt: skip
    topology = parse_topology(document)
    delta = {"aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA"}
    engine = SpanMetricsEngine(topology.spanmetrics.model_copy(update=delta), FakeClock())
    login = [span("POST /login", SERVER, attributes={"user.id": f"u{i}",
                                                     "http.request.method": "POST"})
             for i in range(300)]  # fmt: skip
    cart = [span(name, SERVER, attributes={"http.request.method": m})
            for name in ("GET /cart", "PUT /cart") for m in ("GET", "PUT")]  # fmt: skip
    engine.consume(request(resource({"service.name": "auth"}, *login),
                           resource({"service.name": "cart"}, *cart)))  # fmt: skip
    records, dropped = cut_records(engine.flush(), [], 0, 1, Cut(0, 1), (0, 1), 1, 1 << 20)
    assert dropped == 0
    sm = topology.spanmetrics
    owner = ShardOwner(0, 1, SeriesRegistry(metric_names(sm), cardinality_limit=500),
                       HistogramSpec(sm.histogram.max_size), frozenset())  # fmt: skip
    for offset, (_, value) in enumerate(records):
        owner.apply(offset, value, 10)

    async def store_it() -> None:
        store = RedisStateStore(redis_url, redis_prefix)
        try:
            epoch = await store.claim_shard(0)
            owner.epoch = epoch
            prepared = owner.prepare(20, False, False, KafkaOutput(topology))
            await store.save_shard(0, epoch, prepared.write)
        finally:
            await store.close()

    asyncio.run(store_it())
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(document))
    assert main(["cardinality", "--topology", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert (
        lines[0] == "304 series in group " + repr(redis_prefix) + "; limit 500 series per resource"
    )
    assert lines[1] == "budget auth: 300 of 1,000 series"
    auth = next(line for line in lines if " auth " in line)
    # 300 series, all from user.id: 1 without it, 300 with it alone.
    assert "user.id (300)   1 / 300" in auth
    assert auth.split()[2] == "300"
    cart = next(line for line in lines if " cart " in line)
    assert cart.split()[2] == "4"


def test_without_a_redis_state_it_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cardinality", "--state", "memory://", "--group", "g"]) == 2
    assert "give --state redis://" in capsys.readouterr().err

"""The Kubernetes topology in the deterministic fleet simulation: the spans of each trace
scattered over records and partitions, read by workers that rebalance, pause (zombies),
die (SIGKILL), restart and fail writes at random. The joined dimensions and every count
must come out exactly as the oracle says, with each stream's invariants (one start time,
cumulative never down, delta points that tile), whatever the interleaving.

``SPANMETRICS_K8S_SIM_SEEDS`` seeds (60 by default); ``SPANMETRICS_SIM_SEED=N`` replays one.
"""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from spanmetrics.config.load import parse_topology
from spanmetrics.config.model import Topology
from spanmetrics.dev.kubernetes import scattered
from spanmetrics.model.attributes import any_value_to_str
from tests.kubernetes.oracle import SUMS, expected
from tests.simulation.harness import Point, Record, sum_points
from tests.simulation.simulation import (
    Run,
    SimConfig,
    _check_series,
    _total,
    draw_config,
    run_seed,
)
from tests.simulation.test_simulation import report

TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "kubernetes.yaml"

if os.environ.get("SPANMETRICS_SIM_SEED"):
    SEEDS = [int(os.environ["SPANMETRICS_SIM_SEED"])]
else:
    SEEDS = list(range(int(os.environ.get("SPANMETRICS_K8S_SIM_SEEDS", "60"))))


def kubernetes_topology(config: SimConfig) -> Topology:
    document = yaml.safe_load(TOPOLOGY.read_text())
    document["source"] = {"topic": "spans", "group": "sim"}
    document["spanmetrics"] = {
        "metrics_flush_interval": "1s",
        "aggregation_temporality": "AGGREGATION_TEMPORALITY_"
        + ("DELTA" if config.delta else "CUMULATIVE"),
    }
    # Longer than any run: every join completes, so the oracle is exact.
    document["derive"]["join"] = {"window": "1h"}
    # Pod identity on, so that CRI spans join their syncPod too.
    document["derive"]["opt_in"] = ["k8s.namespace.name", "k8s.pod.name"]
    document["sinks"] = [{"kafka": {"topic": "metrics"}}]
    return parse_topology(document, "simulation")


def version_of(seed: int) -> str:
    return ("1.29", "1.33", "1.35", "1.37")[seed % 4]


def scattered_input(seed: int) -> Any:
    """Input: every span of the fixture in a random record of a random partition."""

    def make(rng: random.Random, config: SimConfig) -> list[tuple[int, Any]]:
        requests = scattered(version_of(seed), config.records, rng)
        return [(rng.randrange(config.partitions), r) for r in requests]

    return make


def histogram_points(records: list[Record]) -> dict[Any, list[Point]]:
    """Counts of every exponential histogram point, per stream, as :func:`sum_points`."""
    out: dict[Any, list[Point]] = defaultdict(list)
    for arrival, record in enumerate(records):
        request = ExportMetricsServiceRequest.FromString(record.value)
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if not metric.HasField("exponential_histogram"):
                        continue
                    for p in metric.exponential_histogram.data_points:
                        labels = tuple((kv.key, any_value_to_str(kv.value)) for kv in p.attributes)
                        out[(metric.name, labels)].append(
                            Point(p.start_time_unix_nano, p.time_unix_nano, p.count, arrival,
                                  record.sender,
                                  metric.exponential_histogram.aggregation_temporality)
                        )  # fmt: skip
    return out


def check_kubernetes(run: Run, version: str) -> list[str]:
    problems: list[str] = []
    streams: dict[Any, list[Point]] = defaultdict(list)
    for suffix in (".calls", ".errors"):
        for (_res, name, labels), points in sum_points(run.fleet.output(), suffix).items():
            streams[(name, labels)] += points
    streams.update(histogram_points(run.fleet.output()))
    got: dict[str, dict[Any, int]] = defaultdict(dict)
    for (name, labels), points in streams.items():
        problems += _check_series((name, labels), points, run.config)
        got[name][labels] = _total(points, run.config.delta)
    want = {
        metric: {labels: s.calls for labels, s in streams_.items()}
        for metric, streams_ in expected(version, pods=True).items()
    }
    for metric in sorted(set(want) | set(got)):
        if got.get(metric, {}) != want.get(metric, {}):
            problems.append(f"{metric}: published {got.get(metric)} != expected {want.get(metric)}")
    assert set(want) >= SUMS
    return problems


def run_kubernetes(seed: int) -> Run:
    """The seed's run (:func:`run_seed`), with the Kubernetes topology and input."""
    config = draw_config(random.Random(seed))  # the configuration run_seed draws first
    return run_seed(seed, kubernetes_topology(config), scattered_input(seed))


@pytest.mark.parametrize("seed", SEEDS)
def test_joins_are_exact_through_rebalances_and_kills(seed: int) -> None:
    logging.getLogger("spanmetrics").setLevel(logging.CRITICAL)
    run = run_kubernetes(seed)
    problems = check_kubernetes(run, version_of(seed))
    assert not problems, report(run, problems)

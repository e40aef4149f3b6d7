"""The deterministic simulation of the fleet (``tests/simulation/simulation.py``), over many
seeds: random interleavings of deliveries, flushes, rebalances, zombies, kills, restarts,
failing writes and clock jumps, each checked against the fleet's invariants.

``make test`` runs ``SPANMETRICS_SIM_SEEDS`` seeds (300 by default) from
``SPANMETRICS_SIM_FIRST_SEED`` (0); ``make simulate`` runs more. A failing seed prints its
configuration, what broke and its last steps; ``SPANMETRICS_SIM_SEED=N`` replays it alone.
"""

from __future__ import annotations

import logging
import os

import pytest

from tests.simulation.simulation import Run, check, run_seed

if os.environ.get("SPANMETRICS_SIM_SEED"):
    SEEDS = [int(os.environ["SPANMETRICS_SIM_SEED"])]
else:
    first = int(os.environ.get("SPANMETRICS_SIM_FIRST_SEED", "0"))
    SEEDS = list(range(first, first + int(os.environ.get("SPANMETRICS_SIM_SEEDS", "300"))))


def report(run: Run, problems: list[str]) -> str:
    steps = "\n".join(f"  {line}" for line in run.trace[-60:])
    broken = "\n".join(f"  {p[:500]}" for p in problems[:10])
    return (
        f"seed {run.seed}: {run.config}\n{broken}\nlast steps:\n{steps}\n"
        f"replay: SPANMETRICS_SIM_SEED={run.seed} pytest tests/simulation/test_simulation.py"
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_invariants_hold(seed: int) -> None:
    logging.getLogger("spanmetrics").setLevel(logging.CRITICAL)  # workers log every fence
    run = run_seed(seed)
    problems = check(run)
    assert not problems, report(run, problems)


def test_a_seed_replays_exactly() -> None:
    first, again = run_seed(7), run_seed(7)
    assert first.trace == again.trace
    assert [r.value for r in first.fleet.output()] == [r.value for r in again.fleet.output()]

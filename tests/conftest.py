"""Shared pytest options and fixtures."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Property tests run a bounded number of examples so that `make test` stays fast; CI uses
# the same profile so a failure found there reproduces locally.
settings.register_profile(
    "default", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("default")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/cases/*/expected.json from the current output",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # make test runs every test twice, the second time on the pure-Python reader; tests
    # marked `once` (outages, which the reader cannot change) run on the first pass only.
    if os.environ.get("SPANMETRICS_NATIVE") == "0":
        skip = pytest.mark.skip(reason="`once`: run on the compiled-scanner pass of make test")
        for item in items:
            if "once" in item.keywords:
                item.add_marker(skip)

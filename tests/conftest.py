"""Shared pytest options and fixtures."""

from __future__ import annotations

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

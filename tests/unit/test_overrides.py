"""Command-line and environment overrides of a topology (``spanmetrics worker``)."""

from __future__ import annotations

import pytest

from spanmetrics.config.load import ConfigError, parse_topology
from spanmetrics.fleet.run import ENV_BROKER, ENV_SCRAPE_PORT, apply_overrides

TOPOLOGY = parse_topology(
    {
        "source": {"broker": "kafka://topology:9092"},
        "sinks": [{"kafka": {}}, {"prometheus": {"port": 9464}}],
    }
)


def test_command_line_beats_environment_beats_topology(monkeypatch: pytest.MonkeyPatch) -> None:
    assert apply_overrides(TOPOLOGY).source.broker == "kafka://topology:9092"
    monkeypatch.setenv(ENV_BROKER, "kafka://env:9092")
    assert apply_overrides(TOPOLOGY).source.broker == "kafka://env:9092"
    assert apply_overrides(TOPOLOGY, broker="kafka://cli:9092").source.broker == "kafka://cli:9092"


def scrape_port(topology: object) -> int:
    (sink,) = [s.prometheus for s in topology.sinks if s.prometheus]  # type: ignore[attr-defined]
    port: int = sink.port
    return port


def test_scrape_port_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scrape_port(apply_overrides(TOPOLOGY)) == 9464
    monkeypatch.setenv(ENV_SCRAPE_PORT, "9500")
    assert scrape_port(apply_overrides(TOPOLOGY)) == 9500
    assert scrape_port(apply_overrides(TOPOLOGY, scrape_port=0)) == 0


def test_bad_scrape_port_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SCRAPE_PORT, "ninety")
    with pytest.raises(ConfigError, match=ENV_SCRAPE_PORT):
        apply_overrides(TOPOLOGY)
    monkeypatch.setenv(ENV_SCRAPE_PORT, "70000")
    with pytest.raises(ConfigError, match=r"sinks\[1\]\.prometheus\.port"):
        apply_overrides(TOPOLOGY)

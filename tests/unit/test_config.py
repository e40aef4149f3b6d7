"""Topology loading: defaults, the connector's keys verbatim, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spanmetrics.config import defaults
from spanmetrics.config.durations import parse_duration_s
from spanmetrics.config.load import ConfigError, load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]
CASES = yaml.safe_load((Path(__file__).parent / "config_cases.yaml").read_text())


def test_empty_document_gives_every_default() -> None:
    t = parse_topology({})
    sm = t.spanmetrics
    assert t.source.topic == defaults.DEFAULT_SOURCE_TOPIC == "otlp_spans"
    assert t.source.encoding == "otlp_proto"
    assert sm.namespace == "traces.span.metrics"
    assert sm.histogram.unit == "ms"
    assert sm.histogram.is_exponential and sm.histogram.max_size == 160
    assert not sm.is_delta
    assert sm.metrics_flush_interval == 60.0
    assert [s.kafka.topic for s in t.sinks if s.kafka] == ["otlp_metrics"]


@pytest.mark.parametrize("path", sorted((ROOT / "topologies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_topologies_load(path: Path) -> None:
    load_topology(path)


def test_pasted_connector_config_is_accepted() -> None:
    """A connector block as the Collector README shows it, pasted verbatim."""
    connector = yaml.safe_load(
        """
        histogram:
          explicit:
            buckets: [100us, 1ms, 2ms, 6ms, 10ms, 100ms, 250ms]
        dimensions:
          - name: http.method
            default: GET
          - name: http.status_code
        exemplars:
          enabled: true
        exclude_dimensions: ['status.code']
        dimensions_cache_size: 1000
        aggregation_temporality: "AGGREGATION_TEMPORALITY_CUMULATIVE"
        metrics_flush_interval: 15s
        metrics_expiration: 5m
        events:
          enabled: true
          dimensions:
            - name: exception.type
            - name: exception.message
        resource_metrics_key_attributes:
          - service.name
          - telemetry.sdk.language
          - telemetry.sdk.name
        """
    )
    sm = parse_topology({"spanmetrics": connector}).spanmetrics
    assert sm.histogram.explicit is not None
    assert sm.histogram.explicit.buckets == (0.1, 1.0, 2.0, 6.0, 10.0, 100.0, 250.0)
    assert [d.default for d in sm.dimensions] == ["GET", None]
    assert sm.metrics_expiration == 300.0
    assert sm.ignored_keys == ("dimensions_cache_size",)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_invalid_config_names_key_path(case: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_topology(case["topology"])
    assert str(case["error"]) in str(info.value)


def test_load_reports_file_and_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_topology(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spanmetrics: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_topology(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60s", 60.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("1h", 3600.0),
        ("0", 0.0),
        (15, 15.0),
        ("1.5s", 1.5),
        ("100us", 1e-4),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "s", "1x", "-1s", "1s2", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)  # type: ignore[arg-type]


def test_the_readme_states_the_size_and_duration_bounds_in_force() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"more than {defaults.MAX_SERIES_LABEL_BYTES // 1024} KiB" in readme
    assert f"resource larger than {defaults.MAX_RESOURCE_BYTES // 1024} KiB" in readme
    assert f"(default `{int(defaults.DEFAULT_MAX_SPAN_DURATION_S // 3600)}h`" in readme


def test_a_topology_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_bytes(b"source:\n  topic: caf\xe9\n")
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    assert "not UTF-8 text: byte 0xe9 at offset 20" in str(err.value)

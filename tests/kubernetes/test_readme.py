"""README "Kubernetes traces" says what the topology does: its tables and Collector configs
are checked against the topology and the writers."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from spanmetrics.config.load import load_topology
from spanmetrics.export.prometheus.names import metric_name_with_unit

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = load_topology(ROOT / "topologies" / "kubernetes.yaml")


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Kubernetes traces")
    return text[start : text.index("\n## ", start + 1)]


def table_rows(first_header: str) -> list[list[str]]:
    lines = section().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} "))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_metrics_table_is_the_topologys() -> None:
    assert TOPOLOGY.derive is not None
    metrics = {m.name: m for m in TOPOLOGY.derive.metrics}
    rows = table_rows("OTLP metric")
    assert [ticked(r[0])[0] for r in rows] == list(metrics)
    for otlp, prometheus, _source, attributes in rows:
        metric = metrics[ticked(otlp)[0]]
        emitted = [k for k, rule in metric.attributes.items() if not rule.opt_in]
        assert ticked(attributes) == emitted or attributes == "the same", metric.name
        unit = "s" if metric.type == "histogram" else ""
        name = metric_name_with_unit(metric.name, unit)
        assert ticked(prometheus) == [name if unit else f"{name}_total"]


def test_the_collector_configs_write_what_the_topology_reads() -> None:
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section(), re.S)]
    own, shared = blocks
    (exporter,) = own["exporters"].values()
    assert exporter["traces"] == {"topic": "k8s_spans", "encoding": TOPOLOGY.source.encoding}
    assert own["service"]["pipelines"]["traces/k8s"]["exporters"] == ["kafka/k8s"]
    assert shared["exporters"]["kafka"]["traces"] == {
        "topic": TOPOLOGY.source.topic,
        "encoding": TOPOLOGY.source.encoding,
    }
    assert TOPOLOGY.derive is not None
    assert set(TOPOLOGY.derive.services) == {"apiserver", "kubelet"}
    assert "derive.services: [apiserver, kubelet]" in section()


def test_every_rename_of_the_versions_table_is_an_alias_of_the_topology() -> None:
    assert TOPOLOGY.derive is not None
    aliases = {(new, old) for new, olds in TOPOLOGY.derive.aliases.items() for old in olds}
    for change, _release, how in table_rows("change"):
        if "aliases" not in how:
            continue
        pairs = re.findall(r"`([^`]+)`(?: \(a \w+\))? → `([^`]+)`", change)
        assert pairs, change
        for old, new in pairs:
            assert (new, old) in aliases, (old, new)
    # etcd storage spans are the apiserver's: they take its multiplier.
    etcd = next(m for m in TOPOLOGY.derive.metrics if m.name == "k8s.etcd.request.duration")
    assert etcd.select.service == ("apiserver",)

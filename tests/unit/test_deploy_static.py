"""The compose stack and the Kubernetes manifests, checked statically (no Docker engine
runs here): they parse, and their names, topics, ports and paths agree with each other
and with the topologies the workers load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from spanmetrics.config.load import load_topology

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
K8S = ROOT / "deploy" / "kubernetes"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load(COMPOSE / "docker-compose.yaml")
    return document["services"]


def host_port(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port}"


def created_topics(compose: dict[str, Any]) -> dict[str, int]:
    script = " ".join(compose["kafka-init"]["command"])
    return {name: int(n) for name, n in re.findall(r"([\w.-]+):(\d+)", script)}


def test_services_and_dependencies(compose: dict[str, Any]) -> None:
    expected = {"kafka", "kafka-init", "otelcol", "loadgen", "spanmetrics", "redis",
                "prometheus", "grafana"}  # fmt: skip
    assert set(compose) == expected
    for name, service in compose.items():
        depends = service.get("depends_on", [])
        assert set(depends) <= set(compose), name
    assert compose["spanmetrics"]["deploy"]["replicas"] == 3


def test_topics_brokers_and_collector_agree(compose: dict[str, Any]) -> None:
    topology = load_topology(COMPOSE / "topology.yaml")
    advertised = compose["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert host_port(topology.source.broker) == advertised.split("://")[1]
    collector = load(COMPOSE / "otelcol" / "config.yaml")
    exporter = collector["exporters"]["kafka"]
    assert exporter["brokers"] == [host_port(topology.source.broker)]
    assert exporter["traces"]["topic"] == topology.source.topic
    assert exporter["traces"]["encoding"] == topology.source.encoding
    assert "kafka" in collector["service"]["pipelines"]["traces"]["exporters"]
    topics = created_topics(compose)
    (kafka_sink,) = [s.kafka for s in topology.sinks if s.kafka]
    assert {topology.source.topic, topology.source.dead_letter_topic, kafka_sink.topic} <= set(
        topics
    )
    assert host_port(f"redis://{topology.state.split('://')[1]}") == "redis:6379"
    assert "redis" in compose


def test_remote_write_goes_to_prometheus_which_does_not_scrape_workers(
    compose: dict[str, Any],
) -> None:
    topology = load_topology(COMPOSE / "topology.yaml")
    (rw,) = [s.prometheus_remote_write for s in topology.sinks if s.prometheus_remote_write]
    assert host_port(rw.endpoint) == "prometheus:9090"
    flags = compose["prometheus"]["command"]
    assert "--web.enable-remote-write-receiver" in flags
    assert any(f.startswith("--enable-feature=") and "native-histograms" in f for f in flags)
    assert not [s for s in topology.sinks if s.prometheus], "compose would get every series twice"
    scrape = load(COMPOSE / "prometheus" / "prometheus.yml")
    targets = [t for job in scrape["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]]  # fmt: skip
    assert not any("spanmetrics" in t for t in targets)


def test_mounted_paths_exist_and_the_worker_reads_its_topology(compose: dict[str, Any]) -> None:
    for name, service in compose.items():
        for volume in service.get("volumes", []):
            host, container = volume.split(":")[:2]
            assert (COMPOSE / host).exists(), f"{name}: {host}"
            if name == "spanmetrics":
                assert container in service["command"]
    grafana = {v.split(":")[1]: v.split(":")[0] for v in compose["grafana"]["volumes"]}
    provider = load(COMPOSE / "grafana/provisioning/dashboards/spanmetrics.yaml")
    assert provider["providers"][0]["options"]["path"] in grafana
    assert list((COMPOSE / grafana["/var/lib/grafana/dashboards"]).glob("*.json"))


@pytest.fixture(scope="module")
def k8s() -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    kustomization = load(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        document = load(K8S / resource)
        kinds[document["kind"]] = document
    kinds["Kustomization"] = kustomization
    return kinds


def test_kubernetes_objects_agree(k8s: dict[str, Any], compose: dict[str, Any]) -> None:
    deployment, service = k8s["Deployment"], k8s["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s["ServiceMonitor"]["spec"]["endpoints"][0]["honorLabels"] is True
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    generator = k8s["Kustomization"]["configMapGenerator"][0]
    (topology_file,) = generator["files"]
    topology = load_topology(K8S / topology_file)
    (scrape,) = [s.prometheus for s in topology.sinks if s.prometheus]
    assert ports["metrics"] == scrape.port == service["spec"]["ports"][0]["port"]
    volume = deployment["spec"]["template"]["spec"]["volumes"][0]
    assert volume["configMap"]["name"] == generator["name"]
    (mount,) = container["volumeMounts"]
    args = container["args"]
    assert args[args.index("--topology") + 1] == f"{mount['mountPath']}/{topology_file}"
    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # More workers than input partitions would sit idle.
    assert hpa["maxReplicas"] <= created_topics(compose)[topology.source.topic]


def test_lag_metric_of_the_hpa_is_exposed_by_the_adapter_rules(k8s: dict[str, Any]) -> None:
    (external,) = [m for m in k8s["HorizontalPodAutoscaler"]["spec"]["metrics"]
                   if m["type"] == "External"]  # fmt: skip
    rules = load(K8S / "prometheus-adapter-values.yaml")["rules"]["external"]
    assert external["external"]["metric"]["name"] in {r["name"]["as"] for r in rules}
    assert all("spanmetrics_worker_consumer_lag" in r["metricsQuery"] for r in rules)

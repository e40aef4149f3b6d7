"""The shipped dashboards and their provisioning agree with each other and with what the
workers publish."""

from __future__ import annotations

import re

import yaml

from tests.dashboards import PROVISIONING, load_dashboards, panel_queries, panels, variables_used

#: Every metric the workers publish (otel profile, unit ms), and Prometheus's target_info.
KNOWN_METRICS = {
    "traces_span_metrics_calls_total",
    "traces_span_metrics_duration_milliseconds",
    "target_info",
    *(f"spanmetrics_worker_{n}" for n in (
        "records_received_total", "spans_received_total", "spans_dropped_total",
        "records_dead_lettered_total", "checkpoint_errors_total", "metrics_records_sent_total",
        "series_active", "flush_duration_seconds", "checkpoint_age_seconds",
        "partitions_owned", "consumer_lag", "spans_joined_total", "spans_join_orphaned_total",
        "spans_join_evicted_total",
    )),
    # topologies/kubernetes.yaml's metrics (derive.metrics, in seconds).
    *(f"k8s_{n}" for n in (
        "apiserver_request_calls_total", "apiserver_request_duration_seconds",
        "apiserver_request_duration_seconds_bucket", "etcd_request_duration_seconds",
        "apiserver_etcd_client_duration_seconds", "apiserver_admission_webhook_duration_seconds",
        "kubelet_runtime_operations_duration_seconds", "kubelet_runtime_operations_errors_total",
        "kubelet_pod_sync_duration_seconds",
    )),
}  # fmt: skip
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "histogram_sum", "histogram_count",
    "topk", "max", "label_values", "on", "and", "or", "without", "histogram_count",
}  # fmt: skip
BUILTIN = {"__rate_interval", "__interval", "__range"}
#: Labels of the Kubernetes topology's metrics that its dashboard groups by.
KUBERNETES_LABELS = {"verb", "code", "resource", "le", "operation", "method", "name", "type",
                     "operation_type", "node"}  # fmt: skip
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


def test_dashboards_are_valid_and_distinct() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == {"red-overview", "service-drilldown", "fleet-health", "kubernetes"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for d in dashboards.values():
        ids = [p["id"] for p in panels(d)]
        assert len(set(ids)) == len(ids), d["uid"]


def test_every_panel_queries_the_provisioned_datasource() -> None:
    for d in load_dashboards().values():
        for panel in panels(d):
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE
                assert target["expr"].strip()
        for variable in d["templating"]["list"]:
            assert variable["datasource"] == DATASOURCE


def test_variables_are_defined_and_metrics_exist() -> None:
    for d in load_dashboards().values():
        defined = {v["name"] for v in d["templating"]["list"]} | BUILTIN
        exprs = [t["expr"] for p in panels(d) for t in p["targets"]]
        exprs += [v["definition"] for v in d["templating"]["list"]]
        for expr in exprs:
            assert variables_used(expr) <= defined, (d["uid"], expr)
            stripped = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', "", expr)
            names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
            metrics = {n for n in names if n not in PROMQL_WORDS and not n[0].isupper()}
            metrics -= {"service_name", "span_name", "reason", "instance", "partition"}
            metrics -= KUBERNETES_LABELS
            assert metrics <= KNOWN_METRICS, (d["uid"], metrics - KNOWN_METRICS)
        filled = panel_queries(d, dict.fromkeys(defined, "x"))
        assert filled and all("$" not in expr for _, expr in filled)


def test_latency_panel_shows_exemplars_linked_to_traces() -> None:
    drill = load_dashboards()["service-drilldown"]
    latency = [p for p in panels(drill) if "exemplars" in p["title"]]
    assert latency and all(t.get("exemplar") for t in latency[0]["targets"])
    source = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["uid"] == DATASOURCE["uid"]
    destinations = datasource["jsonData"]["exemplarTraceIdDestinations"]
    assert [d["name"] for d in destinations] == ["trace_id"]


def test_provisioning_loads_the_dashboards_directory() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "spanmetrics.yaml").read_text())
    (entry,) = provider["providers"]
    assert entry["options"]["path"] == "/var/lib/grafana/dashboards"

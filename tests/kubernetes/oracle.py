"""What the Kubernetes topology should emit for a fixture, computed from what the client
did (the requests, pod syncs and CRI calls of :mod:`tests.kubernetes.spans`), not from the
spans: an oracle independent of the rules and the joins.

Labels are the ones upstream's Prometheus metrics use for the same events
(``apiserver_request_duration_seconds``, ``etcd_request_duration_seconds``,
``apiserver_admission_webhook_admission_duration_seconds``,
``kubelet_runtime_operations_duration_seconds``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from spanmetrics.aggregate.points import MetricsSnapshot, metric_of
from spanmetrics.dev.kubernetes import KUBELET_RESOURCE, ROOT_CRI_CALLS, pod_syncs, requests

#: The kubelet's node, a resource attribute on every kubelet metric.
NODE = str(KUBELET_RESOURCE["host.name"])

#: kubelet_runtime_operations' operation_type of the CRI methods in the fixtures
#: (pkg/kubelet/kuberuntime/instrumented_services.go).
OPERATION_TYPES = {
    "RunPodSandbox": "run_podsandbox", "PullImage": "pull_image",
    "CreateContainer": "create_container", "StartContainer": "start_container",
    "PodSandboxStatus": "podsandbox_status", "ListPodSandbox": "list_podsandbox",
    "ImageFsInfo": "image_fs_info",
}  # fmt: skip
ETCD_OPERATIONS = {"Get": "get", "Create": "create", "GuaranteedUpdate": "update",
                   "List(recursive=true)": "list"}  # fmt: skip

Labels = tuple[tuple[str, str], ...]


@dataclass
class Stream:
    """One expected series: its count and, for histograms, the sum of durations (s)."""

    calls: int = 0
    duration_sum: float = 0.0


#: metric name -> labels -> stream.
Expected = dict[str, dict[Labels, Stream]]


def _add(out: Expected, metric: str, labels: Labels, seconds: float, weight: int = 1) -> None:
    stream = out.setdefault(metric, {}).setdefault(labels, Stream())
    stream.calls += weight
    stream.duration_sum += seconds * weight


def expected(version: str, weight: int = 1, pods: bool = False) -> Expected:
    """Every expected series of a version's fixture; ``weight``: the multiplier of both
    components; ``pods``: with the opt-in pod identity on CRI metrics."""
    minor = int(version.split(".")[1])
    out: Expected = {}
    for r in requests(version):
        seconds = r.duration_ms / 1000
        if r.verb is None:  # a non-resource request: the method is the verb
            labels: Labels = (("verb", r.method), ("group", ""), ("version", ""),
                              ("resource", ""), ("subresource", ""), ("scope", ""),
                              ("code", str(r.code)))  # fmt: skip
        else:
            labels = (("verb", r.verb), ("group", ""), ("version", "v1"),
                      ("resource", r.resource), ("subresource", r.subresource),
                      ("scope", r.scope), ("code", str(r.code)))  # fmt: skip
        _add(out, "k8s.apiserver.request.calls", labels, seconds, weight)
        if r.verb not in ("WATCH", "CONNECT"):
            _add(out, "k8s.apiserver.request.duration", labels, seconds, weight)
        for node in r.storage:
            if node.name.endswith(" etcd3"):
                op = ETCD_OPERATIONS[node.name.removesuffix(" etcd3")]
                type_name = str(node.attributes["type"]).split(".")[1].lower()
                resource = r.resource if minor >= 34 else type_name
                _add(
                    out,
                    "k8s.etcd.request.duration",
                    (("operation", op), ("resource", resource)),
                    node.duration_ms / 1000,
                    weight,
                )
            elif node.name.startswith("etcdserverpb."):
                method = node.name.removeprefix("etcdserverpb.")
                _add(
                    out,
                    "k8s.apiserver.etcd.client.duration",
                    (("method", method), ("code", "OK")),
                    node.duration_ms / 1000,
                    weight,
                )
        for hook in r.webhooks:
            kind = "admit" if "mutating" in hook.name else "validate"
            rejected = "true" if "exception" in hook.events else "false"
            _add(out, "k8s.apiserver.admission.webhook.duration",
                 (("name", str(hook.attributes["webhook"])), ("type", kind),
                  ("operation", "CREATE"), ("rejected", rejected)),
                 hook.duration_ms / 1000, weight)  # fmt: skip
    for sync in pod_syncs():
        _add(out, "k8s.kubelet.pod.sync.duration",
             (("node", NODE), ("operation_type", sync.update_type)),
             sync.duration_ms / 1000, weight)  # fmt: skip
        identity: Labels = (
            (("k8s.namespace.name", sync.namespace), ("k8s.pod.name", sync.pod)) if pods else ()
        )
        for call in sync.calls:
            labels = (("node", NODE), ("operation_type", OPERATION_TYPES[call.method]), *identity)
            _add(out, "k8s.kubelet.runtime.operations.duration", labels,
                 call.duration_ms / 1000, weight)  # fmt: skip
            if call.code:
                _add(out, "k8s.kubelet.runtime.operations.errors", labels, 0.0, weight)
    for call in ROOT_CRI_CALLS:
        none: Labels = (("k8s.namespace.name", ""), ("k8s.pod.name", "")) if pods else ()
        _add(out, "k8s.kubelet.runtime.operations.duration",
             (("node", NODE), ("operation_type", OPERATION_TYPES[call.method]), *none),
             call.duration_ms / 1000, weight)  # fmt: skip
    return out


#: Metrics that are counts: no durations to compare.
SUMS = {"k8s.apiserver.request.calls", "k8s.kubelet.runtime.operations.errors"}


def observed(snapshots: list[MetricsSnapshot]) -> Expected:
    """What snapshots hold, in the oracle's shape (summed over resources)."""
    out: Expected = defaultdict(dict)
    for snapshot in snapshots:
        for rp in snapshot.resources:
            for point in rp.series:
                metric = metric_of(point.attributes)
                assert metric is not None, point.attributes
                stream = out[metric].setdefault(point.attributes[1:], Stream())
                stream.calls += point.calls
                if point.duration is not None:
                    assert point.duration.count == point.calls
                    stream.duration_sum += point.duration.sum
    return dict(out)


def assert_matches(got: Expected, want: Expected) -> None:
    """Same series, same counts, and duration sums equal to rounding."""
    assert set(got) == set(want), set(got) ^ set(want)
    for metric, streams in want.items():
        assert set(got[metric]) == set(streams), (
            metric, set(got[metric]) - set(streams), set(streams) - set(got[metric]))  # fmt: skip
        for labels, stream in streams.items():
            seen = got[metric][labels]
            assert seen.calls == stream.calls, (metric, labels, seen, stream)
            if metric not in SUMS:
                assert abs(seen.duration_sum - stream.duration_sum) <= 1e-9 * max(
                    1.0, stream.duration_sum
                ), (metric, labels)

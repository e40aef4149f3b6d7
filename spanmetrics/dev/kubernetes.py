"""Realistic span sets of kube-apiserver and the kubelet, per Kubernetes version: the test
fixtures of ``topologies/kubernetes.yaml``, and the load ``make run`` sends with it.

Built from what kubernetes/kubernetes asserts in
``test/integration/apiserver/tracing/tracing_test.go`` (span names, kinds, attributes and
nesting per release) and from the kubelet and CRI span shapes in
``../shared/reference/kubernetes-traces.md``:

- 1.29: SERVER ``KubernetesAPI`` (a new root), old HTTP keys, handler spans below
  ``authentication`` (the mis-nesting of <= 1.32), etcd3 spans with ``type`` only;
- 1.33: SERVER ``{METHOD} {route}`` inside ``authentication``, ``user_agent.original``,
  the filter chain (audit, priorityandfairness, authorization) between SERVER and handler,
  ``cacher.Get`` on a get;
- 1.35: stable HTTP keys (``http.request.method``, ``http.response.status_code``,
  ``url.path``), ``audit-id`` on the SERVER span, etcd3 spans with ``resource``;
- 1.37-dev: the new RPC keys (``rpc.system.name``, fully qualified ``rpc.method``,
  ``rpc.response.status_code``).

Ids are derived from the version, case and round, so every build of a round is the same.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

INTERNAL, SERVER, CLIENT = 1, 2, 3
UNSET, ERROR = 0, 2
#: Start of every fixture's first trace: 2026-11-30T00:00:00Z.
T0 = 1_764_460_800_000_000_000
VERSIONS = ("1.29", "1.33", "1.35", "1.37")

APISERVER_RESOURCE: dict[str, object] = {"service.name": "apiserver",
                      "service.instance.id": "apiserver-7zq4v2bbmw5cetl4ov4bgbzvkm"}  # fmt: skip
KUBELET_RESOURCE: dict[str, object] = {"service.name": "kubelet", "host.name": "node-1"}


@dataclass
class Node:
    """A span and the spans below it."""

    name: str
    kind: int = INTERNAL
    duration_ms: float = 1.0
    attributes: dict[str, object] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)
    status: int = UNSET
    events: tuple[str, ...] = ()


def attrs(mapping: dict[str, object]) -> list[KeyValue]:
    """OTLP attributes: ints as ints, everything else as strings."""
    out = []
    for key, value in mapping.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out.append(KeyValue(key=key, value=AnyValue(int_value=value)))
        else:
            out.append(KeyValue(key=key, value=AnyValue(string_value=str(value))))
    return out


def _minor(version: str) -> int:
    return int(version.split(".")[1])


def _http(version: str, method: str, target: str, code: int) -> dict[str, object]:
    """The SERVER span's HTTP attributes as that release's otelhttp writes them."""
    minor = _minor(version)
    path = target.split("?", maxsplit=1)[0]
    if minor >= 35:
        return {"http.request.method": method, "url.path": path, "url.scheme": "https",
                "http.response.status_code": code, "http.target": target,
                "user_agent.original": "kubectl/v1.35.0", "audit-id": f"audit-{path}"}  # fmt: skip
    out: dict[str, object] = {"http.method": method, "http.target": target,
                              "http.status_code": code, "http.scheme": "https"}  # fmt: skip
    if minor >= 31:
        out["user_agent.original"] = f"kubectl/v{version}.0"
    else:
        out["http.user_agent"] = f"kubectl/v{version}.0"
    return out


def _rpc(version: str, service: str, method: str, code: int) -> dict[str, object]:
    """A gRPC client span's attributes, old RPC keys until 1.37."""
    if _minor(version) >= 37:
        names = {0: "OK", 5: "NOT_FOUND", 14: "UNAVAILABLE"}
        return {"rpc.system.name": "grpc", "rpc.method": f"{service}/{method}",
                "rpc.response.status_code": names[code]}  # fmt: skip
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
            "rpc.grpc.status_code": code}  # fmt: skip


def _etcd3(version: str, op: str, resource: str, type_name: str, key: str) -> Node:
    attributes: dict[str, object] = {"audit-id": "a", "key": key, "type": type_name}
    if _minor(version) >= 34:
        attributes |= {"resource": resource, "group": ""}
    return Node(f"{op} etcd3", duration_ms=3.0, attributes=attributes)


def _etcd_client(version: str, method: str, code: int = 0) -> Node:
    return Node(
        f"etcdserverpb.{method}",
        CLIENT,
        2.0,
        _rpc(
            version, f"etcdserverpb.{method.split('/', maxsplit=1)[0]}", method.split("/")[1], code
        ),
    )


@dataclass
class Request:
    """One API request: what the client did and what upstream's metrics would say."""

    method: str
    target: str
    code: int
    verb: str | None
    """The handler span's verb; None for a non-resource request (no handler span)."""
    handler: str = ""
    resource: str = ""
    scope: str = ""
    subresource: str = ""
    storage: list[Node] = field(default_factory=list)
    webhooks: list[Node] = field(default_factory=list)
    duration_ms: float = 10.0


def requests(version: str) -> list[Request]:
    """The API requests of a fixture: tracing_test.go's node cases, a watch, a health
    check, a 404, and pods admitted and rejected by webhooks."""
    v = version
    get_storage = (
        [Node("cacher.Get", attributes={"key": "/minions/fake", "type": "*core.Node"})]
        if _minor(v) >= 32
        else [_etcd3(v, "Get", "nodes", "*core.Node", "/minions/fake"),
              _etcd_client(v, "KV/Range")]
    )  # fmt: skip
    mutating = Node(
        "Call mutating webhook",
        duration_ms=4.0,
        attributes={
            "webhook": "defaults.example.com",
            "operation": "CREATE",
            "configuration": "defaults",
            "resource": "pods",
        },
        children=[Node("HTTP POST", CLIENT, 3.0, {"http.status_code": 200})],
    )
    validating = Node("Call validating webhook", duration_ms=5.0,
                      attributes={"webhook": "policy.example.com", "operation": "CREATE",
                                  "configuration": "policy", "resource": "pods"})  # fmt: skip
    rejecting = Node("Call validating webhook", duration_ms=6.0, events=("exception",),
                     attributes={"webhook": "policy.example.com", "operation": "CREATE",
                                 "configuration": "policy", "resource": "pods"})  # fmt: skip
    return [
        Request("POST", "/api/v1/nodes", 201, "CREATE", "Create", "nodes", "cluster",
                storage=[_etcd3(v, "Create", "nodes", "*core.Node", "/minions/fake"),
                         _etcd_client(v, "KV/Txn")], duration_ms=12.0),
        Request("GET", "/api/v1/nodes/fake", 200, "GET", "Get", "nodes", "resource",
                storage=get_storage, duration_ms=4.0),
        Request("GET", "/api/v1/nodes", 200, "LIST", "List", "nodes", "cluster",
                storage=[_etcd3(v, "List(recursive=true)", "nodes", "*core.Node", "/minions"),
                         _etcd_client(v, "KV/Range")], duration_ms=8.0),
        Request("PUT", "/api/v1/nodes/fake", 200, "UPDATE", "Update", "nodes", "resource",
                storage=[_etcd3(v, "GuaranteedUpdate", "nodes", "*core.Node", "/minions/fake"),
                         _etcd_client(v, "KV/Txn")], duration_ms=15.0),
        Request("PATCH", "/api/v1/nodes/fake/status", 200, "PATCH", "Patch", "nodes",
                "resource", "status",
                storage=[_etcd3(v, "GuaranteedUpdate", "nodes", "*core.Node", "/minions/fake"),
                         _etcd_client(v, "KV/Txn")], duration_ms=9.0),
        Request("DELETE", "/api/v1/nodes/fake", 200, "DELETE", "Delete", "nodes", "resource",
                storage=[_etcd_client(v, "KV/Txn")], duration_ms=11.0),
        Request("GET", "/api/v1/namespaces/default/pods?watch=true", 200, "WATCH", "List",
                "pods", "namespace", duration_ms=30_000.0),
        Request("GET", "/healthz", 200, None, duration_ms=1.0),
        Request("GET", "/api/v1/namespaces/default/pods/missing", 404, "GET", "Get", "pods",
                "resource", storage=[_etcd_client(v, "KV/Range", 0)], duration_ms=3.0),
        Request("POST", "/api/v1/namespaces/default/pods", 201, "CREATE", "Create", "pods",
                "namespace", webhooks=[mutating, validating],
                storage=[_etcd3(v, "Create", "pods", "*core.Pod", "/pods/default/web-0"),
                         _etcd_client(v, "KV/Txn")], duration_ms=25.0),
        Request("POST", "/api/v1/namespaces/default/pods", 400, "CREATE", "Create", "pods",
                "namespace", webhooks=[rejecting], duration_ms=7.0),
    ]  # fmt: skip


def _server_name(version: str, request: Request) -> str:
    """The SERVER span's name: ``KubernetesAPI`` until 1.30, ``{METHOD} {route}`` after."""
    if _minor(version) <= 30:
        return "KubernetesAPI"
    if request.verb is None:
        return request.method
    parts = request.target.split("?")[0].split("/")  # ['', 'api', 'v1', ...]
    at = 3
    if parts[at] == "namespaces":
        parts[at + 1] = "{:namespace}"
        at += 2
    if len(parts) > at + 1:
        parts[at + 1] = "{:name}"
    route = "/".join(parts)
    return f"{request.method} {route}"


def apiserver_trace(version: str, request: Request) -> Node:
    """The spans of one request, nested as that release nests them."""
    minor = _minor(version)
    below: list[Node] = []
    if request.verb is not None:
        handler_attributes: dict[str, object] = {
            "audit-id": "a", "client": "127.0.0.1", "protocol": "HTTP/2.0",
            "accept": "application/vnd.kubernetes.protobuf, */*", "api-group": "",
            "api-version": "v1", "resource": request.resource, "scope": request.scope,
            "subresource": request.subresource, "verb": request.verb,
            "url": request.target, "user-agent": "kubectl",
        }  # fmt: skip
        if "/namespaces/" in request.target:
            handler_attributes["namespace"] = request.target.split("/")[4]
        handler = Node(request.handler, duration_ms=request.duration_ms * 0.8,
                       attributes=handler_attributes,
                       children=[*request.webhooks, *request.storage,
                                 Node("SerializeObject", duration_ms=0.5)])  # fmt: skip
        below = [handler]
    server = Node(_server_name(version, request), SERVER, request.duration_ms,
                  _http(version, request.method, request.target, request.code))  # fmt: skip
    if minor <= 32:
        # The SERVER span is a new root; later spans parent to `authentication`.
        server.children = [Node("authentication", duration_ms=0.2, children=below)]
        return server
    chain = Node("authorization", duration_ms=0.1, children=below)
    for name in ("priorityandfairness", "impersonation", "audit"):
        chain = Node(name, duration_ms=0.1, children=[chain])
    server.children = [chain]
    if minor == 33:
        # Tracing inside authentication: the SERVER span is below it, in one trace.
        return Node("authentication", duration_ms=0.2, children=[server])
    return server  # 1.34+: authentication is its own tiny trace, left out here


@dataclass
class CriCall:
    """A CRI call of the kubelet."""

    method: str
    service: str = "runtime.v1.RuntimeService"
    code: int = 0
    duration_ms: float = 5.0


@dataclass
class PodSync:
    """One syncPod and the CRI calls below it."""

    namespace: str
    pod: str
    update_type: str
    calls: list[CriCall]
    duration_ms: float = 100.0


def pod_syncs() -> list[PodSync]:
    """The kubelet's pod syncs of a fixture: a pod started, synced, and one whose image
    pull fails."""
    image = "runtime.v1.ImageService"
    return [
        PodSync("default", "web-0", "create", [
            CriCall("RunPodSandbox", duration_ms=120.0), CriCall("PullImage", image, 0, 800.0),
            CriCall("CreateContainer", duration_ms=40.0),
            CriCall("StartContainer", duration_ms=60.0)], 1100.0),
        PodSync("default", "web-0", "sync", [CriCall("PodSandboxStatus", duration_ms=1.0)], 5.0),
        PodSync("kube-system", "bad-0", "create", [
            CriCall("RunPodSandbox", duration_ms=110.0),
            CriCall("PullImage", image, 5, 300.0)], 450.0),
    ]  # fmt: skip


#: CRI calls outside any pod sync (PLEG relist, stats): root CLIENT spans.
ROOT_CRI_CALLS = [CriCall("ListPodSandbox", duration_ms=2.0),
                  CriCall("ImageFsInfo", "runtime.v1.ImageService", duration_ms=3.0)]  # fmt: skip


def _cri(version: str, call: CriCall) -> Node:
    return Node(f"{call.service}/{call.method}", CLIENT, call.duration_ms,
                _rpc(version, call.service, call.method, call.code),
                status=ERROR if call.code else UNSET)  # fmt: skip


def kubelet_traces(version: str) -> list[Node]:
    """The kubelet's traces: pod syncs (CRI calls nested since 1.27), then root calls."""
    out = []
    for sync in pod_syncs():
        out.append(
            Node("syncPod", INTERNAL, sync.duration_ms, {
                "k8s.pod.uid": f"uid-{sync.pod}", "k8s.pod": f"{sync.namespace}/{sync.pod}",
                "k8s.pod.name": sync.pod, "k8s.namespace.name": sync.namespace,
                "k8s.pod.update_type": sync.update_type},
                [_cri(version, c) for c in sync.calls])
        )  # fmt: skip
    return out + [_cri(version, c) for c in ROOT_CRI_CALLS]


# ------------------------------------------------------------------ to OTLP


def _id(*parts: object, size: int) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:size]


def flatten(root: Node, trace: str, start_ns: int) -> list[Span]:
    """The spans of a tree, parents first, each child starting when its parent does."""
    trace_id = _id("trace", trace, size=16)
    out: list[Span] = []
    counter = iter(range(1_000_000))

    def visit(node: Node, parent: bytes, start: int) -> None:
        span_id = _id("span", trace, next(counter), size=8)
        span = Span(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=node.name,
                    kind=node.kind, start_time_unix_nano=start,  # type: ignore[arg-type]
                    end_time_unix_nano=start + round(node.duration_ms * 1e6),
                    status=Status(code=node.status))  # type: ignore[arg-type]  # fmt: skip
        span.attributes.extend(attrs(node.attributes))
        for event in node.events:
            span.events.add(name=event, time_unix_nano=start)
        out.append(span)
        for child in node.children:
            visit(child, span_id, start)

    visit(root, b"", start_ns)
    return out


@dataclass(frozen=True)
class Trace:
    """The spans of one trace and the resource that emitted them."""

    resource: dict[str, object]
    spans: list[Span]


def traces(version: str, start_ns: int = T0, round_: int = 0) -> list[Trace]:
    """Every trace of a version's fixture, a second apart from ``start_ns``; ``round_``
    makes other ids (the load generator's rounds)."""
    out = []
    for i, request in enumerate(requests(version)):
        root = apiserver_trace(version, request)
        spans = flatten(root, f"{version}/{round_}/api/{i}", start_ns + i * 10**9)
        out.append(Trace(APISERVER_RESOURCE, spans))
    for i, root in enumerate(kubelet_traces(version)):
        start = start_ns + (100 + i) * 10**9
        spans = flatten(root, f"{version}/{round_}/kubelet/{i}", start)
        out.append(Trace(KUBELET_RESOURCE, spans))
    return out


def as_request(groups: list[tuple[dict[str, object], list[Span]]]) -> ExportTraceServiceRequest:
    """One request: each group of spans under its resource."""
    request = ExportTraceServiceRequest()
    for resource, spans in groups:
        rs: ResourceSpans = request.resource_spans.add()
        rs.resource.attributes.extend(attrs(resource))
        rs.scope_spans.add().spans.extend(spans)
    return request


def one_request(version: str) -> ExportTraceServiceRequest:
    """The whole fixture in one request."""
    return as_request([(t.resource, t.spans) for t in traces(version)])


def all_spans(version: str) -> Iterator[tuple[dict[str, object], Span]]:
    """Every span of the fixture with its resource."""
    for trace in traces(version):
        for span in trace.spans:
            yield trace.resource, span


def scattered(
    version: str, records: int, rng: random.Random, rounds: int = 1, first_round: int = 0
) -> list[ExportTraceServiceRequest]:
    """The fixture as an exporter that does not partition by trace id may write it: every
    span in a random one of ``records`` requests, in a random order (children before their
    parents, a trace's spans in different records). ``rounds`` copies of the fixture, with
    their own ids, share the records."""
    spans = [
        (trace.resource, span)
        for round_ in range(first_round, first_round + rounds)
        for trace in traces(version, round_=round_)
        for span in trace.spans
    ]
    rng.shuffle(spans)
    buckets: list[list[tuple[dict[str, object], Span]]] = [[] for _ in range(records)]
    for item in spans:
        buckets[rng.randrange(records)].append(item)
    out = []
    for bucket in buckets:
        if bucket:
            # One ResourceSpans per resource in a record, as the Collector's exporter writes.
            by_resource: dict[int, tuple[dict[str, object], list[Span]]] = {}
            for res, span in bucket:
                by_resource.setdefault(id(res), (res, []))[1].append(span)
            out.append(as_request(list(by_resource.values())))
    return out

"""Deterministic synthetic spans: an online shop on Kubernetes, in the spirit of telemetrygen.

Used by the tests, the benchmark and the load generator. Traces follow a small service graph
(:data:`DEFAULT_SERVICES`, modelled on the OpenTelemetry demo): a browser request hits
``frontend``, which calls ``product-catalog``, ``cart`` or ``checkout`` over gRPC; those query
PostgreSQL or Redis, ``checkout`` calls ``shipping`` over HTTP and ``payment`` over gRPC, and
publishes the order to Kafka, where ``fraud-detection`` and ``accounting`` consume it.

Every span is what an OTel SDK would export for that call: semantic-convention attributes,
client/server span pairs for remote calls with matching status codes, parents within the
trace, lognormal self-times, errors that sometimes propagate to the caller, ``exception``
events, span links from consumers to producers, W3C trace flags and, optionally, a
probability-sampling ``tracestate``.

Everything is drawn from one seeded :class:`random.Random`, so the same seed and arguments
give byte-identical requests. Speed matters (the benchmark wants 100k spans in seconds), so
the constant part of each kind of span is serialised once into a template and merged into
each new span; only ids, times, status and a few attributes are set per span.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from spanmetrics.decode import ENCODINGS, Encoding
from spanmetrics.otlpjson import message_to_otlp_json

__all__ = [
    "DEFAULT_SERVICES",
    "SEMCONV_SCHEMA_URL",
    "AttrValue",
    "Call",
    "Operation",
    "Protocol",
    "Scope",
    "ServiceProfile",
    "SpanGenerator",
    "encode_request",
]

#: An attribute value as accepted by the generator (maps to an OTLP ``AnyValue``).
AttrValue: TypeAlias = (
    "str | bool | int | float | bytes | list[AttrValue] | tuple[AttrValue, ...] "
    "| dict[str, AttrValue]"
)

#: How an operation talks: selects its semantic-convention attributes and error codes.
Protocol = Literal["http", "grpc", "db", "messaging", "internal"]

#: Schema URL written on resources and scopes (the semconv version the attributes follow).
SEMCONV_SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"

SERVER = Span.SPAN_KIND_SERVER
CLIENT = Span.SPAN_KIND_CLIENT
INTERNAL = Span.SPAN_KIND_INTERNAL
PRODUCER = Span.SPAN_KIND_PRODUCER
CONSUMER = Span.SPAN_KIND_CONSUMER


@dataclass(frozen=True)
class Scope:
    """An instrumentation scope (the library that made the span)."""

    name: str
    version: str


@dataclass(frozen=True)
class Call:
    """A downstream call an operation makes while it runs.

    The target is an operation of the same service (a child span: internal work, a database
    query, a Kafka publish), a ``SERVER`` operation of another service (a ``CLIENT`` span in
    the caller with the server span under it) or, from a ``PRODUCER`` operation, a
    ``CONSUMER`` operation of another service (an asynchronous child that starts later).
    """

    service: str
    operation: str
    #: Chance that the call happens at all in one run of the caller.
    probability: float = 1.0
    #: The call is made 1..max_repeats times (uniformly), e.g. one lookup per cart item.
    max_repeats: int = 1


@dataclass(frozen=True)
class Operation:
    """One kind of span a service produces: a route, an RPC method, a query, a publish."""

    #: Span name. For HTTP server operations ``"<METHOD> <route>"``; for gRPC
    #: ``"<package.Service>/<Method>"``.
    name: str
    kind: Span.SpanKind.ValueType
    protocol: Protocol
    #: Median of the lognormal self-time (time not spent in synchronous calls), ms.
    median_ms: float
    #: Shape of the lognormal self-time (sigma of the underlying normal).
    sigma: float = 0.5
    #: Chance that the operation itself fails (failures of callees propagate separately).
    error_rate: float = 0.0
    #: Successful spans get status OK rather than UNSET (some instrumentations set it).
    ok_status: bool = False
    calls: tuple[Call, ...] = ()
    #: Constant attributes beyond those derived from the protocol.
    attributes: tuple[tuple[str, AttrValue], ...] = ()
    #: Weight of this operation as the root of a trace; 0 means never a root.
    root_weight: float = 0.0
    #: Instrumentation scope; None means the service's default scope.
    scope: Scope | None = None
    #: Status messages for failures; empty means protocol defaults.
    error_messages: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceProfile:
    """A service: its resource identity, its operations and how it calls others."""

    name: str
    version: str
    #: ``telemetry.sdk.language``: go, nodejs, dotnet, java, rust, python...
    language: str
    operations: tuple[Operation, ...]
    #: Scope of spans whose operation names none.
    scope: Scope
    #: Scope of the CLIENT spans this service makes, by protocol of the call ("http", "grpc").
    client_scopes: tuple[tuple[str, Scope], ...] = ()
    port: int = 8080
    namespace: str = "shop"


_GO_GRPC = Scope(
    "go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc", "0.53.0"
)
_GO_HTTP = Scope("go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", "0.53.0")
_NODE_HTTP = Scope("@opentelemetry/instrumentation-http", "0.52.1")
_NODE_GRPC = Scope("@opentelemetry/instrumentation-grpc", "0.52.1")
_DOTNET_GRPC = Scope("OpenTelemetry.Instrumentation.AspNetCore", "1.9.0")


def _pg(service: str, op: str, table: str, query: str, median_ms: float) -> Operation:
    """A PostgreSQL query made by ``service``."""
    return Operation(
        f"{op} {table}",
        CLIENT,
        "db",
        median_ms,
        sigma=0.8,
        error_rate=0.002,
        attributes=(
            ("db.system", "postgresql"),
            ("db.namespace", service.replace("-", "_")),
            ("db.operation.name", op),
            ("db.collection.name", table),
            ("db.query.text", query),
            ("server.address", "postgresql"),
            ("server.port", 5432),
        ),
        error_messages=("connection reset by peer", "canceling statement due to lock timeout"),
    )


def _redis(op: str, median_ms: float) -> Operation:
    """A Redis command made by the cart service."""
    return Operation(
        op,
        CLIENT,
        "db",
        median_ms,
        sigma=0.6,
        error_rate=0.001,
        attributes=(
            ("db.system", "redis"),
            ("db.namespace", "0"),
            ("db.operation.name", op),
            ("db.query.text", f"{op} cart:?"),
            ("server.address", "valkey-cart"),
            ("server.port", 6379),
        ),
        scope=Scope("OpenTelemetry.Instrumentation.StackExchangeRedis", "1.0.0-rc9.15"),
        error_messages=("ERR max number of clients reached", "Timeout performing HGET"),
    )


def _process_orders(
    service: str, median_ms: float, scope: Scope, calls: tuple[Call, ...]
) -> Operation:
    return Operation(
        "process orders",
        CONSUMER,
        "messaging",
        median_ms,
        sigma=0.7,
        error_rate=0.004,
        calls=calls,
        attributes=(
            ("messaging.system", "kafka"),
            ("messaging.operation.type", "process"),
            ("messaging.operation.name", "process"),
            ("messaging.destination.name", "orders"),
            ("messaging.consumer.group.name", service),
            ("server.address", "kafka"),
        ),
        scope=scope,
        error_messages=(
            "failed to deserialize OrderResult",
            "commit failed: rebalance in progress",
        ),
    )


#: The online shop: 8 services, every span kind, UNSET/OK/ERROR statuses.
DEFAULT_SERVICES: tuple[ServiceProfile, ...] = (
    ServiceProfile(
        name="frontend",
        version="1.11.1",
        language="nodejs",
        port=8080,
        scope=_NODE_HTTP,
        client_scopes=(("grpc", _NODE_GRPC),),
        operations=(
            Operation(
                "GET /api/products",
                SERVER,
                "http",
                20.0,
                error_rate=0.004,
                root_weight=30,
                calls=(Call("product-catalog", "oteldemo.ProductCatalogService/ListProducts"),),
            ),
            Operation(
                "GET /api/products/{productId}",
                SERVER,
                "http",
                12.0,
                error_rate=0.004,
                root_weight=40,
                calls=(
                    Call("product-catalog", "oteldemo.ProductCatalogService/GetProduct"),
                    Call("frontend", "render product page"),
                ),
            ),
            Operation(
                "GET /api/cart",
                SERVER,
                "http",
                10.0,
                error_rate=0.004,
                root_weight=15,
                calls=(Call("cart", "oteldemo.CartService/GetCart"),),
            ),
            Operation(
                "POST /api/cart",
                SERVER,
                "http",
                14.0,
                error_rate=0.006,
                root_weight=10,
                calls=(Call("cart", "oteldemo.CartService/AddItem"),),
            ),
            Operation(
                "POST /api/checkout",
                SERVER,
                "http",
                35.0,
                sigma=0.6,
                error_rate=0.01,
                root_weight=5,
                calls=(Call("checkout", "oteldemo.CheckoutService/PlaceOrder"),),
            ),
            Operation(
                "render product page",
                INTERNAL,
                "internal",
                2.0,
                sigma=0.4,
                ok_status=True,
                scope=Scope("frontend", "1.11.1"),
                attributes=(("code.function.name", "renderProductPage"),),
            ),
        ),
    ),
    ServiceProfile(
        name="product-catalog",
        version="1.11.1",
        language="go",
        port=3550,
        scope=_GO_GRPC,
        operations=(
            Operation(
                "oteldemo.ProductCatalogService/ListProducts",
                SERVER,
                "grpc",
                3.0,
                error_rate=0.002,
                calls=(Call("product-catalog", "SELECT products"),),
            ),
            Operation(
                "oteldemo.ProductCatalogService/GetProduct",
                SERVER,
                "grpc",
                1.5,
                sigma=0.6,
                error_rate=0.003,
                # Most lookups are served from the in-process cache.
                calls=(Call("product-catalog", "SELECT products", probability=0.3),),
            ),
            _pg(
                "product-catalog",
                "SELECT",
                "products",
                "SELECT id, name, description, picture, price_usd FROM products WHERE id = $1",
                1.2,
            ),
        ),
    ),
    ServiceProfile(
        name="cart",
        version="1.11.1",
        language="dotnet",
        port=7070,
        scope=_DOTNET_GRPC,
        operations=(
            Operation(
                "oteldemo.CartService/GetCart",
                SERVER,
                "grpc",
                2.0,
                error_rate=0.003,
                calls=(Call("cart", "HGET"),),
            ),
            Operation(
                "oteldemo.CartService/AddItem",
                SERVER,
                "grpc",
                3.0,
                error_rate=0.005,
                calls=(Call("cart", "HGET"), Call("cart", "HSET"), Call("cart", "EXPIRE")),
            ),
            Operation(
                "oteldemo.CartService/EmptyCart",
                SERVER,
                "grpc",
                2.0,
                error_rate=0.003,
                calls=(Call("cart", "HSET"),),
            ),
            _redis("HGET", 0.4),
            _redis("HSET", 0.5),
            _redis("EXPIRE", 0.3),
        ),
    ),
    ServiceProfile(
        name="checkout",
        version="1.11.1",
        language="go",
        port=5050,
        scope=_GO_GRPC,
        client_scopes=(("grpc", _GO_GRPC), ("http", _GO_HTTP)),
        operations=(
            Operation(
                "oteldemo.CheckoutService/PlaceOrder",
                SERVER,
                "grpc",
                6.0,
                sigma=0.6,
                error_rate=0.01,
                calls=(
                    Call("cart", "oteldemo.CartService/GetCart"),
                    Call("product-catalog", "oteldemo.ProductCatalogService/GetProduct", 1.0, 4),
                    Call("checkout", "prepareOrderItemsAndShippingQuote"),
                    Call("payment", "oteldemo.PaymentService/Charge"),
                    Call("checkout", "publish orders"),
                    Call("cart", "oteldemo.CartService/EmptyCart"),
                ),
            ),
            Operation(
                "prepareOrderItemsAndShippingQuote",
                INTERNAL,
                "internal",
                0.8,
                scope=Scope("checkout", "1.11.1"),
                attributes=(("code.function.name", "prepareOrderItemsAndShippingQuote"),),
                calls=(Call("shipping", "POST /get-quote"),),
            ),
            Operation(
                "publish orders",
                PRODUCER,
                "messaging",
                0.8,
                error_rate=0.002,
                scope=Scope("github.com/IBM/sarama/otelsarama", "0.43.0"),
                attributes=(
                    ("messaging.system", "kafka"),
                    ("messaging.operation.type", "publish"),
                    ("messaging.operation.name", "send"),
                    ("messaging.destination.name", "orders"),
                    ("messaging.client.id", "checkout"),
                    ("server.address", "kafka"),
                ),
                calls=(
                    Call("accounting", "process orders"),
                    Call("fraud-detection", "process orders"),
                ),
                error_messages=("kafka: client has run out of available brokers",),
            ),
        ),
    ),
    ServiceProfile(
        name="shipping",
        version="1.11.1",
        language="rust",
        port=50050,
        scope=Scope("opentelemetry-instrumentation-actix-web", "0.22.0"),
        operations=(
            Operation(
                "POST /get-quote",
                SERVER,
                "http",
                2.0,
                error_rate=0.003,
                calls=(Call("shipping", "calculate quote"),),
            ),
            Operation(
                "calculate quote",
                INTERNAL,
                "internal",
                0.4,
                ok_status=True,
                scope=Scope("shipping", "1.11.1"),
                attributes=(("code.function.name", "shipping::quote::calculate"),),
            ),
        ),
    ),
    ServiceProfile(
        name="payment",
        version="1.11.1",
        language="nodejs",
        port=50051,
        scope=_NODE_GRPC,
        operations=(
            Operation(
                "oteldemo.PaymentService/Charge",
                SERVER,
                "grpc",
                4.0,
                sigma=0.7,
                error_rate=0.01,
                calls=(Call("payment", "charge"),),
            ),
            Operation(
                "charge",
                INTERNAL,
                "internal",
                3.0,
                sigma=0.6,
                error_rate=0.03,
                ok_status=True,
                scope=Scope("payment", "1.11.1"),
                attributes=(("app.payment.card_type", "visa"), ("app.payment.card_valid", True)),
                error_messages=("Credit card info is invalid.", "The credit card has expired."),
            ),
        ),
    ),
    ServiceProfile(
        name="fraud-detection",
        version="1.11.1",
        language="java",
        port=8080,
        scope=Scope("io.opentelemetry.kafka-clients-2.6", "2.6.0-alpha"),
        operations=(
            _process_orders(
                "fraud-detection",
                1.5,
                Scope("io.opentelemetry.kafka-clients-2.6", "2.6.0-alpha"),
                (Call("fraud-detection", "score order"), Call("fraud-detection", "INSERT checks")),
            ),
            Operation(
                "score order",
                INTERNAL,
                "internal",
                4.0,
                sigma=0.9,
                scope=Scope("frauddetectionservice", "1.11.1"),
                attributes=(("code.function.name", "FraudScorer.score"),),
            ),
            _pg(
                "fraud-detection",
                "INSERT",
                "checks",
                "INSERT INTO checks (order_id, score, verdict) VALUES (?, ?, ?)",
                1.5,
            ),
        ),
    ),
    ServiceProfile(
        name="accounting",
        version="1.11.1",
        language="dotnet",
        port=8080,
        scope=Scope("OpenTelemetry.Instrumentation.ConfluentKafka", "0.1.0-alpha.2"),
        operations=(
            _process_orders(
                "accounting",
                1.0,
                Scope("OpenTelemetry.Instrumentation.ConfluentKafka", "0.1.0-alpha.2"),
                (Call("accounting", "INSERT orders"),),
            ),
            _pg(
                "accounting",
                "INSERT",
                "orders",
                "INSERT INTO orders (order_id, currency, total) VALUES (@p0, @p1, @p2)",
                1.2,
            ),
        ),
    ),
)


# --- generator internals ---------------------------------------------------------------------

_NS_PER_MS = 1_000_000
# Mean gap between trace starts: a few hundred requests per second, so 100k spans cover
# tens of seconds of wall time (several flush intervals when tests shorten them).
_MEAN_TRACE_GAP_NS = 2 * _NS_PER_MS
# Chance that a callee's failure also fails the caller (retries and fallbacks absorb the rest).
_ERROR_PROPAGATION = 0.5
_EXCEPTION_EVENT_RATE = 0.8
# W3C trace flag "sampled" plus the OTLP bits saying whether the parent was remote.
_FLAGS_LOCAL = 0x101
_FLAGS_REMOTE = 0x301
# OTel probability-sampling thresholds: th:8 keeps 50%, th:c keeps 25%.
_SAMPLING_THRESHOLDS = ("8", "c")

_HTTP_ERRORS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_GRPC_ERRORS = {
    2: "rpc error: code = Unknown desc = unexpected error",
    4: "rpc error: code = DeadlineExceeded desc = context deadline exceeded",
    13: "rpc error: code = Internal desc = internal error",
    14: "rpc error: code = Unavailable desc = connection refused",
}
_DEFAULT_ERROR_MESSAGES = {
    "db": ("connection refused",),
    "messaging": ("broker not available",),
    "internal": ("unexpected error",),
}
_EXCEPTION_TYPES = {
    "go": "*errors.errorString",
    "nodejs": "Error",
    "dotnet": "System.InvalidOperationException",
    "java": "java.lang.IllegalStateException",
    "rust": "std::io::Error",
    "python": "RuntimeError",
}
_PRODUCT_IDS = (
    "OLJCESPC7Z",
    "66VCHSJNUP",
    "1YMWWN1N4O",
    "L9ECAV7KIM",
    "2ZYFJ3GM2N",
    "0PUK6V6EV0",
    "LS4PSXUNUM",
    "9SIQT8TOJO",
    "6E92ZMYYFZ",
    "HQTGWGPNH4",
)
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "python-requests/2.32.3",
)
_THREAD_NAMES = ("main", "worker-1", "worker-2", "grpc-default-executor-0", "tokio-runtime-worker")
_FEATURE_FLAGS: tuple[list[AttrValue], ...] = (
    [],
    ["recommendationCache"],
    ["adHighCpu", "cartFailure"],
    ["productCatalogFailure"],
)
_REGIONS = ("eu-west-1", "us-east-1", "ap-southeast-2")
_POD_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes uses for pod suffixes

_AttrGen = Callable[[random.Random], AttrValue]


def _between(r: random.Random, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi). ``randrange`` is exact but ~10x slower; the bias of
    scaling a 53-bit float is far below anything synthetic data cares about."""
    return lo + int(r.random() * (hi - lo))


# Generic attributes that pad spans up to ``attributes_per_span``, in this order; they cover
# every AnyValue type so that attribute handling downstream is exercised.
_FILLERS: tuple[tuple[str, _AttrGen], ...] = (
    ("app.user.id", lambda r: f"user-{_between(r, 0, 50_000):05d}"),
    ("app.session.id", lambda r: f"{r.getrandbits(64):016x}"),
    ("app.cache.hit", lambda r: r.random() < 0.8),
    ("app.items.count", lambda r: _between(r, 1, 10)),
    ("app.order.amount", lambda r: round(r.lognormvariate(3.5, 0.8), 2)),
    ("thread.id", lambda r: _between(r, 1, 64)),
    ("thread.name", lambda r: r.choice(_THREAD_NAMES)),
    ("app.feature_flags", lambda r: r.choice(_FEATURE_FLAGS)),
    ("app.request.context", lambda r: {"region": r.choice(_REGIONS), "retry": r.random() < 0.05}),
    ("app.request.digest", lambda r: r.getrandbits(64).to_bytes(8, "big")),
)


def _extra_filler(i: int) -> tuple[str, _AttrGen]:
    return (f"app.extra.{i}", lambda r: f"v{_between(r, 0, 1000)}")


def _set_any(target: AnyValue, value: AttrValue) -> None:
    """Set an AnyValue from a Python value (bool before int: bool is an int subclass)."""
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, dict):
        kvlist = target.kvlist_value
        kvlist.SetInParent()  # an empty map is still a map, not an empty AnyValue
        for key, item in value.items():
            kv = kvlist.values.add()
            kv.key = key
            _set_any(kv.value, item)
    else:
        array = target.array_value
        array.SetInParent()
        for item in value:
            _set_any(array.values.add(), item)


def _add_attributes(
    attrs: Sequence[tuple[str, AttrValue]], container: RepeatedCompositeFieldContainer[KeyValue]
) -> None:
    add = container.add
    for key, value in attrs:
        kv = add()
        kv.key = key
        _set_any(kv.value, value)


@dataclass
class _Template:
    """The constant part of one kind of span, serialised once, plus how to vary the rest."""

    data: bytes
    scope_idx: int
    protocol: Protocol
    kind: int
    #: How many protocol-specific variable attributes to keep, then which fillers to add.
    n_var: int
    fillers: tuple[tuple[str, _AttrGen], ...]
    #: Data for the variable attributes: HTTP route or URL, etc.
    route: str = ""
    url_prefix: str = ""


@dataclass
class _Node:
    """A resolved operation: its service, template and resolved calls."""

    service_idx: int
    op: Operation
    template: _Template
    log_median: float
    error_messages: tuple[str, ...]
    exception_type: str
    #: (probability, max_repeats, mode, target node, client template for remote calls)
    calls: list[tuple[float, int, str, _Node, _Template | None]]


# One span before it becomes protobuf: cheap tuples keep generation and materialisation apart
# so a batch can stop at exactly n spans.
# (service_idx, pod, template, span_id, parent_id, start, end, status_code, status_message,
#  variable attributes, event (time, type, message) | None, link span id | None, flags)
_Record = tuple[
    int,
    int,
    _Template,
    bytes,
    bytes,
    int,
    int,
    Status.StatusCode.ValueType,
    str,
    list[tuple[str, AttrValue]],
    tuple[int, str, str] | None,
    bytes | None,
    int,
]


class SpanGenerator:
    """Seeded generator of realistic OTLP trace requests.

    Successive calls continue the same stream: the clock advances and the random state
    carries on, so ``batch_request(100)`` twice gives different spans, and two generators
    built with the same arguments give identical streams.
    """

    def __init__(
        self,
        seed: int = 0,
        services: Sequence[ServiceProfile] = DEFAULT_SERVICES,
        pods_per_service: int = 3,
        attributes_per_span: int = 10,
        start_unix_nano: int = 1_700_000_000_000_000_000,
        sampled_fraction: float = 0.0,
        pods: tuple[int, Sequence[int]] | None = None,
    ) -> None:
        """Build the service graph and the pods.

        Args:
            seed: seed of the one random stream everything is drawn from.
            services: the service catalogue; calls must name existing operations.
            pods_per_service: Kubernetes pods (resources) per service.
            attributes_per_span: exact number of attributes on each span: semantic-
                convention ones first, then generic ``app.*`` ones as padding.
            start_unix_nano: start time of the first trace.
            sampled_fraction: fraction of traces whose spans carry ``tracestate``
                ``ot=th:8`` or ``ot=th:c`` (sampled at 50% or 25%).
            pods: ``(pod_seed, generations)``: draw each service's pods from its own
                seed, ``pod_seed`` and the service's generation (its rollouts so far, in
                the order of ``services``), instead of from ``seed``. Generators with the
                same pods then share them, whatever their ``seed``; a service whose
                generation changes gets new pods, as after a rollout.

        Raises:
            ValueError: for an inconsistent catalogue or out-of-range arguments.
        """
        if pods_per_service < 1:
            raise ValueError(f"pods_per_service must be >= 1, got {pods_per_service}")
        if attributes_per_span < 0:
            raise ValueError(f"attributes_per_span must be >= 0, got {attributes_per_span}")
        if not 0.0 <= sampled_fraction <= 1.0:
            raise ValueError(f"sampled_fraction must be in [0, 1], got {sampled_fraction}")
        self._rng = random.Random(seed)
        self._services = tuple(services)
        self._pods = pods_per_service
        self._n_attrs = attributes_per_span
        self._now = start_unix_nano
        self._sampled_fraction = sampled_fraction
        self._scopes: list[Scope] = []
        self._scope_index: dict[Scope, int] = {}
        if pods is None:
            self._resources = [self._make_pods(s, self._rng) for s in self._services]
        else:
            pod_seed, generations = pods
            if len(generations) != len(self._services):
                raise ValueError("pods: one generation per service is needed")
            self._resources = [
                self._make_pods(s, random.Random(f"{pod_seed}/{s.name}/{g}"))
                for s, g in zip(self._services, generations, strict=True)
            ]
        self._nodes = self._resolve()
        roots = [n for n in self._nodes.values() if n.op.root_weight > 0]
        if not roots:
            raise ValueError("no operation has root_weight > 0: nothing can start a trace")
        self._roots = roots
        self._root_cum_weights = _cumsum([n.op.root_weight for n in roots])

    # --- setup -------------------------------------------------------------------------------

    def _scope_idx(self, scope: Scope) -> int:
        idx = self._scope_index.get(scope)
        if idx is None:
            idx = self._scope_index[scope] = len(self._scopes)
            self._scopes.append(scope)
        return idx

    def _make_pods(self, service: ServiceProfile, r: random.Random) -> list[bytes]:
        """Serialised resources of the service's pods (a Deployment's ReplicaSet)."""
        rs_hash = "".join(r.choice(_POD_CHARS) for _ in range(10))
        resources = []
        for _ in range(self._pods):
            pod = f"{service.name}-{rs_hash}-{''.join(r.choice(_POD_CHARS) for _ in range(5))}"
            uid = str(uuid.UUID(int=r.getrandbits(128), version=4))
            node = f"ip-10-0-{r.randrange(1, 4)}-{r.randrange(2, 250)}.ec2.internal"
            res = Resource()
            _add_attributes(
                [
                    ("service.name", service.name),
                    ("service.namespace", service.namespace),
                    ("service.version", service.version),
                    ("service.instance.id", uid),
                    ("k8s.namespace.name", service.namespace),
                    ("k8s.pod.name", pod),
                    ("k8s.pod.uid", uid),
                    ("k8s.deployment.name", service.name),
                    ("k8s.node.name", node),
                    ("host.name", pod),
                    ("telemetry.sdk.language", service.language),
                    ("telemetry.sdk.name", "opentelemetry"),
                ],
                res.attributes,
            )
            resources.append(res.SerializeToString())
        return resources

    def _template(
        self,
        name: str,
        kind: Span.SpanKind.ValueType,
        protocol: Protocol,
        scope: Scope,
        constant: list[tuple[str, AttrValue]],
        n_var_available: int,
        route: str = "",
        url_prefix: str = "",
    ) -> _Template:
        """Serialise the constant part and decide the attribute budget: constant semconv
        attributes first, then up to ``n_var_available`` per-span ones, then fillers, so that
        every span has exactly ``attributes_per_span`` attributes."""
        k = self._n_attrs
        constant = constant[:k]
        n_var = min(n_var_available, k - len(constant))
        n_fill = k - len(constant) - n_var
        fillers = tuple(
            _FILLERS[i] if i < len(_FILLERS) else _extra_filler(i) for i in range(n_fill)
        )
        span = Span(name=name, kind=kind)
        _add_attributes(constant, span.attributes)
        return _Template(
            data=span.SerializeToString(),
            scope_idx=self._scope_idx(scope),
            protocol=protocol,
            kind=kind,
            n_var=n_var,
            fillers=fillers,
            route=route,
            url_prefix=url_prefix,
        )

    def _server_template(self, service: ServiceProfile, op: Operation) -> _Template:
        constant: list[tuple[str, AttrValue]] = []
        n_var = 0
        route = ""
        if op.protocol == "http":
            method, _, route = op.name.partition(" ")
            constant = [
                ("http.request.method", method),
                ("http.route", route),
                ("url.scheme", "http"),
                ("server.address", service.name),
                ("server.port", service.port),
                ("network.protocol.version", "1.1"),
            ]
            n_var = 4  # status code, url.path, client.address, user_agent.original
        elif op.protocol == "grpc":
            rpc_service, _, rpc_method = op.name.partition("/")
            constant = [
                ("rpc.system", "grpc"),
                ("rpc.service", rpc_service),
                ("rpc.method", rpc_method),
                ("server.address", service.name),
                ("server.port", service.port),
                ("network.protocol.version", "2"),
            ]
            n_var = 2  # rpc.grpc.status_code, client.address
        elif op.protocol == "messaging":
            n_var = 3  # partition, message key, offset or body size
        constant += list(op.attributes)
        return self._template(
            op.name,
            op.kind,
            op.protocol,
            op.scope or service.scope,
            constant,
            n_var,
            route=route,
        )

    def _client_template(self, caller: ServiceProfile, target: _Node) -> _Template:
        """CLIENT span in ``caller`` for a call to the SERVER operation ``target``."""
        callee = self._services[target.service_idx]
        op = target.op
        scopes = dict(caller.client_scopes)
        scope = scopes.get(op.protocol, caller.scope)
        if op.protocol == "http":
            method, _, route = op.name.partition(" ")
            constant: list[tuple[str, AttrValue]] = [
                ("http.request.method", method),
                ("server.address", callee.name),
                ("server.port", callee.port),
                ("network.protocol.version", "1.1"),
            ]
            return self._template(
                method,  # semconv: HTTP client spans are named by method only
                CLIENT,
                "http",
                scope,
                constant,
                2,  # status code, url.full
                route=route,
                url_prefix=f"http://{callee.name}:{callee.port}",
            )
        rpc_service, _, rpc_method = op.name.partition("/")
        constant = [
            ("rpc.system", "grpc"),
            ("rpc.service", rpc_service),
            ("rpc.method", rpc_method),
            ("server.address", callee.name),
            ("server.port", callee.port),
            ("network.protocol.version", "2"),
        ]
        return self._template(op.name, CLIENT, "grpc", scope, constant, 1)

    def _resolve(self) -> dict[tuple[str, str], _Node]:
        """Check the catalogue and link calls to their target operations."""
        nodes: dict[tuple[str, str], _Node] = {}
        names = [s.name for s in self._services]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate service names in {names}")
        for si, service in enumerate(self._services):
            for op in service.operations:
                key = (service.name, op.name)
                if key in nodes:
                    raise ValueError(f"{service.name}: duplicate operation {op.name!r}")
                if op.median_ms <= 0 or op.sigma < 0:
                    raise ValueError(f"{service.name}/{op.name}: need median_ms > 0 and sigma >= 0")
                messages = op.error_messages or _DEFAULT_ERROR_MESSAGES.get(op.protocol, ())
                nodes[key] = _Node(
                    service_idx=si,
                    op=op,
                    template=self._server_template(service, op),
                    log_median=math.log(op.median_ms),
                    error_messages=messages,
                    exception_type=_EXCEPTION_TYPES.get(service.language, "Error"),
                    calls=[],
                )
        for (service_name, op_name), node in nodes.items():
            caller = self._services[node.service_idx]
            for call in node.op.calls:
                target = nodes.get((call.service, call.operation))
                where = f"{service_name}/{op_name} calls {call.service}/{call.operation}"
                if target is None:
                    raise ValueError(f"{where}: no such operation")
                if call.max_repeats < 1 or not 0.0 <= call.probability <= 1.0:
                    raise ValueError(f"{where}: bad probability or max_repeats")
                client: _Template | None = None
                if call.service == service_name:
                    mode = "local"
                elif target.op.kind == SERVER and target.op.protocol in ("http", "grpc"):
                    mode = "remote"
                    client = self._client_template(caller, target)
                elif target.op.kind == CONSUMER and node.op.kind == PRODUCER:
                    mode = "async"
                else:
                    raise ValueError(
                        f"{where}: another service's operation must be an HTTP/gRPC SERVER "
                        "operation, or a CONSUMER called from a PRODUCER"
                    )
                node.calls.append((call.probability, call.max_repeats, mode, target, client))
        # Call cycles would recurse forever.
        state: dict[int, int] = {}

        def visit(node: _Node, path: list[str]) -> None:
            mark = state.get(id(node), 0)
            if mark == 1:
                raise ValueError(f"call cycle: {' -> '.join([*path, node.op.name])}")
            if mark == 2:
                return
            state[id(node)] = 1
            for *_, target, _client in node.calls:
                visit(target, [*path, node.op.name])
            state[id(node)] = 2

        for node in nodes.values():
            visit(node, [])
        return nodes

    # --- generation --------------------------------------------------------------------------

    def _new_id(self, bits: int) -> bytes:
        # An all-zero id is invalid in OTLP; with 64 random bits it never happens in
        # practice, but the generator must not produce invalid data even in theory.
        return (self._rng.getrandbits(bits) or 1).to_bytes(bits // 8, "big")

    def _var_attrs(
        self, tpl: _Template, code: int, carried: tuple[str, str, int] | None
    ) -> list[tuple[str, AttrValue]]:
        r = self._rng
        attrs: list[tuple[str, AttrValue]] = []
        if tpl.n_var:
            if tpl.protocol == "http":
                path = tpl.route
                if "{" in path:
                    head, _, tail = path.partition("{")
                    path = head + r.choice(_PRODUCT_IDS) + tail.partition("}")[2]
                status = code or 200
                if tpl.kind == SERVER:
                    attrs = [
                        ("http.response.status_code", status),
                        ("url.path", path),
                        ("client.address", f"10.42.{_between(r, 0, 256)}.{_between(r, 1, 255)}"),
                        ("user_agent.original", r.choice(_USER_AGENTS)),
                    ]
                else:
                    attrs = [
                        ("http.response.status_code", status),
                        ("url.full", tpl.url_prefix + path),
                    ]
            elif tpl.protocol == "grpc":
                attrs = [
                    ("rpc.grpc.status_code", code),
                    ("client.address", f"10.42.{_between(r, 0, 256)}.{_between(r, 1, 255)}"),
                ]
            elif tpl.protocol == "messaging" and carried is not None:
                partition, key, offset = carried
                attrs = [
                    ("messaging.destination.partition.id", partition),
                    ("messaging.kafka.message.key", key),
                    ("messaging.kafka.offset", offset)
                    if tpl.kind == CONSUMER
                    else ("messaging.message.body.size", _between(r, 200, 2000)),
                ]
            del attrs[tpl.n_var :]
        for key, gen in tpl.fillers:
            attrs.append((key, gen(r)))
        return attrs

    def _failure(self, node: _Node) -> tuple[int, str]:
        """A failure code (HTTP status, gRPC code, or 1) and status message."""
        r = self._rng
        protocol = node.op.protocol
        if protocol == "http":
            code = r.choice((500, 500, 502, 503))
            return code, _HTTP_ERRORS[code]
        if protocol == "grpc":
            code = r.choice((2, 4, 13, 14, 14))
            return code, _GRPC_ERRORS[code]
        return 1, r.choice(node.error_messages)

    def _span(
        self,
        out: list[_Record | None],
        node: _Node,
        pod: int,
        parent_id: bytes,
        start: int,
        flags: int,
        carried: tuple[str, str, int] | None = None,
        link: bytes | None = None,
    ) -> tuple[int, int, str]:
        """Append one span and its subtree (pre-order); return (end, failure code, message)."""
        r = self._rng
        span_id = self._new_id(64)
        slot = len(out)
        out.append(None)  # reserved so the parent precedes its children
        op = node.op
        if op.kind == PRODUCER or (op.protocol == "messaging" and carried is None):
            # The Kafka message (partition, key, offset) a producer sends and its consumers
            # receive; a consumer that starts a trace (no producer span) gets one of its own.
            carried = (
                str(_between(r, 0, 12)),
                f"order-{r.getrandbits(32):08x}",
                _between(r, 1, 10_000_000),
            )
        cursor = start + _between(r, 20_000, 200_000)
        child_failed = False
        for probability, max_repeats, mode, target, client in node.calls:
            if probability < 1.0 and r.random() >= probability:
                continue
            repeats = 1 if max_repeats == 1 else _between(r, 1, max_repeats + 1)
            for _ in range(repeats):
                if mode == "local":
                    end, code, _msg = self._span(out, target, pod, span_id, cursor, _FLAGS_LOCAL)
                elif mode == "remote":
                    assert client is not None
                    end, code = self._client_span(
                        out, node.service_idx, target, client, pod, span_id, cursor
                    )
                else:
                    # Asynchronous: the consumer starts after queueing delay and does not
                    # hold up (or fail) the producer.
                    assert carried is not None
                    offset = _between(r, 1, 10_000_000)  # each consumer group has its own
                    self._span(
                        out,
                        target,
                        _between(r, 0, self._pods),
                        span_id,
                        cursor + _between(r, 1, 50) * _NS_PER_MS,
                        _FLAGS_REMOTE,
                        (carried[0], carried[1], offset),
                        link=span_id,
                    )
                    continue
                child_failed = child_failed or code != 0
                cursor = end + _between(r, 10_000, 100_000)
        end = cursor + int(r.lognormvariate(node.log_median, op.sigma) * _NS_PER_MS)
        failed = (op.error_rate > 0.0 and r.random() < op.error_rate) or (
            child_failed and r.random() < _ERROR_PROPAGATION
        )
        event: tuple[int, str, str] | None = None
        if failed:
            code, message = self._failure(node)
            status = Status.STATUS_CODE_ERROR
            if r.random() < _EXCEPTION_EVENT_RATE:
                # Recorded just before the span ends, where the exception was caught.
                event_time = max(start, end - _between(r, 1_000, 50_000))
                event = (event_time, node.exception_type, message)
        else:
            code, message = 0, ""
            status = Status.STATUS_CODE_OK if op.ok_status else Status.STATUS_CODE_UNSET
        tpl = node.template
        out[slot] = (
            node.service_idx,
            pod,
            tpl,
            span_id,
            parent_id,
            start,
            end,
            status,
            message,
            self._var_attrs(tpl, code, carried),
            event,
            link,
            flags,
        )
        return end, code, message

    def _client_span(
        self,
        out: list[_Record | None],
        caller_idx: int,
        target: _Node,
        client: _Template,
        pod: int,
        parent_id: bytes,
        start: int,
    ) -> tuple[int, int]:
        """A CLIENT span in the caller with the callee's SERVER span (on a random pod) under it.

        The client sees the server's outcome: same HTTP status or gRPC code, same message.
        """
        r = self._rng
        span_id = self._new_id(64)
        slot = len(out)
        out.append(None)
        server_start = start + _between(r, 100_000, 600_000)  # connection + network
        server_end, code, message = self._span(
            out, target, _between(r, 0, self._pods), span_id, server_start, _FLAGS_REMOTE
        )
        end = server_end + _between(r, 100_000, 600_000)
        status = Status.STATUS_CODE_ERROR if code else Status.STATUS_CODE_UNSET
        out[slot] = (
            caller_idx,
            pod,
            client,
            span_id,
            parent_id,
            start,
            end,
            status,
            message,
            self._var_attrs(client, code, None),
            None,
            None,
            _FLAGS_LOCAL,
        )
        return end, code

    def _trace(self) -> tuple[bytes, str, list[_Record]]:
        """One whole trace: (trace id, tracestate, spans in pre-order)."""
        r = self._rng
        self._now += int(r.expovariate(1.0 / _MEAN_TRACE_GAP_NS))
        trace_id = self._new_id(128)
        trace_state = ""
        if self._sampled_fraction > 0.0 and r.random() < self._sampled_fraction:
            trace_state = "ot=th:" + r.choice(_SAMPLING_THRESHOLDS)
        root = r.choices(self._roots, cum_weights=self._root_cum_weights)[0]
        out: list[_Record | None] = []
        self._span(out, root, _between(r, 0, self._pods), b"", self._now, _FLAGS_LOCAL)
        records = [rec for rec in out if rec is not None]
        return trace_id, trace_state, records

    # --- protobuf ----------------------------------------------------------------------------

    def _materialize(
        self,
        request: ExportTraceServiceRequest,
        groups: dict[tuple[int, int, int], RepeatedCompositeFieldContainer[Span]],
        resources: dict[tuple[int, int], ResourceSpans],
        trace_id: bytes,
        trace_state: str,
        records: Sequence[_Record],
    ) -> None:
        """Append records to ``request``: one ResourceSpans per pod, one ScopeSpans per scope."""
        for (
            service_idx,
            pod,
            tpl,
            span_id,
            parent_id,
            start,
            end,
            status,
            message,
            attrs,
            event,
            link,
            flags,
        ) in records:
            group_key = (service_idx, pod, tpl.scope_idx)
            spans = groups.get(group_key)
            if spans is None:
                resource_spans = resources.get((service_idx, pod))
                if resource_spans is None:
                    resource_spans = resources[(service_idx, pod)] = request.resource_spans.add()
                    resource_spans.resource.MergeFromString(self._resources[service_idx][pod])
                    resource_spans.schema_url = SEMCONV_SCHEMA_URL
                scope_spans: ScopeSpans = resource_spans.scope_spans.add()
                scope = self._scopes[tpl.scope_idx]
                scope_spans.scope.CopyFrom(
                    InstrumentationScope(name=scope.name, version=scope.version)
                )
                spans = groups[group_key] = scope_spans.spans
            span = spans.add()
            span.MergeFromString(tpl.data)
            span.trace_id = trace_id
            span.span_id = span_id
            if parent_id:
                span.parent_span_id = parent_id
            if trace_state:
                span.trace_state = trace_state
            span.start_time_unix_nano = start
            span.end_time_unix_nano = end
            span.flags = flags
            if status:
                span.status.code = status
                if message:
                    span.status.message = message
            if attrs:
                _add_attributes(attrs, span.attributes)
            if event is not None:
                ev = span.events.add()
                ev.time_unix_nano = event[0]
                ev.name = "exception"
                _add_attributes(
                    (("exception.type", event[1]), ("exception.message", event[2])), ev.attributes
                )
            if link is not None:
                ln = span.links.add()
                ln.trace_id = trace_id
                ln.span_id = link
                if trace_state:
                    ln.trace_state = trace_state
                ln.flags = _FLAGS_REMOTE

    def batch_request(self, n_spans: int) -> ExportTraceServiceRequest:
        """Exactly ``n_spans`` spans from many traces, services and pods in one request.

        Spans are grouped as an SDK exporter or the Collector batches them: one ResourceSpans
        per pod, one ScopeSpans per instrumentation scope within it. The last trace is cut
        at ``n_spans``, as batch boundaries cut traces in real pipelines.
        """
        if n_spans < 0:
            raise ValueError(f"n_spans must be >= 0, got {n_spans}")
        request = ExportTraceServiceRequest()
        groups: dict[tuple[int, int, int], RepeatedCompositeFieldContainer[Span]] = {}
        resources: dict[tuple[int, int], ResourceSpans] = {}
        remaining = n_spans
        while remaining > 0:
            trace_id, trace_state, records = self._trace()
            if len(records) > remaining:
                records = records[:remaining]
            self._materialize(request, groups, resources, trace_id, trace_state, records)
            remaining -= len(records)
        return request

    def trace_requests(self, n_traces: int) -> list[tuple[str, ExportTraceServiceRequest]]:
        """``n_traces`` whole traces, one request each, keyed by the lowercase hex trace id.

        This is what a trace-id-partitioned Kafka topic holds: one record per trace, the key
        choosing the partition.
        """
        if n_traces < 0:
            raise ValueError(f"n_traces must be >= 0, got {n_traces}")
        result = []
        for _ in range(n_traces):
            trace_id, trace_state, records = self._trace()
            request = ExportTraceServiceRequest()
            self._materialize(request, {}, {}, trace_id, trace_state, records)
            result.append((trace_id.hex(), request))
        return result


def _cumsum(values: Sequence[float]) -> list[float]:
    total = 0.0
    out = []
    for v in values:
        total += v
        out.append(total)
    return out


def encode_request(request: Message, encoding: Encoding | str) -> bytes:
    """A Kafka record value for ``request``, as the Collector's Kafka exporter writes it.

    ``encoding`` is ``otlp_proto`` or ``otlp_json`` (plain ``str`` accepted, for values
    straight from the command line or a config file; it is checked here).

    Raises:
        ValueError: for an unknown encoding.
    """
    if encoding == "otlp_proto":
        return request.SerializeToString()
    if encoding == "otlp_json":
        return message_to_otlp_json(request)
    raise ValueError(f"unknown encoding {encoding!r}, supported: {', '.join(ENCODINGS)}")

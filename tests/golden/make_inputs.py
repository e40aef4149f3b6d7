"""Writes the golden cases' input records (OTLP/JSON) and topologies.

Run from the repository root: ``.venv/bin/python -m tests.golden.make_inputs``, then
``.venv/bin/pytest tests/golden --update-golden`` and review the diff of expected.json.
The inputs are handwritten traces, so each expected series can be checked by eye.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from spanmetrics.otlpjson import message_to_otlp_json
from tests.builders import (
    CLIENT,
    CONSUMER,
    ERROR,
    INTERNAL,
    OK,
    PRODUCER,
    SERVER,
    T0,
    request,
    resource,
    scope,
    span,
)

CASES = Path(__file__).parent / "cases"


def pod(service: str, n: int, **extra: object) -> dict[str, object]:
    return {
        "service.name": service,
        "k8s.namespace.name": "shop",
        "k8s.pod.name": f"{service}-{n}",
        "k8s.deployment.name": service,
        **extra,
    }


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


def shop_records() -> list[bytes]:
    """Three records: a batch of several resources, one single trace, and edge cases."""
    batch = request(
        resource(
            pod("frontend", 1),
            scope(
                "io.opentelemetry.http",
                span(
                    "GET /cart",
                    SERVER,
                    duration_ms=12.5,
                    trace_id=tid(1),
                    span_id=sid(1),
                    attributes={"http.request.method": "GET", "http.response.status_code": 200},
                ),
                span(
                    "GET /cart",
                    SERVER,
                    duration_ms=48,
                    trace_id=tid(2),
                    span_id=sid(2),
                    attributes={"http.request.method": "GET", "http.response.status_code": 200},
                ),
                span(
                    "POST /checkout",
                    SERVER,
                    ERROR,
                    duration_ms=903,
                    trace_id=tid(3),
                    span_id=sid(3),
                    attributes={"http.request.method": "POST", "http.response.status_code": 503},
                ),
                version="1.4.0",
            ),
            span("cart.get", CLIENT, duration_ms=9, trace_id=tid(1), span_id=sid(4)),
        ),
        resource(
            pod("frontend", 2),
            span(
                "GET /cart",
                SERVER,
                duration_ms=7.25,
                trace_id=tid(5),
                span_id=sid(5),
                attributes={"http.request.method": "GET", "http.response.status_code": 200},
            ),
        ),
        resource(
            pod("cart", 1, **{"process.pid": 41}),
            span("cart.get", SERVER, OK, duration_ms=3.5, trace_id=tid(1), span_id=sid(6)),
            span(
                "HGET",
                CLIENT,
                duration_ms=0.4,
                trace_id=tid(1),
                span_id=sid(7),
                attributes={"db.system": "redis"},
            ),
        ),
    )
    one_trace = request(
        resource(
            pod("checkout", 1),
            span("orders publish", PRODUCER, duration_ms=2, trace_id=tid(9), span_id=sid(9)),
            span("validate", INTERNAL, duration_ms=0.0, trace_id=tid(9), span_id=sid(10)),
        ),
        resource(
            pod("accounting", 1),
            span(
                "orders process",
                CONSUMER,
                duration_ms=31,
                trace_id=tid(9),
                span_id=sid(11),
                events=[{"name": "exception", "exception.type": "TimeoutError"}],
            ),
        ),
    )
    edge = request(
        # Sampled at 50% and 25%: these stand for 2 and 4 spans.
        resource(
            pod("frontend", 1),
            span(
                "GET /cart",
                SERVER,
                duration_ms=20,
                trace_state="ot=th:8",
                trace_id=tid(12),
                span_id=sid(12),
                attributes={"http.request.method": "GET", "http.response.status_code": 200},
            ),
            span(
                "GET /cart",
                SERVER,
                duration_ms=25,
                trace_state="ot=th:c;rv:01",
                trace_id=tid(13),
                span_id=sid(13),
                attributes={"http.request.method": "GET", "http.response.status_code": 200},
            ),
        ),
        # No service.name: dropped and counted.
        resource({"k8s.pod.name": "mystery"}, span("lost", SERVER)),
        # Ends before it starts: counted as 0.
        resource(
            pod("cart", 1, **{"process.pid": 42}),
            span(
                "cart.get",
                SERVER,
                OK,
                start_ns=T0 + 5000,
                end_ns=T0,
                trace_id=tid(14),
                span_id=sid(14),
            ),
        ),
    )
    return [message_to_otlp_json(r) for r in (batch, one_trace, edge)]


def many_operations() -> list[bytes]:
    return [
        message_to_otlp_json(
            request(
                resource(
                    pod("search", 1),
                    *(
                        span(
                            f"query-{i % 4}",
                            duration_ms=i + 1,
                            trace_id=tid(100 + i),
                            span_id=sid(100 + i),
                        )
                        for i in range(10)
                    ),
                )
            )
        )
    ]


def write_case(
    name: str,
    topology: dict[str, object],
    records: list[bytes],
    exit_status: int = 0,
    about: str = "",
) -> None:
    case = CASES / name
    if (case / "input").exists():
        shutil.rmtree(case / "input")
    (case / "input").mkdir(parents=True)
    for i, record in enumerate(records):
        (case / "input" / f"record-{i:03d}.json").write_bytes(record)
    (case / "topology.yaml").write_text(f"# {about}\n" + yaml.safe_dump(topology, sort_keys=False))
    (case / "case.json").write_text(json.dumps({"about": about, "exit_status": exit_status}) + "\n")


def main() -> None:
    shop = shop_records()
    write_case(
        "connector_defaults",
        {"spanmetrics": {}},
        shop,
        about="Intrinsic dimensions only, exponential histogram, cumulative: the defaults.",
    )
    write_case(
        "http_dimensions_scope_key_attributes",
        {
            "spanmetrics": {
                "dimensions": [
                    {"name": "http.request.method", "default": "GET"},
                    {"name": "http.response.status_code"},
                    {"name": "k8s.deployment.name"},
                ],
                "include_instrumentation_scope": ["io.opentelemetry.http"],
                "resource_metrics_key_attributes": ["service.name", "k8s.pod.name"],
                "exemplars": {"enabled": True, "max_per_data_point": 2},
            }
        },
        shop,
        about="Span, resource and default dimension values; scope labels; pid ignored; exemplars.",
    )
    write_case(
        "explicit_seconds_delta_events",
        {
            "spanmetrics": {
                "histogram": {"unit": "s", "explicit": {"buckets": ["5ms", "50ms", "1s"]}},
                "aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA",
                "exclude_dimensions": ["span.kind"],
                "namespace": "spans",
                "events": {"enabled": True, "dimensions": [{"name": "exception.type"}]},
            }
        },
        shop,
        about="Explicit buckets in seconds, delta, events metric, span.kind excluded, namespace.",
    )
    write_case(
        "cardinality_overflow",
        {"spanmetrics": {"aggregation_cardinality_limit": 2}},
        many_operations(),
        about="Two real series per resource, the rest in otel.metric.overflow=true.",
    )
    write_case(
        "bad_record_skipped",
        {"spanmetrics": {}},
        [shop[0], b'{"resourceSpans": [ this is not json', shop[1]],
        exit_status=3,
        about="A bad record between two good ones: skipped, counted, exit 3; the good ones count.",
    )


if __name__ == "__main__":
    main()

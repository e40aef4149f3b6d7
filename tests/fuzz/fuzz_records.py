"""Fuzz target of what a worker does with a record (atheris): both decoders, then the
engines. ``make fuzz`` runs it for a while, and a short run is part of ``make test``
(tests/unit/test_fuzz_runs.py).

The first byte picks the encoding (even: ``otlp_proto``, odd: ``otlp_json``); the rest is
the record value. Each input goes through the span engine (every option that reads more
of a span turned on) and the Kubernetes topology's derived engine. Either one reads it,
or it raises ``DecodeError`` (the worker then dead-letters the record). Any other
exception is a crash the worker would die of, and stops the run with the input saved.

    python tests/fuzz/fuzz_records.py CORPUS_DIR -max_total_time=60
"""

from __future__ import annotations

import contextlib
import random
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fuzz.harness import fuzz  # noqa: E402

with atheris.instrument_imports(include=["spanmetrics", "google.protobuf.json_format"]):
    from google.protobuf.json_format import MessageToJson
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from spanmetrics.aggregate.derived import DerivedMetricsEngine
    from spanmetrics.aggregate.engine import SpanMetricsEngine
    from spanmetrics.config.load import load_topology, parse_topology
    from spanmetrics.decode import DecodeError
    from spanmetrics.dev.kubernetes import one_request
    from spanmetrics.model.clock import SystemClock
    from tests.property.test_native_scan import _fixed_record

ENCODINGS = ("otlp_proto", "otlp_json")
SPAN_ENGINE = parse_topology(
    {
        "spanmetrics": {
            "dimensions": [{"name": "http.method"}, {"name": "a", "default": "x"},
                           {"glob": "http.*"}],
            "calls_dimensions": [{"name": "b"}],
            "exemplars": {"enabled": True},
            "events": {"enabled": True, "dimensions": [{"name": "e"}]},
            "include_instrumentation_scope": ["io.x"],
            "span_multiplier_key": "m",
            "enable_metrics_sampling_method": True,
            "aggregation_cardinality_limit": 1000,
        }
    }
).spanmetrics  # fmt: skip
KUBERNETES = load_topology(ROOT / "topologies" / "kubernetes.yaml")
#: Inputs between flushes, so that state stays small over a long run.
FLUSH_EVERY = 500


class Engines:
    def __init__(self) -> None:
        self.span = SpanMetricsEngine(SPAN_ENGINE, SystemClock())
        assert KUBERNETES.derive is not None
        self.derived = DerivedMetricsEngine(
            KUBERNETES.derive, KUBERNETES.spanmetrics, SystemClock()
        )
        self.inputs = 0


ENGINES = Engines()


def seed_corpus(directory: Path) -> None:
    """Valid records in both encodings to mutate from, when the corpus is empty."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    records = [_fixed_record(random.Random(seed)) for seed in range(4)]
    records.append(one_request("1.35").SerializeToString())
    for i, record in enumerate(records):
        (directory / f"proto-{i}").write_bytes(b"\x00" + record)
        text = MessageToJson(ExportTraceServiceRequest.FromString(record))
        (directory / f"json-{i}").write_bytes(b"\x01" + text.encode())


def test_one_input(data: bytes) -> None:
    if not data:
        return
    encoding, value = ENCODINGS[data[0] % 2], data[1:]
    for engine in (ENGINES.span, ENGINES.derived):
        with contextlib.suppress(DecodeError):  # the worker dead-letters such a record
            engine.consume_record(value, encoding)  # type: ignore[arg-type]
    ENGINES.inputs += 1
    if ENGINES.inputs % FLUSH_EVERY == 0:
        ENGINES.span.flush()
        ENGINES.derived.flush()


def main() -> None:
    fuzz(test_one_input, seed_corpus)


if __name__ == "__main__":
    main()

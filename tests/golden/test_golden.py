"""Whole-pipeline golden tests: record files + topology -> expected metrics.

Each case directory under ``cases/`` holds ``topology.yaml``, ``input/`` (record values in
OTLP/JSON, one per file, read in name order) and ``expected.json`` (the output metrics,
normalised: timestamps zeroed, resources, metrics and points sorted). Each case runs twice,
from the JSON records and from the same records converted to protobuf, and both runs must
give the expected output. Regenerate with ``pytest tests/golden --update-golden``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from spanmetrics.cli import main
from spanmetrics.decode import decode_metrics, decode_traces

CASES = Path(__file__).parent / "cases"
_TIME_KEYS = {"startTimeUnixNano", "timeUnixNano"}


def _zero_times(node: Any, in_exemplar: bool = False) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                "0"
                if k in _TIME_KEYS and not in_exemplar
                else _zero_times(v, k == "exemplars" or in_exemplar)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_zero_times(v, in_exemplar) for v in node]
    return node


def _sort_key(item: Any) -> str:
    return json.dumps(
        item.get("attributes", item.get("resource", item.get("name"))), sort_keys=True
    )


def normalise(metrics_bytes: bytes, encoding: str) -> dict[str, Any]:
    """Metrics output as a dict that ignores timestamps and order."""
    doc = _zero_times(MessageToDict(decode_metrics(metrics_bytes, encoding)))  # type: ignore[arg-type]
    for rm in doc.get("resourceMetrics", []):
        for sm in rm.get("scopeMetrics", []):
            sm.pop("scope", None)  # carries our version
            for metric in sm.get("metrics", []):
                for kind in ("sum", "histogram", "exponentialHistogram"):
                    if kind in metric:
                        metric[kind]["dataPoints"].sort(key=_sort_key)
            sm.get("metrics", []).sort(key=lambda m: m["name"])
    doc.get("resourceMetrics", []).sort(key=_sort_key)
    return doc


def _run(case: Path, inputs: Path, encoding: str, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    out = tmp_path / f"out.{encoding}"
    status = main(
        [
            "aggregate",
            "--topology",
            str(case / "topology.yaml"),
            "--input-encoding",
            encoding,
            "--output-encoding",
            encoding,
            "--output",
            str(out),
            str(inputs),
        ]
    )
    return status, normalise(out.read_bytes(), encoding)


def _to_proto_dir(json_dir: Path, proto_dir: Path) -> None:
    proto_dir.mkdir()
    for path in sorted(json_dir.iterdir()):
        try:
            data = decode_traces(path.read_bytes(), "otlp_json").SerializeToString()
        except Exception:
            data = b"\xff\xff\xff garbage"  # a bad JSON record stays a bad proto record
        (proto_dir / path.name).write_bytes(data)


@pytest.mark.parametrize(
    "case", sorted(p for p in CASES.iterdir() if p.is_dir()), ids=lambda p: p.name
)
def test_golden(case: Path, tmp_path: Path, update_golden: bool) -> None:
    expected_file = case / "expected.json"
    meta = json.loads((case / "case.json").read_text())
    status_json, from_json = _run(case, case / "input", "otlp_json", tmp_path)
    proto_inputs = tmp_path / "proto"
    _to_proto_dir(case / "input", proto_inputs)
    status_proto, from_proto = _run(case, proto_inputs, "otlp_proto", tmp_path)

    assert from_json == from_proto, "otlp_json and otlp_proto inputs must give the same metrics"
    assert status_json == status_proto == meta["exit_status"]
    if update_golden:
        expected_file.write_text(json.dumps(from_json, indent=1, sort_keys=True) + "\n")
    assert from_json == json.loads(expected_file.read_text())

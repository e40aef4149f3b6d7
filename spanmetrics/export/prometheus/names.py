"""Metric and label names in Prometheus: the OpenTelemetry translation and our profiles."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

NamingProfile = Literal["otel", "tempo"]

_INVALID_METRIC = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]+")

#: Unit words of the OpenTelemetry-to-Prometheus translation.
UNIT_WORDS = {"ms": "milliseconds", "s": "seconds"}


def metric_name(name: str) -> str:
    """An OpenTelemetry metric name as a valid Prometheus one (``a.b-c`` -> ``a_b_c``)."""
    out = _INVALID_METRIC.sub("_", name)
    return f"_{out}" if out[:1].isdigit() else out


#: Unit suffixes of the OTel-to-Prometheus translation for the units our metrics use.
_UNIT_SUFFIXES = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}


def metric_name_with_unit(name: str, unit: str) -> str:
    """:func:`metric_name`, with the unit's suffix added as the compatibility spec adds it
    (``k8s.apiserver.request.duration`` in ``s`` -> ``..._duration_seconds``)."""
    out = metric_name(name)
    suffix = _UNIT_SUFFIXES.get(unit)
    if suffix and not out.endswith(f"_{suffix}"):
        out = f"{out}_{suffix}"
    return out


def label_name(key: str) -> str:
    """An attribute key as a valid label name (``service.name`` -> ``service_name``)."""
    out = _INVALID_LABEL.sub("_", key)
    return f"key_{out}" if out[:1].isdigit() else out


@dataclass(frozen=True, slots=True)
class SpanMetricNames:
    """Prometheus names of the span metrics under one naming profile."""

    calls: str
    duration: str
    events: str
    #: Label that carries ``service.name``.
    service_label: str

    @classmethod
    def of(cls, profile: NamingProfile, namespace: str, unit: str) -> SpanMetricNames:
        """``otel``: the connector's names after translation (what Jaeger SPM queries).
        ``tempo``: Tempo's metrics-generator names (its latency is in seconds)."""
        if profile == "tempo":
            return cls(
                "traces_spanmetrics_calls_total",
                "traces_spanmetrics_latency",
                "traces_spanmetrics_events_total",
                "service",
            )
        base = metric_name(namespace) if namespace else ""
        prefix = f"{base}_" if base else ""
        return cls(
            f"{prefix}calls_total",
            f"{prefix}duration_{UNIT_WORDS[unit]}",
            f"{prefix}events_total",
            "service_name",
        )

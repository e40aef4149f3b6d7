"""Enumerations and their exact spellings, as the Collector spanmetrics connector writes them."""

from __future__ import annotations

from enum import IntEnum

#: ``span.kind`` values by OTLP enum number (``traceutil.SpanKindStr`` in the Collector).
SPAN_KIND_NAMES: tuple[str, ...] = (
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
)

#: ``status.code`` values by OTLP enum number (``traceutil.StatusCodeStr``).
STATUS_CODE_NAMES: tuple[str, ...] = (
    "STATUS_CODE_UNSET",
    "STATUS_CODE_OK",
    "STATUS_CODE_ERROR",
)

#: Index of ``STATUS_CODE_ERROR`` in :data:`STATUS_CODE_NAMES` and on the wire.
STATUS_CODE_ERROR = 2


def span_kind_name(kind: int) -> str:
    """Name of an OTLP span kind number; unknown numbers read as unspecified, like the Collector."""
    return SPAN_KIND_NAMES[kind] if 0 <= kind < len(SPAN_KIND_NAMES) else SPAN_KIND_NAMES[0]


def status_code_name(code: int) -> str:
    """Name of an OTLP status code number; unknown numbers read as unset."""
    return STATUS_CODE_NAMES[code] if 0 <= code < len(STATUS_CODE_NAMES) else STATUS_CODE_NAMES[0]


class Temporality(IntEnum):
    """OTLP aggregation temporality, numbered as on the wire.

    For an uninterrupted stream the (start, time) pairs of successive points are:

    - cumulative: (T0, T1], (T0, T2], (T0, T3] ... with T0 the series' creation;
    - delta:      (T0, T1], (T1, T2], (T2, T3] ... each start is the previous flush.
    """

    DELTA = 1
    CUMULATIVE = 2

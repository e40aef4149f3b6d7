"""Kafka record values (``otlp_proto``, ``otlp_json``) to OTLP export requests.

Every failure is a :class:`DecodeError` with a stable ``reason``, so the caller can count the
record under that reason, log the detail, and carry on with the next record.
"""

from spanmetrics.decode.errors import REASONS, DecodeError, DecodeReason
from spanmetrics.decode.traces import (
    ENCODINGS,
    Encoding,
    decode_message,
    decode_metrics,
    decode_traces,
)

__all__ = [
    "ENCODINGS",
    "REASONS",
    "DecodeError",
    "DecodeReason",
    "Encoding",
    "decode_message",
    "decode_metrics",
    "decode_traces",
]

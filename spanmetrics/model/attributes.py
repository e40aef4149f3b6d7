"""Reading OTLP attribute values as label strings, the way the Collector does (``AsString``)."""

from __future__ import annotations

import base64
import json
import math
from decimal import Decimal
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def format_double(value: float) -> str:
    """Shortest decimal form without exponent, like Go's ``FormatFloat(v, 'f', -1, 64)``."""
    if not math.isfinite(value):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text.removesuffix(".0")


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, kind) if kind else None


def any_value_to_str(value: AnyValue) -> str:
    """String form of an attribute value: strings as is, ints in decimal, bools
    ``true``/``false``, doubles in shortest plain form, bytes in base64, arrays and maps as
    JSON, and an empty value as ``""``."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return format_double(value.double_value)
    if kind is None:
        return ""
    plain = _plain(value)
    return plain if isinstance(plain, str) else json.dumps(plain, separators=(",", ":"))


def any_value_to_number(value: AnyValue) -> float | int | str | None:
    """Numeric view of an attribute value (for multipliers); strings pass through."""
    kind = value.WhichOneof("value")
    if kind in ("int_value", "double_value", "string_value"):
        result: float | int | str = getattr(value, kind)
        return result
    return None

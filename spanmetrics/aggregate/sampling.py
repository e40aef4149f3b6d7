"""Sampling correction: how many spans one received span stands for.

OTel probability sampling writes the rejection threshold into the W3C ``tracestate`` as
``ot=th:<hex>`` (up to 14 hex digits, trailing zeros dropped). A span sampled with threshold
T was kept with probability ``(2^56 - T) / 2^56``, so it stands for ``2^56 / (2^56 - T)``
spans. See the OTel spec "TraceState Probability Sampling".
"""

from __future__ import annotations

import math

_MAX_THRESHOLD = 1 << 56
_TH_DIGITS = 14


def adjusted_count(tracestate: str) -> float:
    """Adjusted count from a W3C tracestate; 1.0 when it carries no valid ``ot=th:``."""
    if "ot=" not in tracestate:
        return 1.0
    for member in tracestate.split(","):
        key, _, value = member.strip().partition("=")
        if key != "ot":
            continue
        for field in value.split(";"):
            name, _, th = field.partition(":")
            if name != "th":
                continue
            if not th or len(th) > _TH_DIGITS:
                return 1.0
            try:
                threshold = int(th.ljust(_TH_DIGITS, "0"), 16)
            except ValueError:
                return 1.0
            return _MAX_THRESHOLD / (_MAX_THRESHOLD - threshold)
    return 1.0


#: The most spans one span may stand for. A larger adjusted count (a threshold near 2^56, or
#: a huge multiplier) is not credible, and would overflow the 64-bit counts: it is capped.
MAX_ADJUSTED_COUNT = 2**32


def stochastic_round(value: float, span_id: bytes) -> int:
    """Round ``value`` up with probability equal to its fraction, drawing from the span id.

    Span ids are random, so their bits are a uniform draw: the expected result is
    ``value``, as with the connector's stochastic rounding, while the same span always
    rounds the same way — a replay gives exactly the same counts.
    """
    whole = math.floor(value)
    fraction = value - whole
    if fraction == 0.0:
        return int(whole)
    draw = int.from_bytes(span_id[:8].ljust(8, b"\0"), "big") / 2.0**64
    return int(whole) + (1 if draw < fraction else 0)


def parse_multiplier(value: float | int | str | None) -> float | None:
    """A ``span_multiplier_key`` value as a positive float, or None when unusable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None

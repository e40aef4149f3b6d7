"""Go-style duration strings ("60s", "1m30s", "250ms"), as the Collector's config uses."""

from __future__ import annotations

import re
from fractions import Fraction

# Exact factors, so "100us" is exactly 0.1 ms and not 0.09999999999999999.
_UNITS_S = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str | int | float) -> Fraction:
    """Exact seconds in a Go duration string; a bare number is taken as seconds.

    Raises:
        ValueError: the text is not a duration, or it is negative.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration such as '60s', got {text!r}")
    if isinstance(text, int | float):
        seconds = Fraction(text)
    else:
        raw = text.strip()
        if raw in ("0", ""):
            return Fraction(0)
        negative = raw.startswith("-")
        body = raw.lstrip("+-")
        pos, seconds = 0, Fraction(0)
        for match in _PART.finditer(body):
            if match.start() != pos:
                break
            seconds += Fraction(match.group(1)) * _UNITS_S[match.group(2)]
            pos = match.end()
        if pos != len(body) or pos == 0:
            raise ValueError(f"invalid duration {text!r}, expected e.g. '60s', '1m30s', '250ms'")
        if negative:
            seconds = -seconds
    if seconds < 0:
        raise ValueError(f"invalid duration {text!r}, the duration should not be negative")
    return seconds


def parse_duration_s(text: str | int | float) -> float:
    """Seconds in a Go duration string, as a float (see :func:`parse_duration`)."""
    return float(parse_duration(text))

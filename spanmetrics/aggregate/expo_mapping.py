"""Exact bucket index mapping of OTel base-2 exponential histograms.

OTel metrics data model, "ExponentialHistogram" > "Exponential Scale": at scale ``s`` the
base is ``2 ** (2 ** -s)`` and bucket ``i`` holds the values ``v`` with
``base ** i < v <= base ** (i + 1)`` (upper-inclusive buckets). "Producer expectations"
asks producers to map values exactly, in particular exact powers of two, which are bucket
boundaries at every scale >= 0, must land in the bucket they close.

The functions here are exact for every positive finite double, subnormals included:

- scale <= 0 ("ExponentMapping"): the index only depends on the binary exponent, which
  ``frexp`` gives exactly.
- scale > 0 ("LogarithmMapping"): ``log2`` gives the index except within a hair of a
  boundary; there the decision is redone in high-precision decimal arithmetic, which is
  exact because a double that is not a power of two never lies *on* a boundary (see
  ``_exact_fraction_index``).
"""

from __future__ import annotations

import decimal
import math
import sys
from typing import Final

import numpy as np
from numpy.typing import NDArray

#: Finest scale (go-expohisto's ``logarithm.MaxScale``): about 1.4e-6 relative bucket width.
MAX_SCALE: Final = 20
#: Coarsest scale: base 2**1024, three buckets cover every positive double.
MIN_SCALE: Final = -10

# If the float estimate of the scaled log is closer than this to an integer we decide
# exactly. Its error is a few ulps of a number below 2**20, i.e. < 1e-9, so 1e-6 leaves a
# factor of 1000; the exact path runs for ~2e-6 of random inputs, so its cost is negligible.
_NEAR_BOUNDARY: Final = 1e-6
# Significant digits of the exact path. The scaled fraction is < 2**20 (7 digits) and the
# closest a double gets to a boundary is ~2**-64 in scaled-log units (2**62 doubles spread
# over ~2**31 boundaries at scale 20): ~27 digits would do; 60 gives a wide margin.
_DECIMAL_DIGITS: Final = 60
_DECIMAL_CONTEXT: Final = decimal.Context(prec=_DECIMAL_DIGITS, rounding=decimal.ROUND_HALF_EVEN)
_LN2: Final = _DECIMAL_CONTEXT.ln(decimal.Decimal(2))

_MAX_FLOAT: Final = sys.float_info.max


def _check_scale(scale: int) -> None:
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be in [{MIN_SCALE}, {MAX_SCALE}], got {scale}")


def _exact_fraction_index(significand: float, scale: int) -> int:
    """``floor(log2(significand) * 2**scale)`` for ``significand`` in (1, 2), exactly.

    Why this is exact: for a double ``v`` that is not a power of two, ``log2(v) * 2**scale``
    is never an integer (that would need ``v ** (2**scale)`` to be a power of two, which for
    a rational ``v`` means ``v`` is one). So the true value sits strictly between two
    integers, and far enough from them (see ``_DECIMAL_DIGITS``) that a 60-digit evaluation
    cannot round it across. ``Decimal(float)`` converts the double exactly.
    """
    ctx = _DECIMAL_CONTEXT
    scaled = ctx.multiply(ctx.divide(ctx.ln(decimal.Decimal(significand)), _LN2), 1 << scale)
    return int(scaled.to_integral_value(rounding=decimal.ROUND_FLOOR))


def map_to_index(value: float, scale: int) -> int:
    """Index of the bucket holding ``value`` at ``scale``, exactly.

    Implements the OTel data model's "Exponential Scale" mapping: the returned ``i``
    satisfies ``base ** i < value <= base ** (i + 1)`` with ``base = 2 ** (2 ** -scale)``.
    Powers of two are upper-inclusive boundaries, as "Producer expectations" requires.

    Args:
        value: a finite value > 0 (subnormals included).
        scale: in [MIN_SCALE, MAX_SCALE].

    Raises:
        ValueError: for a value that is not finite and > 0, or a scale out of range.
    """
    _check_scale(scale)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"value must be finite and > 0, got {value!r}")
    # value = mantissa * 2**exponent with mantissa in [0.5, 1), exact also for subnormals.
    mantissa, exponent = math.frexp(value)
    if mantissa == 0.5:
        # value == 2**k is the upper (inclusive) boundary of the bucket below it.
        k = exponent - 1
        return (k << scale) - 1 if scale >= 0 else (k - 1) >> -scale
    if scale <= 0:
        # 2**(exponent-1) < value < 2**exponent: index exponent-1 at scale 0; a coarser
        # bucket merges 2**-scale scale-0 buckets, i.e. a floor shift.
        return (exponent - 1) >> -scale
    significand = 2.0 * mantissa  # in (1, 2), exact
    # log2(value) * 2**scale = (exponent-1) * 2**scale + log2(significand) * 2**scale; the
    # first term is an exact integer, so only a number in (0, 2**scale) carries float error.
    scaled = math.log2(significand) * (1 << scale)
    nearest = round(scaled)
    if abs(scaled - nearest) < _NEAR_BOUNDARY:
        fraction_index = _exact_fraction_index(significand, scale)
    else:
        fraction_index = math.floor(scaled)
    return ((exponent - 1) << scale) + fraction_index


def map_to_index_array(values: NDArray[np.float64], scale: int) -> NDArray[np.int64]:
    """Vectorised :func:`map_to_index`: the same exact result for each element.

    Raises:
        ValueError: if any value is not finite and > 0, or the scale is out of range.
    """
    _check_scale(scale)
    values = np.asarray(values, dtype=np.float64)
    if values.size and not bool(np.all((values > 0.0) & np.isfinite(values))):
        raise ValueError("values must be finite and > 0")
    mantissa, exponent_raw = np.frexp(values)
    exponent = exponent_raw.astype(np.int64)
    power_of_two = mantissa == 0.5
    if scale <= 0:
        index0: NDArray[np.int64] = exponent - 1 - power_of_two.astype(np.int64)
        return index0 >> -scale
    k = exponent - 1
    scaled = np.log2(2.0 * mantissa) * float(1 << scale)
    index = np.left_shift(k, scale) + np.floor(scaled).astype(np.int64)
    index[power_of_two] = np.left_shift(k[power_of_two], scale) - 1
    near = (np.abs(scaled - np.rint(scaled)) < _NEAR_BOUNDARY) & ~power_of_two
    # Same exact fallback as the scalar path, on the rare elements that need it.
    for i in np.flatnonzero(near).tolist():
        index[i] = map_to_index(float(values[i]), scale)
    return index


def _ldexp_or_inf(mantissa: float, exponent: int) -> float:
    """``mantissa * 2**exponent`` with overflow giving inf instead of raising."""
    try:
        return math.ldexp(mantissa, exponent)
    except OverflowError:
        return math.inf


def _power_of_two_floor(exponent: int) -> float:
    """``2 ** exponent`` rounded down to a double (0.0 below the subnormals), inf above."""
    if exponent >= 1024:
        return math.inf
    return math.ldexp(1.0, exponent) if exponent >= -1074 else 0.0


def lower_boundary(index: int, scale: int) -> float:
    """``base ** index`` rounded down to a double, or inf beyond the double range.

    Rounding down makes the boundary exact *as a predicate on doubles*: for every double
    ``v``, ``v > lower_boundary(i, s)`` if and only if ``v > base ** i``, i.e. bucket ``i``
    holds exactly the doubles in ``(lower_boundary(i, s), lower_boundary(i + 1, s)]``
    (OTel data model, "Exponential Scale"). Bounds below the smallest subnormal are 0.0.
    """
    _check_scale(scale)
    if scale <= 0:
        return _power_of_two_floor(index << -scale)
    whole, part = index >> scale, index & ((1 << scale) - 1)
    if part == 0 or not -1076 < whole < 1024:
        # An exact power of two, or so far out that 2**whole already decides it.
        return _power_of_two_floor(whole)
    # 2**(part / 2**scale) is within an ulp or two of the truth; settle the last bits
    # against the exact mapping, so the result agrees with map_to_index by construction.
    approx = min(_ldexp_or_inf(math.exp2(part / (1 << scale)), whole), _MAX_FLOAT)
    while approx > 0.0 and map_to_index(approx, scale) >= index:
        approx = math.nextafter(approx, 0.0)
    while approx < _MAX_FLOAT and map_to_index(math.nextafter(approx, math.inf), scale) < index:
        approx = math.nextafter(approx, math.inf)
    if approx == _MAX_FLOAT and map_to_index(approx, scale) < index:
        return math.inf
    return approx

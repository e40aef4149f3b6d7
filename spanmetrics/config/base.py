"""What every config model shares: strictness, empty blocks, durations."""

from __future__ import annotations

import itertools
import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

from spanmetrics.config.durations import parse_duration_s

#: A duration in seconds, written as a Go duration string ("60s") or a number of seconds.
DurationSeconds = Annotated[float, BeforeValidator(parse_duration_s)]


class Strict(BaseModel):
    """Base: immutable, unknown keys rejected, and an empty block means its defaults.

    In YAML a key with nothing under it (``histogram:``) is null; the Collector reads such
    a block as "all defaults", and so does every block here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_block(cls, data: object) -> object:
        return {} if data is None else data


def one_is_a_list(value: object) -> object:
    """One string where a list is expected means a list of one (a before-validator)."""
    return (value,) if isinstance(value, str) else value


def valid_regex(pattern: str | None) -> str | None:
    """A regex that compiles, or the error that says why (a validator)."""
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"invalid regex {pattern!r}: {err}") from None
    return pattern


def increasing_bounds(bounds: tuple[float, ...]) -> tuple[float, ...]:
    """Histogram bounds: at least one, strictly increasing (a validator)."""
    if not bounds:
        raise ValueError("at least one bound is needed")
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"bounds must be strictly increasing, got {list(bounds)}")
    return bounds

"""What every config model shares: strictness, empty blocks, durations."""

from __future__ import annotations

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

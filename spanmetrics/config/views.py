"""``views``, ``span_filters`` and ``span_names``: what the output holds, chosen per metric.

Views have the shape of the OpenTelemetry declarative configuration's (``selector`` and
``stream``), so SDK users recognise them::

    views:
      - selector: {instrument_name: traces.span.metrics.duration}
        stream:
          attribute_keys: {excluded: [user.id]}
          aggregation: {base2_exponential_bucket_histogram: {max_size: 160}}

As in an SDK, a metric that no view selects keeps its default stream, and a metric that
several views select gets one stream per view (dual emit). They apply to a partition's
series at each flush, before anything leaves it: exact, since counts and histograms add,
and paid per series, not per span. Selectors and filters therefore see a series' labels
(the intrinsic dimensions and the configured ones), not attributes that are no dimension.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from spanmetrics.config import defaults
from spanmetrics.config.base import Strict, increasing_bounds, one_is_a_list, valid_regex
from spanmetrics.config.rules import AttributeTest, SpanSelector

#: Quantiles a ``summary`` reports when none are given.
DEFAULT_SUMMARY_QUANTILES = (0.5, 0.9, 0.99)


_regex = valid_regex
_one_is_a_list = one_is_a_list


def _known_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    # The rules' span selector knows the kinds and their spellings: its check, reused.
    try:
        SpanSelector(kind=kinds)
    except ValidationError as err:
        raise ValueError(str(err.errors()[0]["msg"]).removeprefix("Value error, ")) from None
    return kinds


class ViewSelector(Strict):
    """Which series a view takes: every given test must hold."""

    instrument_name: str | None = None
    """Metric name; ``*`` matches any characters and ``?`` one
    (``traces.span.metrics.*``)."""
    service: tuple[str, ...] = ()
    """``service.name``, one of these."""
    span_kind: tuple[str, ...] = ()
    """Span kind, one of ``SERVER``, ``CLIENT``, ``INTERNAL``, ``PRODUCER``, ``CONSUMER``."""
    span_name: str | None = None
    """A regex the span name must match (from its start)."""
    attributes: tuple[AttributeTest, ...] = ()
    """Tests on the series' labels (dimensions), all of which must hold."""

    _re = field_validator("span_name")(_regex)
    _lists = field_validator("service", "span_kind", mode="before")(_one_is_a_list)
    _kinds = field_validator("span_kind")(_known_kinds)


class ExponentialAggregation(Strict):
    """An exponential histogram, with its own bucket budget."""

    max_size: int = Field(
        default=defaults.DEFAULT_EXPONENTIAL_MAX_SIZE,
        ge=2,
        le=defaults.MAXIMUM_EXPONENTIAL_MAX_SIZE,
    )
    """Maximum number of buckets (fewer means a coarser scale)."""


class ExplicitAggregation(Strict):
    """A histogram with fixed bounds, filled from the exponential histogram: each
    exponential bucket's count goes to the explicit bucket holding its middle, so a value
    lands at most one exponential bucket away from its true side of a bound."""

    boundaries: tuple[float, ...]
    """Upper bounds, strictly increasing, in the metric's unit."""

    _increasing = field_validator("boundaries")(increasing_bounds)


class SummaryAggregation(Strict):
    """The legacy min, max, sum and count, with fixed quantiles computed from the
    exponential histogram (as a migration's old dashboards read them)."""

    quantiles: tuple[float, ...] = DEFAULT_SUMMARY_QUANTILES
    """Quantiles to report, each in [0, 1]."""

    @field_validator("quantiles")
    @classmethod
    def _in_range(cls, quantiles: tuple[float, ...]) -> tuple[float, ...]:
        for q in quantiles:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"a quantile is in [0, 1], got {q}")
        return quantiles


class Empty(Strict):
    """A block with no keys (``drop: {}``)."""


class Aggregation(Strict):
    """Exactly one aggregation."""

    default: Empty | None = None
    """The metric's own: a sum for calls, the topology's histogram for durations."""
    base2_exponential_bucket_histogram: ExponentialAggregation | None = None
    """An exponential histogram (durations only)."""
    explicit_bucket_histogram: ExplicitAggregation | None = None
    """A fixed-bound histogram (durations only)."""
    summary: SummaryAggregation | None = None
    """Min, max, sum, count and fixed quantiles (durations only)."""
    drop: Empty | None = None
    """No stream at all."""

    @model_validator(mode="before")
    @classmethod
    def _empty_kinds(cls, data: object) -> object:
        # `drop:` or `summary:` with nothing under it means that aggregation, not null.
        if isinstance(data, dict):
            return {k: ({} if v is None else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Aggregation:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "an aggregation has exactly one of " + ", ".join(type(self).model_fields)
                + (f", got {given}" if given else "")
            )  # fmt: skip
        return self

    @property
    def kind(self) -> str:
        """The key given."""
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)


class AttributeKeys(Strict):
    """Which labels a stream keeps; the others are summed over."""

    included: tuple[str, ...] | None = None
    """Keep only these (``service.name`` is always kept: it names the resource)."""
    excluded: tuple[str, ...] = ()
    """Leave these out."""


class Stream(Strict):
    """What a view makes of the series it selects."""

    name: str | None = None
    """Name of the output metric; default: the selected metric's."""
    description: str | None = None
    """Accepted for the reader, as in SDK views."""
    attribute_keys: AttributeKeys | None = None
    """Labels kept (``included``) or left out (``excluded``)."""
    rename_attributes: dict[str, str] = Field(default_factory=dict)
    """Label renames, after ``attribute_keys`` (``http.request.method: http.method``)."""
    aggregation: Aggregation | None = None
    """The stream's aggregation; default: the metric's own."""
    temporality: Literal["cumulative", "delta"] | None = None
    """The stream's temporality in the OTLP output; default: the topology's
    ``aggregation_temporality``. (Prometheus sinks always get cumulative series.)"""


class View(Strict):
    """One view: a selector and the stream it makes."""

    selector: ViewSelector
    """Which series."""
    stream: Stream = Stream()
    """What to make of them."""

    @model_validator(mode="after")
    def _renamed_only_once(self) -> View:
        targets = list(self.stream.rename_attributes.values())
        if len(set(targets)) != len(targets):
            raise ValueError("stream.rename_attributes: two labels renamed to one name")
        return self


class SpanTest(Strict):
    """A test on a series' span kind and labels."""

    span_kind: tuple[str, ...] = ()
    """Span kind, one of these."""
    attributes: tuple[AttributeTest, ...] = ()
    """Tests on labels, all of which must hold."""

    _lists = field_validator("span_kind", mode="before")(_one_is_a_list)
    _kinds = field_validator("span_kind")(_known_kinds)


class SpanFilters(Strict):
    """Spans kept: those an ``include`` test takes (all, when there is none), minus those an
    ``exclude`` test takes. Every span left out is counted, by reason."""

    include: tuple[SpanTest, ...] = ()
    """Keep only spans one of these takes."""
    exclude: tuple[SpanTest, ...] = ()
    """Leave out spans one of these takes."""


class SpanNameRule(Strict):
    """Rewrite span names, as ids in paths: ``pattern`` replaced by ``replacement``."""

    pattern: str
    """A regex searched in the span name; every match is replaced."""
    replacement: str
    """What replaces each match (``\\1`` refers to a group), e.g. ``{id}``."""
    service: tuple[str, ...] = ()
    """Only spans of these services (empty: all)."""

    _re = field_validator("pattern")(_regex)
    _lists = field_validator("service", mode="before")(_one_is_a_list)


class Budget(Strict):
    """At most ``max_series`` series, across the whole fleet, for a metric, a service, or
    a metric of a service. Past it, new series fold into the overflow series
    (``otel.metric.overflow=true``) and their spans are counted."""

    metric: str | None = None
    """Metric name (``*`` and ``?`` as in views); every metric when absent."""
    service: str | None = None
    """``service.name``; every service when absent."""
    max_series: int = Field(ge=1)
    """Series allowed."""

    @model_validator(mode="after")
    def _scoped(self) -> Budget:
        if self.metric is None and self.service is None:
            raise ValueError("a budget needs a 'metric', a 'service', or both")
        return self


#: The labels a selector reads for ``service`` and ``span_kind``, and a name rule rewrites.
SERVICE_LABEL, KIND_LABEL, NAME_LABEL = "service.name", "span.kind", "span.name"


def instrument_pattern(name: str) -> re.Pattern[str]:
    """An ``instrument_name`` as a regex: ``*`` any characters, ``?`` one."""
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in name) + r"\Z"
    )


def _selected(view: View, instruments: list[str]) -> list[str]:
    wanted = view.selector.instrument_name
    pattern = instrument_pattern(wanted) if wanted is not None else None
    return [n for n in instruments if pattern is None or pattern.match(n)]


def _takes_all(view: View) -> bool:
    """Whether the view takes every series of the metrics it selects."""
    s = view.selector
    return not (s.service or s.span_kind or s.span_name or s.attributes)


def check_views(views: tuple[View, ...], instruments: list[str]) -> None:
    """Cross-view checks, given the topology's metric names.

    Raises:
        ValueError: a named stream that would hold several metrics, or a name two views
            give; the message starts with the key path.
    """
    outputs: dict[str, int] = {}
    whole: dict[str, int] = {}
    for i, view in enumerate(views):
        name = view.stream.name
        if name is None:
            if view.stream.aggregation is not None and view.stream.aggregation.drop is not None:
                continue
            # Two views that take every series of a metric and keep its name would put two
            # streams of different labels under one name.
            for instrument in _selected(view, instruments) if _takes_all(view) else ():
                if instrument in whole:
                    raise ValueError(
                        f"views[{i}].stream.name: views[{whole[instrument]}] also emits "
                        f"{instrument!r} for every series; name one of the two streams"
                    )
                whole[instrument] = i
            continue
        pattern = view.selector.instrument_name
        selected = [
            n for n in instruments if pattern is None or instrument_pattern(pattern).match(n)
        ]
        if len(selected) > 1:
            raise ValueError(
                f"views[{i}].stream.name: the selector takes {len(selected)} metrics "
                f"({', '.join(selected)}), which one name cannot hold; select one"
            )
        if name in outputs:
            raise ValueError(f"views[{i}].stream.name: {name!r} is also views[{outputs[name]}]'s")
        outputs[name] = i

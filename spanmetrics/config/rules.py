"""The ``derive`` block: metrics derived from spans by rules written as data.

Where the ``spanmetrics`` block makes the connector's calls and duration metrics for every
span, ``derive`` makes named metrics for the spans each one selects, with attributes taken
from the span, its resource, or a partner span of the same trace (a join). The Kubernetes
topology (``topologies/kubernetes.yaml``) is written in it; so is the next component's.

Every regex is a Python regex matched from the start of the value (``re.match``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from spanmetrics.config import defaults
from spanmetrics.config.base import DurationSeconds, Strict, one_is_a_list, valid_regex
from spanmetrics.model.enums import SPAN_KIND_NAMES, STATUS_CODE_NAMES

#: Span kinds as rules write them: ``SERVER`` or ``SPAN_KIND_SERVER``.
_KINDS = {name.removeprefix("SPAN_KIND_"): i for i, name in enumerate(SPAN_KIND_NAMES)}
#: Status codes as rules write them: ``ERROR`` or ``STATUS_CODE_ERROR``.
_STATUSES = {name.removeprefix("STATUS_CODE_"): i for i, name in enumerate(STATUS_CODE_NAMES)}

#: The value of a joined attribute when the partner span never arrived.
UNKNOWN = "unknown"


_tuple_of_str = one_is_a_list
_regex = valid_regex


class AttributeTest(Strict):
    """A test on one attribute of a span (aliases apply): present, one of, or matching."""

    key: str = Field(min_length=1)
    """Attribute key."""
    matches: str | None = None
    """A regex the value must match (from its start)."""
    one_of: tuple[str, ...] = ()
    """Values, one of which the attribute must have."""
    present: bool | None = None
    """True: the attribute must be there; false: it must not."""

    _one = field_validator("one_of", mode="before")(_tuple_of_str)
    _re = field_validator("matches")(_regex)


class SpanSelector(Strict):
    """Which spans: every given test must hold (an empty selector takes every span)."""

    service: tuple[str, ...] = ()
    """``service.name`` of the span's resource, one of these."""
    kind: tuple[str, ...] = ()
    """Span kind, one of these: ``SERVER``, ``CLIENT``, ``INTERNAL``, ``PRODUCER``,
    ``CONSUMER`` (the ``SPAN_KIND_`` prefix may be written)."""
    name: tuple[str, ...] = ()
    """Span name, one of these exactly."""
    name_matches: str | None = None
    """A regex the span name must match (from its start)."""
    status: tuple[str, ...] = ()
    """Span status, one of ``UNSET``, ``OK``, ``ERROR``."""
    root: bool | None = None
    """True: only spans without a parent; false: only spans with one."""
    attributes: tuple[AttributeTest, ...] = ()
    """Tests on span attributes, all of which must hold."""

    _lists = field_validator("service", "kind", "name", "status", mode="before")(_tuple_of_str)
    _re = field_validator("name_matches")(_regex)

    @field_validator("kind")
    @classmethod
    def _known_kinds(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        for kind in kinds:
            if kind.removeprefix("SPAN_KIND_") not in _KINDS:
                raise ValueError(f"unknown span kind {kind!r}, expected one of {list(_KINDS)}")
        return kinds

    @field_validator("status")
    @classmethod
    def _known_statuses(cls, statuses: tuple[str, ...]) -> tuple[str, ...]:
        for status in statuses:
            if status.removeprefix("STATUS_CODE_") not in _STATUSES:
                raise ValueError(f"unknown status {status!r}, expected one of {list(_STATUSES)}")
        return statuses

    @property
    def kind_numbers(self) -> frozenset[int]:
        """The selected kinds as OTLP numbers."""
        return frozenset(_KINDS[k.removeprefix("SPAN_KIND_")] for k in self.kind)

    @property
    def status_numbers(self) -> frozenset[int]:
        """The selected statuses as OTLP numbers."""
        return frozenset(_STATUSES[s.removeprefix("STATUS_CODE_")] for s in self.status)


#: Where a value comes from: exactly one of these keys of :class:`ValueSource`.
SOURCE_KINDS = ("span", "resource", "joined", "span_name", "status", "event", "value")


class ValueSource(Strict):
    """One place to read an attribute's value from, then how to rewrite it.

    Exactly one of ``span``, ``resource``, ``joined``, ``span_name``, ``status``,
    ``event`` and ``value``. A source that finds nothing (or whose ``pattern`` does not
    match) passes to the next source of the attribute.
    """

    span: str | None = None
    """A span attribute (aliases apply)."""
    resource: str | None = None
    """A resource attribute."""
    joined: str | None = None
    """An attribute of the partner span found by the metric's ``join``. When the join is
    expected and the partner never arrived, the value is ``unknown``."""
    span_name: bool = False
    """The span name."""
    status: bool = False
    """The span status: ``UNSET``, ``OK`` or ``ERROR``."""
    event: str | None = None
    """``true`` when the span has an event of this name (nothing otherwise)."""
    value: str | None = None
    """A constant."""
    pattern: str | None = None
    """A regex applied to the value found: its first group (or the whole match when it has
    no group) is the value; no match means nothing found."""
    map: dict[str, str] = Field(default_factory=dict)
    """Values replaced by others (``RunPodSandbox: run_podsandbox``); others are kept."""
    case: Literal["upper", "lower"] | None = None
    """Upper- or lower-case the value (after ``map``)."""

    _re = field_validator("pattern")(_regex)

    @model_validator(mode="after")
    def _exactly_one(self) -> ValueSource:
        given = [k for k in SOURCE_KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(
                "a value source has exactly one of " + ", ".join(SOURCE_KINDS)
                + (f", got {given}" if given else "")
            )  # fmt: skip
        return self

    @property
    def source_kind(self) -> str:
        """Which of :data:`SOURCE_KINDS` this source reads."""
        return next(k for k in SOURCE_KINDS if getattr(self, k) not in (None, False))


class AttributeRule(Strict):
    """How one output attribute gets its value: the first source that finds one."""

    sources: tuple[ValueSource, ...] = Field(validation_alias="from", serialization_alias="from")
    """Value sources, tried in order (written ``from:``)."""
    default: str = ""
    """The value when no source finds one."""
    opt_in: bool = False
    """Emitted only when ``derive.opt_in`` lists this attribute's name (identity labels
    such as pod names, which multiply series)."""

    @field_validator("sources")
    @classmethod
    def _some(cls, sources: tuple[ValueSource, ...]) -> tuple[ValueSource, ...]:
        if not sources:
            raise ValueError("an attribute needs at least one source")
        return sources

    @model_validator(mode="before")
    @classmethod
    def _list_form(cls, data: object) -> object:
        # `verb: [{joined: verb}, {span: http.request.method}]`: the sources alone.
        return {"from": data} if isinstance(data, list) else data


class JoinRule(Strict):
    """Where a metric's span finds its partner in the same trace and the same resource."""

    partner: SpanSelector
    """Which span is the partner."""
    direction: Literal["ancestor", "descendant"]
    """``ancestor``: the nearest ancestor that is a partner (a CRI call's ``syncPod``).
    ``descendant``: a partner below the span and below no nearer span of the same metric
    (an API request's handler span)."""
    when: SpanSelector | None = None
    """The join is expected only for spans this selects (others never have a partner,
    and their ``joined`` sources find nothing)."""


class DerivedMetric(Strict):
    """One metric: a histogram of the selected spans' durations, or a count of them."""

    name: str = Field(min_length=1)
    """OTLP metric name, e.g. ``k8s.apiserver.request.duration``."""
    type: Literal["histogram", "sum"]
    """``histogram``: exponential histogram of durations in seconds. ``sum``: a monotonic
    count of spans (times their multiplier)."""
    description: str = ""
    """Metric description, for the reader."""
    select: SpanSelector
    """The spans this metric is about."""
    join: JoinRule | None = None
    """Partner span whose attributes the ``joined`` sources read."""
    attributes: dict[str, AttributeRule] = Field(default_factory=dict)
    """Output attributes, in this order."""
    exclude: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Leave a span out when an output attribute has one of these values (``verb: [WATCH,
    CONNECT]``)."""

    @field_validator("exclude", mode="before")
    @classmethod
    def _exclude_lists(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: _tuple_of_str(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DerivedMetric:
        for key in self.exclude:
            if key not in self.attributes:
                raise ValueError(f"exclude: {key!r} is not one of this metric's attributes")
        if self.join is None:
            for key, rule in self.attributes.items():
                if any(s.joined is not None for s in rule.sources):
                    raise ValueError(f"attributes: {key!r} reads 'joined' but there is no join")
        return self


class JoinSettings(Strict):
    """Bounds of the joins within a trace."""

    window: DurationSeconds = defaults.DEFAULT_JOIN_WINDOW_S
    """How long a span waits for its partner: after this long without a new span of its
    trace, it is emitted with ``unknown`` joined values."""
    max_pending_spans: int = Field(default=defaults.DEFAULT_JOIN_MAX_PENDING_SPANS, ge=1)
    """Spans held for joins at most; past it the oldest traces are let go first (their
    waiting spans emitted as with an expired window)."""

    @field_validator("window")
    @classmethod
    def _positive(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError("the join window should be positive")
        return seconds


class DeriveConfig(Strict):
    """Metrics derived from selected spans by rules (see the module docstring)."""

    services: tuple[str, ...] = ()
    """Keep only spans whose resource's ``service.name`` is one of these (empty: all), so
    the topology can read a shared span topic."""
    aliases: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Attribute renames across versions: reading the key on the left, the keys on the
    right are tried next, in order (``http.request.method: [http.method]``)."""
    multipliers: dict[str, float] = Field(default_factory=dict)
    """Per ``service.name``: how many spans each sampled span stands for (for Kubernetes
    components, 1e6 / ``samplingRatePerMillion``)."""
    opt_in: tuple[str, ...] = ()
    """Names of ``opt_in`` attributes to emit."""
    join: JoinSettings = JoinSettings()
    """Bounds of the joins."""
    metrics: tuple[DerivedMetric, ...]
    """The metrics."""

    _services = field_validator("services", "opt_in", mode="before")(_tuple_of_str)

    @field_validator("aliases", mode="before")
    @classmethod
    def _alias_lists(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: _tuple_of_str(v) for k, v in value.items()}
        return value

    @field_validator("multipliers")
    @classmethod
    def _positive_multipliers(cls, value: dict[str, float]) -> dict[str, float]:
        for service, multiplier in value.items():
            if not multiplier > 0:
                raise ValueError(f"{service!r}: a multiplier should be positive, got {multiplier}")
        return value

    @model_validator(mode="after")
    def _unique_and_known(self) -> DeriveConfig:
        if not self.metrics:
            raise ValueError("metrics: at least one metric is needed")
        seen: set[str] = set()
        for i, metric in enumerate(self.metrics):
            if metric.name in seen:
                raise ValueError(f"metrics[{i}].name: {metric.name!r} is defined twice")
            seen.add(metric.name)
        opt_ins = {k for m in self.metrics for k, r in m.attributes.items() if r.opt_in}
        for name in self.opt_in:
            if name not in opt_ins:
                raise ValueError(
                    f"opt_in: {name!r} is no metric's opt_in attribute"
                    + (f" (those are {sorted(opt_ins)})" if opt_ins else "")
                )
        return self

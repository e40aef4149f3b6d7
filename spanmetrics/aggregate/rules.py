"""The ``derive`` block compiled: which metrics a span feeds, and with which attributes.

Rules are data (:mod:`spanmetrics.config.rules`); this module evaluates them on
:class:`~spanmetrics.decode.facts.SpanFacts`, with no state of its own. The engine
(:mod:`.derived`) and the fleet's shards both use it, so that a span gets the same
attributes wherever its join completes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from spanmetrics.aggregate.points import METRIC_NAME_LABEL, Attributes
from spanmetrics.config.rules import (
    UNKNOWN,
    DeriveConfig,
    DerivedMetric,
    SpanSelector,
    ValueSource,
)
from spanmetrics.decode.facts import AttributeMap, SpanFacts
from spanmetrics.model.enums import status_code_name


class _Selector:
    """A compiled :class:`SpanSelector`."""

    def __init__(self, config: SpanSelector, lookup: _Lookup) -> None:
        self.services = frozenset(config.service)
        self.kinds = config.kind_numbers
        self.names = frozenset(config.name)
        self.name_re = re.compile(config.name_matches) if config.name_matches else None
        self.statuses = config.status_numbers
        self.root = config.root
        self.tests = [
            (t.key, re.compile(t.matches) if t.matches else None, frozenset(t.one_of), t.present)
            for t in config.attributes
        ]
        self._lookup = lookup

    def matches(self, span: SpanFacts, service: str) -> bool:
        """Whether every test of the selector holds for ``span`` of ``service``."""
        return self.matches_shape(span, service) and self.attributes_hold(span)

    def matches_shape(self, span: SpanFacts, service: str) -> bool:
        """The tests that look at no attribute: service, kind, name, status, root. They
        hold alike for every span of the same shape, so :class:`Rules` remembers them."""
        failed = (
            (self.services and service not in self.services)
            or (self.kinds and span.kind not in self.kinds)
            or (self.names and span.name not in self.names)
            or (self.name_re is not None and not self.name_re.match(span.name))
            or (self.statuses and span.status not in self.statuses)
            or (self.root is not None and self.root == bool(span.parent_span_id))
        )
        return not failed

    def attributes_hold(self, span: SpanFacts) -> bool:
        """Whether the attribute tests hold (true when there are none)."""
        for key, pattern, one_of, present in self.tests:
            value = self._lookup(span.attributes, key)
            if present is not None and (value is not None) != present:
                return False
            if (pattern is not None or one_of) and value is None:
                return False
            if pattern is not None and value is not None and not pattern.match(value):
                return False
            if one_of and value not in one_of:
                return False
        return True


class _Lookup:
    """Reads an attribute by its key, then by the keys it was renamed from (aliases)."""

    def __init__(self, aliases: Mapping[str, tuple[str, ...]]) -> None:
        self._aliases = aliases

    def __call__(self, attributes: AttributeMap, key: str) -> str | None:
        value = attributes.get(key)
        if value is not None:
            return value
        for alias in self._aliases.get(key, ()):
            value = attributes.get(alias)
            if value is not None:
                return value
        return None

    def keys(self, key: str) -> tuple[str, ...]:
        """``key`` and its aliases: every key a read of it may look at."""
        return (key, *self._aliases.get(key, ()))


#: Span shapes remembered before the memo is cleared.
_SHAPES_LIMIT = 10_000

#: What a source yields when its join is expected and the partner never came.
_ORPHAN = object()


@dataclass(frozen=True, slots=True)
class _Source:
    config: ValueSource
    pattern: re.Pattern[str] | None
    kind: str
    """Which of ``SOURCE_KINDS`` it reads (computed once: it is read per span)."""


class CompiledMetric:
    """One derived metric, compiled."""

    def __init__(self, index: int, config: DerivedMetric, lookup: _Lookup, opt_in: frozenset[str]):
        self.index = index
        self.config = config
        self.name = config.name
        self.is_histogram = config.type == "histogram"
        self.select = _Selector(config.select, lookup)
        emitted = {k: r for k, r in config.attributes.items() if not r.opt_in or k in opt_in}
        self.attributes = [
            (key, [_Source(s, re.compile(s.pattern) if s.pattern else None, s.source_kind)
                   for s in rule.sources], rule.default)
            for key, rule in emitted.items()
        ]  # fmt: skip
        # A join that no emitted attribute reads (its attributes are opt-in and off) is
        # not done at all: the spans are counted at once, never held.
        reads_join = any(s.joined is not None for r in emitted.values() for s in r.sources)
        join = config.join if reads_join else None
        self.partner = _Selector(join.partner, lookup) if join else None
        self.when = _Selector(join.when, lookup) if join and join.when else None
        self.ancestor = join is not None and join.direction == "ancestor"
        self.exclude = {k: frozenset(v) for k, v in config.exclude.items()}
        self._lookup = lookup

    def expects_join(self, span: SpanFacts, service: str) -> bool:
        """Whether this metric waits for a partner of ``span`` (selected by it)."""
        if self.partner is None:
            return False
        return self.when is None or self.when.matches(span, service)

    def labels(
        self,
        span: SpanFacts,
        resource: AttributeMap,
        partner: SpanFacts | None,
        orphan: bool,
    ) -> Attributes | None:
        """The point's labels (metric name first), or None when ``exclude`` drops the span.

        ``orphan``: the join was expected and the partner never came, so ``joined``
        sources give ``unknown``.
        """
        out: list[tuple[str, str]] = [(METRIC_NAME_LABEL, self.name)]
        for key, sources, default in self.attributes:
            value = default
            for source in sources:
                found = self._read(source, span, resource, partner, orphan)
                if found is _ORPHAN:
                    value = UNKNOWN
                    break
                if found is not None:
                    value = found  # type: ignore[assignment]
                    break
            excluded = self.exclude.get(key)
            if excluded and value in excluded:
                return None
            out.append((key, value))
        return tuple(out)

    def _read(
        self,
        source: _Source,
        span: SpanFacts,
        resource: AttributeMap,
        partner: SpanFacts | None,
        orphan: bool,
    ) -> object:
        config = source.config
        kind = source.kind
        value: str | None
        if kind == "span":
            value = self._lookup(span.attributes, config.span)  # type: ignore[arg-type]
        elif kind == "joined":
            if orphan:
                return _ORPHAN
            value = None if partner is None else self._lookup(partner.attributes, config.joined)  # type: ignore[arg-type]
        elif kind == "resource":
            value = resource.get(config.resource)  # type: ignore[arg-type]
        elif kind == "span_name":
            value = span.name
        elif kind == "status":
            value = status_code_name(span.status).removeprefix("STATUS_CODE_")
        elif kind == "event":
            value = "true" if config.event in span.events else None
        else:
            value = config.value
        if value is None:
            return None
        if source.pattern is not None:
            match = source.pattern.match(value)
            if match is None:
                return None
            value = match.group(1) if match.re.groups else match.group(0)
        value = config.map.get(value, value)
        if config.case == "upper":
            value = value.upper()
        elif config.case == "lower":
            value = value.lower()
        return value


@dataclass(frozen=True, slots=True)
class SpanRoles:
    """What one span is to the metrics."""

    direct: tuple[int, ...]
    """Metrics the span feeds now: no join, or none expected for it."""
    waiting: tuple[int, ...]
    """Metrics whose join the span waits for."""
    partner_of: tuple[int, ...]
    """Metrics with a join for which the span is a partner."""
    selected_by: tuple[int, ...]
    """Metrics with a join that select the span (whether it waits or not)."""

    @property
    def joins(self) -> bool:
        """Whether the join buffer needs the span (as waiting, partner, or a link)."""
        return bool(self.waiting or self.partner_of)


class Rules:
    """A ``derive`` block, compiled."""

    def __init__(self, config: DeriveConfig) -> None:
        self.config = config
        self.lookup = _Lookup(config.aliases)
        opt_in = frozenset(config.opt_in)
        self.metrics = [
            CompiledMetric(i, m, self.lookup, opt_in) for i, m in enumerate(config.metrics)
        ]
        self.services: frozenset[str] | None = frozenset(config.services) or None
        self._multipliers = dict(config.multipliers)
        #: Services whose spans may link a join: every span of theirs is held while its
        #: trace has a join open, since it may be on the path between two partners.
        joined = [m for m in self.metrics if m.partner is not None]
        self.link_services: frozenset[str] | None = (
            None
            if any(not m.select.services for m in joined)
            else frozenset(s for m in joined for s in m.select.services)
        )
        self.has_joins = bool(joined)
        self.window_ns = round(config.join.window * 1e9)
        #: Per span shape (service, name, kind, status, has a parent): what
        #: :meth:`_shape` found.
        self._shapes: dict[
            tuple[str, str, int, int, bool], list[tuple[CompiledMetric, bool, bool, bool]]
        ] = {}
        self.max_pending_spans = config.join.max_pending_spans

    @property
    def attribute_keys(self) -> frozenset[str]:
        """Every span attribute key a rule may read (aliases included)."""
        keys: set[str] = set()
        for metric in self.metrics:
            selectors = [metric.select, metric.partner, metric.when]
            for selector in selectors:
                if selector is not None:
                    for tested, *_ in selector.tests:
                        keys.update(self.lookup.keys(tested))
            for rule in metric.config.attributes.values():
                for source in rule.sources:
                    read = source.span or source.joined
                    if read is not None:
                        keys.update(self.lookup.keys(read))
        return frozenset(keys)

    @property
    def event_names(self) -> frozenset[str]:
        """Span event names a rule asks about."""
        return frozenset(
            s.event
            for m in self.metrics
            for rule in m.config.attributes.values()
            for s in rule.sources
            if s.event is not None
        )

    def multiplier(self, service: str) -> float:
        """How many spans one span of ``service`` stands for."""
        return self._multipliers.get(service, 1.0)

    def roles(self, span: SpanFacts, service: str) -> SpanRoles:
        """What ``span`` of ``service`` is to each metric."""
        key = (service, span.name, span.kind, span.status, bool(span.parent_span_id))
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) >= _SHAPES_LIMIT:
                self._shapes.clear()  # span names are bounded in practice; odd producers
            shape = self._shapes[key] = self._shape(span, service)
        direct: list[int] = []
        waiting: list[int] = []
        partner_of: list[int] = []
        selected_by: list[int] = []
        for metric, selected, when_shape, partner in shape:
            if selected and metric.select.attributes_hold(span):
                if metric.partner is not None:
                    selected_by.append(metric.index)
                    when = metric.when
                    expected = when is None or (when_shape and when.attributes_hold(span))
                    (waiting if expected else direct).append(metric.index)
                else:
                    direct.append(metric.index)
            if partner and metric.partner is not None and metric.partner.attributes_hold(span):
                partner_of.append(metric.index)
        return SpanRoles(tuple(direct), tuple(waiting), tuple(partner_of), tuple(selected_by))

    def _shape(
        self, span: SpanFacts, service: str
    ) -> list[tuple[CompiledMetric, bool, bool, bool]]:
        """Per metric that may concern spans of this shape: whether its selector, its
        join's ``when`` and its partner selector match the shape."""
        out = []
        for m in self.metrics:
            selected = m.select.matches_shape(span, service)
            when = m.when is None or m.when.matches_shape(span, service)
            partner = m.partner is not None and m.partner.matches_shape(span, service)
            if selected or partner:
                out.append((m, selected, when, partner))
        return out

    def is_link(self, service: str) -> bool:
        """Whether spans of ``service`` may be on a path between join partners."""
        return self.has_joins and (self.link_services is None or service in self.link_services)

"""Series keys and their label sets, as the Collector spanmetrics connector defines them.

A span's key is the tuple ``(resource id, scope id, span.name, span.kind, status.code,
*dimension values[, glob pairs][, sampling method])``, built once per span from columns
read in one comprehension: one value per named dimension, then, when ``glob`` dimensions
are configured, one sorted tuple of the ``(key, value)`` pairs they matched, then, with
``enable_metrics_sampling_method``, ``extrapolated`` or ``counted``. An excluded
intrinsic dimension is ``None`` in every key, so it no longer splits series. Labels are
built from a key only when a series is emitted, never per span.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span

from spanmetrics.aggregate.attributes import any_value_to_str, find_attributes
from spanmetrics.aggregate.points import LabelSplit, MetricNames
from spanmetrics.aggregate.sampling import adjusted_count
from spanmetrics.config.model import (
    INTRINSIC_DIMENSIONS,
    SAMPLING_METHOD_LABEL,
    Dimension,
    SpanMetricsConfig,
)
from spanmetrics.model.enums import SPAN_KIND_NAMES, STATUS_CODE_NAMES

#: Scope id in the key of a resource's one overflow series, which takes every new key
#: past the cardinality limit: ``(resource id, OVERFLOW_SCOPE)``.
OVERFLOW_SCOPE = -1
#: Its only label, as in the connector and the OTel SDK.
OVERFLOW_ATTRIBUTES: tuple[tuple[str, str], ...] = (("otel.metric.overflow", "true"),)

SCOPE_NAME_LABEL = "span.instrumentation.scope.name"
SCOPE_VERSION_LABEL = "span.instrumentation.scope.version"

SpanKey = tuple[object, ...]
#: Dimension values per name, as found on a resource.
ResourceValues = dict[str, str]
#: What glob dimensions matched on one span (or resource): sorted ``(key, value)`` pairs.
GlobPairs = tuple[tuple[str, str], ...]

#: ``otel.status_code`` values by OTLP enum number; Unset has no label.
_OTEL_STATUS_VALUES: tuple[str | None, ...] = (None, "OK", "ERROR")


def glob_pattern(glob: str) -> re.Pattern[str]:
    """A dimension glob as a regex over attribute keys: ``*`` within one ``.``-separated
    part, ``**`` across parts, ``?`` one character that is not a ``.``."""
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^.]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^.]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def sampling_method(tracestate: str) -> str:
    """``sampling.method`` of a span: ``extrapolated`` when its tracestate carries a
    sampling threshold that makes it stand for more than one span, else ``counted``."""
    return "extrapolated" if tracestate and adjusted_count(tracestate) != 1.0 else "counted"


@dataclass(frozen=True, slots=True)
class ScopeDimensions:
    """Labels that hold for every span of one scope (``include_instrumentation_scope``)."""

    labels: tuple[tuple[str, str], ...] = ()


class DimensionPlan:
    """How keys are built from spans and labels from keys, for one configuration."""

    def __init__(self, config: SpanMetricsConfig) -> None:
        every = config.all_dimensions
        self.dimensions: tuple[Dimension, ...] = tuple(d for d in every if d.name is not None)
        self.names = tuple(str(d.name) for d in self.dimensions)
        self.wanted = frozenset(self.names)
        #: Glob dimensions, compiled; their matches are one element of the key.
        self.globs = tuple(glob_pattern(str(d.glob)) for d in every if d.glob is not None)
        #: Whether keys end with the span's sampling method.
        self.sampling_method = config.enable_metrics_sampling_method
        #: Length of a span's key (events append their dimensions after it).
        self.span_key_length = 5 + len(self.names) + bool(self.globs) + self.sampling_method
        self.status_label = config.status_label
        #: Keys a glob never takes: they have labels of their own.
        self._not_globbed = self.wanted | {
            *INTRINSIC_DIMENSIONS,
            SAMPLING_METHOD_LABEL,
            self.status_label,
        }
        self._otel_status = self.status_label != "status.code"
        self.keep_name = "span.name" not in config.exclude_dimensions
        self.keep_kind = "span.kind" not in config.exclude_dimensions
        self.keep_status = "status.code" not in config.exclude_dimensions
        self.scopes = frozenset(config.include_instrumentation_scope)
        self.event_dimensions: tuple[Dimension, ...] = config.events.dimensions
        #: Position of each dimension in a key's values (names are unique, see the config).
        self._positions = {name: i for i, name in enumerate(self.names)}
        #: The dimension names as they appear in serialized attributes (see
        #: :meth:`may_hold_dimensions`); surrogatepass, because a name that is not valid
        #: UTF-8 can never match a decoded key, so any bytes for it are safe.
        self._names_utf8 = tuple(n.encode("utf-8", "surrogatepass") for n in self.names)
        self._excludes_intrinsics = not (self.keep_name and self.keep_kind and self.keep_status)

    def resource_values(self, attributes: Sequence[KeyValue]) -> tuple[str | None, ...]:
        """Fallback value of each dimension for spans of this resource: the resource's
        attribute, else the configured default, else None (label omitted)."""
        found = find_attributes(attributes, self.wanted)
        values: tuple[object, ...] = tuple(
            any_value_to_str(found[str(d.name)]) if d.name in found else d.default
            for d in self.dimensions
        )
        if self.globs:
            values = (*values, self._glob_pairs(attributes, ()))
        return values  # type: ignore[return-value]

    def _glob_pairs(self, attributes: Iterable[KeyValue], base: GlobPairs) -> GlobPairs:
        """``base`` (a resource's matches) overlaid with the matches in ``attributes``; the
        first occurrence of a repeated key wins, as for named dimensions."""
        matched: dict[str, str] | None = None
        seen: set[str] = set()
        for kv in attributes:
            key = kv.key
            if key in self._not_globbed or key in seen:
                continue  # a named dimension has its own label
            if any(pattern.match(key) for pattern in self.globs):
                seen.add(key)
                if matched is None:
                    matched = dict(base)
                matched[key] = any_value_to_str(kv.value)
        return base if matched is None else tuple(sorted(matched.items()))

    def scope_dimensions(self, name: str, version: str) -> ScopeDimensions:
        """Scope labels for a scope, empty unless the scope is listed."""
        if name not in self.scopes:
            return ScopeDimensions()
        labels = [(SCOPE_NAME_LABEL, name)]
        if version:
            labels.append((SCOPE_VERSION_LABEL, version))
        return ScopeDimensions(tuple(labels))

    @property
    def reads_span_attributes(self) -> bool:
        """Whether keys need each span's attributes (configured dimensions)."""
        return bool(self.dimensions or self.globs)

    def keys(
        self,
        resource_ids: Sequence[int],
        scope_ids: Sequence[int],
        names: Sequence[str],
        kinds: Sequence[int],
        codes: Sequence[int],
        dimension_values: Sequence[tuple[str | None, ...]] | None = None,
    ) -> list[SpanKey]:
        """One key per span from the spans' columns, read once by the caller.

        A key is ``(resource id, scope id, span.name, span.kind, status.code, *dims)``.
        """
        # Excluded intrinsics become None in every key: same series, no label.
        ns: Iterable[object] = names if self.keep_name else repeat(None)
        ks: Iterable[object] = kinds if self.keep_kind else repeat(None)
        cs: Iterable[object] = codes if self.keep_status else repeat(None)
        if dimension_values is None:
            # repeat() columns are endless, so zip stops at the real columns' length.
            return list(zip(resource_ids, scope_ids, ns, ks, cs))  # noqa: B905
        return [
            (r, sc, n, k, c, *v)
            for r, sc, n, k, c, v in zip(resource_ids, scope_ids, ns, ks, cs, dimension_values)  # noqa: B905
        ]

    def exclude(self, keys: list[SpanKey]) -> list[SpanKey]:
        """``keys`` as read from spans, with excluded intrinsic dimensions set to None."""
        if not self._excludes_intrinsics:
            return keys
        keep_name, keep_kind, keep_status = self.keep_name, self.keep_kind, self.keep_status
        return [
            (
                k[0],
                k[1],
                k[2] if keep_name else None,
                k[3] if keep_kind else None,
                k[4] if keep_status else None,
                *k[5:],
            )
            for k in keys
        ]

    def may_hold_dimensions(self, scope_spans: ScopeSpans) -> bool:
        """False when no span of ``scope_spans`` can carry a dimension attribute.

        An attribute key is serialized verbatim, so a name absent from the serialized
        scope is absent from all its spans. Reading attribute keys one by one costs about
        0.3 us each (a KeyValue wrapper and a str per attribute); serializing costs about
        as much as 3 of them per span, and whole scopes (gRPC, database, messaging) often
        carry none of the HTTP-style dimensions.
        """
        if self.globs:
            return True  # any key may match: nothing to look for in the bytes
        raw = scope_spans.SerializeToString()
        return any(name in raw for name in self._names_utf8)

    def span_values(self, span: Span, fallback: tuple[str | None, ...]) -> tuple[str | None, ...]:
        """Configured dimension values of one span: its own attribute, else ``fallback``.

        Returns ``fallback`` itself when the span has none of the attributes.
        """
        # Each attribute costs a KeyValue wrapper and a new str for its key, so the loop
        # reads the key once, converts only wanted values, and stops once all are found.
        # ``in`` on a short list of names compares lengths first: cheaper than hashing
        # each new key for a dict or set lookup. Found names leave the list, so the first
        # occurrence of a key wins.
        if self.globs:
            return self._span_values_with_globs(span, fallback)
        remaining = list(self.names)
        values: list[str | None] | None = None
        for kv in span.attributes:
            key = kv.key
            if key in remaining:
                remaining.remove(key)
                if values is None:
                    values = list(fallback)
                values[self._positions[key]] = any_value_to_str(kv.value)
                if not remaining:
                    break
        return fallback if values is None else tuple(values)

    def _span_values_with_globs(
        self, span: Span, fallback: tuple[str | None, ...]
    ) -> tuple[str | None, ...]:
        # Globs need every key of the span: no early stop.
        attributes = list(span.attributes)
        values: list[object] = list(fallback)
        remaining = list(self.names)
        for kv in attributes:
            key = kv.key
            if key in remaining:
                remaining.remove(key)
                values[self._positions[key]] = any_value_to_str(kv.value)
        base = fallback[len(self.names)]
        values[len(self.names)] = self._glob_pairs(attributes, base)  # type: ignore[arg-type]
        return tuple(values)  # type: ignore[arg-type]

    def with_sampling_method(
        self, keys: list[SpanKey], tracestates: Iterable[str]
    ) -> list[SpanKey]:
        """``keys`` with each span's sampling method appended, when it is configured."""
        if not self.sampling_method:
            return keys
        method: dict[str, str] = {}
        out = []
        for key, state in zip(keys, tracestates, strict=True):
            m = method.get(state)
            if m is None:
                m = method[state] = sampling_method(state)
            out.append((*key, m))
        return out

    def event_values(self, attributes: Sequence[KeyValue]) -> tuple[str | None, ...]:
        """Values of the ``events.dimensions`` on one span event."""
        wanted = frozenset(str(d.name) for d in self.event_dimensions)
        found = find_attributes(attributes, wanted)
        return tuple(
            any_value_to_str(found[str(d.name)]) if d.name in found else d.default
            for d in self.event_dimensions
        )

    def labels(
        self, service_name: str, key: SpanKey, scope: ScopeDimensions
    ) -> tuple[tuple[str, str], ...]:
        """Labels of the series with ``key``, in the connector's order."""
        if key[1] == OVERFLOW_SCOPE:
            return OVERFLOW_ATTRIBUTES
        labels: list[tuple[str, str]] = [("service.name", service_name)]
        name, kind, code = key[2], key[3], key[4]
        if self.keep_name:
            labels.append(("span.name", str(name)))
        if self.keep_kind:
            labels.append(("span.kind", _enum_name(SPAN_KIND_NAMES, kind)))
        if self.keep_status:
            if not self._otel_status:
                labels.append(("status.code", _enum_name(STATUS_CODE_NAMES, code)))
            elif isinstance(code, int) and 0 < code < len(_OTEL_STATUS_VALUES):
                labels.append((self.status_label, str(_OTEL_STATUS_VALUES[code])))
        end = 5 + len(self.names)
        for dim_name, value in zip(self.names, key[5:end], strict=True):
            if value is not None:
                labels.append((dim_name, str(value)))
        if self.globs:
            labels.extend(key[end])  # type: ignore[arg-type]
            end += 1
        if self.sampling_method:
            labels.append((SAMPLING_METHOD_LABEL, str(key[end])))
        labels.extend(scope.labels)
        return tuple(labels)

    def event_labels(
        self, service_name: str, key: SpanKey, scope: ScopeDimensions
    ) -> tuple[tuple[str, str], ...]:
        """Labels of an events series: the span's labels, then the event dimensions."""
        n_span = self.span_key_length
        labels = list(self.labels(service_name, key[:n_span], scope))
        for dim, value in zip(self.event_dimensions, key[n_span:], strict=True):
            if value is not None:
                labels.append((str(dim.name), str(value)))
        return tuple(labels)


def _enum_name(names: tuple[str, ...], number: object) -> str:
    index = number if isinstance(number, int) else 0
    return names[index] if 0 <= index < len(names) else names[0]


def metric_names(config: SpanMetricsConfig) -> MetricNames:
    """The output's names, units, per-metric labels and resources for ``config``."""
    names = MetricNames.for_namespace(config.namespace, config.histogram.unit)
    calls_only = config.calls_only_dimensions
    duration_only = config.duration_only_dimensions
    every = config.all_dimensions
    split = LabelSplit(
        calls_only=frozenset(str(d.name) for d in every if d.key in calls_only and d.name),
        duration_only=frozenset(str(d.name) for d in every if d.key in duration_only and d.name),
        calls_only_globs=tuple(
            glob_pattern(str(d.glob)) for d in every if d.key in calls_only and d.glob
        ),
        duration_only_globs=tuple(
            glob_pattern(str(d.glob)) for d in every if d.key in duration_only and d.glob
        ),
        not_globbed=frozenset(
            {
                *INTRINSIC_DIMENSIONS,
                SAMPLING_METHOD_LABEL,
                config.status_label,
                SCOPE_NAME_LABEL,
                SCOPE_VERSION_LABEL,
                *(str(d.name) for d in every if d.name),
            }
        ),
    )
    return MetricNames(
        names.calls, names.duration, names.events, names.unit, split,
        config.copies_resource_attributes,
    )  # fmt: skip

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

from spanmetrics.aggregate.points import METRIC_NAME_LABEL, LabelSplit, MetricNames, metric_of
from spanmetrics.aggregate.sampling import adjusted_count
from spanmetrics.config.model import (
    INTRINSIC_DIMENSIONS,
    SAMPLING_METHOD_LABEL,
    Dimension,
    SpanMetricsConfig,
)
from spanmetrics.decode.batch import BatchSpec, Pairs
from spanmetrics.model.enums import SPAN_KIND_NAMES, STATUS_CODE_NAMES

#: Scope id in the key of a resource's one overflow series, which takes every new key
#: past the cardinality limit: ``(resource id, OVERFLOW_SCOPE)``.
OVERFLOW_SCOPE = -1
#: Its only label, as in the connector and the OTel SDK.
OVERFLOW_ATTRIBUTES: tuple[tuple[str, str], ...] = (("otel.metric.overflow", "true"),)


def overflow_labels(labels: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The labels of the overflow series that takes a new series with ``labels`` past the
    cardinality limit: one per derived metric (it keeps its ``__name__``), else one."""
    metric = metric_of(tuple(labels))
    if metric is None:
        return OVERFLOW_ATTRIBUTES
    return ((METRIC_NAME_LABEL, metric), *OVERFLOW_ATTRIBUTES)


def is_overflow(labels: Sequence[tuple[str, str]]) -> bool:
    """Whether ``labels`` are an overflow series' (see :func:`overflow_labels`)."""
    return tuple(labels) == overflow_labels(labels)


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
        self.events = config.events.enabled

    def batch_spec(self, *, ids: bool, multiplier_key: str | None) -> BatchSpec:
        """What span batches must hold for this plan (and exemplars, multipliers)."""
        return BatchSpec(
            keys=self.names,
            defaults=tuple(d.default for d in self.dimensions),
            multiplier_key=multiplier_key,
            ids=ids,
            events=self.events,
            event_keys=tuple(str(d.name) for d in self.event_dimensions),
            event_defaults=tuple(d.default for d in self.event_dimensions),
            all_attributes=bool(self.globs),
        )

    def glob_values(self, pairs: Pairs, base: GlobPairs) -> GlobPairs:
        """``base`` (a resource's matches) overlaid with the matches among ``pairs`` (a
        span's attributes); the first occurrence of a repeated key wins, as for named
        dimensions."""
        matched: dict[str, str] | None = None
        seen: set[str] = set()
        for key, value in pairs:
            if key in self._not_globbed or key in seen:
                continue  # a named dimension has its own label
            if any(pattern.match(key) for pattern in self.globs):
                seen.add(key)
                if matched is None:
                    matched = dict(base)
                matched[key] = value
        return base if matched is None else tuple(sorted(matched.items()))

    def scope_dimensions(self, name: str, version: str) -> ScopeDimensions:
        """Scope labels for a scope, empty unless the scope is listed."""
        if name not in self.scopes:
            return ScopeDimensions()
        labels = [(SCOPE_NAME_LABEL, name)]
        if version:
            labels.append((SCOPE_VERSION_LABEL, version))
        return ScopeDimensions(tuple(labels))

    def keys(
        self,
        resource_ids: Sequence[int],
        scope_ids: Iterable[int],
        names: Sequence[str],
        kinds: Sequence[int],
        codes: Sequence[int],
        dimension_values: Sequence[tuple[object, ...]] | None = None,
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

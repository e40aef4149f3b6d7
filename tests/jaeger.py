"""Jaeger SPM's three PromQL queries, rendered as its Prometheus metrics reader renders them
(internal/storage/metricstore/prometheus/metricstore/reader.go), so tests can issue them
verbatim against a real Prometheus."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JaegerConfig:
    """The reader's naming settings: Jaeger's shipped SPM config has both normalizations
    on, and ``metric_namespace: traces_span_metrics``."""

    metric_namespace: str = "traces_span_metrics"
    latency_unit: str = "ms"
    normalize_calls: bool = True
    normalize_duration: bool = True

    @property
    def calls(self) -> str:
        name = f"{self.metric_namespace}_calls" if self.metric_namespace else "calls"
        return f"{name}_total" if self.normalize_calls else name

    @property
    def latency(self) -> str:
        name = f"{self.metric_namespace}_duration" if self.metric_namespace else "duration"
        if not self.normalize_duration:
            return name
        return name + "_" + {"ms": "milliseconds", "s": "seconds"}[self.latency_unit]


@dataclass(frozen=True)
class JaegerQueries:
    """What the Monitor tab asks for: services, span kinds, the rate window, and whether
    results are per operation (``span_name``)."""

    config: JaegerConfig
    services: tuple[str, ...]
    span_kinds: tuple[str, ...] = ("SPAN_KIND_SERVER",)
    rate: str = "10m"
    by_operation: bool = False

    def _group_by(self, buckets: bool = False) -> str:
        group = ["service_name"]
        if self.by_operation:
            group.append("span_name")
        if buckets:
            group.append("le")
        return ",".join(group)

    def _kinds(self) -> str:
        return f'span_kind =~ "{"|".join(self.span_kinds)}"' if self.span_kinds else ""

    def _services(self) -> str:
        return "|".join(self.services)

    def latencies(self, quantile: float) -> str:
        return (
            f"histogram_quantile({quantile:.2f}, sum(rate({self.config.latency}_bucket"
            f'{{service_name =~ "{self._services()}", {self._kinds()}}}[{self.rate}])) '
            f"by ({self._group_by(buckets=True)}))"
        )

    def call_rates(self) -> str:
        return (
            f'sum(rate({self.config.calls}{{service_name =~ "{self._services()}", '
            f"{self._kinds()}}}[{self.rate}])) by ({self._group_by()})"
        )

    def error_rates(self) -> str:
        errors = (
            f'sum(rate({self.config.calls}{{service_name =~ "{self._services()}", '
            f'status_code = "STATUS_CODE_ERROR", {self._kinds()}}}[{self.rate}])) '
            f"by ({self._group_by()})"
        )
        return f"{errors} / {self.call_rates()}"

"""Series budgets shared by a fleet: how many series a metric, or a service, may have.

A shard creates series from its deltas at any moment, and the budget is the whole
fleet's, so each shard works from a lease: the slots the store granted it at its last
flush (:meth:`BudgetLedger.requests`, :meth:`BudgetLedger.grant`). Leases of all shards
never add up to more than a budget, so the fleet never holds more series than it allows.
Over its lease, a new series folds into its resource's overflow series and its spans are
counted. Pure: the store grants, the registry asks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from spanmetrics.aggregate.points import Attributes, MetricNames, metric_of
from spanmetrics.config.views import Budget, instrument_pattern

#: A lease request: (budget key, slots wanted, the budget's size).
LeaseRequest = tuple[str, int, int]


@dataclass(slots=True)
class _Budget:
    config: Budget
    key: str
    metric: re.Pattern[str] | None
    allowed: int = 0
    used: int = 0


class BudgetLedger:
    """A shard's view of the fleet's budgets: its leases and the series it holds."""

    def __init__(self, budgets: Sequence[Budget], names: MetricNames) -> None:
        self._budgets = [
            _Budget(b, budget_key(b), instrument_pattern(b.metric) if b.metric else None)
            for b in budgets
        ]
        self._names = names

    def __bool__(self) -> bool:
        return bool(self._budgets)

    def _metrics(self, labels: Attributes) -> list[str]:
        metric = metric_of(labels)
        return [metric] if metric is not None else [self._names.calls, self._names.duration]

    def _matching(self, service: str, labels: Attributes) -> list[_Budget]:
        metrics = self._metrics(labels)
        return [
            b for b in self._budgets
            if (b.config.service is None or b.config.service == service)
            and (b.metric is None or any(b.metric.match(m) for m in metrics))
        ]  # fmt: skip

    def admit(self, service: str, labels: Attributes) -> bool:
        """Whether a new series fits every budget it falls under; if so it takes a slot
        of each."""
        budgets = self._matching(service, labels)
        if any(b.used >= b.allowed for b in budgets):
            return False
        for b in budgets:
            b.used += 1
        return True

    def count(self, service: str, labels: Attributes) -> None:
        """A series restored from a checkpoint: it holds its slots."""
        for b in self._matching(service, labels):
            b.used += 1

    def release(self, service: str, labels: Attributes) -> None:
        """A series removed (expired, or ended by a views change): its slots are free."""
        for b in self._matching(service, labels):
            b.used = max(b.used - 1, 0)

    def requests(self) -> list[LeaseRequest]:
        """What to ask the store for: the slots in use, and room for a tenth of the budget
        more (at least 16), never more than the budget."""
        return [
            (b.key, min(b.config.max_series, b.used + max(16, b.config.max_series // 10)),
             b.config.max_series)
            for b in self._budgets
        ]  # fmt: skip

    def grant(self, granted: Sequence[int]) -> None:
        """The store's answer to :meth:`requests`, in its order."""
        for b, n in zip(self._budgets, granted, strict=True):
            b.allowed = n

    def usage(self) -> list[tuple[Budget, int, int]]:
        """Each budget with the series this shard holds under it and its lease."""
        return [(b.config, b.used, b.allowed) for b in self._budgets]


def budget_key(budget: Budget) -> str:
    """A budget's name in the store: its scope and size, so that a changed budget starts
    from new leases."""
    return f"{budget.metric or '*'}|{budget.service or '*'}|{budget.max_series}"

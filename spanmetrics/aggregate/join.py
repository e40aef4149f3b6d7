"""Joins within a trace: spans wait, for a bounded time, for the partner whose attributes
they need.

Kubernetes puts the labels of a measurement on another span of the same trace and the
same process: an API request's verb and resource on its handler span below the SERVER
span, a CRI call's pod on the ``syncPod`` span above it. Spans are grouped by resource
and trace id. In a group, a waiting span looks for its partner through parent ids, over
the spans in between (every span of a linking service is held, for that). It is released
when its partner is found, or as an orphan when its group has had no new span for the
window or the buffer is full; an orphan's joined attributes are ``unknown``.

Where the spans of a trace arrive in different records or partitions, the fleet sends
what a partition still holds at its cut to the shard of the resource, whose owner joins
the rest (:meth:`TraceJoin.drain`, :meth:`TraceJoin.add_held`). Time is whatever the
caller says: the owner's clock in the fleet, span end times offline.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from spanmetrics.aggregate.rules import Rules
from spanmetrics.decode.facts import SpanFacts

#: Parent hops a search follows at most: a deeper chain is a loop or a broken trace.
_MAX_DEPTH = 64


@dataclass(slots=True)
class HeldSpan:
    """A span in the join buffer, with what it still waits for."""

    facts: SpanFacts
    weight: int
    waiting: list[int]
    """Metrics whose partner the span still waits for."""
    partner_of: tuple[int, ...]
    """Metrics for which the span is a partner."""
    selected_by: tuple[int, ...]
    """Metrics with a join that select the span: a descendant partner below it belongs to
    it, not to a span further up."""
    taken: list[int] = field(default_factory=list)
    """Descendant joins this partner already served (each serves one span)."""


@dataclass(slots=True)
class Released:
    """A span that leaves the buffer for a metric: with its partner, or as an orphan."""

    resource: bytes
    metric: int
    held: HeldSpan
    partner: SpanFacts | None
    """None: an orphan."""


@dataclass(slots=True)
class _Group:
    resource: bytes
    spans: dict[bytes, HeldSpan] = field(default_factory=dict)
    last_ns: int = 0

    def open(self, rules: Rules) -> bool:
        """Whether the group may still take part in a join: a span waits, a partner may
        serve a span yet to come, or no measured span came yet (its spans may link one)."""
        measured = False
        for held in self.spans.values():
            if held.waiting:
                return True
            for metric in held.partner_of:
                # An ancestor serves every span below it; a descendant serves one.
                if rules.metrics[metric].ancestor or metric not in held.taken:
                    return True
            measured = measured or bool(held.selected_by)
        return not measured


#: A group's key: the serialized resource and the trace id.
GroupKey = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class HeldGroup:
    """The held spans of one trace and resource, as sent on or checkpointed."""

    resource: bytes
    last_ns: int
    """When the group last received a span."""
    spans: list[HeldSpan]


# Counter names (self-telemetry labels).
JOINED = "spans_joined"
ORPHANED = "spans_join_orphaned"
EVICTED = "spans_join_evicted"


class TraceJoin:
    """The join buffer (module docstring)."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._groups: OrderedDict[GroupKey, _Group] = OrderedDict()
        self._held = 0
        #: Spans released by this buffer, per reason (JOINED, ORPHANED, EVICTED).
        self.counters: dict[str, int] = {JOINED: 0, ORPHANED: 0, EVICTED: 0}

    def __len__(self) -> int:
        """Spans held."""
        return self._held

    # ------------------------------------------------------------------ adding

    def add(self, resource: bytes, spans: Iterable[HeldSpan], now_ns: int) -> list[Released]:
        """Hold ``spans`` of one resource, received at ``now_ns``; returns the spans whose
        join completed (and those evicted to stay under ``max_pending_spans``)."""
        touched: dict[GroupKey, _Group] = {}
        for incoming in spans:
            held = incoming
            key = (resource, held.facts.trace_id)
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(resource)
            else:
                self._groups.move_to_end(key)
            previous = group.spans.get(held.facts.span_id)
            if previous is not None:
                # The same span seen twice (from two cuts of one group): keep what is
                # still open of either.
                held = _merged(previous, held)
                self._held -= 1
            group.spans[held.facts.span_id] = held
            group.last_ns = max(group.last_ns, now_ns)
            self._held += 1
            touched[key] = group
        released: list[Released] = []
        for key, group in touched.items():
            released += self._resolve(group)
            if not group.open(self.rules):
                self._drop(key)
        released += self._evict()
        return released

    def add_held(self, groups: Iterable[HeldGroup], now_ns: int) -> list[Released]:
        """:meth:`add` for groups another buffer held (:meth:`drain`), received now."""
        out: list[Released] = []
        for group in groups:
            out += self.add(group.resource, group.spans, now_ns)
        return out

    def _resolve(self, group: _Group) -> list[Released]:
        out: list[Released] = []
        for held in group.spans.values():
            if not held.waiting:
                continue
            still: list[int] = []
            for metric in held.waiting:
                partner = (
                    self._ancestor(group, held, metric)
                    if self.rules.metrics[metric].ancestor
                    else self._descendant(group, held, metric)
                )
                if partner is None:
                    still.append(metric)
                else:
                    out.append(Released(group.resource, metric, held, partner.facts))
                    self.counters[JOINED] += 1
            held.waiting = still
        return out

    @staticmethod
    def _ancestor(group: _Group, held: HeldSpan, metric: int) -> HeldSpan | None:
        parent = held.facts.parent_span_id
        for _ in range(_MAX_DEPTH):
            node = group.spans.get(parent) if parent else None
            if node is None:
                return None
            if metric in node.partner_of:
                return node
            parent = node.facts.parent_span_id
        return None

    @staticmethod
    def _descendant(group: _Group, held: HeldSpan, metric: int) -> HeldSpan | None:
        target = held.facts.span_id
        for node in group.spans.values():
            if metric not in node.partner_of or metric in node.taken or node is held:
                continue
            parent = node.facts.parent_span_id
            for _ in range(_MAX_DEPTH):
                if parent == target:
                    node.taken.append(metric)
                    return node
                up = group.spans.get(parent) if parent else None
                if up is None or metric in up.selected_by:
                    break  # a gap, or a nearer span of the metric that the partner is for
                parent = up.facts.parent_span_id
        return None

    # --------------------------------------------------------------- releasing

    def expire(self, now_ns: int) -> list[Released]:
        """Let go of groups without a new span for the window: their waiting spans are
        orphans."""
        window = self.rules.window_ns
        out: list[Released] = []
        while self._groups:
            key, group = next(iter(self._groups.items()))
            # Groups are in order of their last addition, and times only grow per caller.
            if now_ns - group.last_ns <= window:
                break
            out += self._orphans(group, ORPHANED)
            self._drop(key)
        return out

    def finish(self) -> list[Released]:
        """Let go of everything (the end of the input): waiting spans are orphans."""
        out: list[Released] = []
        for key, group in list(self._groups.items()):
            out += self._orphans(group, ORPHANED)
            self._drop(key)
        return out

    def _evict(self) -> list[Released]:
        out: list[Released] = []
        while self._held > self.rules.max_pending_spans and self._groups:
            key, group = next(iter(self._groups.items()))
            out += self._orphans(group, EVICTED)
            self._drop(key)
        return out

    def _orphans(self, group: _Group, reason: str) -> list[Released]:
        out = [
            Released(group.resource, metric, held, None)
            for held in group.spans.values()
            for metric in held.waiting
        ]
        self.counters[reason] += len(out)
        return out

    def _drop(self, key: GroupKey) -> None:
        group = self._groups.pop(key)
        self._held -= len(group.spans)

    def drain(self) -> list[HeldGroup]:
        """The open groups, and an empty buffer: what a fleet partition sends on at its
        cut for the shard to join."""
        out = [HeldGroup(g.resource, g.last_ns, list(g.spans.values()))
               for g in self._groups.values() if g.open(self.rules)]  # fmt: skip
        self._groups.clear()
        self._held = 0
        return out

    def groups(self) -> list[HeldGroup]:
        """Every group, oldest first (for a checkpoint); the buffer is unchanged."""
        return [HeldGroup(g.resource, g.last_ns, list(g.spans.values()))
                for g in self._groups.values()]  # fmt: skip

    def restore(self, groups: Iterable[HeldGroup]) -> None:
        """Load groups from a checkpoint (oldest first), with their times."""
        for stored in groups:
            for span in stored.spans:
                key = (stored.resource, span.facts.trace_id)
                group = self._groups.get(key)
                if group is None:
                    group = self._groups[key] = _Group(stored.resource, last_ns=stored.last_ns)
                group.spans[span.facts.span_id] = span
                self._held += 1


def _merged(a: HeldSpan, b: HeldSpan) -> HeldSpan:
    """One span held twice: waiting only for what both still wait for, taken for what
    either was taken."""
    waiting = [m for m in a.waiting if m in b.waiting]
    taken = sorted(set(a.taken) | set(b.taken))
    return HeldSpan(a.facts, a.weight, waiting, a.partner_of, a.selected_by, taken)

"""The fleet-wide control document: ``views``, ``span_filters``, ``span_names`` and
``budgets`` applied to a running fleet (``spanmetrics views apply``), in place of the
topology file's."""

from __future__ import annotations

import yaml

from spanmetrics.config.load import ConfigError, parse_topology
from spanmetrics.config.model import Topology

#: The keys a control document may hold: what can change while the fleet runs.
CONTROL_KEYS = ("views", "span_filters", "span_names", "budgets")


def read_control(text: str, source: str) -> dict[str, object]:
    """A control document's keys.

    Raises:
        ConfigError: not YAML, not a mapping, or a key that cannot change live.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(source, [f"invalid YAML: {err}"]) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(source, ["(top level): a control document is a mapping of keys"])
    others = [k for k in document if k not in CONTROL_KEYS]
    if others:
        raise ConfigError(
            source,
            [f"{k}: cannot change while the fleet runs; a control document holds "
             + ", ".join(CONTROL_KEYS) for k in others],
        )  # fmt: skip
    return document


def with_control(topology: Topology, text: str, source: str) -> Topology:
    """``topology`` with the control document's keys in place of its own, validated as a
    whole (so errors name the key path and cross-key checks run).

    Raises:
        ConfigError: the document, or the topology it makes, is invalid.
    """
    document = read_control(text, source)
    base = topology.model_dump(exclude_none=True, by_alias=True)
    for key in CONTROL_KEYS:
        base.pop(key, None)
    base.update(document)
    return parse_topology(base, source)

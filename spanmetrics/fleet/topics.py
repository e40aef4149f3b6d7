"""The fleet's internal topic: where stage 1 sends per-shard deltas to stage 2."""

from __future__ import annotations

import hashlib
import re

#: Characters Kafka allows in topic names.
_INVALID = re.compile(r"[^a-zA-Z0-9._-]")
_MAX_TOPIC_LENGTH = 249


def deltas_topic(group: str) -> str:
    """Name of the internal topic of consumer group ``group``: ``<group>-spanmetrics-deltas``.

    A group name with characters a topic name cannot have gets them replaced and a short
    hash of the original added, so that two groups never share the topic.
    """
    base = _INVALID.sub("_", group)
    if base != group:
        base += "-" + hashlib.blake2b(group.encode(), digest_size=4).hexdigest()
    return f"{base}-spanmetrics-deltas"[-_MAX_TOPIC_LENGTH:]

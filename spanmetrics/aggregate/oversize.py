"""Bounds on the size of one series: its labels and its resource.

A delta record of the fleet carries whole series, each with its resource, and a broker
takes records of about 1 MB at most. One attribute value of hundreds of kilobytes (a
request body copied into a span, a broken client) would make a series that fits no
record, and a cut that can never be sent. So a series whose labels pass
:data:`~spanmetrics.config.defaults.MAX_SERIES_LABEL_BYTES` goes to its resource's
overflow series, and a resource past
:data:`~spanmetrics.config.defaults.MAX_RESOURCE_BYTES` keeps its identifying attributes
and as many of the others as fit. Both decisions depend only on the content, so a replay
makes them again, the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.resources import SERVICE_IDENTITY_KEYS

#: What an item that is neither text nor bytes counts for (an int, a float, None).
_SCALAR_BYTES = 8


def key_bytes(key: object) -> int:
    """About how many bytes a series key's values take: the length of every text and
    bytes item, nested tuples included."""
    if isinstance(key, str | bytes):
        return len(key)
    if isinstance(key, tuple):
        return sum(key_bytes(item) for item in key)
    return _SCALAR_BYTES


def bounded_resource(
    resource: Resource, max_bytes: int, key_attributes: Iterable[str] = ()
) -> Resource | None:
    """``resource`` cut to about ``max_bytes``, or None when it is within them already.

    The service identity and the ``resource_metrics_key_attributes`` are always kept:
    they decide which series the spans belong to. The other attributes are kept in their
    order while they fit; the rest are dropped.
    """
    if resource.ByteSize() <= max_bytes:
        return None
    kept_keys = set(SERVICE_IDENTITY_KEYS) | set(key_attributes)
    out = Resource()
    size = 0
    for kv in resource.attributes:
        if kv.key in kept_keys:
            out.attributes.append(kv)
            size += kv.ByteSize()
    for kv in resource.attributes:
        if kv.key not in kept_keys and size + kv.ByteSize() <= max_bytes:
            out.attributes.append(kv)
            size += kv.ByteSize()
    return out

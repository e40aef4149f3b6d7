"""Resource identity: which resources share series, as ``resource_metrics_key_attributes`` says."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.model.attributes import any_value_to_str

#: ``(service.name, (key, value), ...)`` with the pairs sorted, so attribute order and
#: unlisted attributes don't split a resource.
ResourceIdentity = tuple[object, ...]


def service_name(attributes: Iterable[KeyValue]) -> str | None:
    """The resource's ``service.name``, or None when missing or empty."""
    for kv in attributes:
        if kv.key == "service.name":
            return any_value_to_str(kv.value) or None
    return None


def resource_identity(
    resource: Resource, key_attributes: frozenset[str] = frozenset()
) -> ResourceIdentity | None:
    """Identity of a resource: its service name and its (key) attributes; None without a
    service name, since such spans are dropped."""
    name = service_name(resource.attributes)
    if name is None:
        return None
    pairs = sorted(
        (kv.key, any_value_to_str(kv.value))
        for kv in resource.attributes
        if not key_attributes or kv.key in key_attributes
    )
    return (name, *pairs)


#: Resource attributes that name a service instance (OpenTelemetry semantic conventions).
#: Metric stores key series on them: Prometheus's ``job`` and ``instance`` labels.
SERVICE_IDENTITY_KEYS = ("service.namespace", "service.name", "service.instance.id")


def service_identity(resource: Resource) -> tuple[str, str, str]:
    """``(service.namespace, service.name, service.instance.id)``, empty where missing.

    Resources that share it become the same series in a store that keys series by service
    instance (Prometheus's ``job``/``instance``), so a fleet publishes them together.
    """
    values = dict.fromkeys(SERVICE_IDENTITY_KEYS, "")
    for kv in resource.attributes:
        if kv.key in values:
            values[kv.key] = any_value_to_str(kv.value)
    namespace, name, instance = (values[k] for k in SERVICE_IDENTITY_KEYS)
    return namespace, name, instance


def shard_of(identity: tuple[object, ...], shards: int) -> int:
    """Shard of a key: a hash that is the same in every process and every run."""
    return zlib.crc32(repr(identity).encode("utf-8")) % shards


def stable_id(key: object) -> bytes:
    """A 16-byte id of a key (a resource identity, a series key), the same in every process:
    a name for it in stored state that is short whatever the key's size."""
    return hashlib.blake2b(repr(key).encode("utf-8"), digest_size=16).digest()

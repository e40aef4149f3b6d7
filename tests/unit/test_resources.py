"""Resource identities: what shares series, and what shares a publisher in a fleet."""

from __future__ import annotations

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics.aggregate.resources import resource_identity, service_identity, shard_of
from tests.builders import request, resource


def res(attributes: dict[str, object]) -> Resource:
    return request(resource(attributes)).resource_spans[0].resource


def test_service_identity_ignores_attributes_that_are_not_job_or_instance() -> None:
    a = res({"service.name": "cart", "k8s.pod.name": "cart-1"})
    b = res({"service.name": "cart", "k8s.pod.name": "cart-2"})
    assert resource_identity(a) != resource_identity(b)
    assert service_identity(a) == service_identity(b) == ("", "cart", "")
    assert shard_of(service_identity(a), 7) == shard_of(service_identity(b), 7)


def test_service_identity_reads_namespace_and_instance() -> None:
    r = res({"service.namespace": "shop", "service.name": "cart", "service.instance.id": "i-1"})
    assert service_identity(r) == ("shop", "cart", "i-1")
    other = res({"service.namespace": "shop", "service.name": "cart", "service.instance.id": "i-2"})
    assert service_identity(other) != service_identity(r)

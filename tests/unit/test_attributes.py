"""Attribute values as label strings, like the Collector's AsString."""

from __future__ import annotations

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from spanmetrics.model.attributes import any_value_to_str


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (AnyValue(string_value="GET"), "GET"),
        (AnyValue(int_value=200), "200"),
        (AnyValue(bool_value=True), "true"),
        (AnyValue(bool_value=False), "false"),
        (AnyValue(double_value=1.5), "1.5"),
        (AnyValue(double_value=2.0), "2"),
        (AnyValue(double_value=1e21), "1000000000000000000000"),
        (AnyValue(double_value=1e-7), "0.0000001"),
        (AnyValue(bytes_value=b"\x01\x02"), "AQI="),
        (AnyValue(), ""),
        (
            AnyValue(
                array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="a")])
            ),
            '[1,"a"]',
        ),
        (
            AnyValue(
                kvlist_value=KeyValueList(
                    values=[KeyValue(key="k", value=AnyValue(bool_value=True))]
                )
            ),
            '{"k":true}',
        ),
    ],
)
def test_any_value_to_str(value: AnyValue, text: str) -> None:
    assert any_value_to_str(value) == text


def test_a_repeated_key_reads_as_its_first_occurrence() -> None:
    """On the span and on its resource, with the key's default when it is absent."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from spanmetrics.decode.batch import BatchSpec, batch_from_request

    kvs = [
        KeyValue(key="a", value=AnyValue(string_value="1")),
        KeyValue(key="b", value=AnyValue(string_value="2")),
        KeyValue(key="a", value=AnyValue(string_value="3")),
    ]
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(kvs)
    rs.scope_spans.add().spans.add(name="s").attributes.extend(kvs)
    batch = batch_from_request(request, BatchSpec(keys=("a", "c"), defaults=(None, "d")))
    assert batch.resource_values == [("1", "d")]
    assert batch.values == [("1", "d")]

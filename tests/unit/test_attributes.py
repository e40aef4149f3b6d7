"""Attribute values as label strings, like the Collector's AsString."""

from __future__ import annotations

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from spanmetrics.model.attributes import any_value_to_str, find_attributes


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


def test_find_attributes_first_occurrence_wins() -> None:
    kvs = [
        KeyValue(key="a", value=AnyValue(string_value="1")),
        KeyValue(key="b", value=AnyValue(string_value="2")),
        KeyValue(key="a", value=AnyValue(string_value="3")),
    ]
    found = find_attributes(kvs, frozenset({"a", "c"}))
    assert {k: v.string_value for k, v in found.items()} == {"a": "1"}

"""Decoding Kafka record values: both encodings, OTLP/JSON leniency, and every failure reason."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from spanmetrics.decode import (
    ENCODINGS,
    REASONS,
    DecodeError,
    Encoding,
    decode_metrics,
    decode_traces,
)
from spanmetrics.dev.synth import SpanGenerator, encode_request
from spanmetrics.otlpjson import message_to_otlp_json, otlp_json_to_message

TRACE_ID = bytes(range(1, 17))
SPAN_ID = bytes(range(0xA0, 0xA8))
PARENT_ID = bytes(range(0xB0, 0xB8))
TRACE_HEX = TRACE_ID.hex()
SPAN_HEX = SPAN_ID.hex()
PARENT_HEX = PARENT_ID.hex()


def small_request(name: str = "GET /api/cart") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key = "service.name"
    kv.value.string_value = "frontend"
    ss = rs.scope_spans.add()
    ss.scope.name = "lib"
    span = ss.spans.add()
    span.trace_id = TRACE_ID
    span.span_id = SPAN_ID
    span.parent_span_id = PARENT_ID
    span.name = name
    span.kind = Span.SPAN_KIND_SERVER
    span.start_time_unix_nano = 1_700_000_000_000_000_000
    span.end_time_unix_nano = 1_700_000_000_012_345_678
    span.status.code = Status.STATUS_CODE_ERROR
    span.status.message = "boom"
    attr = span.attributes.add()
    attr.key = "http.response.status_code"
    attr.value.int_value = 500
    link = span.links.add()
    link.trace_id = bytes(16 * [0xEE])
    link.span_id = bytes(8 * [0xDD])
    return req


def spans_of(req: ExportTraceServiceRequest) -> list[Span]:
    return [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


def json_request(span: dict[str, Any], **top: Any) -> bytes:
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}], **top}
    return json.dumps(doc).encode()


def decode_error(value: bytes, encoding: str) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_traces(value, encoding)  # type: ignore[arg-type]
    return info.value


# --- happy paths -------------------------------------------------------------------------------


def test_encodings_constant() -> None:
    assert ENCODINGS == ("otlp_proto", "otlp_json")
    assert set(REASONS) == {
        "invalid_protobuf",
        "invalid_json",
        "invalid_utf8",
        "invalid_id",
        "unknown_encoding",
    }


def test_proto_round_trip() -> None:
    req = small_request()
    assert decode_traces(req.SerializeToString(), "otlp_proto") == req


def test_proto_round_trip_of_synthetic_batch() -> None:
    req = SpanGenerator(seed=3).batch_request(500)
    assert decode_traces(encode_request(req, "otlp_proto"), "otlp_proto") == req


def test_empty_proto_is_an_empty_request() -> None:
    assert decode_traces(b"", "otlp_proto") == ExportTraceServiceRequest()


def test_json_round_trip() -> None:
    req = small_request()
    assert decode_traces(message_to_otlp_json(req), "otlp_json") == req


def test_json_round_trip_of_synthetic_batch() -> None:
    # Covers every AnyValue type the generator emits, events and links.
    req = SpanGenerator(seed=4, sampled_fraction=0.5).batch_request(300)
    assert decode_traces(encode_request(req, "otlp_json"), "otlp_json") == req


def test_json_output_is_otlp_json() -> None:
    doc = json.loads(message_to_otlp_json(small_request()))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    # Hex ids, not base64; in links too.
    assert span["traceId"] == TRACE_HEX
    assert span["spanId"] == SPAN_HEX
    assert span["parentSpanId"] == PARENT_HEX
    assert span["links"][0] == {"traceId": "ee" * 16, "spanId": "dd" * 8}
    # Integer enums, 64-bit integers as strings, lowerCamelCase keys.
    assert span["kind"] == 2
    assert span["status"] == {"code": 2, "message": "boom"}
    assert span["startTimeUnixNano"] == "1700000000000000000"
    assert span["attributes"][0] == {
        "key": "http.response.status_code",
        "value": {"intValue": "500"},
    }


def test_json_output_is_compact() -> None:
    raw = message_to_otlp_json(small_request())
    assert b" " not in raw.replace(b"GET /api/cart", b"")
    assert b"\n" not in raw


def test_json_output_keeps_non_ascii_as_utf8() -> None:
    raw = message_to_otlp_json(small_request(name="café ☕"))
    assert "café ☕".encode() in raw
    assert decode_traces(raw, "otlp_json") == small_request(name="café ☕")


def test_json_bytes_attributes_stay_base64() -> None:
    # Only the id fields are hex in OTLP/JSON; other bytes keep the proto3 base64 form, even
    # when an attribute happens to be called traceId.
    req = small_request()
    kv = spans_of(req)[0].attributes.add()
    kv.key = "traceId"
    kv.value.bytes_value = b"\x00\x01"
    doc = json.loads(message_to_otlp_json(req))
    attrs = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
    assert attrs[1] == {"key": "traceId", "value": {"bytesValue": "AAE="}}
    assert decode_traces(message_to_otlp_json(req), "otlp_json") == req


def test_json_accepts_snake_case_numbers_enums_and_unknown_fields() -> None:
    raw = json.dumps(
        {
            "resource_spans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"string_value": "cart"}}],
                        "futureResourceField": {"x": 1},
                    },
                    "scope_spans": [
                        {
                            "scope": {"name": "lib", "version": "1"},
                            "spans": [
                                {
                                    "trace_id": TRACE_HEX,
                                    "span_id": SPAN_HEX,
                                    "parent_span_id": PARENT_HEX,
                                    "name": "HGET",
                                    "kind": 3,
                                    # int64 as a JSON number and as a decimal string
                                    "start_time_unix_nano": 1_700_000_000_000_000_000,
                                    "end_time_unix_nano": "1700000000000500000",
                                    "attributes": [
                                        {"key": "n", "value": {"int_value": 7}},
                                        {"key": "s", "value": {"intValue": "-8"}},
                                    ],
                                    "status": {"code": 1},
                                    "links": [{"trace_id": "ab" * 16, "span_id": "cd" * 8}],
                                    "someNewField": [1, 2, 3],
                                    "traceIdAlias": "not-an-id-but-unknown",
                                }
                            ],
                        }
                    ],
                }
            ],
            "partialSuccess": {"rejectedSpans": "0"},
        }
    ).encode()
    req = decode_traces(raw, "otlp_json")
    (span,) = spans_of(req)
    assert span.trace_id == TRACE_ID
    assert span.span_id == SPAN_ID
    assert span.parent_span_id == PARENT_ID
    assert span.kind == Span.SPAN_KIND_CLIENT
    assert span.start_time_unix_nano == 1_700_000_000_000_000_000
    assert span.end_time_unix_nano == 1_700_000_000_000_500_000
    assert [a.value.int_value for a in span.attributes] == [7, -8]
    assert span.status.code == Status.STATUS_CODE_OK
    assert span.links[0].trace_id == bytes(16 * [0xAB])
    assert span.links[0].span_id == bytes(8 * [0xCD])
    assert req.resource_spans[0].resource.attributes[0].value.string_value == "cart"


def test_json_accepts_enum_names_uppercase_hex_and_empty_ids() -> None:
    raw = json_request(
        {
            "traceId": TRACE_HEX.upper(),
            "spanId": SPAN_HEX,
            "parentSpanId": "",
            "kind": "SPAN_KIND_PRODUCER",
            "name": "publish orders",
        }
    )
    (span,) = spans_of(decode_traces(raw, "otlp_json"))
    assert span.trace_id == TRACE_ID
    assert span.parent_span_id == b""
    assert span.kind == Span.SPAN_KIND_PRODUCER


def test_json_null_id_means_unset() -> None:
    (span,) = spans_of(decode_traces(json_request({"traceId": None, "name": "x"}), "otlp_json"))
    assert span.trace_id == b""


def test_json_empty_object_is_an_empty_request() -> None:
    assert decode_traces(b"{}", "otlp_json") == ExportTraceServiceRequest()


def test_otlp_json_to_message_accepts_str_and_merges() -> None:
    req = ExportTraceServiceRequest()
    otlp_json_to_message(message_to_otlp_json(small_request()).decode(), req)
    assert req == small_request()


def test_metrics_json_round_trip_with_exemplar_ids() -> None:
    req = ExportMetricsServiceRequest()
    metric = req.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "traces.span.metrics.duration"
    point = metric.exponential_histogram.data_points.add()
    point.count = 3
    point.scale = 5
    point.positive.bucket_counts.extend([1, 0, 2])
    exemplar = point.exemplars.add()
    exemplar.trace_id = TRACE_ID
    exemplar.span_id = SPAN_ID
    exemplar.as_double = 12.5
    raw = message_to_otlp_json(req)
    doc = json.loads(raw)
    ex = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["exponentialHistogram"]
    assert ex["dataPoints"][0]["exemplars"][0]["traceId"] == TRACE_HEX
    assert ex["dataPoints"][0]["exemplars"][0]["spanId"] == SPAN_HEX
    assert decode_metrics(raw, "otlp_json") == req
    assert decode_metrics(req.SerializeToString(), "otlp_proto") == req


# --- failures ----------------------------------------------------------------------------------


def test_truncated_protobuf() -> None:
    raw = small_request().SerializeToString()
    err = decode_error(raw[:-3], "otlp_proto")
    assert err.reason == "invalid_protobuf"
    assert "ExportTraceServiceRequest" in err.detail


def test_random_bytes_protobuf() -> None:
    # 0xff... is a varint tag that never terminates: upb rejects it as corrupt wire data.
    err = decode_error(b"\xff\xff\xff", "otlp_proto")
    assert err.reason == "invalid_protobuf"
    assert "corrupt" in err.detail.lower()


def test_invalid_utf8_in_protobuf_string() -> None:
    raw = small_request(name="abcdef").SerializeToString()
    bad = raw.replace(b"abcdef", b"ab\xffdef")
    assert len(bad) == len(raw)
    err = decode_error(bad, "otlp_proto")
    assert err.reason == "invalid_utf8"
    assert "UTF-8" in err.detail


def test_invalid_json() -> None:
    err = decode_error(b'{"resourceSpans": [', "otlp_json")
    assert err.reason == "invalid_json"
    assert err.detail.startswith("not JSON")


def test_empty_json_value_is_invalid() -> None:
    assert decode_error(b"", "otlp_json").reason == "invalid_json"


def test_json_of_wrong_shape() -> None:
    err = decode_error(b'{"resourceSpans": 5}', "otlp_json")
    assert err.reason == "invalid_json"
    assert "resourceSpans" in err.detail


def test_json_of_wrong_field_type_names_the_field() -> None:
    err = decode_error(json_request({"name": "x", "startTimeUnixNano": "soon"}), "otlp_json")
    assert err.reason == "invalid_json"
    assert "startTimeUnixNano" in err.detail


@pytest.mark.parametrize("doc", [b"[]", b"5", b'"text"', b"null"])
def test_json_top_level_must_be_an_object(doc: bytes) -> None:
    err = decode_error(doc, "otlp_json")
    assert err.reason == "invalid_json"
    assert "object" in err.detail


def test_invalid_utf8_json() -> None:
    err = decode_error(b'{"resourceSpans": []}\xff', "otlp_json")
    assert err.reason == "invalid_utf8"


def test_bad_hex_id_names_the_path() -> None:
    doc: dict[str, Any] = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {"spans": []},
                    {"spans": [{"name": f"s{i}", "traceId": TRACE_HEX} for i in range(3)]},
                ]
            }
        ]
    }
    doc["resourceSpans"][0]["scopeSpans"][1]["spans"].append({"traceId": "zz"})
    err = decode_error(json.dumps(doc).encode(), "otlp_json")
    assert err.reason == "invalid_id"
    assert err.detail.startswith(
        "resourceSpans[0].scopeSpans[1].spans[3].traceId: invalid hex trace id 'zz'"
    )
    assert str(err) == f"invalid_id: {err.detail}"


@pytest.mark.parametrize(
    ("span", "where", "what"),
    [
        ({"spanId": "abc"}, "spans[0].spanId", "span id"),
        ({"spanId": TRACE_HEX}, "spans[0].spanId", "span id"),  # too long
        ({"parentSpanId": "0g" * 8}, "spans[0].parentSpanId", "parent span id"),
        ({"trace_id": "01 " * 15 + "01"}, "spans[0].trace_id", "trace id"),  # whitespace
        ({"traceId": 12}, "spans[0].traceId", "hex string"),
        ({"links": [{}, {"spanId": "x"}]}, "spans[0].links[1].spanId", "span id"),
    ],
)
def test_bad_ids(span: dict[str, Any], where: str, what: str) -> None:
    err = decode_error(json_request(span), "otlp_json")
    assert err.reason == "invalid_id"
    assert f"resourceSpans[0].scopeSpans[0].{where}:" in err.detail
    assert what in err.detail


def test_bad_exemplar_id_in_metrics_json() -> None:
    doc = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {"sum": {"dataPoints": [{"exemplars": [{"spanId": "nothex!!"}]}]}}
                        ]
                    }
                ]
            }
        ]
    }
    with pytest.raises(DecodeError) as info:
        decode_metrics(json.dumps(doc).encode(), "otlp_json")
    assert info.value.reason == "invalid_id"
    assert "metrics[0].sum.dataPoints[0].exemplars[0].spanId" in info.value.detail


def test_long_bad_id_is_quoted_briefly() -> None:
    err = decode_error(json_request({"traceId": "q" * 100_000}), "otlp_json")
    assert err.reason == "invalid_id"
    assert len(err.detail) < 200


def test_unknown_encoding() -> None:
    err = decode_error(b"", "avro")
    assert err.reason == "unknown_encoding"
    assert "'avro'" in err.detail
    assert "otlp_proto" in err.detail


def test_deeply_nested_json_is_invalid_json_not_recursion_error() -> None:
    nested = b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": '
    value = b'{"arrayValue": {"values": [' * 200 + b"]}}" * 200
    err = decode_error(nested + value + b"}]}}]}", "otlp_json")
    assert err.reason == "invalid_json"


def test_decode_error_is_picklable_and_bounded() -> None:
    err = DecodeError("invalid_json", "x" * 10_000)
    assert len(err.detail) <= 500
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.reason, copy.detail, str(copy)) == (err.reason, err.detail, str(err))


def test_bad_record_between_good_ones_can_be_skipped() -> None:
    gen = SpanGenerator(seed=7)
    good1, good2 = gen.batch_request(50), gen.batch_request(60)
    for encoding in ENCODINGS:
        enc: Encoding = encoding  # type: ignore[assignment]
        bad = b"\xff\xff\xff" if enc == "otlp_proto" else b'{"resourceSpans": 5}'
        records = [encode_request(good1, enc), bad, encode_request(good2, enc)]
        decoded, skipped = [], []
        for value in records:
            try:
                decoded.append(decode_traces(value, enc))
            except DecodeError as err:
                skipped.append(err.reason)
        assert decoded == [good1, good2]
        assert len(skipped) == 1


def test_parse_dict_path_is_still_what_we_use() -> None:
    # Guard for the documented contract of otlp_json_to_message: shape errors are ParseError.
    with pytest.raises(json_format.ParseError):
        otlp_json_to_message(b'{"resourceSpans": 5}', ExportTraceServiceRequest())


def test_json_lenient_corners_go_through_the_reference_path() -> None:
    # Forms exporters don't write but the proto3 JSON mapping allows; the fast path hands
    # them to ParseDict, which accepts them.
    raw = json_request(
        {
            "name": None,
            "startTimeUnixNano": "1e3",
            "kind": "2",
            "attributes": [{"key": "d", "value": {"doubleValue": "1.5"}}],
            "status": {"code": "STATUS_CODE_OK"},
        }
    )
    (span,) = spans_of(decode_traces(raw, "otlp_json"))
    assert span.name == ""
    assert span.start_time_unix_nano == 1000
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.attributes[0].value.double_value == 1.5
    assert span.status.code == Status.STATUS_CODE_OK


def test_json_non_finite_doubles() -> None:
    raw = json_request(
        {
            "attributes": [
                {"key": "a", "value": {"doubleValue": "NaN"}},
                {"key": "b", "value": {"doubleValue": "-Infinity"}},
            ]
        }
    )
    a, b = spans_of(decode_traces(raw, "otlp_json"))[0].attributes
    assert a.value.double_value != a.value.double_value
    assert b.value.double_value == float("-inf")

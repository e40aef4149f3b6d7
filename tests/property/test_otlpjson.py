"""Property tests of the OTLP/JSON codec and of decoding's error contract."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from spanmetrics.decode import DecodeError, decode_traces
from spanmetrics.otlpjson import (
    _fast_parse,
    _ids_to_base64,
    _plan_for,
    message_to_otlp_json,
    otlp_json_to_message,
)

pytestmark = pytest.mark.property

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
# NaN is excluded only because NaN != NaN makes message equality fail; it round-trips as "NaN".
DOUBLES = st.floats(allow_nan=False)
ids16 = st.one_of(st.just(b""), st.binary(min_size=16, max_size=16))
ids8 = st.one_of(st.just(b""), st.binary(min_size=8, max_size=8))


def scalar_any() -> st.SearchStrategy[AnyValue]:
    return st.one_of(
        st.builds(lambda v: AnyValue(string_value=v), st.text(max_size=12)),
        st.builds(lambda v: AnyValue(int_value=v), INT64),
        st.builds(lambda v: AnyValue(double_value=v), DOUBLES),
        st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
        st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=12)),
        st.just(AnyValue()),
    )


def _array(values: list[AnyValue]) -> AnyValue:
    out = AnyValue()
    out.array_value.SetInParent()
    out.array_value.values.extend(values)
    return out


def _kvlist(items: list[tuple[str, AnyValue]]) -> AnyValue:
    out = AnyValue()
    out.kvlist_value.SetInParent()
    out.kvlist_value.values.extend(KeyValue(key=k, value=v) for k, v in items)
    return out


any_values = st.recursive(
    scalar_any(),
    lambda inner: st.one_of(
        st.builds(_array, st.lists(inner, max_size=3)),
        st.builds(_kvlist, st.lists(st.tuples(st.text(max_size=8), inner), max_size=3)),
    ),
    max_leaves=8,
)
key_values = st.lists(
    st.builds(lambda k, v: KeyValue(key=k, value=v), st.text(max_size=10), any_values),
    max_size=4,
)


@st.composite
def spans(draw: st.DrawFn) -> Span:
    span = Span(
        trace_id=draw(ids16),
        span_id=draw(ids8),
        parent_span_id=draw(ids8),
        trace_state=draw(st.sampled_from(["", "ot=th:8", "vendor=x"])),
        name=draw(st.text(max_size=20)),
        kind=draw(st.integers(0, 5)),  # type: ignore[arg-type]
        start_time_unix_nano=draw(UINT64),
        end_time_unix_nano=draw(UINT64),
        dropped_attributes_count=draw(st.integers(0, 2**32 - 1)),
        flags=draw(st.integers(0, 2**32 - 1)),
    )
    span.attributes.extend(draw(key_values))
    for _ in range(draw(st.integers(0, 2))):
        event = span.events.add(time_unix_nano=draw(UINT64), name=draw(st.text(max_size=8)))
        event.attributes.extend(draw(key_values))
    for _ in range(draw(st.integers(0, 2))):
        link = span.links.add(trace_id=draw(ids16), span_id=draw(ids8))
        link.attributes.extend(draw(key_values))
    span.status.code = draw(st.integers(0, 2))  # type: ignore[assignment]
    span.status.message = draw(st.text(max_size=10))
    return span


@st.composite
def requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rs = req.resource_spans.add(schema_url=draw(st.text(max_size=5)))
        rs.resource.attributes.extend(draw(key_values))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(st.text(max_size=8))
            ss.scope.version = draw(st.text(max_size=4))
            ss.spans.extend(draw(st.lists(spans(), max_size=3)))
    return req


@settings(max_examples=150, deadline=None)
@given(requests())
def test_proto_to_otlp_json_to_proto_is_identity(req: ExportTraceServiceRequest) -> None:
    raw = message_to_otlp_json(req)
    assert decode_traces(raw, "otlp_json") == req
    assert decode_traces(req.SerializeToString(), "otlp_proto") == req


@settings(max_examples=40, deadline=None)
@given(requests())
def test_otlp_json_ids_are_lowercase_hex(req: ExportTraceServiceRequest) -> None:
    doc = json.loads(message_to_otlp_json(req))
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for holder in [span, *span.get("links", [])]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in holder:
                            value = holder[key]
                            assert value == value.lower()
                            assert len(value) in (16, 32)
                            bytes.fromhex(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_decode_error(value: bytes) -> None:
    for encoding in ("otlp_proto", "otlp_json"):
        # Any outcome but an exception of another type is fine.
        with contextlib.suppress(DecodeError):
            decode_traces(value, encoding)


json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.sampled_from(["00" * 8, "ab" * 16, "zz", "SPAN_KIND_SERVER", "1e3"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "resourceSpans",
                    "resource_spans",
                    "scopeSpans",
                    "spans",
                    "traceId",
                    "span_id",
                    "parentSpanId",
                    "links",
                    "name",
                    "kind",
                    "startTimeUnixNano",
                    "attributes",
                    "key",
                    "value",
                    "intValue",
                    "arrayValue",
                    "values",
                    "status",
                    "code",
                    "other",
                ]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_arbitrary_json_decodes_or_raises_decode_error(doc: Any) -> None:
    try:
        decode_traces(json.dumps(doc).encode(), "otlp_json")
    except DecodeError as err:
        assert err.reason in ("invalid_json", "invalid_id")


# --- the fast parsing path agrees with ParseDict ---------------------------------------------


def reference_parse(doc: dict[str, Any]) -> ExportTraceServiceRequest | None:
    """The reference path: hex ids to base64, then ParseDict; None when it rejects."""
    message = ExportTraceServiceRequest()
    try:
        _ids_to_base64(doc, _plan_for(message.DESCRIPTOR))
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except Exception:
        return None
    return message


@settings(max_examples=100, deadline=None)
@given(requests())
def test_fast_path_takes_canonical_otlp_json(req: ExportTraceServiceRequest) -> None:
    doc = json.loads(message_to_otlp_json(req))
    fast = ExportTraceServiceRequest()
    assert _fast_parse(copy.deepcopy(doc), fast), "canonical OTLP/JSON must not fall back"
    assert fast == req == reference_parse(doc)


def _field(camel: str, snake: str) -> st.SearchStrategy[str]:
    return st.sampled_from([camel, snake]) if camel != snake else st.just(camel)


INT_LIKE = st.one_of(
    st.integers(-(2**65), 2**65),
    st.integers(-5, 5).map(str),
    st.sampled_from(["1e3", "1.0", " 7", "+3", "0x10", "-0", "007", "", "9" * 25]),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
)
STR_LIKE = st.one_of(st.text(max_size=5), st.just("\ud800"), st.integers(), st.none())
ID_LIKE = st.one_of(
    st.binary(min_size=8, max_size=8).map(bytes.hex),
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    st.binary(min_size=16, max_size=16).map(lambda b: b.hex().upper()),
    st.sampled_from(["", "zz", "0" * 15, "00 " * 8, "AQIDBAUGBwg="]),
    st.integers(),
    st.none(),
)
BYTES_LIKE = st.one_of(
    st.sampled_from(["", "AA==", "AA", "-_8=", "+/8=", "!!!", "A", "QUJD"]),
    st.integers(),
    st.none(),
)
ENUM_LIKE = st.one_of(
    st.integers(-3, 8),
    st.integers(2**31, 2**33),
    st.sampled_from(["SPAN_KIND_SERVER", "STATUS_CODE_ERROR", "NOPE", "2", True]),
    st.none(),
)
DOUBLE_LIKE = st.one_of(
    st.floats(),
    st.integers(-(2**70), 2**70),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1.5", "nan"]),
    st.booleans(),
    st.none(),
)


def fuzz_object(fields: list[tuple[str, str, st.SearchStrategy[Any]]]) -> st.SearchStrategy[Any]:
    """A JSON object with a random subset of the fields, in camel or snake case, plus junk."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        if draw(st.integers(0, 30)) == 0:
            return draw(st.sampled_from([None, 5, "x", [], [{}]]))
        obj: dict[str, Any] = {}
        for camel, snake, values in fields:
            if draw(st.booleans()):
                obj[draw(_field(camel, snake))] = draw(values)
        if draw(st.integers(0, 10)) == 0:
            obj[draw(st.sampled_from(["unknownField", "[ext.x]", "@type"]))] = 1
        return obj

    return build()


def fuzz_list(item: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(item, max_size=3), st.just({}), st.none(), st.just([None]))


fuzz_any_value: st.SearchStrategy[Any] = st.deferred(
    lambda: fuzz_object(
        [
            ("stringValue", "string_value", STR_LIKE),
            ("intValue", "int_value", INT_LIKE),
            ("doubleValue", "double_value", DOUBLE_LIKE),
            ("boolValue", "bool_value", st.one_of(st.booleans(), st.just("true"), st.none())),
            ("bytesValue", "bytes_value", BYTES_LIKE),
            (
                "arrayValue",
                "array_value",
                fuzz_object([("values", "values", fuzz_list(fuzz_any_value))]),
            ),
        ]
    )
)
fuzz_attributes = fuzz_list(
    fuzz_object([("key", "key", STR_LIKE), ("value", "value", fuzz_any_value)])
)
fuzz_span = fuzz_object(
    [
        ("traceId", "trace_id", ID_LIKE),
        ("spanId", "span_id", ID_LIKE),
        ("parentSpanId", "parent_span_id", ID_LIKE),
        ("name", "name", STR_LIKE),
        ("kind", "kind", ENUM_LIKE),
        ("startTimeUnixNano", "start_time_unix_nano", INT_LIKE),
        ("flags", "flags", INT_LIKE),
        ("attributes", "attributes", fuzz_attributes),
        (
            "status",
            "status",
            fuzz_object([("code", "code", ENUM_LIKE), ("message", "message", STR_LIKE)]),
        ),
        (
            "links",
            "links",
            fuzz_list(
                fuzz_object([("traceId", "trace_id", ID_LIKE), ("spanId", "span_id", ID_LIKE)])
            ),
        ),
    ]
)
fuzz_request = fuzz_object(
    [
        (
            "resourceSpans",
            "resource_spans",
            fuzz_list(
                fuzz_object(
                    [
                        (
                            "resource",
                            "resource",
                            fuzz_object([("attributes", "attributes", fuzz_attributes)]),
                        ),
                        (
                            "scopeSpans",
                            "scope_spans",
                            fuzz_list(fuzz_object([("spans", "spans", fuzz_list(fuzz_span))])),
                        ),
                    ]
                )
            ),
        )
    ]
)


@settings(max_examples=1500, deadline=None)
@given(fuzz_request)
def test_fast_path_never_disagrees_with_parse_dict(doc: Any) -> None:
    if not isinstance(doc, dict):
        return
    fast = ExportTraceServiceRequest()
    took_fast_path = _fast_parse(copy.deepcopy(doc), fast)
    reference = reference_parse(copy.deepcopy(doc))
    if took_fast_path:
        assert reference is not None, "fast path accepted what ParseDict rejects"
        assert fast == reference
    else:
        assert fast == ExportTraceServiceRequest(), "a fallback must leave the message empty"
    # And the public function gives the reference result either way.
    public = ExportTraceServiceRequest()
    try:
        otlp_json_to_message(json.dumps(doc), public)
    except (ValueError, json_format.ParseError):
        assert reference is None or not took_fast_path
    else:
        assert public == reference

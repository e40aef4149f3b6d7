"""The compiled scanner against upb: for any request, the same batch and the same metrics;
for any corrupt or truncated record, the same verdict, and never a crash."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.config.load import parse_topology
from spanmetrics.decode import batch as batch_module
from spanmetrics.decode.batch import BatchSpec, SpanBatch, batch_from_request, scan_record
from spanmetrics.decode.errors import DecodeError
from spanmetrics.export.otlp import snapshot_to_request
from tests.clock import FakeClock

pytestmark = [
    pytest.mark.property,
    pytest.mark.skipif(batch_module.PATH != "native", reason="the extension is not built"),
]

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Few keys, so that dimensions match, repeat and collide.
KEYS = ["a", "b", "http.method", "m", "e", "service.name", "k.x.y", "é"]
texts = st.text(alphabet=st.sampled_from("ab.é€😀 \x00/"), max_size=6)


def any_values(depth: int = 2) -> st.SearchStrategy[AnyValue]:
    leaves = st.one_of(
        texts.map(lambda s: AnyValue(string_value=s)),
        st.booleans().map(lambda b: AnyValue(bool_value=b)),
        st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
        st.floats(allow_nan=True).map(lambda f: AnyValue(double_value=f)),
        st.binary(max_size=4).map(lambda b: AnyValue(bytes_value=b)),
        st.integers(-(2**31), 2**31 - 1).map(lambda i: AnyValue(string_value_strindex=i)),
        st.just(AnyValue()),
    )
    if depth == 0:
        return leaves

    def array(values: list[AnyValue]) -> AnyValue:
        v = AnyValue()
        v.array_value.values.extend(values)
        return v

    def kvlist(items: list[tuple[str, AnyValue]]) -> AnyValue:
        v = AnyValue()
        v.kvlist_value.values.extend(KeyValue(key=k, value=x) for k, x in items)
        return v

    inner = any_values(depth - 1)
    return st.one_of(
        leaves,
        st.lists(inner, max_size=2).map(array),
        st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=2).map(kvlist),
    )


attributes = st.lists(
    st.tuples(st.sampled_from(KEYS), any_values()).map(lambda kv: KeyValue(key=kv[0], value=kv[1])),
    max_size=5,
)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def spans(draw: Any) -> Span:
    s = Span(
        name=draw(texts),
        kind=draw(st.integers(-3, 8)),
        start_time_unix_nano=draw(u64),
        end_time_unix_nano=draw(u64),
        trace_state=draw(st.sampled_from(["", "ot=th:8", "ot=th:c;rv:1", "x=y", "ot=th:zz"])),
        trace_id=draw(st.binary(max_size=16)),
        span_id=draw(st.binary(max_size=8)),
        parent_span_id=draw(st.binary(max_size=8)),
        flags=draw(st.integers(0, 2**32 - 1)),
    )
    s.attributes.extend(draw(attributes))
    s.status.code = draw(st.integers(0, 3))
    s.status.message = draw(texts)
    for _ in range(draw(st.integers(0, 2))):
        e = s.events.add(name=draw(texts), time_unix_nano=draw(u64))
        e.attributes.extend(draw(attributes))
    for _ in range(draw(st.integers(0, 1))):
        link = s.links.add(trace_state=draw(texts), trace_id=draw(st.binary(max_size=16)))
        link.attributes.extend(draw(attributes))
    if draw(st.booleans()):
        # An unknown field, kept by upb and skipped by the scanner.
        s = Span.FromString(s.SerializeToString() + b"\xf8\x07\x2a")  # field 127, varint
    return s


@st.composite
def requests(draw: Any) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rs = ResourceSpans(schema_url=draw(texts))
        rs.resource.CopyFrom(Resource(attributes=draw(attributes)))
        for _ in range(draw(st.integers(0, 3))):
            ss = ScopeSpans()
            ss.scope.name = draw(st.sampled_from(["", "io.x", "é"]))
            ss.scope.version = draw(st.sampled_from(["", "1.0"]))
            ss.spans.extend(draw(st.lists(spans(), max_size=4)))
            rs.scope_spans.append(ss)
        request.resource_spans.append(rs)
    return request


specs = st.builds(
    BatchSpec,
    keys=st.sampled_from([(), ("a",), ("http.method", "b"), ("a", "k.x.y", "é")]),
    multiplier_key=st.sampled_from([None, "m"]),
    ids=st.booleans(),
    events=st.booleans(),
    all_attributes=st.booleans(),
).map(
    lambda s: BatchSpec(
        keys=s.keys,
        defaults=tuple("d" if i % 2 else None for i in range(len(s.keys))),
        multiplier_key=s.multiplier_key,
        ids=s.ids,
        events=s.events,
        event_keys=("e", "a") if s.events else (),
        event_defaults=(None, "x") if s.events else (),
        all_attributes=s.all_attributes,
    )
)


def comparable(batch: SpanBatch) -> dict[str, Any]:
    out = {name: getattr(batch, name) for name in SpanBatch.__slots__}
    # Resources as messages: the scanner keeps the wire bytes, upb re-serializes them.
    out["resources"] = [Resource.FromString(raw) for raw in batch.resources]
    out["durations"] = batch.durations.tolist()
    # Multipliers are kept as AnyValue bytes, also wire bytes on one side.
    for name in ("multipliers", "resource_multipliers"):
        column = getattr(batch, name)
        if column is not None:
            out[name] = [None if raw is None else AnyValue.FromString(raw) for raw in column]
    return out


@SETTINGS
@given(requests(), specs)
def test_the_scanner_builds_the_batch_upb_builds(
    request: ExportTraceServiceRequest, spec: BatchSpec
) -> None:
    data = request.SerializeToString()
    pure = batch_from_request(ExportTraceServiceRequest.FromString(data), spec)
    native = scan_record(data, spec)
    assert comparable(native) == comparable(pure)


ENGINE_CONFIGS = [
    {},
    {"dimensions": [{"name": "a"}, {"name": "http.method", "default": "GET"}]},
    {
        "dimensions": [{"glob": "k.**"}, {"name": "b"}],
        "enable_metrics_sampling_method": True,
        "exemplars": {"enabled": True},
        "events": {"enabled": True, "dimensions": [{"name": "e"}]},
        "span_multiplier_key": "m",
        "include_instrumentation_scope": ["io.x"],
        "exclude_dimensions": ["span.kind"],
    },
]


@SETTINGS
@given(st.lists(requests(), min_size=1, max_size=3), st.sampled_from(ENGINE_CONFIGS))
def test_both_paths_give_the_same_metrics(
    batches: list[ExportTraceServiceRequest], config: dict[str, Any]
) -> None:
    sm = parse_topology({"spanmetrics": config}).spanmetrics
    native, pure = SpanMetricsEngine(sm, FakeClock()), SpanMetricsEngine(sm, FakeClock())
    for request in batches:
        data = request.SerializeToString()
        native.consume_record(data, "otlp_proto")
        pure.consume(ExportTraceServiceRequest.FromString(data))
    assert snapshot_to_request(native.flush()) == snapshot_to_request(pure.flush())
    assert native.counters == pure.counters


def agree(data: bytes, spec: BatchSpec) -> bool:
    """Whether upb and the scanner agree: both reject the record, or both read it the same."""
    try:
        upb = ExportTraceServiceRequest.FromString(data)
    except Exception:
        upb = None
    try:
        native = scan_record(data, spec)
    except DecodeError as err:
        assert err.reason in ("invalid_protobuf", "invalid_utf8")
        native = None
    if upb is None or native is None:
        return upb is None and native is None
    return comparable(native) == comparable(batch_from_request(upb, spec))


def _fixed_record(rng: random.Random) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "checkout"
    rs.resource.attributes.add(key="a").value.int_value = rng.randrange(100)
    ss = rs.scope_spans.add()
    ss.scope.name = "io.x"
    for i in range(3):
        s = ss.spans.add(name=f"op{i} é", kind=2, start_time_unix_nano=10, end_time_unix_nano=99)
        s.trace_id = bytes(range(16))
        s.span_id = bytes(range(8))
        s.attributes.add(key="http.method").value.string_value = "GET"
        s.attributes.add(key="b").value.array_value.values.add().double_value = 1.5
        s.events.add(name="ev").attributes.add(key="e").value.string_value = "boom"
        s.status.code = 2
    return request.SerializeToString()


FULL = BatchSpec(
    keys=("a", "http.method", "b"), defaults=(None, None, "d"), multiplier_key="m", ids=True,
    events=True, event_keys=("e",), event_defaults=(None,), all_attributes=True,
)  # fmt: skip


def test_every_prefix_is_read_as_upb_reads_it() -> None:
    data = _fixed_record(random.Random(1))
    for end in range(len(data) + 1):
        assert agree(data[:end], FULL), end


@pytest.mark.parametrize("seed", range(40))
def test_byte_flips_are_read_as_upb_reads_them(seed: int) -> None:
    rng = random.Random(seed)
    data = bytearray(_fixed_record(rng))
    for _ in range(50):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        assert agree(bytes(flipped), FULL), bytes(flipped).hex()


def test_random_bytes_never_crash() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        with contextlib.suppress(DecodeError):
            scan_record(data, FULL)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, as protobuf writes it."""
    tag, length = (number << 3) | 2, len(payload)
    out = bytearray([tag])
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out + payload)


@SETTINGS
@given(requests(), requests(), spans(), spans(), specs)
def test_fields_given_twice_are_merged_as_upb_merges_them(
    a: ExportTraceServiceRequest,
    b: ExportTraceServiceRequest,
    s1: Span,
    s2: Span,
    spec: BatchSpec,
) -> None:
    """Two messages' bytes back to back parse as their merge: scalars of the second win,
    lists are joined, sub-messages (resource, scope, status) merge field by field."""
    rs1 = a.resource_spans[0] if a.resource_spans else ResourceSpans()
    rs2 = b.resource_spans[0] if b.resource_spans else ResourceSpans()
    merged_span = s1.SerializeToString() + s2.SerializeToString()
    scope = ScopeSpans()
    scope.scope.name = "io.x"
    scope_bytes = scope.SerializeToString() + _field(2, merged_span)
    resource_spans = rs1.SerializeToString() + rs2.SerializeToString() + _field(2, scope_bytes)
    data = _field(1, resource_spans)
    assert agree(data, spec)


@SETTINGS
@given(st.lists(any_values(), min_size=2, max_size=3), specs)
def test_an_attribute_value_given_twice_merges(values: list[AnyValue], spec: BatchSpec) -> None:
    keyvalue = _field(1, b"a") + b"".join(_field(2, v.SerializeToString()) for v in values)
    span = Span(name="s").SerializeToString() + _field(9, keyvalue)
    resource = Resource().SerializeToString() + _field(1, keyvalue)
    data = _field(1, _field(1, resource) + _field(2, _field(2, span)))
    spec = BatchSpec(("a",), (None,), "a", spec.ids, spec.events, ("a",), (None,), True)
    assert agree(data, spec)


@pytest.mark.parametrize(
    "record",
    [
        # Found by the fuzz target: a span name given twice, the first not UTF-8.
        _field(1, _field(2, _field(2, _field(5, b"\xff\xfe") + _field(5, b"ok")))),
        # A scope name, an attribute key, the same.
        _field(1, _field(2, _field(1, _field(1, b"\xff") + _field(1, b"io.x")))),
        _field(1, _field(1, _field(1, _field(1, b"\xff") + _field(1, b"a")))),
        # A tenth varint byte with bits past 64 (upb drops them).
        b"\x10" + b"\x97" * 9 + b"\x02",
        # A skipped group holding a field number 0 (upb lets it pass), and one too deep.
        b"\x2b\x00\x01\x2c",
        b"\x2b" + b"\x33" * 99 + b"\x34" * 99 + b"\x2c",
        b"\x2b" + b"\x33" * 100 + b"\x34" * 100 + b"\x2c",
        # A field number past 2^29 - 1.
        b"\x80\x80\x80\x80\x10\x00",
        # An attribute value given twice, the first a group that runs past its end (upb
        # parses each occurrence on its own).
        _field(
            1,
            _field(
                1, _field(1, bytes.fromhex("120c736572766963652e6e616d65120a0a08636865636b6f7574"))
            ),
        ),
        # An attribute value by string-table index (AnyValue field 8), as upb renders it.
        _field(1, _field(1, _field(1, _field(1, b"a") + _field(2, b"\x40\x1e")))),
    ],
    ids=[
        "span name",
        "scope name",
        "attribute key",
        "long varint",
        "group field 0",
        "groups 100 deep",
        "groups 101 deep",
        "field number",
        "value split mid-group",
        "string table index",
    ],
)
def test_regressions_found_by_fuzzing(record: bytes) -> None:
    assert agree(record, FULL)

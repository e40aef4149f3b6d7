"""OTLP/JSON codec for any OTLP protobuf message.

OTLP/JSON is the proto3 JSON mapping with a few OTLP-specific differences (see the OTLP
specification, "JSON Protobuf Encoding"):

- ``traceId``, ``spanId`` and ``parentSpanId`` (in spans, links, log records and metric
  exemplars) are lowercase hex strings, not base64 like other ``bytes`` fields;
- enum values are integers;
- keys are lowerCamelCase, and receivers also accept the original snake_case names;
- 64-bit integers are decimal strings, and receivers also accept JSON numbers;
- unknown fields are ignored.

``google.protobuf.json_format`` does everything except the hex ids, so this module walks the
JSON tree and converts just those fields. The walk is driven by the message descriptor, not by
key names alone: only a ``bytes`` field actually named ``trace_id``/``span_id``/
``parent_span_id`` is converted, an unknown field that happens to be called ``traceId`` is
left for ``ParseDict`` to ignore, and subtrees that cannot contain ids (attributes, resources,
scopes) are never visited, which keeps the walk cheap next to ``ParseDict`` itself.

``ParseDict`` is the reference for parsing but is slow (a few thousand spans per second), so
parsing first tries a fast path that handles the canonical shapes exporters write and hands
anything else to the reference path; see "fast path for parsing" below.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["OtlpJsonIdError", "message_to_otlp_json", "otlp_json_to_message"]

#: Byte length of each id field, by proto field name.
_ID_SIZES: dict[str, int] = {"trace_id": 16, "span_id": 8, "parent_span_id": 8}

#: What an id is called in error messages, by proto field name.
_ID_LABELS: dict[str, str] = {
    "trace_id": "trace id",
    "span_id": "span id",
    "parent_span_id": "parent span id",
}

# ``bytes.fromhex`` alone would accept whitespace between digit pairs ("01 02"), which is not
# valid in OTLP/JSON, so the digits are checked first. Uppercase is accepted like the
# Collector does (Go's hex.Decode); we always write lowercase.
_HEX_RE = re.compile(r"[0-9a-fA-F]*")

# Bad ids are quoted in error messages; a record can hold anything, so keep log lines short.
_MAX_QUOTED = 40

_TYPE_BYTES = FieldDescriptor.TYPE_BYTES
_TYPE_MESSAGE = FieldDescriptor.TYPE_MESSAGE


class OtlpJsonIdError(ValueError):
    """A trace or span id in OTLP/JSON that is not hex of the right length.

    ``path`` is the JSON path of the offending value, e.g.
    ``resourceSpans[0].scopeSpans[1].spans[3].traceId``; ``problem`` says what is wrong with
    it. ``str()`` is ``"<path>: <problem>"``.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self) -> tuple[type[OtlpJsonIdError], tuple[str, str]]:
        # The default reduce would call __init__ with the one formatted message.
        return (type(self), (self.path, self.problem))

    def with_prefix(self, prefix: str) -> OtlpJsonIdError:
        """The same error one level further out (``prefix`` is e.g. ``spans[3]``)."""
        return OtlpJsonIdError(f"{prefix}.{self.path}", self.problem)


@dataclass
class _Plan:
    """What to visit in the JSON object of one message type.

    Keys are the JSON keys the field may appear under: the lowerCamelCase ``json_name`` and
    the original snake_case name.
    """

    #: id fields directly on this message: key -> proto field name.
    ids: dict[str, str] = field(default_factory=dict)
    #: message-typed fields whose subtree can hold ids: key -> plan of the field's type.
    children: dict[str, _Plan] = field(default_factory=dict)


# Plans by message full name. Descriptors are process-wide singletons, so this never grows
# beyond the handful of OTLP request types.
_PLANS: dict[str, _Plan] = {}


def _is_id_field(fd: FieldDescriptor) -> bool:
    return fd.type == _TYPE_BYTES and fd.name in _ID_SIZES and not fd.is_repeated


def _message_type(fd: FieldDescriptor) -> Descriptor:
    desc = fd.message_type
    assert desc is not None, f"message field {fd.full_name} without a message type"
    return desc


def _descriptor(message: Message) -> Descriptor:
    # The stubs type DESCRIPTOR as the pure-Python or the upb class; both have the same API.
    return cast(Descriptor, message.DESCRIPTOR)


def _plan_for(root: Descriptor) -> _Plan:
    cached = _PLANS.get(root.full_name)
    if cached is not None:
        return cached

    # Every message type reachable from the root. OTLP types are recursive (AnyValue ->
    # ArrayValue -> AnyValue), so reachability of ids is a fixed point, not a plain DFS.
    types: dict[str, Descriptor] = {}
    todo = [root]
    while todo:
        desc = todo.pop()
        if desc.full_name in types:
            continue
        types[desc.full_name] = desc
        todo.extend(_message_type(fd) for fd in desc.fields if fd.type == _TYPE_MESSAGE)

    reaches = {name: any(_is_id_field(fd) for fd in d.fields) for name, d in types.items()}
    changed = True
    while changed:
        changed = False
        for name, desc in types.items():
            if not reaches[name] and any(
                fd.type == _TYPE_MESSAGE and reaches[_message_type(fd).full_name]
                for fd in desc.fields
            ):
                reaches[name] = changed = True

    plans = {name: _Plan() for name, ok in reaches.items() if ok}
    for name, plan in plans.items():
        for fd in types[name].fields:
            keys = {fd.json_name, fd.name}
            if _is_id_field(fd):
                for key in keys:
                    plan.ids[key] = fd.name
            elif fd.type == _TYPE_MESSAGE and _message_type(fd).full_name in plans:
                for key in keys:
                    plan.children[key] = plans[_message_type(fd).full_name]

    plan = plans.get(root.full_name, _Plan())
    _PLANS[root.full_name] = plan
    return plan


def _quote(value: str) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 4] + "...'"


def _hex_to_base64(key: str, value: object, field_name: str) -> object:
    if value is None:
        # JSON null means "default" in the proto3 mapping; ParseDict handles it.
        return None
    label = _ID_LABELS[field_name]
    if not isinstance(value, str):
        raise OtlpJsonIdError(key, f"{label} must be a hex string, got {type(value).__name__}")
    if not value:
        return value  # empty id: "not set"
    size = _ID_SIZES[field_name]
    if len(value) != 2 * size or not _HEX_RE.fullmatch(value):
        raise OtlpJsonIdError(
            key, f"invalid hex {label} {_quote(value)} (want {2 * size} hex digits)"
        )
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def _ids_to_base64(obj: dict[str, Any], plan: _Plan) -> None:
    for key, value in obj.items():
        id_field = plan.ids.get(key)
        if id_field is not None:
            obj[key] = _hex_to_base64(key, value, id_field)
            continue
        child = plan.children.get(key)
        if child is None:
            continue
        # Values of the wrong JSON type are left alone: ParseDict reports them with a path.
        if isinstance(value, dict):
            try:
                _ids_to_base64(value, child)
            except OtlpJsonIdError as err:
                raise err.with_prefix(key) from None
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    try:
                        _ids_to_base64(item, child)
                    except OtlpJsonIdError as err:
                        raise err.with_prefix(f"{key}[{i}]") from None


def _ids_to_hex(obj: dict[str, Any], plan: _Plan) -> None:
    # Input is MessageToDict output: json_name keys, well-formed base64 values.
    for key, value in obj.items():
        if key in plan.ids:
            obj[key] = base64.b64decode(value).hex()
            continue
        child = plan.children.get(key)
        if child is None:
            continue
        if isinstance(value, list):
            for item in value:
                _ids_to_hex(item, child)
        else:
            _ids_to_hex(value, child)


# --- fast path for parsing -------------------------------------------------------------------
#
# ParseDict is generic and slow (about 4k spans/s: it formats a path string for every field it
# visits). OTLP/JSON as exporters write it uses a handful of shapes, so the fast path below
# handles exactly those: canonical JSON types for each field, no nulls, no aliases mixed with
# canonical keys, no duplicate oneof members, bounded depth. Anything else raises _Fallback
# and the record goes through the reference path (id walk + ParseDict) from a clean message,
# so errors, their messages and every lenient corner of the proto3 JSON mapping stay exactly
# ParseDict's. Whatever the fast path accepts, ParseDict accepts with the same result; the
# property tests check this differentially.


class _Fallback(Exception):
    """The fast path met something it does not handle; use the reference path."""


_K_MSG, _K_STR, _K_INT, _K_DOUBLE, _K_BOOL, _K_ENUM, _K_BYTES, _K_ID, _K_OTHER = range(9)
# Much shallower than ParseDict's limit of 100, so the fast path never accepts a message that
# ParseDict would reject for depth.
_FAST_MAX_DEPTH = 50
_DECIMAL_RE = re.compile(r"-?[0-9]+")
# How the proto3 JSON mapping writes non-finite doubles (ParseDict reads them with float()).
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_SIMPLE_KINDS = {
    FieldDescriptor.CPPTYPE_INT32: _K_INT,
    FieldDescriptor.CPPTYPE_INT64: _K_INT,
    FieldDescriptor.CPPTYPE_UINT32: _K_INT,
    FieldDescriptor.CPPTYPE_UINT64: _K_INT,
    FieldDescriptor.CPPTYPE_DOUBLE: _K_DOUBLE,
    FieldDescriptor.CPPTYPE_BOOL: _K_BOOL,
    FieldDescriptor.CPPTYPE_ENUM: _K_ENUM,
    FieldDescriptor.CPPTYPE_STRING: _K_STR,
}


@dataclass
class _FastField:
    """How to parse one JSON key of one message type."""

    kind: int
    name: str
    repeated: bool
    #: Messages: how to parse the sub-message's keys.
    table: dict[str, _FastField] | None = None
    #: Enums: number by value name.
    enum_names: dict[str, int] | None = None
    #: Trace/span ids: length in bytes.
    id_size: int = 0
    #: Name of the containing oneof (including proto3 optional's synthetic one), if any.
    oneof: str | None = None
    #: For the snake_case alias of a field whose json_name differs: that json_name.
    canonical: str | None = None


_FAST_TABLES: dict[str, dict[str, _FastField]] = {}


def _fast_kind(fd: FieldDescriptor) -> int:
    cpp = fd.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_MESSAGE:
        desc = _message_type(fd)
        # Maps and well-known types have special JSON forms; OTLP uses neither.
        if desc.GetOptions().map_entry or desc.full_name.startswith("google.protobuf."):
            return _K_OTHER
        return _K_MSG
    if cpp == FieldDescriptor.CPPTYPE_STRING and fd.type == _TYPE_BYTES:
        return _K_ID if _is_id_field(fd) else _K_BYTES
    # float32 is left to ParseDict (range checks); OTLP has none.
    return _SIMPLE_KINDS.get(cpp, _K_OTHER)


def _fast_table(desc: Descriptor) -> dict[str, _FastField]:
    table = _FAST_TABLES.get(desc.full_name)
    if table is None:
        # Built aside and published whole, so a concurrent caller never sees a half-built
        # table (types are recursive, so tables under construction are shared while building).
        building: dict[str, dict[str, _FastField]] = {}
        table = _build_fast_table(desc, building)
        _FAST_TABLES.update(building)
    return table


def _build_fast_table(
    desc: Descriptor, building: dict[str, dict[str, _FastField]]
) -> dict[str, _FastField]:
    name = desc.full_name
    table = _FAST_TABLES[name] if name in _FAST_TABLES else building.get(name)
    if table is not None:
        return table
    table = building[name] = {}
    canonical: dict[str, _FastField] = {}
    for fd in desc.fields:
        kind = _fast_kind(fd)
        entry = _FastField(
            kind=kind,
            name=fd.name,
            repeated=fd.is_repeated,
            oneof=fd.containing_oneof.name if fd.containing_oneof is not None else None,
        )
        if kind == _K_MSG:
            entry.table = _build_fast_table(_message_type(fd), building)
        elif kind == _K_ENUM:
            assert fd.enum_type is not None
            entry.enum_names = {v.name: v.number for v in fd.enum_type.values}
        elif kind == _K_ID:
            entry.id_size = _ID_SIZES[fd.name]
        canonical[fd.json_name] = entry
        if fd.name != fd.json_name:
            table[fd.name] = _FastField(**{**entry.__dict__, "canonical": fd.json_name})
    # ParseDict looks a key up by json_name first, so those win over snake_case aliases.
    table.update(canonical)
    return table


def _str(entry: _FastField, value: Any) -> Any:
    if type(value) is str:
        return value  # lone surrogates make upb's setter raise ValueError -> fallback
    raise _Fallback


def _int(entry: _FastField, value: Any) -> Any:
    # Range is checked by the setter (ValueError -> fallback), as ParseDict relies on too.
    if type(value) is int:
        return value
    if type(value) is str and _DECIMAL_RE.fullmatch(value):
        return int(value)
    raise _Fallback  # floats, exponents, bools, ...: ParseDict's rules


def _double(entry: _FastField, value: Any) -> Any:
    if (type(value) is float and math.isfinite(value)) or type(value) is int:
        return float(value)
    special = _SPECIAL_DOUBLES.get(value) if type(value) is str else None
    if special is not None:
        return special
    raise _Fallback  # other numeric strings, NaN/inf from non-standard JSON literals


def _bool(entry: _FastField, value: Any) -> Any:
    if type(value) is bool:
        return value
    raise _Fallback


def _enum(entry: _FastField, value: Any) -> Any:
    if type(value) is int:
        return value  # proto3 enums are open: any number is kept
    if type(value) is str and entry.enum_names is not None and value in entry.enum_names:
        return entry.enum_names[value]
    raise _Fallback


def _id(entry: _FastField, value: Any) -> Any:
    if type(value) is str:
        if not value:
            return b""
        if len(value) == 2 * entry.id_size and _HEX_RE.fullmatch(value):
            return bytes.fromhex(value)
    raise _Fallback  # the reference path reports bad ids with their JSON path


def _bytes(entry: _FastField, value: Any) -> Any:
    if type(value) is str:
        # ParseDict's own decoding, verbatim: pad, then the lenient urlsafe decoder.
        encoded = value.encode("utf-8")
        try:
            return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))
        except ValueError:
            pass
    raise _Fallback


def _other(entry: _FastField, value: Any) -> Any:
    raise _Fallback


#: Scalar converters by kind: the Python value for a JSON value, exactly as ParseDict would
#: produce it, or _Fallback.
_SCALARS: dict[int, Callable[[_FastField, Any], Any]] = {
    _K_STR: _str,
    _K_INT: _int,
    _K_DOUBLE: _double,
    _K_BOOL: _bool,
    _K_ENUM: _enum,
    _K_ID: _id,
    _K_BYTES: _bytes,
    _K_OTHER: _other,
}


def _fast_fill(message: Any, obj: dict[str, Any], table: dict[str, _FastField], depth: int) -> None:
    if depth > _FAST_MAX_DEPTH:
        raise _Fallback
    for key, value in obj.items():
        entry = table.get(key)
        if entry is None:
            if key[:1] == "[":
                raise _Fallback  # extension syntax: ParseDict rejects it even when ignoring
            continue  # unknown field
        if value is None or (entry.canonical is not None and entry.canonical in obj):
            raise _Fallback
        if entry.oneof is not None and message.WhichOneof(entry.oneof) is not None:
            raise _Fallback
        kind = entry.kind
        if entry.repeated:
            if type(value) is not list:
                raise _Fallback
            container = getattr(message, entry.name)
            if kind == _K_MSG:
                assert entry.table is not None
                for item in value:
                    if type(item) is not dict:
                        raise _Fallback
                    _fast_fill(container.add(), item, entry.table, depth + 1)
            else:
                convert = _SCALARS[kind]
                container.extend([convert(entry, item) for item in value])
        elif kind == _K_MSG:
            if type(value) is not dict:
                raise _Fallback
            assert entry.table is not None
            sub = getattr(message, entry.name)
            sub.SetInParent()
            _fast_fill(sub, value, entry.table, depth + 1)
        elif kind == _K_STR and type(value) is str:
            setattr(message, entry.name, value)  # the commonest case, inlined
        else:
            setattr(message, entry.name, _SCALARS[kind](entry, value))


def _fast_parse(obj: dict[str, Any], message: Message) -> bool:
    """Parse ``obj`` into the empty ``message``; False (message left empty) on fallback."""
    try:
        _fast_fill(message, obj, _fast_table(_descriptor(message)), 1)
    except (_Fallback, ValueError, TypeError, OverflowError):
        # ValueError/TypeError/OverflowError: a setter refused a value (out of range,
        # unencodable string); ParseDict will say why.
        message.Clear()
        return False
    return True


def message_to_otlp_json(message: Message) -> bytes:
    """Serialise any OTLP message as compact OTLP/JSON (UTF-8).

    lowerCamelCase keys, integer enums, 64-bit integers as decimal strings, hex trace and
    span ids, default values omitted.
    """
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=False, use_integers_for_enums=True
    )
    _ids_to_hex(data, _plan_for(_descriptor(message)))
    # ensure_ascii=False: proto strings are valid UTF-8 (upb checks), so write them as is
    # rather than as \\u escapes, like the Collector does.
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def otlp_json_to_message(data: bytes | str, message: Message) -> None:
    """Parse OTLP/JSON into ``message``, normally a new empty one.

    Into a non-empty message this follows ``ParseDict``: fields present in the JSON are
    overwritten, repeated ones replaced.

    Accepts lowerCamelCase and snake_case keys, 64-bit integers as strings or numbers, enums
    as integers or names, and ignores unknown fields.

    Raises:
        UnicodeDecodeError: ``data`` is bytes that are not UTF-8.
        json.JSONDecodeError: ``data`` is not JSON.
        OtlpJsonIdError: a trace/span id is not hex of the right length (a ``ValueError``
            whose message starts with the JSON path).
        google.protobuf.json_format.ParseError: the JSON does not have the message's shape
            (including a top level that is not an object).
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    obj = json.loads(text)
    if not isinstance(obj, dict):
        # ParseDict would accept [] silently and fail on other values with a TypeError.
        raise json_format.ParseError(
            f"top-level JSON value must be an object, got {type(obj).__name__}"
        )
    # Only for an empty message (always the case when decoding records): into a non-empty one
    # ParseDict replaces repeated fields where the fast path would append, and a message that
    # held data could not be restored when the fast path gives up half-way.
    if not message.ListFields() and message.ByteSize() == 0 and _fast_parse(obj, message):
        return
    _ids_to_base64(obj, _plan_for(_descriptor(message)))
    json_format.ParseDict(obj, message, ignore_unknown_fields=True)

"""Kafka record values to OTLP export requests, in the Collector Kafka exporter's encodings."""

from __future__ import annotations

import json
from typing import Literal, TypeVar, get_args

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from spanmetrics.decode.errors import DecodeError, DecodeReason
from spanmetrics.otlpjson import OtlpJsonIdError, otlp_json_to_message

__all__ = ["ENCODINGS", "Encoding", "decode_message", "decode_metrics", "decode_traces"]

#: Record value encodings, spelled as in the Collector Kafka exporter's ``encoding`` key.
Encoding = Literal["otlp_proto", "otlp_json"]

#: Every supported :data:`Encoding`.
ENCODINGS: tuple[str, ...] = get_args(Encoding)

_M = TypeVar("_M", bound=Message)


def _decode_proto(value: bytes, message: Message) -> None:
    try:
        message.ParseFromString(value)
    except ProtobufDecodeError as err:
        # upb rejects strings that are not UTF-8 (proto3 requires it) with the same exception
        # type as corrupt wire data; its message is the only way to tell them apart.
        reason: DecodeReason = "invalid_utf8" if "utf-8" in str(err).lower() else "invalid_protobuf"
        raise DecodeError(reason, str(err)) from err
    except Exception as err:
        # Belt and braces: a parser bug or an odd input must not escape as another type,
        # or one bad record would stop the consumer instead of being skipped.
        raise DecodeError("invalid_protobuf", f"{type(err).__name__}: {err}") from err


def _decode_json(value: bytes, message: Message) -> None:
    try:
        # Decoded here rather than by json.loads, which would also guess UTF-16/32: OTLP/JSON
        # is UTF-8 and anything else should be reported as such.
        text = value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DecodeError("invalid_utf8", f"record is not UTF-8: {err}") from err
    try:
        otlp_json_to_message(text, message)
    except OtlpJsonIdError as err:
        raise DecodeError("invalid_id", str(err)) from err
    except json.JSONDecodeError as err:
        raise DecodeError("invalid_json", f"not JSON: {err}") from err
    except json_format.ParseError as err:
        raise DecodeError("invalid_json", f"not an OTLP {_type_name(message)}: {err}") from err
    except RecursionError as err:
        raise DecodeError("invalid_json", "JSON nested too deeply") from err
    except Exception as err:
        raise DecodeError("invalid_json", f"{type(err).__name__}: {err}") from err


def _type_name(message: Message) -> str:
    return message.DESCRIPTOR.name


def decode_message(value: bytes, encoding: Encoding, message: _M) -> _M:
    """Decode one record value into ``message`` (which should be empty) and return it.

    Raises:
        DecodeError: for any problem with the value or the encoding; never another type.
    """
    if encoding == "otlp_proto":
        _decode_proto(value, message)
    elif encoding == "otlp_json":
        _decode_json(value, message)
    else:
        raise DecodeError(
            "unknown_encoding",
            f"unknown encoding {encoding!r}, supported encodings are {', '.join(ENCODINGS)}",
        )
    return message


def decode_traces(value: bytes, encoding: Encoding) -> ExportTraceServiceRequest:
    """Decode a record value of the Collector's ``otlp_spans`` topic.

    ``otlp_proto``: a serialised ``ExportTraceServiceRequest``; empty bytes is a valid empty
    request, as in protobuf. Trace and span id lengths are not checked here (that would cost
    a Python loop over every span); consumers must tolerate odd lengths.

    ``otlp_json``: OTLP/JSON, UTF-8. Ids must be hex of the right length (or empty).

    Raises:
        DecodeError: with ``reason`` ``invalid_protobuf``, ``invalid_utf8``,
            ``invalid_json``, ``invalid_id`` or ``unknown_encoding``; never another type,
            so a caller can count the record and skip it.
    """
    return decode_message(value, encoding, ExportTraceServiceRequest())


def decode_metrics(value: bytes, encoding: Encoding) -> ExportMetricsServiceRequest:
    """Decode an ``ExportMetricsServiceRequest`` (our own output); see :func:`decode_traces`."""
    return decode_message(value, encoding, ExportMetricsServiceRequest())

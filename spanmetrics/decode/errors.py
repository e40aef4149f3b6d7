"""The one exception type decoding raises, with a stable reason code."""

from __future__ import annotations

from typing import Literal

__all__ = ["REASONS", "DecodeError", "DecodeReason"]

#: Why a record could not be decoded. These are metric label values and appear in logs and
#: scripts, so they are part of the public interface: add new ones, never rename.
DecodeReason = Literal[
    "invalid_protobuf", "invalid_json", "invalid_utf8", "invalid_id", "unknown_encoding"
]

#: Every :data:`DecodeReason`, in a stable order.
REASONS: tuple[DecodeReason, ...] = (
    "invalid_protobuf",
    "invalid_json",
    "invalid_utf8",
    "invalid_id",
    "unknown_encoding",
)

# A record can hold anything and its content ends up in the detail (a bad id, a parser
# message quoting a value), so the detail is bounded to keep log lines readable.
_MAX_DETAIL = 500


class DecodeError(Exception):
    """A Kafka record value that is not a valid OTLP request in the expected encoding.

    Attributes:
        reason: short machine-readable code, one of :data:`REASONS` (use as a metric label).
        detail: human-readable explanation, with the JSON path when there is one.

    ``str(err)`` is ``"<reason>: <detail>"``.
    """

    def __init__(self, reason: DecodeReason, detail: str) -> None:
        if len(detail) > _MAX_DETAIL:
            detail = detail[: _MAX_DETAIL - 3] + "..."
        self.reason: DecodeReason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")

    def __reduce__(self) -> tuple[type[DecodeError], tuple[DecodeReason, str]]:
        # Keep the error picklable (worker processes, multiprocessing): the default reduce
        # would call __init__ with the single formatted message.
        return (type(self), (self.reason, self.detail))

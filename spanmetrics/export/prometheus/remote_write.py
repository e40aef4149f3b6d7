"""Prometheus remote write 1.0: protobuf ``WriteRequest``, snappy-compressed, over HTTP."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Iterable

import aiohttp
import cramjam

from spanmetrics.config.model import PrometheusHistograms
from spanmetrics.export.prometheus.native import spans_and_deltas
from spanmetrics.export.prometheus.proto import remote_write_pb2 as pb
from spanmetrics.export.prometheus.series import Labels, PromExemplar, Series
from spanmetrics.net import redact_url

log = logging.getLogger("spanmetrics.remote_write")

#: Attempts per request (the first included) before giving up with an error.
DEFAULT_MAX_ATTEMPTS = 5
#: First retry delay in seconds; doubled after every failed attempt.
DEFAULT_BACKOFF_S = 0.5
#: Longest single retry delay, Retry-After included.
MAX_BACKOFF_S = 30.0
#: Timeout of one HTTP request.
DEFAULT_TIMEOUT_S = 10.0

_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "spanmetrics",
}


class RemoteWriteError(Exception):
    """The endpoint refused a write, or every retry failed."""

    def __init__(self, status: int | None, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"remote write failed ({status or 'no response'}): {detail[:500]}")


def _labels(target: object, name: str, labels: Labels) -> None:
    add = target.add  # type: ignore[attr-defined]
    add(name="__name__", value=name)
    for key, value in labels:
        if value:  # an empty label is the same as no label
            add(name=key, value=value)


def _exemplars(target: object, exemplars: Iterable[PromExemplar]) -> None:
    for e in exemplars:
        out = target.add(value=e.value, timestamp=e.timestamp_ms)  # type: ignore[attr-defined]
        for key, value in e.labels:
            out.labels.add(name=key, value=value)


def write_request(
    series: Iterable[Series], histograms: PrometheusHistograms = "both"
) -> pb.WriteRequest:
    """The ``WriteRequest`` of ``series``: histograms as native histograms, as classic
    ``_bucket``/``_sum``/``_count`` series, or ``both`` (explicit-bucket histograms are
    always classic: they have no native form)."""
    request = pb.WriteRequest()
    native_histograms = histograms != "classic"
    classic_histograms = histograms != "native"
    for s in series:
        if s.kind != "histogram":
            ts = request.timeseries.add()
            _labels(ts.labels, s.name, s.labels)
            ts.samples.add(value=s.value, timestamp=s.timestamp_ms)
            continue
        if native_histograms and s.native is not None:
            ts = request.timeseries.add()
            _labels(ts.labels, s.name, s.labels)
            h = s.native
            spans, deltas = spans_and_deltas(h.buckets)
            out = ts.histograms.add(
                count_int=h.count, sum=h.sum, schema=h.schema, zero_threshold=h.zero_threshold,
                zero_count_int=h.zero_count, positive_deltas=deltas, timestamp=s.timestamp_ms,
            )  # fmt: skip
            for offset, length in spans:
                out.positive_spans.add(offset=offset, length=length)
            _exemplars(ts.exemplars, s.exemplars)
        if classic_histograms or s.native is None:
            for bound, count in s.classic or ():
                ts = request.timeseries.add()
                le = "+Inf" if math.isinf(bound) else format_float(bound)
                _labels(ts.labels, f"{s.name}_bucket", tuple(sorted((*s.labels, ("le", le)))))
                ts.samples.add(value=float(count), timestamp=s.timestamp_ms)
                _exemplars(ts.exemplars, _in_bucket(s, bound))
            for suffix, value in (("_sum", s.sum), ("_count", float(s.count))):
                ts = request.timeseries.add()
                _labels(ts.labels, s.name + suffix, s.labels)
                ts.samples.add(value=value, timestamp=s.timestamp_ms)
    return request


def _in_bucket(s: Series, bound: float) -> list[PromExemplar]:
    """Exemplars of the classic bucket with upper bound ``bound`` (not cumulative)."""
    bounds = [b for b, _ in s.classic or ()]
    i = bounds.index(bound)
    lower = bounds[i - 1] if i else -math.inf
    return [e for e in s.exemplars if lower < e.value <= bound]


def format_float(value: float) -> str:
    """A bound as Prometheus prints it (``0.5``, ``1``, ``1024``)."""
    return repr(value) if not value.is_integer() else str(int(value))


def encode_write_request(
    series: Iterable[Series], histograms: PrometheusHistograms = "both"
) -> bytes:
    """The snappy-compressed (block format) protobuf body of a remote-write request."""
    raw = write_request(series, histograms).SerializeToString()
    return bytes(cramjam.snappy.compress_raw(raw))


class RemoteWriteClient:
    """Sends remote-write bodies with retries.

    5xx, 429 and connection errors are retried with exponential backoff (honouring
    ``Retry-After``); other 4xx mean the data itself was refused and are not retried.
    Whatever is not delivered raises :class:`RemoteWriteError` and is counted in
    :attr:`counters`, so nothing is dropped silently.
    """

    def __init__(
        self,
        endpoint: str,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.endpoint = endpoint
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.counters: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    async def send(self, body: bytes) -> None:
        """POST one body; returns once the endpoint accepted it.

        Raises:
            RemoteWriteError: refused (4xx other than 429), or still failing after
                ``max_attempts`` attempts.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        delay = self.backoff_s
        status: int | None = None
        detail = ""
        for attempt in range(1, self.max_attempts + 1):
            self.counters["remote_write_requests"] += 1
            retry_after: float | None = None
            try:
                async with self._session.post(self.endpoint, data=body, headers=_HEADERS) as r:
                    status = r.status
                    if 200 <= status < 300:
                        return
                    detail = (await r.text())[:1000]
                    if status != 429 and status < 500:
                        self.counters[f"remote_write_failures.http_{status}"] += 1
                        raise RemoteWriteError(status, detail)
                    retry_after = _retry_after(r.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                status, detail = None, repr(err)
            if attempt == self.max_attempts:
                break
            self.counters["remote_write_retries"] += 1
            wait = min(retry_after if retry_after is not None else delay, MAX_BACKOFF_S)
            log.warning("remote write to %s: %s %s; retry in %.1fs", redact_url(self.endpoint),
                        status or "error", detail[:200], wait)  # fmt: skip
            await asyncio.sleep(wait)
            delay *= 2
        reason = f"http_{status}" if status else "unreachable"
        self.counters[f"remote_write_failures.{reason}"] += 1
        raise RemoteWriteError(status, f"gave up after {self.max_attempts} attempts: {detail}")

    async def close(self) -> None:
        """Close the HTTP connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff

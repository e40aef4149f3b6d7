"""Prometheus output: remote write and the scrape endpoint, from cumulative OTLP metrics."""

from spanmetrics.export.prometheus.convert import PrometheusConverter, merge_series
from spanmetrics.export.prometheus.exposition import negotiate, render_protobuf, render_text
from spanmetrics.export.prometheus.remote_write import (
    RemoteWriteClient,
    RemoteWriteError,
    encode_write_request,
    write_request,
)
from spanmetrics.export.prometheus.scrape import ScrapeServer
from spanmetrics.export.prometheus.series import NativeHistogram, PromExemplar, Series, zero_sample

__all__ = [
    "NativeHistogram",
    "PromExemplar",
    "PrometheusConverter",
    "RemoteWriteClient",
    "RemoteWriteError",
    "ScrapeServer",
    "Series",
    "encode_write_request",
    "merge_series",
    "negotiate",
    "render_protobuf",
    "render_text",
    "write_request",
    "zero_sample",
]

"""Prometheus output: remote write and the scrape endpoint, from cumulative OTLP metrics."""

from spanmetrics.export.prometheus.convert import HistogramMode, PrometheusConverter
from spanmetrics.export.prometheus.exposition import negotiate, render_protobuf, render_text
from spanmetrics.export.prometheus.remote_write import (
    RemoteWriteClient,
    RemoteWriteError,
    encode_write_request,
    write_request,
)
from spanmetrics.export.prometheus.scrape import ScrapeServer
from spanmetrics.export.prometheus.series import NativeHistogram, PromExemplar, Series

__all__ = [
    "HistogramMode",
    "NativeHistogram",
    "PromExemplar",
    "PrometheusConverter",
    "RemoteWriteClient",
    "RemoteWriteError",
    "ScrapeServer",
    "Series",
    "encode_write_request",
    "negotiate",
    "render_protobuf",
    "render_text",
    "write_request",
]

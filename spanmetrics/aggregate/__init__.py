"""Aggregation: spans to series, exponential histograms, temporality.

Nothing here imports Kafka, Redis or Prometheus code.
"""

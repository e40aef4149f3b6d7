"""Durable fleet state: checkpoints and publish records, fenced against zombie writers."""

"""Export: metric points to wire formats (OTLP proto/JSON)."""

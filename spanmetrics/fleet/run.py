"""Running a worker as a process: overrides, signals, logging."""

from __future__ import annotations

import logging
import os
import socket

from spanmetrics.config.defaults import DEFAULT_HEALTH_PORT
from spanmetrics.config.load import ConfigError, parse_topology
from spanmetrics.config.model import Topology
from spanmetrics.fleet.worker import Worker
from spanmetrics.model.clock import SystemClock
from spanmetrics.net import redact_url
from spanmetrics.state.store import open_store

#: Environment variables that override the topology (the command line overrides both).
ENV_BROKER = "SPANMETRICS_BROKER"
ENV_STATE = "SPANMETRICS_STATE"
ENV_GROUP = "SPANMETRICS_GROUP"
ENV_SCRAPE_PORT = "SPANMETRICS_SCRAPE_PORT"
ENV_HEALTH_PORT = "SPANMETRICS_HEALTH_PORT"


def apply_overrides(
    topology: Topology,
    broker: str | None = None,
    state: str | None = None,
    group: str | None = None,
    flush_interval: str | None = None,
    scrape_port: int | None = None,
) -> Topology:
    """The topology with command-line, then environment, overrides applied.

    Raises:
        ConfigError: an override is invalid; the message names the key it sets.
    """
    # exclude_none: an unset sink kind dumps as None, which would read back as "given".
    document = topology.model_dump(exclude_none=True, by_alias=True)
    if broker := broker or os.environ.get(ENV_BROKER):
        document["source"]["broker"] = broker
    if group := group or os.environ.get(ENV_GROUP):
        document["source"]["group"] = group
    if state := state or os.environ.get(ENV_STATE):
        document["state"] = state
    if flush_interval:
        document["spanmetrics"]["metrics_flush_interval"] = flush_interval
    if scrape_port is None and (env_port := os.environ.get(ENV_SCRAPE_PORT)):
        if not env_port.isdigit():
            raise ConfigError(
                "environment", [f"{ENV_SCRAPE_PORT}: expected a port number, got {env_port!r}"]
            )
        scrape_port = int(env_port)
    if scrape_port is not None:
        for sink in document["sinks"]:
            if sink.get("prometheus"):
                sink["prometheus"]["port"] = scrape_port
    return parse_topology(document, "command line and environment")


def health_port(given: int | None) -> int:
    """The probes' port: ``--health-port``, else SPANMETRICS_HEALTH_PORT, else the default.

    Raises:
        ConfigError: the environment's value is not a port number.
    """
    if given is not None:
        return given
    env = os.environ.get(ENV_HEALTH_PORT)
    if env is None:
        return DEFAULT_HEALTH_PORT
    if not env.isdigit() or int(env) > 65535:
        problem = f"{ENV_HEALTH_PORT}: expected a port number, got {env!r}"
        raise ConfigError("environment", [problem])
    return int(env)


def run_worker(topology: Topology, worker_id: str | None = None, health: int | None = None) -> None:
    """Run one worker under faust until SIGTERM or SIGINT; it then flushes, checkpoints
    and leaves the group."""
    from spanmetrics.fleet.app import run_app

    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    store = open_store(topology.state, topology.source.group)
    worker = Worker(topology, store, SystemClock(), worker_id=worker_id)
    logging.getLogger("spanmetrics.worker").info(
        "%s: starting on %s topic %s group %s state %s",
        worker_id,
        worker.bootstrap,
        topology.source.topic,
        topology.source.group,
        redact_url(topology.state),
    )
    run_app(worker, health_port(health))

"""Waiting for the broker and Redis when a worker starts.

Either may be unreachable for a while (a rollout of the whole stack, a DNS record not yet
there). The worker then logs one line per attempt naming the setting and the address,
and tries again with a growing delay, rather than dying with a traceback and leaving its
restart loop to Kubernetes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from spanmetrics.config.model import Topology
from spanmetrics.net import redact_url
from spanmetrics.state.store import open_store

log = logging.getLogger("spanmetrics.worker")

#: First and largest delay between two attempts, in seconds.
STARTUP_RETRY_FIRST_S, STARTUP_RETRY_MAX_S = 1.0, 30.0

_T = TypeVar("_T")


class NotThereYet(Exception):
    """Something the worker needs is missing for now (the input topic, before the
    Collector's exporter or an operator creates it); the message names the setting."""


def _reason(err: BaseException) -> str:
    name, text = type(err).__name__, str(err).strip()
    if not text or text.startswith(name):  # aiokafka's errors start with their name
        return text or name
    return f"{name}: {text}"


async def _store_reachable(topology: Topology) -> None:
    # A store of its own, on this loop: the worker's store binds to faust's loop later.
    store = open_store(topology.state, topology.source.group)
    try:
        await store.ping()
    finally:
        await store.close()


async def when_reachable(
    topology: Topology,
    bootstrap: str,
    prepare: Callable[[], Awaitable[_T]],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> _T:
    """``prepare()`` (the broker's first calls) once Redis (``state``) answers a ping and
    ``prepare`` itself does not fail on the network or raise :class:`NotThereYet`; until
    then one warning per attempt, and a retry after 1 s, 2 s, 4 s … at most 30 s."""
    delay = STARTUP_RETRY_FIRST_S
    # aiokafka logs every refused connection at ERROR with its own wording: the line
    # below says the same once, with the setting's name.
    client_log = logging.getLogger("aiokafka")
    while True:
        try:
            await _store_reachable(topology)
        except (TimeoutError, RedisError, OSError) as err:
            problem = f"state: cannot reach {redact_url(topology.state)} ({_reason(err)})"
        else:
            level = client_log.level
            client_log.setLevel(logging.CRITICAL)
            try:
                return await prepare()
            except (TimeoutError, KafkaError, OSError) as err:
                problem = f"source.broker: cannot reach {bootstrap} ({_reason(err)})"
            except NotThereYet as err:
                problem = str(err)
            finally:
                client_log.setLevel(level)
        log.warning("%s; retrying in %.0f s", problem, delay)
        await sleep(delay)
        delay = min(delay * 2, STARTUP_RETRY_MAX_S)

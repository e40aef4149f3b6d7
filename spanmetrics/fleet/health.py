"""``/healthz`` and ``/readyz`` of a worker, for Kubernetes probes.

- ``/healthz`` (liveness): the process answers, and its consumer is not stuck: it owns
  partitions with records behind them, yet read nothing for :data:`STUCK_AFTER_S`.
- ``/readyz`` (readiness): it joined the group, its last checkpoint succeeded recently
  (when it owns shards), Redis answers, and the broker took its last telemetry recently.

Each answers JSON with every check, so that ``kubectl describe`` says what is wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from spanmetrics.model.clock import Clock

log = logging.getLogger("spanmetrics.health")

#: No record read for this long while records wait: the consumer is stuck.
STUCK_AFTER_S = 120.0
#: Redis must answer a ping within this.
PING_TIMEOUT_S = 2.0


@dataclass(slots=True)
class HealthState:
    """What the worker tells the probes (it updates these as it works)."""

    joined: bool = False
    """Assigned partitions by the group at least once."""
    owns_partitions: bool = False
    owns_shards: bool = False
    last_record_ns: int = 0
    """When the worker last read a record of its input (0: never)."""
    lag: float = 0.0
    """Records behind the high watermarks of its partitions (a health signal only)."""
    last_checkpoint_ns: int = 0
    last_broker_ok_ns: int = 0
    """When the broker last acknowledged a record the worker sent."""
    started_ns: int = 0


def liveness(state: HealthState, now_ns: int) -> tuple[bool, dict[str, object]]:
    """Whether the worker is alive and reading, with the reasons."""
    idle_s = (now_ns - max(state.last_record_ns, state.started_ns)) / 1e9
    stuck = state.owns_partitions and state.lag > 0 and idle_s > STUCK_AFTER_S
    return not stuck, {"consumer": "stuck" if stuck else "ok", "idle_seconds": round(idle_s, 1),
                       "lag": state.lag}  # fmt: skip


def readiness(
    state: HealthState, now_ns: int, window_s: float, redis_ok: bool
) -> tuple[bool, dict[str, object]]:
    """Whether the worker does its share, with each check; ``window_s``: how old the last
    checkpoint and broker acknowledgement may be."""
    age = (now_ns - state.last_checkpoint_ns) / 1e9 if state.last_checkpoint_ns else None
    since_start = (now_ns - state.started_ns) / 1e9
    broker_age = (now_ns - state.last_broker_ok_ns) / 1e9 if state.last_broker_ok_ns else None
    checks: dict[str, object] = {
        "group": "joined" if state.joined else "not joined",
        "checkpoint": (
            "no shards" if not state.owns_shards
            else "ok" if age is not None and age <= window_s
            else "starting" if age is None and since_start <= window_s
            else f"last {age:.0f}s ago" if age is not None else "none yet"
        ),
        "state": "reachable" if redis_ok else "unreachable",
        "broker": (
            "ok" if broker_age is not None and broker_age <= window_s
            else "starting" if broker_age is None and since_start <= window_s
            else "no acknowledgement" + (f" for {broker_age:.0f}s" if broker_age else "")
        ),
    }  # fmt: skip
    ready = (
        state.joined
        and checks["checkpoint"] in ("ok", "no shards", "starting")
        and redis_ok
        and checks["broker"] in ("ok", "starting")
    )
    return ready, checks


class HealthServer:
    """Serves ``/healthz`` and ``/readyz`` on ``host:port`` (0: a free port)."""

    def __init__(
        self,
        host: str,
        port: int,
        state: HealthState,
        clock: Clock,
        window_s: float,
        ping: Callable[[], Awaitable[None]],
    ) -> None:
        self.host = host
        self.port = port
        self._state = state
        self._clock = clock
        self._window_s = window_s
        self._ping = ping
        self._runner: web.AppRunner | None = None

    async def _redis_ok(self) -> bool:
        try:
            await asyncio.wait_for(self._ping(), PING_TIMEOUT_S)
            return True
        except Exception:
            return False

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, checks = liveness(self._state, self._clock.now_ns())
        return _answer(ok, checks)

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, checks = readiness(
            self._state, self._clock.now_ns(), self._window_s, await self._redis_ok()
        )
        return _answer(ok, checks)

    async def start(self) -> None:
        """Listen; with port 0 a free port is chosen and stored in :attr:`port`."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        log.info("health on %s:%d (/healthz, /readyz)", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _answer(ok: bool, checks: dict[str, object]) -> web.Response:
    body = json.dumps({"status": "ok" if ok else "fail", **checks})
    return web.Response(status=200 if ok else 503, text=body, content_type="application/json")

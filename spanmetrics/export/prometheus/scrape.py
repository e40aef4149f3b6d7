"""The ``/metrics`` endpoint of a worker."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from spanmetrics.export.prometheus.exposition import negotiate
from spanmetrics.export.prometheus.series import Series

log = logging.getLogger("spanmetrics.scrape")


class ScrapeServer:
    """Serves ``provider()`` on ``/metrics`` in the format the scraper asks for."""

    def __init__(self, host: str, port: int, provider: Callable[[], list[Series]]) -> None:
        self.host = host
        self.port = port
        self._provider = provider
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        content_type, render = negotiate(request.headers.get("Accept"))
        try:
            body = render(self._provider())
        except Exception:
            log.exception("rendering /metrics failed")
            return web.Response(status=500, text="rendering metrics failed; see the worker log")
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def start(self) -> None:
        """Listen; with port 0 a free port is chosen and stored in :attr:`port`."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

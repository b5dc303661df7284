"""Shutting down without dropping requests: drain first, then cut off what is left with a 503.

On the first SIGTERM ``DrainingServer`` turns /readyz to 503 at once and keeps serving for
``QUADS_DRAIN_SECONDS``, so load balancers stop routing here before the socket closes; uvicorn's
graceful shutdown then finishes the requests in flight for up to ``QUADS_SHUTDOWN_TIMEOUT_SECONDS``,
and ``ShutdownCutoffMiddleware`` answers the ones it cancels after that.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.asgi import HttpMiddleware, WatchedSend
from service.problems import problem_response

logger = logging.getLogger("service")


class ShutdownCutoffMiddleware(HttpMiddleware):
    """Answers 503 ``draining`` to a request that uvicorn cancels when its shutdown timeout ends
    (an upload still arriving, say), where uvicorn would answer a bare 500 and log a traceback."""

    def __init__(self, app: ASGIApp, state):
        super().__init__(app)
        self.state = state  # the app's state: ``draining`` is set from the first SIGTERM on

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        watched = WatchedSend(send)
        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            if watched.started or not self.state.draining:
                raise
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):  # Python >= 3.11
                task.uncancel()  # handled: the answer below ends the request
            detail = "the service shut down before this request finished; retry on another replica"
            headers = {"Connection": "close", "Retry-After": "1"}
            await problem_response(Request(scope), 503, "draining", detail, headers)(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """uvicorn, plus a drain period: on the first SIGTERM, /readyz turns 503 at once while requests
    are still served for ``drain_seconds``, so load balancers stop routing here before the
    listening socket closes. Then uvicorn's graceful shutdown finishes in-flight requests."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float):
        super().__init__(config)
        self.app = app
        self.drain_seconds = drain_seconds
        self._drain_timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame) -> None:
        already_draining = self.app.state.draining
        self.app.state.draining = True
        if sig == signal.SIGTERM and self.drain_seconds > 0 and not already_draining:
            logger.info("SIGTERM: draining for %.1f s before shutting down", self.drain_seconds)
            self._drain_timer = threading.Timer(self.drain_seconds, super().handle_exit, (sig, frame))
            self._drain_timer.daemon = True
            self._drain_timer.start()
            return
        if self._drain_timer is not None:
            self._drain_timer.cancel()  # a second signal: stop now
        super().handle_exit(sig, frame)

"""Admission control for ``POST /intent``: refuse before the body is read, and pace the refusals.

The engine's queue bounds the requests that reached the model, but a request costs the event
loop most of its work before that: its body is received and parsed, and it goes through
FastAPI's routing and dependencies. ``AdmissionGate`` counts the requests admitted to
``/intent`` from the moment their head arrives until their answer is sent, and answers the
rest with 503 ``overloaded`` and ``Retry-After`` from the head alone: no body parsing, no
routing, one small answer. The limit is the engine's queue plus one running batch, so an
admitted request never finds the queue full, and its wait stays bounded by the queue.

Cheap refusals are not enough when clients send again as soon as they are answered (load
generators, naive retry loops, a client on the same host): the faster the 503s, the more
requests arrive, and the refusals (the client's, the kernel's and the event loop's share)
take the CPU the model needs. On a 2-core host at 256 such connections, immediate refusals
ran at about 5,000/s and the model answered 21% of its peak rate (``bench/bench_overload.py
--env QUADS_REFUSALS_PER_SECOND=1000000``). So refusals are paced:
at most ``refusals_per_second`` 503s are sent per second, and a refusal beyond that waits for
its turn (an asyncio timer: no CPU), or ``MAX_REFUSAL_DELAY`` seconds when every turn within
that bound is taken. Under mild overload a refusal is immediate; under a flood the refusal path
has a CPU budget that grows only with the connections beyond ``rate * MAX_REFUSAL_DELAY``.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from service.asgi import HttpMiddleware
from service.metrics import ServiceMetrics
from service.problems import PROBLEM_MEDIA_TYPE, RETRY_AFTER_SECONDS

GATED_PATH = "/intent"
MAX_REFUSAL_DELAY = 1.0  # seconds; no refusal waits longer, whatever the pace


class RefusalPacer:
    """Spaces events at least ``1 / rate`` seconds apart: ``delay()`` is how long this one must wait."""

    def __init__(self, rate: float, max_delay: float = MAX_REFUSAL_DELAY, clock=time.monotonic):
        if rate <= 0:
            raise ValueError(f"the refusal rate must be positive, got {rate}")
        self.interval = 1.0 / rate
        self.max_delay = max_delay
        self.clock = clock
        self._next = 0.0  # when the next refusal may go out

    def delay(self) -> float:
        now = self.clock()
        at = max(now, self._next)
        if at - now > self.max_delay:
            return self.max_delay  # every slot within the bound is taken: wait the bound, take no slot
        self._next = at + self.interval
        return at - now


class AdmissionGate(HttpMiddleware):
    """Admits at most ``limit`` concurrent ``POST /intent`` requests; refuses the rest from their head."""

    def __init__(self, app: ASGIApp, limit: int, refusals_per_second: float = 100.0, metrics: ServiceMetrics | None = None):
        super().__init__(app)
        if limit < 1:
            raise ValueError(f"the admission limit must be at least 1, got {limit}")
        self.limit = limit
        self.pacer = RefusalPacer(refusals_per_second)
        self.metrics = metrics
        self.admitted = 0

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != GATED_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.admitted >= self.limit:
            await self._refuse(scope, send)
            return
        self.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.admitted -= 1

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels("overloaded").inc()
        scope.setdefault("state", {})["route_template"] = GATED_PATH  # for the HTTP metrics: the router never saw it
        delay = self.pacer.delay()
        if delay > 0:
            await asyncio.sleep(delay)
        problem = {
            "type": "urn:quads:problem:overloaded",
            "title": "Service Unavailable",
            "status": 503,
            "detail": f"{self.limit} requests are already being answered; retry after {RETRY_AFTER_SECONDS} s",
            "instance": scope["path"],
        }
        request_id = scope.get("state", {}).get("request_id")
        if request_id is not None:
            problem["request_id"] = request_id
        body = json.dumps(problem).encode()
        headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

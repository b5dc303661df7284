"""Admission control for ``POST /intent``: uploads apart from the model's slots, refusals from the head, paced.

The engine's queue bounds the requests that reached the model, but a request costs the event
loop most of its work before that: its body is received and parsed, and it goes through
FastAPI's routing and dependencies. ``AdmissionGate`` admits a request to the model only once
its body is complete, and counts it from then until its answer is sent: a request still
uploading holds no model slot, so clients that trickle their bodies (slowloris) cannot lock
the others out. Uploads in progress are bounded apart (``max_uploads``), and the body-limit
middleware cuts one that arrives slower than its minimum rate (``service.body``). When the
model's slots are full as a head arrives, the request is answered 503 ``overloaded`` with
``Retry-After`` from the head alone: no body read, no routing, one small answer; a body that
completes while they are full gets the same answer. The limit is the engine's queue plus one
running batch, so an admitted request never finds the queue full, and its wait stays bounded.

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

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.asgi import HttpMiddleware
from service.body import carries_audio, media_type
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
    """Admits at most ``limit`` concurrent ``POST /intent`` requests with complete bodies, and at most
    ``max_uploads`` uploading; refuses the rest with 503."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        refusals_per_second: float = 100.0,
        metrics: ServiceMetrics | None = None,
        max_uploads: int = 512,
    ):
        super().__init__(app)
        if limit < 1 or max_uploads < 1:
            raise ValueError(f"the admission and upload limits must be at least 1, got {limit} and {max_uploads}")
        self.limit, self.max_uploads = limit, max_uploads
        self.pacer = RefusalPacer(refusals_per_second)
        self.metrics = metrics
        self.admitted = 0  # requests with a complete body, until their answer is sent
        self.uploading = 0  # requests past the gate whose body is still arriving

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != GATED_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        # For the HTTP metrics: a refusal here, or a body cut before routing, is still /intent's.
        scope.setdefault("state", {})["route_template"] = GATED_PATH
        if self.admitted >= self.limit:
            await self._refuse(scope, send, "overloaded", f"{self.limit} requests are already being answered")
            return
        if carries_audio(media_type(scope)):  # else the route answers 415 without reading the body
            if self.uploading >= self.max_uploads:
                await self._refuse(scope, send, "uploads", f"{self.max_uploads} uploads are already in progress")
                return
            self.uploading += 1
            try:
                messages = await read_body_messages(receive)  # a body-limit violation propagates from here
            finally:
                self.uploading -= 1
            if self.admitted >= self.limit:
                await self._refuse(scope, send, "overloaded", f"{self.limit} requests are already being answered")
                return
            receive = replay(messages, receive)
        self.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.admitted -= 1

    async def _refuse(self, scope: Scope, send: Send, reason: str, why: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason).inc()
        delay = self.pacer.delay()
        if delay > 0:
            await asyncio.sleep(delay)
        problem = {
            "type": "urn:quads:problem:overloaded",
            "title": "Service Unavailable",
            "status": 503,
            "detail": f"{why}; retry after {RETRY_AFTER_SECONDS} s",
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


async def read_body_messages(receive: Receive) -> list[Message]:
    """Every message up to the body's last (or the client's disconnect), as they arrived."""
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` again, then what the connection sends next (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed

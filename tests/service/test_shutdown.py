"""service.shutdown: a request cancelled while draining gets a 503, and SIGTERM drains before stopping."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from types import SimpleNamespace

import pytest
import uvicorn

from service.shutdown import DrainingServer, ShutdownCutoffMiddleware


def scope() -> dict:
    return {"type": "http", "method": "POST", "path": "/intent", "headers": [], "query_string": b"", "state": {}}


def run(middleware) -> list[dict]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(middleware(scope(), receive, send))
    return sent


async def cancelled_app(scope, receive, send):
    raise asyncio.CancelledError


def test_a_request_cancelled_while_draining_is_answered_503_draining():
    sent = run(ShutdownCutoffMiddleware(cancelled_app, SimpleNamespace(draining=True)))
    start, body = sent[0], json.loads(sent[1]["body"])
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert start["status"] == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert body["type"] == "urn:quads:problem:draining" and "another replica" in body["detail"]


def test_a_cancellation_outside_shutdown_or_after_the_answer_started_is_not_swallowed():
    with pytest.raises(asyncio.CancelledError):
        run(ShutdownCutoffMiddleware(cancelled_app, SimpleNamespace(draining=False)))

    async def started_then_cancelled(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        run(ShutdownCutoffMiddleware(started_then_cancelled, SimpleNamespace(draining=True)))


def server(drain_seconds: float) -> DrainingServer:
    app = SimpleNamespace(state=SimpleNamespace(draining=False))
    return DrainingServer(uvicorn.Config(app=None), app, drain_seconds)


def test_sigterm_turns_readiness_off_at_once_and_stops_after_the_drain():
    s = server(0.2)
    s.handle_exit(signal.SIGTERM, None)
    assert s.app.state.draining and not s.should_exit  # still serving
    time.sleep(0.5)
    assert s.should_exit


def test_a_second_signal_or_sigint_stops_at_once():
    s = server(30)
    s.handle_exit(signal.SIGTERM, None)
    s.handle_exit(signal.SIGTERM, None)
    assert s.should_exit and s._drain_timer.finished.is_set()  # the drain timer is cancelled
    s = server(30)
    s.handle_exit(signal.SIGINT, None)
    assert s.app.state.draining and s.should_exit

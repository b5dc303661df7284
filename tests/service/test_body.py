"""The body limits (service.body) in process: size, the hard upload deadline and the minimum rate."""

from __future__ import annotations

import asyncio
import json
import time

from service.body import BodyLimitMiddleware


async def reading_app(scope, receive, send):
    """Reads the whole body, then answers 200 with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def trickle(chunks: int, size: int, every: float):
    """A client that sends ``chunks`` chunks of ``size`` bytes, one every ``every`` seconds."""
    sent = 0

    async def receive():
        nonlocal sent
        await asyncio.sleep(every)
        sent += 1
        return {"type": "http.request", "body": b"x" * size, "more_body": sent < chunks}

    return receive


def call(middleware, receive, headers=()) -> tuple[int, dict, float]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/intent",
        "headers": list(headers),
        "state": {},
        "query_string": b"",
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "root_path": "",
    }
    sent = []

    async def send(message):
        sent.append(message)

    start = time.monotonic()
    asyncio.run(middleware(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return (
        sent[0]["status"],
        (json.loads(body) if sent[0]["status"] != 200 else {"size": int(body)}),
        time.monotonic() - start,
    )


def test_a_body_slower_than_the_minimum_rate_is_cut_after_the_grace():
    limits = BodyLimitMiddleware(
        reading_app, max_bytes=10_000, timeout_seconds=30, min_bytes_per_second=100, grace_seconds=0.3
    )
    # 1 byte every 50 ms: 20 bytes/s, far below 100 bytes/s.
    status, problem, seconds = call(limits, trickle(1000, 1, 0.05))
    assert status == 408 and problem["type"] == "urn:quads:problem:body-too-slow"
    assert "slower than 100 bytes/s after the first 0.3 s" in problem["detail"]
    assert 0.3 <= seconds < 1.5  # after the grace (plus the deadline's growth with the bytes), not after 30 s


def test_a_body_at_the_minimum_rate_is_never_cut_by_it():
    limits = BodyLimitMiddleware(
        reading_app, max_bytes=10_000, timeout_seconds=30, min_bytes_per_second=100, grace_seconds=0.1
    )
    # 20 bytes every 50 ms: 400 bytes/s, for 1 s.
    status, answer, _ = call(limits, trickle(20, 20, 0.05))
    assert status == 200 and answer == {"size": 400}


def test_the_hard_deadline_and_the_size_limit_still_hold():
    limits = BodyLimitMiddleware(reading_app, max_bytes=100, timeout_seconds=0.3)
    status, problem, seconds = call(limits, trickle(1000, 1, 0.05))
    assert status == 408 and problem["type"] == "urn:quads:problem:body-timeout" and seconds < 1.5
    status, problem, _ = call(limits, trickle(3, 60, 0.0))
    assert status == 413 and problem["type"] == "urn:quads:problem:body-too-large"
    status, problem, _ = call(limits, trickle(1, 1, 0.0), headers=[(b"content-length", b"5000")])
    assert status == 413  # refused from the declared length, before reading

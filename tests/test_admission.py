"""The admission gate: refusals from the request head, paced, counted; and the refusal pace on a real server."""

from __future__ import annotations

import asyncio
import json

import pytest

from service.admission import GATED_PATH, AdmissionGate, RefusalPacer
from service.metrics import ServiceMetrics


def test_pacer_spaces_refusals_and_never_waits_past_its_bound(fake_clock):
    clock = fake_clock
    pacer = RefusalPacer(rate=10, max_delay=0.35, clock=clock)
    assert [round(pacer.delay(), 3) for _ in range(4)] == [0.0, 0.1, 0.2, 0.3]
    assert pacer.delay() == 0.35  # every slot within the bound is taken: wait the bound
    assert pacer.delay() == 0.35  # ... and that takes no slot
    clock.now += 1.0  # the queue of slots has drained
    assert pacer.delay() == 0.0
    with pytest.raises(ValueError):
        RefusalPacer(rate=0)


def http_scope(path: str = GATED_PATH, method: str = "POST") -> dict:
    return {"type": "http", "path": path, "method": method, "headers": [], "state": {"request_id": "req-1"}}


async def body_never_read():
    raise AssertionError("the gate read the body of a request it refused")


def test_gate_refuses_from_the_head_once_the_limit_is_admitted():
    release = asyncio.Event()
    calls: list[str] = []

    async def app(scope, receive, send):  # holds every admitted request until released
        calls.append(scope["path"])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    metrics = ServiceMetrics()
    gate = AdmissionGate(app, limit=2, refusals_per_second=1000, metrics=metrics)

    async def request(scope):
        sent = []

        async def send(message):
            sent.append(message)

        await gate(scope, body_never_read, send)
        return sent

    async def scenario():
        admitted = [asyncio.create_task(request(http_scope())) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert gate.admitted == 2
        refused = await request(http_scope())
        other_route = asyncio.create_task(request(http_scope("/healthz", "GET")))  # never gated
        await asyncio.sleep(0.01)
        release.set()
        return refused, await asyncio.gather(*admitted), await other_route

    refused, admitted, other = asyncio.run(scenario())
    start, body = refused
    headers = dict(start["headers"])
    problem = json.loads(body["body"])
    assert start["status"] == 503 and headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/problem+json"
    assert int(headers[b"content-length"]) == len(body["body"])
    assert problem["type"] == "urn:quads:problem:overloaded" and problem["request_id"] == "req-1"
    assert [a[0]["status"] for a in admitted] == [200, 200] and other[0]["status"] == 200
    assert calls == [GATED_PATH, GATED_PATH, "/healthz"] and gate.admitted == 0
    assert metrics.registry.get_sample_value("quads_rejected_total", {"reason": "overloaded"}) == 1


def test_gate_frees_the_slot_when_the_app_fails():
    async def failing(scope, receive, send):
        raise RuntimeError("boom")

    gate = AdmissionGate(failing, limit=1)

    async def send(message):
        pass

    with pytest.raises(RuntimeError):
        asyncio.run(gate(http_scope(), body_never_read, send))
    assert gate.admitted == 0

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


def http_scope(path: str = GATED_PATH, method: str = "POST", media_type: bytes = b"audio/wav") -> dict:
    return {
        "type": "http",
        "path": path,
        "method": method,
        "headers": [(b"content-type", media_type)],
        "state": {"request_id": "req-1"},
    }


def body_of(*chunks: bytes):
    """A ``receive`` that sends ``chunks`` as the body, then reports a disconnect."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def stalled_upload(started: asyncio.Event | None = None):
    """A ``receive`` whose body never arrives (a client trickling nothing)."""

    async def receive():
        if started is not None:
            started.set()
        await asyncio.Event().wait()

    return receive


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

    async def request(scope, receive=body_never_read):
        sent = []

        async def send(message):
            sent.append(message)

        await gate(scope, receive, send)
        return sent

    async def scenario():
        admitted = [asyncio.create_task(request(http_scope(), body_of(b"RIFF"))) for _ in range(2)]
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
        asyncio.run(gate(http_scope(), body_of(b"x"), send))
    assert gate.admitted == 0 and gate.uploading == 0


def run_app(gate, scope, receive) -> list[dict]:
    sent = []

    async def send(message):
        sent.append(message)

    async def go():
        await gate(scope, receive, send)
        return sent

    return go()


def test_uploads_in_progress_hold_no_model_slot_and_the_app_reads_the_whole_body():
    seen: list[bytes] = []

    async def app(scope, receive, send):
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen.append(b"".join(chunks))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gate = AdmissionGate(app, limit=2, max_uploads=10)

    async def scenario():
        slow = [asyncio.create_task(run_app(gate, http_scope(), stalled_upload())) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert gate.uploading == 5 and gate.admitted == 0  # five trickling uploads: no model slot taken
        answered = await run_app(gate, http_scope(), body_of(b"RIFF", b"data"))
        for task in slow:
            task.cancel()
        return answered

    answered = asyncio.run(scenario())
    assert answered[0]["status"] == 200 and seen == [b"RIFFdata"]
    assert gate.uploading == 0 and gate.admitted == 0


def test_uploads_past_their_cap_and_bodies_that_complete_into_a_full_gate_are_refused():
    release = asyncio.Event()

    async def held(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    metrics = ServiceMetrics()
    gate = AdmissionGate(held, limit=1, max_uploads=2, refusals_per_second=1000, metrics=metrics)

    async def scenario():
        gate_started = asyncio.Event()
        slow = [asyncio.create_task(run_app(gate, http_scope(), stalled_upload(gate_started))) for _ in range(2)]
        await gate_started.wait()
        await asyncio.sleep(0.01)
        too_many = await run_app(gate, http_scope(), body_never_read)  # both upload slots taken
        for task in slow:
            task.cancel()
        await asyncio.sleep(0.01)
        first = asyncio.create_task(run_app(gate, http_scope(), body_of(b"a")))
        await asyncio.sleep(0.01)
        assert gate.admitted == 1
        full = await run_app(gate, http_scope(), body_of(b"b"))  # the head finds the model's slot taken
        release.set()
        return too_many, full, await first

    too_many, full, first = asyncio.run(scenario())
    assert too_many[0]["status"] == 503 and b"2 uploads are already in progress" in too_many[1]["body"]
    assert full[0]["status"] == 503 and first[0]["status"] == 200
    assert metrics.registry.get_sample_value("quads_rejected_total", {"reason": "uploads"}) == 1
    assert metrics.registry.get_sample_value("quads_rejected_total", {"reason": "overloaded"}) == 1


def test_a_request_that_is_not_audio_passes_without_its_body_being_read():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 415, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = AdmissionGate(app, limit=1)
    sent = asyncio.run(run_app(gate, http_scope(media_type=b"text/plain"), body_never_read))
    assert sent[0]["status"] == 415

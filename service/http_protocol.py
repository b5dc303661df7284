"""uvicorn's HTTP/1.1 protocol (h11) with the two guards it lacks against untrusted clients.

1. **A deadline for the request head.** uvicorn waits for a request line and headers forever: a
   client that connects and sends nothing, or sends its head a byte a second (slowloris), holds
   a connection and a file descriptor for as long as it likes. Here a connection on which no
   request is being handled (just opened, or its last answer sent) must deliver a complete
   request head within ``head_timeout`` seconds. Otherwise it is closed, after a 408
   problem+json if part of a head had arrived. The same deadline closes a connection that keeps
   trickling the rest of a body the app answered without reading (say, a 415). A body the app
   is reading is bounded by ``service.body.BodyLimitMiddleware`` instead.
2. **Its 400 is problem+json**, like every other error of the service. h11 answers 400 to a
   malformed request line or header, a head over 16 KiB, and the bytes that follow a body
   shorter than the Content-Length it came with.

Both answers come from below the ASGI app, so ``quads_http_requests_total`` does not count them.
The class relies on ``H11Protocol`` internals (``cycle``, ``conn``, ``on_response_complete``,
``send_400_response``); tests/service/test_hostile_inputs.py checks the behaviour on a real server.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.problems import PROBLEM_MEDIA_TYPE, Problem


def problem_bytes(status: int, slug: str, detail: str) -> bytes:
    """A problem+json body, for answers written below the ASGI app (no request path known)."""
    problem = Problem(type=f"urn:quads:problem:{slug}", title=HTTPStatus(status).phrase, status=status, detail=detail)
    return problem.model_dump_json(exclude_none=True).encode()


class GuardedH11Protocol(H11Protocol):
    head_timeout: float = 30.0  # seconds; set by ``guarded_h11_protocol``

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        body = problem_bytes(
            400,
            "malformed-request",
            f"the request is not valid HTTP/1.1 ({msg.rstrip('.')}): check the request line and headers (at most "
            "16 KiB in all), and that Content-Length equals the number of body bytes sent",
        )
        headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()
        if self.cycle is not None and not self.cycle.response_complete:
            # A request still in the app (the bad bytes followed its body) must not answer on this
            # connection now: as uvicorn's connection_lost would, mark it gone, so its sends are dropped.
            self.cycle.disconnected = True

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_deadline_passed)

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is in the app, which bounds the time its body takes
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:  # part of a head arrived
            body = problem_bytes(
                408,
                "head-timeout",
                f"the request line and headers did not arrive within {self.head_timeout:g} s; send them in one go",
            )
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: "
                + PROBLEM_MEDIA_TYPE.encode()
                + b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                + body
            )
        self.transport.close()


def guarded_h11_protocol(head_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``, with its head deadline set."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"head_timeout": head_timeout})

"""Request-body limits: size (413) and upload time (408), enforced while the body streams in.

Starlette reads bodies without any limit, and a Content-Length header may be missing (chunked
upload) or wrong, so the bytes are counted as they arrive: the request is cut off as soon as it
passes ``max_bytes``, whatever its headers said. A declared Content-Length over the limit is
refused at the app's first read, before any byte is read; the route is known by then, so the
refusal is counted under it. A client that uploads too slowly (or stalls) is cut off after
``timeout_seconds``, so it cannot hold a connection and its buffer forever; and earlier, as
Apache's ``mod_reqtimeout`` ``MinRate`` does, one whose body arrives slower than
``min_bytes_per_second`` once ``grace_seconds`` have passed (the deadline moves on by a second
for every ``min_bytes_per_second`` bytes received): a client trickling a byte a second is cut
after the grace, not after 30 s.
"""

from __future__ import annotations

import anyio
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.asgi import HttpMiddleware
from service.problems import ProblemError, problem_response


class BodyTooLarge(ProblemError):
    def __init__(self, max_bytes: int):
        super().__init__(
            413,
            "body-too-large",
            f"the request body is over the {max_bytes}-byte limit; send a shorter or more compressed clip "
            "(e.g. 16 kHz mono FLAC) or raise QUADS_MAX_BODY_BYTES",
        )


class BodyTimeout(ProblemError):
    def __init__(self, timeout_seconds: float):
        super().__init__(
            408,
            "body-timeout",
            f"the request body did not arrive within {timeout_seconds:g} s; upload it in one go",
            headers={"Connection": "close"},
        )


class BodyTooSlow(ProblemError):
    def __init__(self, min_bytes_per_second: float, grace_seconds: float):
        super().__init__(
            408,
            "body-too-slow",
            f"the request body arrived slower than {min_bytes_per_second:g} bytes/s after the first "
            f"{grace_seconds:g} s; upload it in one go",
            headers={"Connection": "close"},
        )


class BodyLimitMiddleware(HttpMiddleware):
    """Answers 413/408 problem+json when a body breaks the limits."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_seconds: float,
        min_bytes_per_second: float = 0.0,
        grace_seconds: float = 5.0,
    ):
        super().__init__(app)
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self.min_bytes_per_second, self.grace_seconds = min_bytes_per_second, grace_seconds

    def _deadlines(self, start: float, received: int) -> tuple[float, float]:
        """(the upload's hard deadline, the one its minimum rate sets so far: ``inf`` without one)."""
        rate_bound = float("inf")
        if self.min_bytes_per_second > 0:
            rate_bound = start + self.grace_seconds + received / self.min_bytes_per_second
        return start + self.timeout_seconds, rate_bound

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _content_length(scope)
        received = 0
        start: float | None = None
        violation: ProblemError | None = None
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, start, violation
            if violation is not None:
                raise violation
            if declared is not None and declared > self.max_bytes:
                violation = BodyTooLarge(self.max_bytes)  # refuse before reading (nor sending 100 Continue)
                raise violation
            if start is None:
                start = anyio.current_time()
            deadline, rate_bound = self._deadlines(start, received)
            try:
                with anyio.fail_after(max(min(deadline, rate_bound) - anyio.current_time(), 0.0)):
                    message = await receive()
            except TimeoutError:
                too_slow = rate_bound < deadline
                violation = (
                    BodyTooSlow(self.min_bytes_per_second, self.grace_seconds)
                    if too_slow
                    else BodyTimeout(self.timeout_seconds)
                )
                raise violation from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    violation = BodyTooLarge(self.max_bytes)
                    raise violation
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if violation is not None and not response_started:
                return  # the app's answer to a body we cut off (say, a 400 from a parser) is replaced below
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except ProblemError as e:
            if e is not violation or response_started:
                raise
        if violation is not None and not response_started:
            await self._reject(violation, scope, receive, send)

    @staticmethod
    async def _reject(problem: ProblemError, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        headers = {"Connection": "close", **(problem.headers or {})}
        response = problem_response(request, problem.status, problem.slug, problem.detail, headers)
        await response(scope, receive, send)


def media_type(scope: Scope) -> str:
    """The request's content type without parameters, lower case ("" when it has none)."""
    return Headers(scope=scope).get("content-type", "").partition(";")[0].strip().lower()


def carries_audio(media: str) -> bool:
    """Whether ``POST /intent`` reads a body of this media type: multipart, ``audio/*`` or raw bytes."""
    return media == "multipart/form-data" or media.startswith("audio/") or media == "application/octet-stream"


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None

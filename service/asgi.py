"""The base of the service's pure ASGI middleware, and a ``send`` that remembers the response status.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so that request bodies stream through
untouched and a middleware can see exactly which bytes were received and sent. Each middleware
acts on HTTP requests only; lifespan and websocket scopes pass straight through.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HttpMiddleware:
    """Calls ``handle`` for each HTTP request; everything else goes to the app as it came."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class WatchedSend:
    """Wraps ``send``, noting the status once the response has started (``started``)."""

    def __init__(self, send: Send):
        self._send = send
        self.status: int | None = None

    @property
    def started(self) -> bool:
        return self.status is not None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)

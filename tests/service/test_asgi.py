"""service.asgi: the middleware base handles HTTP only; WatchedSend notes the status it passes on."""

from __future__ import annotations

import asyncio

from service.asgi import HttpMiddleware, WatchedSend


class Marking(HttpMiddleware):
    async def handle(self, scope, receive, send):
        scope["marked"] = True
        await self.app(scope, receive, send)


def test_only_http_scopes_reach_handle():
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["type"], scope.get("marked", False)))

    middleware = Marking(app)
    for kind in ("http", "lifespan", "websocket"):
        asyncio.run(middleware({"type": kind}, None, None))
    assert seen == [("http", True), ("lifespan", False), ("websocket", False)]


def test_watched_send_passes_every_message_and_remembers_the_status():
    sent = []

    async def send(message):
        sent.append(message)

    async def respond():
        watched = WatchedSend(send)
        assert not watched.started and watched.status is None
        await watched({"type": "http.response.start", "status": 418, "headers": []})
        await watched({"type": "http.response.body", "body": b"x"})
        return watched

    watched = asyncio.run(respond())
    assert watched.started and watched.status == 418
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]

"""Request ids and the service's log lines: text for people, or one JSON object per line.

Every HTTP request gets an id: the client's ``X-Request-ID`` when it is a sane token, else a new
one. It is sent back in the ``X-Request-ID`` response header, put in problem+json bodies
(``request_id``), and added to every log record written while the request is handled (uvicorn's
access line included), so that a client's report, a log line and a response can be matched.
Probe and scrape requests (``/healthz``, ``/readyz``, ``/metrics``) are left out of the access
log unless it runs at debug level.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone

from starlette.types import Message, Receive, Scope, Send

from service.asgi import HttpMiddleware

REQUEST_ID_HEADER = "X-Request-ID"
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_SANE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")  # what a proxy or tracer puts there; nothing that forges log lines
_request_id: ContextVar[str | None] = ContextVar("quads_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return _request_id.get()


class RequestIdMiddleware(HttpMiddleware):
    """Assigns the request id; add it outermost."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = dict(scope.get("headers", [])).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = incoming if _SANE_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = _request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id() or "-"
        return True


class QuietProbesFilter(logging.Filter):
    """Drops uvicorn's access lines for probes and scrapes unless the access log is at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record args: (client address, method, path with query, HTTP version, status)
        args = record.args if isinstance(record.args, tuple) else ()
        path = str(args[2]).split("?", 1)[0] if len(args) >= 3 else ""
        return path not in QUIET_PATHS or logging.getLogger("uvicorn.access").isEnabledFor(logging.DEBUG)


class TextFormatter(logging.Formatter):
    """``LEVEL:     logger: message``, with `` [request <id>]`` on lines written during a request."""

    def __init__(self):
        super().__init__("%(levelname)s:     %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "-")
        return line if request_id == "-" else f"{line} [request {request_id}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Send every logger (uvicorn's too) to one stderr handler, as text or JSON lines."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")
    access.filters[:] = [f for f in access.filters if not isinstance(f, QuietProbesFilter)]
    access.addFilter(QuietProbesFilter())

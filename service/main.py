"""The FastAPI app factory and the ``quads-serve`` command.

``create_app`` builds a fresh app (its own settings, metrics registry and state); the model is
loaded in ``lifespan``, never at import. ``quads-serve`` runs one uvicorn worker: the engine
already uses every CPU the container allows, so scale by replicas, not by workers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import service.openmp_policy  # noqa: F401 - before anything imports torch
from service.api import api_router
from service.api.routes import docs
from service.body import BodyLimitMiddleware
from core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from service.cpu import resolve_threads
from service.engine import InferenceEngine
from service.http_protocol import guarded_h11_protocol
from service.metrics import HttpMetricsMiddleware, ServiceMetrics
from service.problems import install_problem_handlers, problem_response
from service.request_log import RequestIdMiddleware, configure_logging
from service.settings import Settings, describe_errors, describe_variables
from core.version import package_version

logger = logging.getLogger("service")


def load_served_checkpoint(settings: Settings) -> Checkpoint:
    """Load the checkpoint the settings name; ``CheckpointError`` if it is missing, bad or of the wrong width."""
    path = settings.model_path
    checkpoint = load_checkpoint(path)
    expected = settings.expected_bits
    if expected is not None and checkpoint.bits != expected:
        raise CheckpointError(f"{path}: holds {checkpoint.bits}-bit weights, but QUADS_BITS={expected}")
    return checkpoint


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    threads = resolve_threads(settings.threads)  # applied by the engine's worker thread, where torch runs
    try:
        checkpoint = await anyio.to_thread.run_sync(load_served_checkpoint, settings)
    except CheckpointError as e:
        app.state.startup_error = e
        raise
    engine = InferenceEngine(
        checkpoint,
        threads=threads,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        max_audio_seconds=settings.max_audio_seconds,
        pad_to_30s=settings.pad_to_30s,
        compute_dtype=settings.compute_dtype,
        metrics=app.state.metrics,
    ).start()
    app.state.metrics.set_model(
        name=engine.model_name,
        bits=checkpoint.bits,
        sha256=checkpoint.sha256,
        file_bytes=checkpoint.file_bytes,
        memory_bytes=checkpoint.memory_bytes,
        parameters=checkpoint.n_params,
    )
    app.state.engine = engine
    logger.info(
        "serving %s (%d-bit, %d labels) with %d torch threads in %s, batches of up to %d",
        checkpoint.path, checkpoint.bits, len(checkpoint.labels), threads, engine.compute_dtype, settings.max_batch_size,
    )
    try:
        yield
    finally:
        app.state.draining = True
        await anyio.to_thread.run_sync(engine.close)  # answers every queued request first
        app.state.engine = None


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; ``settings`` default to the ``QUADS_*`` environment."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="QUADS intent service",
        summary="Spoken-intent recognition with a compressed Whisper encoder.",
        version=package_version(),
        lifespan=lifespan,
        docs_url=None,  # served by service.api.routes.docs from local files, not a CDN
        redoc_url=None,  # ReDoc has no offline bundle here; /docs covers the same schema
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.engine = None
    app.state.draining = False
    app.state.startup_error = None
    install_problem_handlers(app)
    # The last added is the outermost: metrics see the body limiter's 413/408 answers too.
    app.add_middleware(ShutdownCutoffMiddleware, state=app.state)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_seconds=settings.body_timeout_seconds)
    app.add_middleware(HttpMetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries the id
    app.include_router(api_router)
    app.mount(docs.ASSETS_PATH, docs.assets(), name="docs-assets")
    return app


class ShutdownCutoffMiddleware:
    """Answers 503 ``draining`` to a request that uvicorn cancels when its shutdown timeout ends
    (an upload still arriving, say), where uvicorn would answer a bare 500 and log a traceback."""

    def __init__(self, app: ASGIApp, state):
        self.app = app
        self.state = state  # the app's state: ``draining`` is set from the first SIGTERM on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if response_started or not self.state.draining:
                raise
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):  # Python >= 3.11
                task.uncancel()  # handled: the answer below ends the request
            detail = "the service shut down before this request finished; retry on another replica"
            headers = {"Connection": "close", "Retry-After": "1"}
            await problem_response(Request(scope), 503, "draining", detail, headers)(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """uvicorn, plus a drain period: on the first SIGTERM, /readyz turns 503 at once while requests
    are still served for ``drain_seconds``, so load balancers stop routing here before the
    listening socket closes. Then uvicorn's graceful shutdown finishes in-flight requests."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float):
        super().__init__(config)
        self.app = app
        self.drain_seconds = drain_seconds
        self._drain_timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame) -> None:
        already_draining = self.app.state.draining
        self.app.state.draining = True
        if sig == signal.SIGTERM and self.drain_seconds > 0 and not already_draining:
            logger.info("SIGTERM: draining for %.1f s before shutting down", self.drain_seconds)
            self._drain_timer = threading.Timer(self.drain_seconds, super().handle_exit, (sig, frame))
            self._drain_timer.daemon = True
            self._drain_timer.start()
            return
        if self._drain_timer is not None:
            self._drain_timer.cancel()  # a second signal: stop now
        super().handle_exit(sig, frame)


def cli(argv: list[str] | None = None) -> None:
    """``quads-serve [--host H] [--port P]``; everything else comes from QUADS_* variables."""
    parser = argparse.ArgumentParser(
        prog="quads-serve",
        description="Serve the QUADS intent model over HTTP (configure with QUADS_* environment variables).",
        epilog="environment variables:\n" + describe_variables(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as e:
        parser.exit(2, f"quads-serve: invalid configuration:\n{describe_errors(e)}\n")
    configure_logging(args.log_level, settings.log_format)

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        lifespan="on",
        # h11 plus a deadline for request heads (uvicorn alone waits forever) and problem+json 400s.
        http=guarded_h11_protocol(settings.body_timeout_seconds),
        log_level=args.log_level,
        log_config=None,  # configure_logging above: one handler and format for uvicorn's loggers too
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )
    server = DrainingServer(config, app, settings.drain_seconds)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits with code 3 when the lifespan fails
        if not server.started:
            reason = app.state.startup_error or "see the log above"
            parser.exit(e.code if isinstance(e.code, int) and e.code else 1, f"quads-serve: cannot start: {reason}\n")
        raise


if __name__ == "__main__":
    cli()

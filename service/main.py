"""The FastAPI app factory: ``create_app`` builds a fresh app (its own settings, metrics registry
and state), and the model is loaded in ``lifespan``, never at import. The ``quads-serve``
command that runs it is ``service.cli``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from core.audio import AudioDecodeError, AudioTooLongError, EmptyAudioError
from core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from core.version import package_version
from service.admission import AdmissionGate
from service.api import api_router
from service.api.routes import docs, try_page
from service.api.schemas import ModelInfo, document_null_intent
from service.body import BodyLimitMiddleware
from service.compute_path import choose_compute_path
from service.cpu import resolve_threads
from service.engine import EngineDraining, EngineOptions, EngineOverloaded, InferenceEngine, compute_thread
from service.heap import heap_allocator, return_freed_heap
from service.metrics import HttpMetricsMiddleware, ServiceMetrics
from service.problems import document_problems, install_problem_handlers
from service.request_log import RequestIdMiddleware
from service.settings import Settings
from service.shutdown import ShutdownCutoffMiddleware

logger = logging.getLogger("service")

# The errors the engine raises with a message for the client: (type, status, problem slug).
ERROR_PROBLEMS = (
    (AudioDecodeError, 400, "undecodable-audio"),
    (EmptyAudioError, 422, "empty-audio"),
    (AudioTooLongError, 422, "audio-too-long"),
    (EngineOverloaded, 503, "overloaded"),
    (EngineDraining, 503, "draining"),
)


def load_served_checkpoint(settings: Settings) -> Checkpoint:
    """Load the checkpoint the settings name; ``CheckpointError`` if it is missing, bad or of the wrong width."""
    path = settings.model_path
    checkpoint = load_checkpoint(path)
    expected = settings.expected_bits
    if expected is not None and checkpoint.bits != expected:
        raise CheckpointError(f"{path}: holds {checkpoint.bits}-bit weights, but QUADS_BITS={expected}")
    return_freed_heap()
    return checkpoint


def admission_limit(settings: Settings) -> int:
    """Requests admitted to POST /intent at once: the queue, plus the batch being computed."""
    return settings.max_queue + settings.max_batch_size


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    threads = resolve_threads(settings.threads)
    compute = compute_thread(threads)  # all torch work runs here, the load included (see service.engine)
    try:
        checkpoint = await asyncio.wrap_future(compute.submit(load_served_checkpoint, settings))
    except CheckpointError as e:
        compute.shutdown(wait=False)
        app.state.startup_error = e
        raise
    # Measured on this CPU, in the compute thread, before the engine prepares the model.
    choice = await asyncio.wrap_future(compute.submit(choose_compute_path, checkpoint.model, settings.precision))
    logger.info("compute path: %s", choice.describe())
    options = EngineOptions(
        threads=threads,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        # Everything the admission gate lets in may wait here: the gate is the one that refuses.
        max_queue=admission_limit(settings),
        max_audio_seconds=settings.max_audio_seconds,
        pad_to_30s=settings.pad_to_30s,
        compute_dtype=choice.path.dtype,
        onednn=choice.path.onednn,
    )
    engine = InferenceEngine(checkpoint, options, metrics=app.state.metrics, compute=compute).start()
    app.state.model_info = ModelInfo.of(engine, settings.confidence_threshold)
    app.state.metrics.set_model(app.state.model_info)
    app.state.engine = engine
    logger.info(
        "serving %s (%d-bit, %d labels) with %d torch threads in %s, batches of up to %d, on %s malloc",
        checkpoint.path,
        checkpoint.bits,
        len(checkpoint.labels),
        threads,
        engine.compute_path,
        settings.max_batch_size,
        heap_allocator(),
    )
    if heap_allocator() == "glibc":
        logger.warning(
            "running on glibc's malloc: clips of many lengths fragment its heap (GiBs under sustained "
            "traffic); preload jemalloc as the Docker image does (LD_PRELOAD, docs/service.md)"
        )
    try:
        yield
    finally:
        app.state.draining = True
        await anyio.to_thread.run_sync(engine.close)  # answers every queued request first
        compute.shutdown(wait=False)
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
        generate_unique_id_function=lambda route: route.name,  # operationId: the route function's name
    )
    document_problems(app)
    document_null_intent(app)
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.engine = None
    app.state.model_info = None  # ModelInfo of the loaded model, built once in lifespan
    app.state.draining = False
    app.state.startup_error = None
    install_problem_handlers(app, ERROR_PROBLEMS)
    # The last added is the outermost: metrics see the body limiter's 413/408 answers too.
    # Inside the body limits: the gate reads the body through them before it admits a request to
    # the model, and refuses from the head alone when the model's slots are full (service.admission).
    app.add_middleware(
        AdmissionGate,
        limit=admission_limit(settings),
        refusals_per_second=settings.refusals_per_second,
        metrics=app.state.metrics,
        max_uploads=settings.max_uploads,
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_seconds=settings.body_timeout_seconds,
        min_bytes_per_second=settings.min_upload_bytes_per_second,
        grace_seconds=settings.upload_grace_seconds,
    )
    app.add_middleware(ShutdownCutoffMiddleware, state=app.state)  # around the gate: an upload it holds is cut too
    app.add_middleware(HttpMetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries the id
    app.include_router(api_router)
    app.mount(docs.ASSETS_PATH, docs.assets(), name="docs-assets")
    app.mount(try_page.ASSETS_PATH, try_page.assets(), name="try-assets")
    return app

"""``quads-serve``: one uvicorn worker serving ``service.main.create_app``.

One worker: the engine already uses every CPU the container allows, so scale by replicas, not
workers. This module imports neither torch nor the app until the settings are valid, so
``--help``, ``--version`` and a bad ``QUADS_*`` value answer at once.
"""

from __future__ import annotations

import argparse
import os

import uvicorn
from pydantic import ValidationError

from core.version import package_version
from service.http_protocol import guarded_h11_protocol
from service.request_log import configure_logging
from service.settings import Settings, describe_errors, describe_variables
from service.shutdown import DrainingServer

GOMP_SPINCOUNT = 10_000


def set_openmp_wait_policy() -> None:
    """Let OpenMP threads spin only briefly while they wait; call it before torch is imported.

    libgomp (torch's OpenMP) reads its wait policy once, when torch loads. By default an idle
    thread spins for ~300,000 iterations before it sleeps: when anything else needs the same
    cores (the event loop, a co-located process, CFS throttling at the CPU limit), a spinning
    thread holds the core its partner needs, and on a busy 2-core host 2 torch threads served
    2-7 req/s spinning against 13-18 req/s never spinning (``OMP_WAIT_POLICY=PASSIVE``). But
    never spinning puts every one of the forward's ~100 parallel regions through a futex wake-up:
    a 3-s clip's model call is slower passive than with a short spin (``bench/bench_openmp.py``).
    ``GOMP_SPINCOUNT=10000`` (a few microseconds) bridges the gaps inside a forward and sleeps
    between requests. An explicit ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` wins.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(GOMP_SPINCOUNT))


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
    set_openmp_wait_policy()
    try:
        settings = Settings()
    except ValidationError as e:
        parser.exit(2, f"quads-serve: invalid configuration:\n{describe_errors(e)}\n")
    configure_logging(args.log_level, settings.log_format)

    from service.main import create_app  # torch loads here, after the OpenMP policy is set

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

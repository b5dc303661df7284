"""The inference engine: audio bytes in, intent probabilities out, off the event loop.

One thread does all torch work (loading the checkpoint, decode, log-mel, model): the
``compute_thread``. The process never runs more than ``threads`` compute threads however many
requests are in flight, and OpenMP keeps a single team. Every other thread that runs a parallel
torch op gets a team of its own, and once the process holds more OpenMP threads than CPUs,
libgomp stops letting idle threads spin between parallel regions: each of the forward's ~100
regions then waits on a futex (``bench/bench_openmp.py`` measures both). Requests wait in a
bounded queue; when it is full, ``submit`` refuses at once (``EngineOverloaded``, HTTP 503)
instead of letting latency grow without bound.

Micro-batching: the worker takes the first waiting request, then up to ``max_batch_size - 1``
more that arrive within ``max_wait_ms`` (0 = only those already queued), and runs the model
once on the batch. Clips of different lengths are padded and masked (``pad_mels`` +
``mel_lengths``), so each answer equals the one the clip gets alone. The wait is skipped right
after a batch of one clip: a lone client's next request would wait for nobody, while clients
answered together tend to send again together, and a fuller batch costs less per clip
(``bench/bench_overload.py`` with and without the wait: docs/benchmarks.md). int8 never waits: its clips run
one by one (``service.precision.batches_exactly``), so a fuller batch would save nothing.

When no request is waiting, the worker returns freed heap to the OS, at most every 10 s
(``service.heap.IdleHeapTrimmer``): clips of many lengths would otherwise grow it by GiBs.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # builtin TimeoutError only from Python 3.11
from dataclasses import dataclass

import torch

from core.audio import (
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    AudioTooLongError,
    EmptyAudioError,
    decode_audio,
    log_mel_spectrogram,
    pad_mels,
)
from core.checkpoint import Checkpoint
from service.compute_path import ComputePath
from service.heap import IdleHeapTrimmer
from service.metrics import ServiceMetrics
from service.precision import batches_exactly, check_compute_dtype, compute_context, prepare_model


class EngineOverloaded(RuntimeError):
    """The queue is full; the client should retry later."""


class EngineDraining(RuntimeError):
    """The engine is shutting down and takes no new work."""


@dataclass(frozen=True)
class Prediction:
    """One clip's answer. ``probabilities`` is (n_labels,), softmax over the checkpoint's labels."""

    probabilities: torch.Tensor
    audio_seconds: float
    decode_seconds: float
    features_seconds: float
    inference_seconds: float  # the whole batch's model call
    batch_size: int


@dataclass
class _Job:
    data: bytes
    future: Future


_STOP = object()  # queued by close(): the worker finishes what is ahead of it, then exits


def compute_thread(threads: int) -> ThreadPoolExecutor:
    """The single thread for torch work, with ``threads`` intra-op threads. Load the checkpoint
    through it (``submit(load_checkpoint, path)``) and pass it to ``InferenceEngine``."""
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="quads-compute", initializer=torch.set_num_threads, initargs=(threads,)
    )


@dataclass(frozen=True)
class EngineOptions:
    """How an engine computes and batches; the service fills it from its ``Settings``.

    ``max_wait_ms``: how long a batch waits to fill (only where batching is exact, see
    ``batches_exactly``). ``max_audio_seconds`` is capped at what the encoder can hold.
    """

    threads: int = 1
    max_batch_size: int = 1
    max_wait_ms: float = 0.0
    max_queue: int = 64
    max_audio_seconds: float = 30.0
    pad_to_30s: bool = False
    compute_dtype: str = "float32"
    onednn: bool = True


class InferenceEngine:
    def __init__(
        self,
        checkpoint: Checkpoint,
        options: EngineOptions | None = None,
        *,
        metrics: ServiceMetrics | None = None,
        compute: ThreadPoolExecutor | None = None,
    ):
        """``compute``: the ``compute_thread`` the checkpoint was loaded in; by default a new one.
        The engine's worker occupies it from ``start`` to ``close``."""
        options = options or EngineOptions()
        self.checkpoint = checkpoint
        self.threads = options.threads
        self.max_batch_size = options.max_batch_size
        self.compute_dtype = check_compute_dtype(options.compute_dtype)
        self.onednn = options.onednn and self.compute_dtype != "int8"
        self.max_wait = options.max_wait_ms / 1000 if batches_exactly(self.compute_dtype) else 0.0
        self.max_queue = options.max_queue
        # The encoder has n_ctx positions, two mel frames each: 1500 positions = 30 s.
        self.max_audio_seconds = min(options.max_audio_seconds, checkpoint.dims.n_ctx * 2 / FRAMES_PER_SECOND)
        self.pad_to_30s = options.pad_to_30s
        self.metrics = metrics
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._lock = threading.Lock()  # orders "closed" against submissions, so _STOP is queued last
        self._closed = False
        self._owns_compute = compute is None
        self._compute = compute if compute is not None else compute_thread(self.threads)
        self._worker: Future | None = None  # the worker loop, running in the compute thread
        self._heap_trimmer = IdleHeapTrimmer()  # else clips of many lengths grow the heap (service.heap)
        self._last_batch_had_company = True  # until a lone clip was answered, batches wait to fill
        if metrics is not None:
            metrics.queue_depth.set_function(self._queue.qsize)

    @property
    def model_name(self) -> str:
        """The checkpoint's file name without extension, e.g. ``quads-fsc-4bit``."""
        return self.checkpoint.path.stem if self.checkpoint.path is not None else "model"

    @property
    def compute_path(self) -> str:
        """The compute path's name (``service.compute_path.ComputePath.name``), e.g. ``float32-onednn``."""
        return ComputePath(self.compute_dtype, self.onednn).name

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> InferenceEngine:
        """Prepare the model for the compute dtype (``service.precision``, in the compute thread), then start the worker."""
        self._compute.submit(prepare_model, self.checkpoint.model, self.compute_dtype, self.onednn).result()
        self._worker = self._compute.submit(self._run)
        return self

    def submit(self, data: bytes) -> Future:
        """Queue one clip (encoded audio bytes); the future resolves to a ``Prediction`` or raises
        ``core.audio.AudioDecodeError``. Raises ``EngineOverloaded`` or ``EngineDraining`` at once. Thread-safe."""
        job = _Job(data, Future())
        with self._lock:
            if self._closed:
                self._count_rejection("draining")
                raise EngineDraining("the service is shutting down; retry on another replica")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self._count_rejection("overloaded")
                raise EngineOverloaded(f"{self.max_queue} requests are already waiting; retry shortly") from None
        return job.future

    async def predict(self, data: bytes) -> Prediction:
        """``submit`` awaited without blocking the event loop; cancelling it drops the queued job."""
        return await asyncio.wrap_future(self.submit(data))

    def close(self, timeout: float | None = 60.0) -> None:
        """Refuse new work, finish every queued job, stop the worker. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._worker is None or self._worker.done():  # not running: nobody will answer the queued jobs
            self._fail_queued(EngineDraining("the service shut down before this request ran"))
        else:
            self._queue.put(_STOP)  # behind every queued job; the worker is alive, so this frees up
            with contextlib.suppress(FutureTimeout):
                self._worker.result(timeout)
        if self._owns_compute:
            self._compute.shutdown(wait=False)

    def _count_rejection(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason).inc()

    def _fail_queued(self, error: Exception) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)

    # --- worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            self._last_batch_had_company = len(batch) > 1
            if batch:
                self._run_batch(batch)
            if self._queue.empty():
                self._heap_trimmer.idle()

    def _next_batch(self) -> tuple[list[_Job], bool]:
        """Block for one job (trimming the heap while idle), then gather more until the batch is
        full or the wait is over."""
        while True:
            try:
                first = self._queue.get(timeout=self._heap_trimmer.interval)
                break
            except queue.Empty:
                self._heap_trimmer.idle()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + (self.max_wait if self._last_batch_had_company else 0.0)
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            batch.append(job)
        return batch, False

    def _logits(self, mels: list[torch.Tensor]) -> torch.Tensor:
        """(B, n_labels) logits of the clips: one model call for the batch, or one per clip where
        the compute dtype's answers would depend on the batch (``service.precision``)."""
        groups = [mels] if batches_exactly(self.compute_dtype) else [[mel] for mel in mels]
        logits = []
        with torch.inference_mode(), compute_context(self.compute_dtype):
            for group in groups:
                padded, lengths = pad_mels(group)
                # Clips of one length (a lone clip, or clients that send fixed windows) need no
                # masks: they would change nothing and cost time.
                same_length = len({mel.shape[-1] for mel in group}) == 1
                logits.append(self.checkpoint.model(padded, None if same_length else lengths)[1])
        return torch.cat(logits)

    def _run_batch(self, batch: list[_Job]) -> None:
        """Answer every job of the batch: a bad clip fails only its own request."""
        clips = []  # (job, audio_seconds, mel (n_mels, T), decode_s, features_s)
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                continue  # the client went away while it waited
            try:
                t0 = time.perf_counter()
                audio = decode_clip(job.data, self.max_audio_seconds)
                t1 = time.perf_counter()
                mel = log_mel_spectrogram(audio, self.checkpoint.dims.n_mels, pad_to_30s=self.pad_to_30s)
                t2 = time.perf_counter()
            except BaseException as e:  # noqa: BLE001 - reported to that request, never kills the worker
                job.future.set_exception(e)
                continue
            clips.append((job, audio.numel() / SAMPLE_RATE, mel, t1 - t0, t2 - t1))
        if not clips:
            return
        try:
            t0 = time.perf_counter()
            logits = self._logits([mel for _, _, mel, _, _ in clips])
            probabilities = logits.float().softmax(dim=-1)
            inference = time.perf_counter() - t0
        except BaseException as e:  # noqa: BLE001
            for job, *_ in clips:
                job.future.set_exception(e)
            return
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(clips))
        for (job, seconds, _, decode, features), probs in zip(clips, probabilities):
            job.future.set_result(Prediction(probs, seconds, decode, features, inference, len(clips)))


def decode_clip(data: bytes, max_seconds: float) -> torch.Tensor:
    """``decode_audio`` with the client's next step added to the reason. (samples,) at 16 kHz."""
    try:
        return decode_audio(data, max_seconds=max_seconds)
    except AudioTooLongError as e:
        raise AudioTooLongError(f"{e}; trim the recording to at most {max_seconds:g} s") from None
    except EmptyAudioError as e:
        raise EmptyAudioError(f"{e}; send a recording of the spoken command") from None

"""The inference engine: batching equals running alone, bounded queue, shutdown, audio errors, threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import time

import numpy as np
import pytest
import soundfile
import torch

import service.engine as engine_module
from core.audio import AudioDecodeError, AudioTooLongError, EmptyAudioError
from core.cpu_features import native_bfloat16
from service.cpu import cgroup_cpu_limit, resolve_threads
from service.engine import (
    EngineDraining,
    EngineOptions,
    EngineOverloaded,
    InferenceEngine,
    decode_clip,
)
from service.metrics import ServiceMetrics
from tests.service_inputs import (
    ENCODINGS,
    PHRASES,
    encode,
    reference_probabilities,
    wav_bytes,
)


@pytest.fixture(scope="module")
def clips(speech) -> list[bytes]:
    """Clips of different lengths, formats and rates: batching them needs padding and masks."""
    out = []
    for i, phrase in enumerate(PHRASES):
        samples, rate = speech[phrase]
        for fmt, subtype, to_rate, channels in ENCODINGS[i::3]:
            out.append(encode(samples, rate, fmt, subtype, to_rate, channels))
    return out


def test_batched_answers_equal_answers_alone(checkpoint, clips, served_checkpoint):
    metrics = ServiceMetrics()
    # A long wait makes the worker gather every clip submitted below into one batch.
    engine = InferenceEngine(
        served_checkpoint, EngineOptions(max_batch_size=len(clips), max_wait_ms=2000), metrics=metrics
    ).start()
    try:
        futures = [engine.submit(clip) for clip in clips]
        batched = [f.result(timeout=30) for f in futures]
    finally:
        engine.close()
    assert {p.batch_size for p in batched} == {len(clips)}
    assert len({p.audio_seconds for p in batched}) > 2  # the lengths really differ
    assert metrics.registry.get_sample_value("quads_batch_size_count") == 1  # one model call
    for clip, prediction in zip(clips, batched):
        alone = reference_probabilities(checkpoint, clip)
        torch.testing.assert_close(prediction.probabilities, alone, atol=1e-5, rtol=0)


def test_a_batch_of_one_length_runs_without_masks(checkpoint, speech, served_checkpoint, monkeypatch):
    """Masks change nothing when no clip is padded, so such a batch skips them; a mixed batch keeps them."""
    samples = [speech[phrase][0] for phrase in PHRASES]
    rate = speech[PHRASES[0]][1]
    n = min(len(s) for s in samples)
    same = [wav_bytes(s[:n], rate) for s in samples]
    mixed = [wav_bytes(s[: n - 800 * i], rate) for i, s in enumerate(samples)]
    model = served_checkpoint.model
    masked = []
    original_forward = model.forward

    def recording_forward(mel, mel_lengths=None):
        masked.append(mel_lengths is not None)
        return original_forward(mel, mel_lengths)

    monkeypatch.setattr(model, "forward", recording_forward)
    engine = InferenceEngine(served_checkpoint, EngineOptions(max_batch_size=3, max_wait_ms=2000)).start()
    try:
        answers = {}
        for name, batch in (("same", same), ("mixed", mixed)):
            futures = [engine.submit(clip) for clip in batch]
            answers[name] = [f.result(timeout=30) for f in futures]
    finally:
        engine.close()
    assert masked == [False, True]
    for name, batch in (("same", same), ("mixed", mixed)):
        assert {p.batch_size for p in answers[name]} == {3}
        for clip, prediction in zip(batch, answers[name]):
            torch.testing.assert_close(
                prediction.probabilities, reference_probabilities(checkpoint, clip), atol=1e-5, rtol=0
            )


@pytest.mark.skipif(not native_bfloat16(), reason="this CPU has no bfloat16 matrix hardware")
def test_bfloat16_answers_stay_close_to_float32(checkpoint, checkpoint_path, clips):
    from core.checkpoint import load_checkpoint

    served = load_checkpoint(checkpoint_path)  # the engine casts its model's matrix weights in place
    engine = InferenceEngine(served, EngineOptions(compute_dtype="bfloat16")).start()
    matrices = sum(
        p.numel()
        for m in checkpoint.model.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))
        for p in m.parameters()
    )
    key_biases = (
        checkpoint.dims.n_layer * checkpoint.dims.n_state
    )  # zeros the fused q/k/v layer adds (service.served_attention)
    try:
        assert served.memory_bytes == checkpoint.memory_bytes - 2 * matrices + 2 * key_biases  # 4 bytes -> 2
        answers = [engine.submit(clip).result(timeout=30).probabilities for clip in clips]
    finally:
        engine.close()
    for clip, probabilities in zip(clips, answers):
        exact = reference_probabilities(checkpoint, clip)
        assert probabilities.dtype == torch.float32
        torch.testing.assert_close(probabilities, exact, atol=0.02, rtol=0)
        assert probabilities.argmax() == exact.argmax()


def test_int8_answers_stay_close_to_float32_and_weights_take_a_byte(checkpoint, checkpoint_path, clips):
    from core.checkpoint import load_checkpoint

    served = load_checkpoint(checkpoint_path)  # the engine swaps its linear layers in place
    engine = InferenceEngine(served, EngineOptions(compute_dtype="int8", max_batch_size=4)).start()
    try:
        alone = [engine.submit(clip).result(timeout=30).probabilities for clip in clips]
        futures = [engine.submit(clip) for clip in clips]
        together = [f.result(timeout=30).probabilities for f in futures]
    finally:
        engine.close()
    linear_weights = sum(m.weight.numel() for m in checkpoint.model.modules() if isinstance(m, torch.nn.Linear))
    assert checkpoint.memory_bytes - served.memory_bytes == pytest.approx(3 * linear_weights, rel=0.01)  # 4 bytes -> 1
    for clip, probabilities, batched in zip(clips, alone, together):
        exact = reference_probabilities(checkpoint, clip)
        torch.testing.assert_close(probabilities, exact, atol=0.05, rtol=0)
        assert probabilities.argmax() == exact.argmax()
        torch.testing.assert_close(batched, probabilities, atol=1e-6, rtol=0)  # int8 clips run one by one


def test_unknown_compute_dtype_is_refused(served_checkpoint):
    with pytest.raises(ValueError, match="float32, bfloat16, int8"):
        InferenceEngine(served_checkpoint, EngineOptions(compute_dtype="float16"))


def test_a_bad_clip_fails_only_its_own_request(checkpoint, clips, served_checkpoint):
    engine = InferenceEngine(served_checkpoint, EngineOptions(max_batch_size=4, max_wait_ms=300)).start()
    try:
        good, bad, empty = engine.submit(clips[0]), engine.submit(b"garbage"), engine.submit(b"")
        assert good.result(timeout=30).batch_size == 1
        with pytest.raises(AudioDecodeError):
            bad.result(timeout=30)
        with pytest.raises(EmptyAudioError):
            empty.result(timeout=30)
        assert engine.submit(clips[1]).result(timeout=30).probabilities.shape == (len(checkpoint.labels),)
    finally:
        engine.close()


def test_full_queue_is_refused_at_once(clips, served_checkpoint):
    metrics = ServiceMetrics()
    engine = InferenceEngine(
        served_checkpoint, EngineOptions(max_queue=2), metrics=metrics
    )  # not started: the queue only fills
    first, second = engine.submit(clips[0]), engine.submit(clips[1])
    assert engine.queue_depth == 2
    start = time.perf_counter()
    with pytest.raises(EngineOverloaded, match="2 requests are already waiting"):
        engine.submit(clips[2])
    assert time.perf_counter() - start < 0.1
    assert metrics.registry.get_sample_value("quads_rejected_total", {"reason": "overloaded"}) == 1
    engine.close()  # never started: the waiting jobs are failed, not left hanging
    for future in (first, second):
        with pytest.raises(EngineDraining):
            future.result(timeout=1)


def test_close_finishes_queued_work_then_refuses(clips, served_checkpoint):
    metrics = ServiceMetrics()
    engine = InferenceEngine(served_checkpoint, EngineOptions(max_batch_size=2), metrics=metrics).start()
    futures = [engine.submit(clip) for clip in clips]
    engine.close()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(EngineDraining):
        engine.submit(clips[0])
    assert metrics.registry.get_sample_value("quads_rejected_total", {"reason": "draining"}) == 1
    engine.close()  # idempotent


def test_cancelled_requests_are_skipped(clips, served_checkpoint):
    engine = InferenceEngine(served_checkpoint, EngineOptions(max_batch_size=8, max_wait_ms=300)).start()
    try:
        kept, dropped = engine.submit(clips[0]), engine.submit(clips[1])
        assert dropped.cancel()
        assert kept.result(timeout=30).batch_size == 1
    finally:
        engine.close()


def test_predict_does_not_block_the_event_loop(clips, served_checkpoint):
    async def predict_while_ticking() -> tuple[int, int]:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        prediction = await engine.predict(clips[0])
        task.cancel()
        return prediction.batch_size, ticks

    engine = InferenceEngine(served_checkpoint, EngineOptions(max_batch_size=4, max_wait_ms=200)).start()
    try:
        batch_size, ticks = asyncio.run(predict_while_ticking())
    finally:
        engine.close()
    assert batch_size == 1 and ticks >= 5  # the loop kept running during the 200-ms batch wait


def batch_sizes(engine: InferenceEngine, clips: list[bytes], gap: float = 0.1) -> list[int]:
    """Submit ``clips`` ``gap`` seconds apart; the batch size each was answered in."""
    futures = []
    for i, clip in enumerate(clips):
        if i:
            time.sleep(gap)
        futures.append(engine.submit(clip))
    return [f.result(timeout=30).batch_size for f in futures]


def test_a_batch_waits_to_fill_unless_the_last_one_held_a_lone_clip(clips, served_checkpoint):
    engine = InferenceEngine(served_checkpoint, EngineOptions(max_batch_size=2, max_wait_ms=500)).start()
    try:
        assert batch_sizes(engine, clips[:2]) == [2, 2]  # the second came 0.1 s later, within the wait
        assert batch_sizes(engine, clips[:2]) == [2, 2]  # after a batch of two, the next waits again
        assert batch_sizes(engine, clips[:1]) == [1]  # nobody came: the wait ran out
        # After a lone clip, the next batch takes only what is queued: the clip 0.1 s later runs on its own.
        assert batch_sizes(engine, clips[:2]) == [1, 1]
    finally:
        engine.close()


def test_int8_batches_never_wait(clips, served_checkpoint):
    """int8 runs a batch's clips one by one (service.precision.batches_exactly): waiting would save nothing."""
    engine = InferenceEngine(
        served_checkpoint, EngineOptions(compute_dtype="int8", max_batch_size=2, max_wait_ms=500)
    ).start()
    try:
        assert engine.max_wait == 0.0
        assert batch_sizes(engine, clips[:2]) == [1, 1]
    finally:
        engine.close()


def test_worker_runs_torch_with_the_configured_threads(clips, monkeypatch, served_checkpoint):
    seen = []
    original = engine_module.log_mel_spectrogram

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(engine_module, "log_mel_spectrogram", spy)
    expected = 1 if torch.get_num_threads() > 1 else 2
    engine = InferenceEngine(served_checkpoint, EngineOptions(threads=expected)).start()
    try:
        engine.submit(clips[0]).result(timeout=30)
    finally:
        engine.close()
    assert seen == [expected]


def test_padding_to_30s_runs_the_whole_window(checkpoint, clips, served_checkpoint):
    engine = InferenceEngine(served_checkpoint, EngineOptions(pad_to_30s=True)).start()
    try:
        padded = engine.submit(clips[0]).result(timeout=30)
    finally:
        engine.close()
    assert padded.audio_seconds < 3  # reports the real duration
    assert not torch.allclose(padded.probabilities, reference_probabilities(checkpoint, clips[0]), atol=1e-4)


# --- audio errors ------------------------------------------------------------------------


def test_decode_clip_sorts_failures():
    tone = np.sin(np.arange(8000 * 5) / 10).astype(np.float32)
    assert decode_clip(wav_bytes(tone, 8000), 30.0).shape == (16000 * 5,)
    with pytest.raises(AudioTooLongError, match="trim the recording to at most 4 s"):
        decode_clip(wav_bytes(tone, 8000), 4.0)
    with pytest.raises(EmptyAudioError):
        decode_clip(b"", 30.0)
    with pytest.raises(EmptyAudioError):
        decode_clip(wav_bytes(tone[:0], 8000), 30.0)
    with pytest.raises(AudioDecodeError) as err:
        decode_clip(b"\x00" * 1000, 30.0)
    assert "BytesIO" not in str(err.value)
    with pytest.raises(AudioDecodeError, match="NaN"):
        decode_clip(encode_float_wav(np.full(100, np.nan, dtype=np.float32)), 30.0)


def encode_float_wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_audio_limit_never_exceeds_the_model_context(checkpoint, served_checkpoint):
    engine = InferenceEngine(served_checkpoint, EngineOptions(max_audio_seconds=120))
    assert engine.max_audio_seconds == checkpoint.dims.n_ctx * 2 / 100 == 30.0


def test_exactly_30_seconds_is_accepted(served_checkpoint):
    engine = InferenceEngine(served_checkpoint).start()
    try:
        noise = np.random.default_rng(0).uniform(-0.1, 0.1, 30 * 16000).astype(np.float32)
        assert engine.submit(wav_bytes(noise, 16000)).result(timeout=60).audio_seconds == 30.0
    finally:
        engine.close()


# --- CPU threads -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files, limit",
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "400000 100000\n"}, 4.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({}, None),
    ],
)
def test_cgroup_cpu_limit(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_threads_follow_the_limit_and_never_oversubscribe(tmp_path, monkeypatch):
    monkeypatch.setattr("service.cpu.available_cpus", lambda: 8)
    assert resolve_threads(3, tmp_path) == 3  # configured wins
    assert resolve_threads(0, tmp_path) == 8  # no quota: the cores we may run on
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert resolve_threads(0, tmp_path) == 1  # 1.5 CPUs: 2 threads would be throttled
    (tmp_path / "cpu.max").write_text("1600000 100000\n")
    assert resolve_threads(0, tmp_path) == 8  # a quota above the affinity mask
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert resolve_threads(0, tmp_path) == 1


def test_concurrent_submitters_all_get_answers(checkpoint, clips, served_checkpoint):
    engine = InferenceEngine(served_checkpoint, EngineOptions(max_batch_size=4, max_wait_ms=5, max_queue=64)).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda clip: engine.submit(clip).result(timeout=60), clips * 2))
    finally:
        engine.close()
    for clip, prediction in zip(clips * 2, results):
        torch.testing.assert_close(
            prediction.probabilities, reference_probabilities(checkpoint, clip), atol=1e-5, rtol=0
        )


def test_the_checkpoint_load_and_every_model_call_run_in_one_compute_thread(checkpoint_path, clips):
    """A second thread running torch ops would get an OpenMP team of its own (service.engine)."""
    import threading

    from core.checkpoint import load_checkpoint

    compute = engine_module.compute_thread(1)
    loaded_in = compute.submit(lambda: (load_checkpoint(checkpoint_path), threading.get_ident())).result()
    checkpoint, load_thread = loaded_in
    called_in: set[int] = set()
    checkpoint.model.register_forward_hook(lambda *_: called_in.add(threading.get_ident()))
    engine = InferenceEngine(checkpoint, compute=compute).start()
    try:
        for clip in clips[:2]:
            engine.submit(clip).result(timeout=30)
    finally:
        engine.close()
    assert called_in == {load_thread} and load_thread != threading.get_ident()
    compute.shutdown()

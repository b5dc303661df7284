"""Returning freed heap: the trimmer's pace, and the engine trimming while idle."""

from __future__ import annotations

import time

from service.engine import InferenceEngine
from service.heap import IdleHeapTrimmer, heap_allocator, return_freed_heap


def test_trims_only_after_the_interval(fake_clock):
    clock, trims = fake_clock, []
    clock.now = 0.0
    trimmer = IdleHeapTrimmer(interval=10, trim=lambda: trims.append(clock.now), clock=clock)
    assert not trimmer.idle()
    clock.now = 9.9
    assert not trimmer.idle()
    clock.now = 10.0
    assert trimmer.idle()
    clock.now = 15.0
    assert not trimmer.idle()
    clock.now = 20.5
    assert trimmer.idle()
    assert trims == [10.0, 20.5]


def test_return_freed_heap_runs_here():
    return_freed_heap()  # glibc's malloc_trim, or nothing: must never raise


def test_the_engine_trims_when_idle_and_still_answers(served_checkpoint, speech_wav):
    trims = []
    engine = InferenceEngine(served_checkpoint)
    engine._heap_trimmer = IdleHeapTrimmer(interval=0.05, trim=lambda: trims.append(time.monotonic()))
    engine.start()
    try:
        first = engine.submit(speech_wav).result(timeout=30)
        deadline = time.monotonic() + 10
        while len(trims) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = engine.submit(speech_wav).result(timeout=30)
    finally:
        engine.close()
    assert len(trims) >= 2  # idle with an empty queue: trimmed, more than once
    assert first.probabilities.tolist() == second.probabilities.tolist()


def test_heap_allocator_reads_the_loaded_libraries(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert heap_allocator(maps) == "glibc"
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 0 08:01 2 /opt/venv/lib/libjemalloc.so.2\n")
    assert heap_allocator(maps) == "jemalloc"
    assert heap_allocator(tmp_path / "missing") == "unknown"

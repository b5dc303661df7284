"""Giving freed heap back to the OS: glibc keeps it otherwise, and the service's heap would only grow.

Two moments free a lot. Loading unpacks and dequantizes the checkpoint, which allocates about
twice the model in temporaries; without a trim, the shipped model's process stayed 42 MiB larger
through a soak. Clips of many different lengths are the other: each length allocates
activations of its own sizes, and glibc raises its mmap threshold to the largest block freed, so
they come from the heap, which fragments. A soak over 300 lengths (``bench/load_test.py --soak
3000 --lengths 300``) ended at 2.2 GiB resident. ``malloc_trim`` in idle moments returns that once
traffic pauses; under sustained traffic the process still swung between 1.4 and 2.2 GiB. With
jemalloc preloaded (the Docker image sets ``LD_PRELOAD``) the same soak stayed at or under 808 MiB.
A fixed mmap threshold (``mallopt``) was tried too: it bounded the heap only at thresholds that
slowed every forward. The service logs which allocator it runs on (``heap_allocator``).
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

# Shared-library names in /proc/self/maps that mean another malloc replaced glibc's.
_ALLOCATORS = {"libjemalloc": "jemalloc", "libtcmalloc": "tcmalloc", "libmimalloc": "mimalloc"}


def heap_allocator(maps: Path = Path("/proc/self/maps")) -> str:
    """The malloc this process runs on: jemalloc, tcmalloc or mimalloc if one is loaded, else glibc
    ("unknown" where /proc is not readable)."""
    try:
        text = maps.read_text()
    except OSError:
        return "unknown"
    return next((name for library, name in _ALLOCATORS.items() if library in text), "glibc")


def return_freed_heap() -> None:
    """``malloc_trim(0)``: return the free heap pages to the OS. A no-op where libc is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class IdleHeapTrimmer:
    """Trims the heap when the engine is idle, at most once every ``interval`` seconds.

    A trim after a burst of varied lengths takes tens of milliseconds, and the next forward runs
    slower while it faults the pages back in. So it runs only when no request is waiting, and rarely.
    """

    def __init__(self, interval: float = 10.0, trim=return_freed_heap, clock=time.monotonic):
        self.interval = interval
        self.trim = trim
        self.clock = clock
        self._last = clock()

    def idle(self) -> bool:
        """Call when the queue is empty; trims if ``interval`` has passed since the last trim. Returns whether it did."""
        now = self.clock()
        if now - self._last < self.interval:
            return False
        self.trim()
        self._last = self.clock()
        return True

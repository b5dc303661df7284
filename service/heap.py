"""Giving freed heap back to the OS: glibc keeps it otherwise, and the service's heap would only grow.

Two moments free a lot: loading (unpacking and dequantizing the checkpoint allocates about
twice the model in temporaries; without a trim the shipped model's process stayed 42 MiB larger
through a soak) and clips of many different lengths. Each length allocates activations of its
own sizes; glibc raises its mmap threshold to the largest block freed, so these come from the
heap, which fragments and is not returned. A forward over 750 lengths between 0.2 and 30 s grew
the process's heap from 0.3 to 2.1 GiB, all but 0.5 GiB of it free (``bench/load_test.py
--soak --lengths``). A fixed mmap threshold (``mallopt``) bounded it only at 128 KiB, where the
3-s forward got 23% slower. ``malloc_trim`` in idle moments returns it once traffic pauses, but
under sustained traffic of many lengths glibc's heap still swung between 1.1 and 2.2 GiB. jemalloc
(preloaded: the Docker image sets ``LD_PRELOAD``) held the same loop at 0.5 GiB, at the same
speed; the service logs which allocator it runs on (``heap_allocator``).
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

    A trim after a burst of varied lengths took 18-34 ms, one in steady state 2 ms, and the next
    forward runs about 2 ms slower while it faults the pages back in. So it runs only when no
    request is waiting, and rarely.
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

"""wrk (Debian's HTTP load generator, written in C) posting a clip to ``POST /intent``.

The benchmarks' light client: on a 2-core host the client shares the cores with the server, and a
Python client's own work per request (about a millisecond for httpx) lands in the latency it
measures. wrk's Lua hooks post the clip as a raw body and print one machine-readable line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

POST_SCRIPT = """
local f = assert(io.open("{clip}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "audio/wav"
done = function(summary, latency, requests)
  io.write(string.format("QUADS %d %d %d %d %d %d\\n", summary.requests, summary.errors.status,
                         summary.duration, summary.errors.timeout,
                         latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class WrkRun:
    requests: int
    non_2xx: int  # answers with a status >= 400 (wrk counts them as errors.status)
    seconds: float
    timeouts: int
    p50_ms: float  # over every answer, 503s included
    p99_ms: float


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def write_post_script(clip: bytes, directory: Path) -> Path:
    """Writes the clip and the Lua script that posts it into ``directory``; returns the script."""
    clip_path, script = directory / "clip.wav", directory / "post.lua"
    clip_path.write_bytes(clip)
    script.write_text(POST_SCRIPT.format(clip=clip_path))
    return script


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> WrkRun:
    """``wrk -t1`` with ``connections`` connections for ``seconds`` against ``{url}/intent``."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), f"{url}/intent"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"^QUADS (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests, non_2xx, micros, timeouts, p50, p99 = map(int, match.groups())
    return WrkRun(requests, non_2xx, micros / 1e6, timeouts, p50 / 1000, p99 / 1000)

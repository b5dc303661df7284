"""Where the serving process's memory goes: resident memory after each import and step of startup.

Reads ``/proc/self/status`` (Linux) after importing what the service imports, in order, then
loading the checkpoint as the service does (``service.main.load_served_checkpoint``, which
returns the loading's freed heap to the OS) and running 20 forwards on a 3-s clip.

    python -m bench.memory_breakdown --out bench/results/memory.md
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from bench.report_output import publish

DEFAULT_MODEL = Path("models/quads-fsc-4bit.safetensors")


def resident_mib() -> tuple[float, float, float]:
    """(VmRSS, RssAnon, RssFile) of this process in MiB."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024 for key in ("VmRSS", "RssAnon", "RssFile"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    steps = [("python", resident_mib())]
    import numpy  # noqa: F401
    import soundfile  # noqa: F401

    steps.append(("+ numpy, soundfile", resident_mib()))
    import torch

    steps.append(("+ torch", resident_mib()))
    import av  # noqa: F401
    import torchaudio  # noqa: F401

    steps.append(("+ torchaudio, PyAV", resident_mib()))
    from service.main import create_app, load_served_checkpoint
    from service.settings import Settings

    create_app(Settings(model=args.model))
    steps.append(("+ FastAPI, uvicorn, the app", resident_mib()))
    checkpoint = load_served_checkpoint(Settings(model=args.model))
    steps.append((f"+ {args.model.name} loaded ({checkpoint.memory_bytes / 2**20:.1f} MiB of tensors)", resident_mib()))
    mel = torch.randn(1, checkpoint.dims.n_mels, 300)
    with torch.inference_mode():
        for _ in range(20):
            checkpoint.model(mel)
    steps.append(("+ 20 forwards of a 3-s clip", resident_mib()))

    lines = [
        "## Resident memory, step by step (MiB)",
        "",
        f"- torch {torch.__version__}.",
        "",
        "| step | VmRSS | heap (RssAnon) | mapped files (RssFile) |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {rss:.0f} | {anon:.0f} | {files:.0f} |" for name, (rss, anon, files) in steps]
    text = "\n".join(lines) + "\n"
    publish(text, args.out)


if __name__ == "__main__":
    main()

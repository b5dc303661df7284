"""bench/bench_model.py runs end to end and reports sizes and compute that match the checkpoint format.

Timings are printed, never asserted: they depend on the host.
"""

from __future__ import annotations

import re

import pytest
import torch

from bench.bench_model import main


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """main() sets torch's thread count for the whole process; put it back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def first_table(markdown: str, heading: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first Markdown table after ``heading``."""
    lines = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table


def test_quick_run_writes_the_three_sections_with_near_ideal_sizes(tmp_path, capsys):
    out = tmp_path / "model.md"
    assert main(["--quick", "--repeats", "2", "--threads", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.strip() == capsys.readouterr().out.strip()

    for heading in ("### Compute per clip", "### Checkpoint size", "### Front-end"):
        assert heading in text
    assert "Median forward time" not in text  # --quick skips the 30-s padded forward

    ratio_to_fp32 = {int(row[0]): float(row[3]) for row in first_table(text, "### Checkpoint size")}
    assert sorted(ratio_to_fp32) == [2, 4, 8, 16, 32]
    assert ratio_to_fp32[32] == 1.0
    assert 0.49 <= ratio_to_fp32[16] <= 0.52
    assert 0.25 <= ratio_to_fp32[8] < 0.27
    assert 0.125 <= ratio_to_fp32[4] < 0.14
    assert 0.0625 <= ratio_to_fp32[2] < 0.08

    compute = {row[0]: float(row[1]) for row in first_table(text, "### Compute per clip")}
    padded = compute["any, padded to 30 s (Whisper)"]
    assert abs(padded - 18.48) < 0.2  # the paper's FSC figure for these dims
    assert padded / compute["3"] > 10  # real length is the point: >10x fewer MACs for a 3-s clip
    assert compute["1"] < compute["3"] < compute["10"] < padded

    frontend = first_table(text, "### Front-end")
    steps = [row[0] for row in frontend]
    assert steps.count("log-mel (80), real length") == 2  # 1 s and 3 s; 10/30 s skipped by --quick
    assert any(step.startswith("decode_audio") for step in steps)
    assert all(float(row[2]) > 0 for row in frontend)
    assert re.search(r"torch \S+, 1 torch thread", text)

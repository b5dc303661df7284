"""core.frames: labels of frames, the table's JSON, and a checkpoint that carries it."""

from __future__ import annotations

import pytest
import torch

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.frames import Frame, FrameTable
from core.model import IntentClassifier
from core.refusal import REFUSAL_LABEL
from tests.service_inputs import TINY_DIMS

FRAMES = [
    Frame("Play"),
    Frame("SetChannel", {"channel": "four"}),
    Frame("SetChannel", {"channel": "two"}),
    Frame("MakeDrink", {"size": "large", "drink": "latte"}),
]


def test_an_intent_with_one_frame_is_labelled_by_its_name_and_others_by_their_slots():
    table = FrameTable.of(FRAMES, {"name": "media", "sha256": "ab"})
    # Written out by hand: sorted labels, slots in name order inside the parentheses.
    assert list(table.frames) == ["MakeDrink", "Play", "SetChannel(channel=four)", "SetChannel(channel=two)"]
    assert table.frames["MakeDrink"].slots == {"size": "large", "drink": "latte"}
    assert table.intents == ["MakeDrink", "Play", "SetChannel"]
    assert table.slot_values == {"channel": ["four", "two"], "drink": ["latte"], "size": ["large"]}
    assert table.frame(REFUSAL_LABEL) == Frame(REFUSAL_LABEL)  # outside the table: no slots


def test_the_table_survives_its_json_and_bad_json_is_refused():
    table = FrameTable.of(FRAMES, {"name": "media", "sha256": "ab"})
    assert FrameTable.from_json(table.to_json()) == table
    with pytest.raises(ValueError, match="not a frame table"):
        FrameTable.from_json('{"labels": []}')
    with pytest.raises(ValueError, match="frame 'x'"):
        FrameTable.from_json('{"frames": {"x": {"slots": {}}}}')
    with pytest.raises(ValueError, match="frames repeat"):
        FrameTable.of([Frame("Play"), Frame("Play")])


def test_a_checkpoint_carries_its_frames_and_answers_with_them(tmp_path):
    table = FrameTable.of(FRAMES, {"name": "media", "sha256": "ab"})
    labels = [*table.frames, REFUSAL_LABEL]
    torch.manual_seed(0)
    model = IntentClassifier(TINY_DIMS, len(labels)).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model, labels, 32, frames=table)
    checkpoint = load_checkpoint(path)
    assert checkpoint.frames == table
    assert checkpoint.frame("SetChannel(channel=four)") == Frame("SetChannel", {"channel": "four"})
    assert checkpoint.intents == ["MakeDrink", "Play", "SetChannel"]  # each intent once, no refusal class
    # A table that misses a label, or names one the head does not have, is refused when written.
    with pytest.raises(ValueError, match="labels without a frame"):
        save_checkpoint(tmp_path / "x.safetensors", model, [*labels[:-2], "Other", REFUSAL_LABEL], 32, frames=table)
    with pytest.raises(ValueError, match="frames for labels the model does not have"):
        small = FrameTable({k: v for k, v in list(table.frames.items())[:3]}, table.context)
        save_checkpoint(
            tmp_path / "x.safetensors",
            IntentClassifier(TINY_DIMS, 3),
            list(small.frames),
            32,
            frames=FrameTable(table.frames, table.context),
        )


def test_a_file_without_frames_answers_with_its_labels(tmp_path):
    model = IntentClassifier(TINY_DIMS, 2).eval()
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "m.safetensors", model, ["a_b_c", "d_e_f"], 32))
    assert (
        checkpoint.frames is None
        and checkpoint.frame("a_b_c") == Frame("a_b_c")
        and checkpoint.intents == ["a_b_c", "d_e_f"]
    )


def test_a_tampered_frame_table_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    table = FrameTable.of(FRAMES)
    labels = list(table.frames)
    path = save_checkpoint(
        tmp_path / "m.safetensors", IntentClassifier(TINY_DIMS, len(labels)), labels, 32, frames=table
    )
    with safe_open(path, "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    metadata["frames"] = metadata["frames"].replace('"four"', '"five"')
    save_file(tensors, tmp_path / "t.safetensors", metadata)
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_checkpoint(tmp_path / "t.safetensors")

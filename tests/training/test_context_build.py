"""quads-demo --context (training.experiments.context_build): a tiny context built end to end, resumed, and
bad contexts refused before anything is written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.checkpoint import load_checkpoint
from core.frames import Frame
from core.refusal import REFUSAL_LABEL
from tests.training_corpus import random_teacher
from training.context import ContextError
from training.experiments import context_build
from training.experiments.context_build import BuildPreset, build
from training.experiments.demo import cli

CHANNELS = Path(__file__).resolve().parents[1] / "contexts" / "channels.yaml"
TINY = BuildPreset(
    voices={"train": 3, "valid": 1, "test": 1},
    clips_per_frame=2,
    min_utterances=1,
    not_commands_per_voice=1,
    nonspeech_per_voice=1,
    ood_per_voice=2,
    ood_sounds_per_voice=1,
    bits=[32, 4],
    schedule="DQ",
    student={"n_state": 64, "n_head": 2, "n_layer": 1},
    common={"data": {"batch_size": 4, "augment": False}, "train": {"threads": 1}, "quant": {"kmeans_iters": 5}},
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    teacher = random_teacher(root / "teacher.safetensors", n_state=96, n_layer=1)
    path = build(CHANNELS, root / "out", TINY, progress=False, teacher=teacher, init="random")
    return root / "out", path, teacher


def test_the_build_writes_a_4bit_checkpoint_that_carries_the_context(built):
    out, path, _ = built
    assert path == out / "model" / "quads-channels-4bit.safetensors"
    checkpoint = load_checkpoint(path)
    assert checkpoint.bits == 4 and checkpoint.labels[-1] == REFUSAL_LABEL
    assert checkpoint.frames.frames == {
        "Pause": Frame("Pause"),
        "SetChannel(channel=1)": Frame("SetChannel", {"channel": "1"}),
        "SetChannel(channel=10)": Frame("SetChannel", {"channel": "10"}),
    }
    assert checkpoint.frames.context == {
        "name": "channels",
        "language": "en",
        "sha256": hashlib.sha256(CHANNELS.read_bytes()).hexdigest(),
    }
    report = (out / "report.md").read_text()
    assert "| quads-channels-4bit.safetensors | 4 |" in report and "3 frames" in report


def test_a_second_run_finds_everything_done(built):
    out, path, teacher = built
    stamps = {p: p.stat().st_mtime_ns for p in [path, out / "corpus" / "train.csv", out / "model" / "report.json"]}
    assert build(CHANNELS, out, TINY, progress=False, teacher=teacher, init="random") == path
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_bad_context_is_refused_before_anything_is_written(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("language: en\nintents:\n  Play:\n    data:\n      - sentences: ['play {song}']\n")
    with pytest.raises(SystemExit) as exit_info:
        cli(["--context", str(bad), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert f"{bad}:5: intent 'Play', sentence 'play {{song}}': unknown list" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_too_many_frames_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(context_build, "MAX_FRAMES", 2)
    with pytest.raises(ContextError, match="3 combinations of intent and slot values .* more than 2"):
        build(CHANNELS, tmp_path / "out", TINY, teacher=tmp_path / "t", init="random")
    assert not (tmp_path / "out").exists()


def test_intent_accuracy_counts_a_wrong_slot_as_the_right_intent():
    from core.frames import FrameTable
    from training.experiments.context_report import intent_accuracy

    class Checkpointish:  # what intent_accuracy asks of a checkpoint: each label's frame
        frames = FrameTable.of([Frame("Play"), Frame("Set", {"c": "1"}), Frame("Set", {"c": "2"})])
        frame = frames.frame

    labels = ["Play", "Set(c=1)", "Set(c=2)", REFUSAL_LABEL]
    confusion = [
        [3, 0, 0, 1],  # Play: 3 right, 1 refused
        [0, 2, 2, 0],  # Set c=1: 2 exact, 2 with the other channel (right intent)
        [1, 0, 1, 0],  # Set c=2: 1 exact, 1 called Play
        [0, 0, 0, 5],
    ]  # non-commands: not counted
    # By hand: right intents 3 + (2 + 2) + 1 = 8 of 4 + 4 + 2 = 10 command clips.
    assert intent_accuracy({"label_names": labels, "confusion": confusion}, Checkpointish()) == pytest.approx(0.8)


def test_held_out_sentences_are_a_tenth_of_each_large_frame_and_keep_its_label():
    from training.context import load_context
    from training.experiments.context_build import hold_out

    context = load_context("coffee-machine")
    kept, held = hold_out(context, seed=0)
    for intent in context.names:
        for label, phrases in context.frames(intent).items():
            texts = {p.text for p in phrases}
            kept_texts = {p.text for p in kept.frames(intent).get(label, [])}
            held_texts = {p.text for p in held.frames(intent).get(label, [])} if intent in held.names else set()
            assert kept_texts | held_texts == texts and not kept_texts & held_texts
            assert len(held_texts) == (len(texts) // 10 if len(texts) >= 20 else 0), label
            assert all(p.text not in held_texts for p in phrases if p.plain)  # plain forms are always trained on
    assert held.frame_table is context.frame_table  # "MakeDrink(drink=latte,size=large)" means the same in both


def test_out_of_domain_speech_leaves_out_what_the_context_says():
    from training.context import load_context, normalize
    from training.experiments.context_build import out_of_domain

    media = load_context("media-player")
    ood = out_of_domain(media, "not-commands", "fsc")
    # The media player says "turn the volume up": every wording of FSC's volume and music intents is its own.
    fsc_left = {name.split("/", 1)[1] for name in ood.names if name.startswith("fsc/")}
    assert {"increase_volume_none", "decrease_volume_none", "activate_music_none", "deactivate_music_none"}.isdisjoint(
        fsc_left
    )
    assert {"activate_lights_none", "increase_heat_washroom"} <= fsc_left  # near misses stay
    said = {normalize(p.text) for phrases in media.intents.values() for p in phrases}
    assert not any(normalize(p.text) in said for phrases in ood.intents.values() for p in phrases)
    assert len(fsc_left) == 31 - 4


def test_home_assistant_near_misses_share_no_deciding_word_of_the_context():
    import re

    from training.context import load_context, normalize
    from training.experiments.context_build import HOME_ASSISTANT_WEIGHT, home_assistant_near_misses

    media = load_context("media-player")
    requests = home_assistant_near_misses(media, seed=0)
    intents = {name.split("/")[0] for name in requests.names}
    # Home Assistant's media intents are the media player's own commands in other words.
    assert not {i for i in intents if i.startswith("HassMedia") or "Volume" in i}
    assert {"HassTurnOn", "HassTurnOff", "HassGetCurrentTime"} <= intents  # "turn on the fan" stays a near miss
    said = [normalize(p.text) for phrases in requests.intents.values() for p in phrases]
    # By hand, not with the module's word list: no request says "play", "playing", "tv", "channel"...
    for word in ("play", "pause", "tv", "channel", "volume", "song", "track", "mute", "radio"):
        assert not any(re.search(rf"\b{word}", s) for s in said), word
    assert any(s.startswith("turn on") for s in said)
    assert len(requests.names) <= HOME_ASSISTANT_WEIGHT * len(intents)

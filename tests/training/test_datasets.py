"""Dataset loaders against tiny copies of the real FSC and SLURP layouts, and manifests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import soundfile

from training.datasets import (
    FSC_INTENTS,
    DatasetError,
    Sample,
    label_set,
    load_fsc,
    load_manifest,
    load_samples,
    load_slurp,
)


def speak(path: Path, text: str, voice: str = "en-us") -> Path:
    """Write ``text`` spoken by espeak-ng to ``path`` (WAV or FLAC, by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(tmp), text], check=True)
    audio, rate = soundfile.read(tmp, dtype="int16")
    tmp.unlink()
    soundfile.write(path, audio, rate)
    return path


# ------------------------------------------------------------------------------------ FSC

FSC_CSV = {
    "train": (
        ",path,speakerId,transcription,action,object,location\n"
        "0,wavs/speakers/2BqVo8kVB2Skwgyb/0a3129c0-4474-11e9-a9a5-5dbec3b8816a.wav,2BqVo8kVB2Skwgyb,Change language,change language,none,none\n"  # noqa: E501 (a real FSC row)
        '1,wavs/speakers/2BqVo8kVB2Skwgyb/0ee42a80-4474-11e9-a9a5-5dbec3b8816a.wav,2BqVo8kVB2Skwgyb,"Lights on, kitchen",activate,lights,kitchen\n'  # noqa: E501 (a real FSC row)
        "2,wavs/speakers/4BrX8aDqK2cLZRYl/1a2b3c40-4474-11e9-a9a5-5dbec3b8816a.wav,4BrX8aDqK2cLZRYl,Switch to Chinese,change language,Chinese,none\n"  # noqa: E501 (a real FSC row)
    ),
    "valid": (
        ",path,speakerId,transcription,action,object,location\n"
        "0,wavs/speakers/52XVOeXMXYuaElyw/5b0b3e30-4474-11e9-a9a5-5dbec3b8816a.wav,52XVOeXMXYuaElyw,Bring me my shoes,bring,shoes,none\n"
    ),
    "test": (
        ",path,speakerId,transcription,action,object,location\n"
        "0,wavs/speakers/9EWlVBQo9rtqRYdy/6c1c4f40-4474-11e9-a9a5-5dbec3b8816a.wav,9EWlVBQo9rtqRYdy,Turn the heat down,decrease,heat,none\n"
    ),
}


@pytest.fixture(scope="module")
def fsc_root(tmp_path_factory) -> Path:
    """``<tmp>/fluent_speech_commands_dataset`` with three splits and real espeak-ng WAVs."""
    root = tmp_path_factory.mktemp("fsc") / "fluent_speech_commands_dataset"
    for split, text in FSC_CSV.items():
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "data" / f"{split}_data.csv").write_text(text)
        for line in text.splitlines()[1:]:
            path = line.split(",")[1]
            speak(root / path, "turn on the lights")
    return root


def test_fsc_train_split_has_labels_speakers_and_transcriptions(fsc_root):
    samples = load_fsc(fsc_root, "train")
    assert [s.label for s in samples] == [
        "change language_none_none",
        "activate_lights_kitchen",
        "change language_Chinese_none",
    ]
    assert samples[1] == Sample(
        path=fsc_root / "wavs/speakers/2BqVo8kVB2Skwgyb/0ee42a80-4474-11e9-a9a5-5dbec3b8816a.wav",
        label="activate_lights_kitchen",
        speaker="2BqVo8kVB2Skwgyb",
        text="Lights on, kitchen",
    )
    assert all(s.path.is_file() for s in samples)


def test_fsc_root_may_be_the_parent_folder_and_splits_differ(fsc_root):
    assert load_fsc(fsc_root.parent, "train") == load_fsc(fsc_root, "train")
    assert [s.label for s in load_fsc(fsc_root, "valid")] == ["bring_shoes_none"]
    assert [s.label for s in load_fsc(fsc_root, "test")] == ["decrease_heat_none"]
    assert load_fsc(fsc_root, "devel") == load_fsc(fsc_root, "valid")  # the SLURP name works too


def test_fsc_unknown_split_is_refused(fsc_root):
    with pytest.raises(DatasetError, match="unknown FSC split 'training'"):
        load_fsc(fsc_root, "training")


def test_fsc_missing_csv_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"train_data\.csv: file not found"):
        load_fsc(tmp_path, "train")


def test_fsc_csv_without_a_column_names_the_file_and_column(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train_data.csv").write_text(",path,speakerId,transcription,action,object\n0,a.wav,s,t,x,y\n")
    with pytest.raises(DatasetError, match=r"train_data\.csv:1: missing column\(s\) location"):
        load_fsc(tmp_path, "train")


def test_fsc_row_with_an_empty_field_names_the_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train_data.csv").write_text(
        ",path,speakerId,transcription,action,object,location\n"
        "0,a.wav,s,t,activate,music,none\n"
        "1,b.wav,s,t,,music,none\n"
    )
    with pytest.raises(DatasetError, match=r"train_data\.csv:3: empty 'action'"):
        load_fsc(tmp_path, "train")


def test_fsc_intents_are_the_31_reference_labels():
    assert len(FSC_INTENTS) == len(set(FSC_INTENTS)) == 31
    assert FSC_INTENTS[0] == "change language_none_none"
    assert all(len(label.split("_")) == 3 for label in FSC_INTENTS)
    assert {label.split("_")[2] for label in FSC_INTENTS} == {"none", "kitchen", "bedroom", "washroom"}
    assert sum(label.startswith("change language_") for label in FSC_INTENTS) == 5


def test_label_set_keeps_fsc_order_for_fsc_labels_and_sorts_others(fsc_root):
    samples = load_fsc(fsc_root, "train") + load_fsc(fsc_root, "valid")
    assert label_set(samples) == [
        "change language_none_none",
        "activate_lights_kitchen",
        "bring_shoes_none",
        "change language_Chinese_none",
    ]
    assert label_set([Sample(Path("b"), label) for label in FSC_INTENTS[::-1]]) == FSC_INTENTS
    other = [Sample(Path("a"), "weather_query"), Sample(Path("b"), "alarm_set"), Sample(Path("c"), "alarm_set")]
    assert label_set(other) == ["alarm_set", "weather_query"]


# ---------------------------------------------------------------------------------- SLURP


def slurp_entry(slurp_id: int, sentence: str, scenario: str, action: str, files: list[str], intent: str | None = None):
    return {
        "slurp_id": slurp_id,
        "sentence": sentence,
        "sentence_annotation": sentence,
        "intent": intent or f"{scenario}_{action}",
        "action": action,
        "tokens": [{"surface": w, "id": i, "lemma": w, "pos": "X"} for i, w in enumerate(sentence.split())],
        "scenario": scenario,
        "recordings": [{"file": f, "wer": 0.0, "ent_wer": 0.0, "status": "correct"} for f in files],
        "entities": [],
    }


def build_slurp(root: Path, audio_parent: Path) -> Path:
    """SLURP's layout: ``root/dataset/slurp/*.jsonl`` and FLACs in ``audio_parent/slurp_{real,synth}``."""
    index = root / "dataset" / "slurp"
    index.mkdir(parents=True)
    splits = {
        "train": [
            slurp_entry(
                1, "wake me up at five am", "alarm", "set", ["audio-1434542201.flac", "audio-1434542201-headset.flac"]
            ),
            # The stored intent disagrees with scenario_action, as in ~1% of SLURP; the label is scenario_action.
            slurp_entry(2, "tell me a joke", "general", "joke", ["audio-1434542202.flac"], intent="qa_factoid"),
        ],
        "devel": [slurp_entry(3, "what is the weather", "weather", "query", ["audio-1434542203-headset.flac"])],
        "test": [slurp_entry(4, "turn the lights off", "iot", "hue_lightoff", ["audio-1434542204.flac"])],
        "train_synthetic": [slurp_entry(5, "play some jazz", "play", "music", ["audio-synth-5.flac"])],
    }
    for split, entries in splits.items():
        lines = [json.dumps(e) for e in entries]
        (index / f"{split}.jsonl").write_text("\n".join(lines) + "\n\n")  # a trailing blank line, as editors leave
        audio_dir = audio_parent / ("slurp_synth" if split == "train_synthetic" else "slurp_real")
        for entry in entries:
            for recording in entry["recordings"]:
                speak(audio_dir / recording["file"], entry["sentence"], voice="en-gb")
    return root


@pytest.fixture(scope="module")
def slurp_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurp")
    return build_slurp(root, root / "audio")


def test_slurp_train_has_one_sample_per_recording_labelled_scenario_action(slurp_root):
    samples = load_slurp(slurp_root, "train")
    real = slurp_root / "audio" / "slurp_real"
    assert samples == [
        Sample(real / "audio-1434542201.flac", "alarm_set", text="wake me up at five am"),
        Sample(real / "audio-1434542201-headset.flac", "alarm_set", text="wake me up at five am"),
        Sample(real / "audio-1434542202.flac", "general_joke", text="tell me a joke"),
    ]
    assert all(s.path.is_file() for s in samples)


def test_slurp_headset_recordings_can_be_excluded(slurp_root):
    files = [s.path.name for s in load_slurp(slurp_root, "train", headset=False)]
    assert files == ["audio-1434542201.flac", "audio-1434542202.flac"]
    assert load_slurp(slurp_root, "devel", headset=False) == []


def test_slurp_synthetic_adds_train_synthetic_to_train_only(slurp_root):
    train = load_slurp(slurp_root, "train", synthetic=True)
    assert len(train) == 4
    assert train[-1] == Sample(
        slurp_root / "audio" / "slurp_synth" / "audio-synth-5.flac", "play_music", text="play some jazz"
    )
    assert train[-1].path.is_file()
    assert load_slurp(slurp_root, "test", synthetic=True) == load_slurp(slurp_root, "test")


def test_slurp_valid_means_devel(slurp_root):
    assert load_slurp(slurp_root, "valid") == load_slurp(slurp_root, "devel")
    assert [s.label for s in load_slurp(slurp_root, "devel")] == ["weather_query"]
    with pytest.raises(DatasetError, match="unknown SLURP split"):
        load_slurp(slurp_root, "train_synthetic")


def test_slurp_audio_folders_directly_under_root(tmp_path):
    root = build_slurp(tmp_path, tmp_path)  # slurp_real/ next to dataset/, no audio/ folder
    samples = load_slurp(root, "test")
    assert samples[0].path == tmp_path / "slurp_real" / "audio-1434542204.flac"
    assert samples[0].path.is_file()


def test_slurp_bad_json_line_names_file_and_line(tmp_path):
    index = tmp_path / "dataset" / "slurp"
    index.mkdir(parents=True)
    good = json.dumps(slurp_entry(1, "hi", "general", "greet", ["a.flac"]))
    (index / "test.jsonl").write_text(good + "\n" + '{"slurp_id": 2, "scenario": \n')
    with pytest.raises(DatasetError, match=r"test\.jsonl:2: invalid JSON"):
        load_slurp(tmp_path, "test")
    (index / "test.jsonl").write_text(good + "\n" + json.dumps({"slurp_id": 2, "scenario": "x"}) + "\n")
    with pytest.raises(DatasetError, match=r"test\.jsonl:2: missing field\(s\) action, recordings"):
        load_slurp(tmp_path, "test")


# ------------------------------------------------------------------------------- manifest


def test_manifest_csv_resolves_relative_paths_against_its_folder(tmp_path):
    clip = speak(tmp_path / "clips" / "a.wav", "lights on")
    elsewhere = speak(tmp_path / "other" / "b.flac", "lights off")
    manifest = tmp_path / "clips" / "train.csv"
    manifest.write_text(f"path,label,speaker,text\na.wav,lights_on,alice,lights on\n{elsewhere},lights_off,,\n")
    assert load_manifest(manifest) == [
        Sample(clip, "lights_on", speaker="alice", text="lights on"),
        Sample(elsewhere, "lights_off"),
    ]


def test_manifest_jsonl_with_optional_fields(tmp_path):
    speak(tmp_path / "x.wav", "bring my socks")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"path": "x.wav", "label": "bring_socks_none"})
        + "\n\n"
        + json.dumps({"path": "sub/y.wav", "label": "bring_shoes_none", "speaker": "bob", "text": "shoes"})
        + "\n"
    )
    samples = load_manifest(manifest)
    assert samples == [
        Sample(tmp_path / "x.wav", "bring_socks_none"),
        Sample(tmp_path / "sub" / "y.wav", "bring_shoes_none", speaker="bob", text="shoes"),
    ]
    assert label_set(samples) == ["bring_socks_none", "bring_shoes_none"]  # FSC order


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("m.csv", "file,label\na.wav,x\n", r"m\.csv:1: missing column\(s\) path"),
        ("m.csv", "path,label\na.wav,x\nb.wav,\n", r"m\.csv:3: every entry needs a non-empty 'path' and 'label'"),
        ("m.jsonl", '{"path": "a.wav", "label": "x"}\n["a.wav", "x"]\n', r"m\.jsonl:2: expected a JSON object"),
        ("m.txt", "a.wav x\n", r"m\.txt: a manifest must be a \.csv or \.jsonl file"),
    ],
)
def test_malformed_manifests_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_manifest(tmp_path / name)


# -------------------------------------------------------------------------- autodetection


def test_load_samples_detects_each_layout(fsc_root, slurp_root, tmp_path):
    assert load_samples(fsc_root, "train") == load_fsc(fsc_root, "train")
    assert load_samples(fsc_root.parent, "valid") == load_fsc(fsc_root, "valid")
    # SLURP options pass through; other corpora accept and ignore them (one config for all sources).
    assert load_samples(slurp_root, "train", headset=False) == load_slurp(slurp_root, "train", headset=False)
    assert load_samples(fsc_root, "test", headset=False) == load_fsc(fsc_root, "test")

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train.csv").write_text("path,label\na.wav,yes\n")
    (folder / "devel.jsonl").write_text('{"path": "b.wav", "label": "no"}\n')
    assert load_samples(folder, "train") == [Sample(folder / "a.wav", "yes")]
    assert load_samples(folder, "valid") == [Sample(folder / "b.wav", "no")]  # valid -> devel
    assert load_samples(folder / "train.csv", "test") == [Sample(folder / "a.wav", "yes")]


def test_load_samples_refuses_what_it_cannot_recognise(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_samples(tmp_path / "nope", "train")
    with pytest.raises(DatasetError, match=r"not a dataset: expected data/test_data\.csv"):
        load_samples(tmp_path, "test")
    with pytest.raises(TypeError, match="headsets"):
        load_samples(tmp_path, "test", headsets=False)

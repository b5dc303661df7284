"""quads-synth: the phrasing table, disjoint voices, the FSC layout it writes, determinism."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from training.datasets import FSC_INTENTS, label_set, load_fsc, load_samples
from training.espeak_voices import (
    ACCENTS,
    TRAINABLE_VARIANTS,
    default_voices,
    family_voices,
    is_generated,
    variant_file,
)
from training.phrasings import PHRASINGS, phrasings_of
from training.synth import SynthError, synthesize_corpus
from training.synth_cli import cli

INTENTS = ["activate_lights_kitchen", "change language_Chinese_none", "bring_juice_none"]
VOICES = {
    "train": ["en-us+f3", "en-gb-scotland+klatt2", "en-029+m4"],
    "valid": ["en-gb-x-rp+Annie", "en-us-nyc+m7"],
    "test": ["en-gb+f5", "en-gb-x-gbclan+croak"],
}


def tiny_corpus(root: Path, seed: int = 0, noise: bool = True) -> Path:
    return synthesize_corpus(root, intents=INTENTS, voices=VOICES, seed=seed, noise=noise, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory.mktemp("synth") / "corpus")


# ------------------------------------------------------------------------------ phrasings


def test_every_fsc_intent_has_at_least_six_distinct_phrasings():
    assert list(PHRASINGS) == FSC_INTENTS or set(PHRASINGS) == set(FSC_INTENTS)
    for intent in FSC_INTENTS:
        phrases = PHRASINGS[intent]
        assert len(set(phrases)) == len(phrases) >= 6, intent
        assert all(p == p.strip() and p and "{" not in p for p in phrases), intent


def test_no_phrasing_is_shared_by_two_intents():
    owner = {}
    for intent, phrases in PHRASINGS.items():
        for phrase in phrases:
            assert phrase.lower() not in owner, f"{phrase!r} is in {owner.get(phrase.lower())} and {intent}"
            owner[phrase.lower()] = intent


def test_phrasings_name_the_location_object_and_language_they_stand_for():
    for intent, phrases in PHRASINGS.items():
        action, obj, location = intent.split("_")
        for phrase in phrases:
            words = phrase.lower()
            if location != "none":
                assert location in words, (intent, phrase)
            if action == "change language" and obj != "none":
                assert obj.lower() in words, (intent, phrase)
            if action == "bring":
                assert obj in words or (obj == "newspaper" and "paper" in words), (intent, phrase)
            for other in ("kitchen", "bedroom", "washroom"):
                if other != location:
                    assert other not in words, (intent, phrase)


# --------------------------------------------------------------------------------- voices


def test_default_voices_are_disjoint_across_splits_down_to_the_variant():
    voices = default_voices({"train": 60, "valid": 15, "test": 15}, seed=3)
    assert {split: len(v) for split, v in voices.items()} == {"train": 60, "valid": 15, "test": 15}
    all_specs = [spec for specs in voices.values() for spec in specs]
    assert len(set(all_specs)) == len(all_specs)
    variants = {split: {spec.split("+")[1] for spec in specs} for split, specs in voices.items()}
    assert not variants["train"] & variants["valid"] and not variants["train"] & variants["test"]
    assert not variants["valid"] & variants["test"]
    for spec in all_specs:
        accent, variant = spec.split("+")
        assert accent in ACCENTS and (variant in TRAINABLE_VARIANTS or is_generated(variant))
        assert not variant.startswith("klatt")  # the held-out family
    assert any(is_generated(spec.split("+")[1]) for spec in voices["train"])
    assert len({spec.split("+")[0] for spec in voices["train"]}) == len(ACCENTS)  # every accent in training
    assert default_voices({"train": 60, "valid": 15, "test": 15}, seed=3) == voices
    assert default_voices({"train": 60, "valid": 15, "test": 15}, seed=4) != voices


def test_more_voices_than_variants_reuse_variants_within_a_split_only():
    voices = default_voices({"train": 300, "valid": 60, "test": 60})
    all_specs = [spec for specs in voices.values() for spec in specs]
    assert len(set(all_specs)) == 420
    variants = [{spec.split("+")[1] for spec in specs} for specs in voices.values()]
    assert sum(len(v) for v in variants) == len(set().union(*variants))
    lopsided = default_voices({"train": 700, "valid": 1, "test": 1})
    assert sum(len(v) for v in lopsided.values()) == 702
    with pytest.raises(ValueError, match="at most"):
        default_voices({"train": 5000, "valid": 1, "test": 1}, generated=False)
    with pytest.raises(ValueError, match="at least 1 voice"):
        default_voices({"train": 3, "eval": 1})


def test_held_out_family_is_klatt_only_and_never_in_default_voices():
    family = family_voices(12, seed=0)
    assert len(set(family)) == 12 and all(spec.split("+")[1].startswith("klatt") for spec in family)
    trained = {spec for specs in default_voices({"train": 300, "valid": 30, "test": 30}).values() for spec in specs}
    assert not trained & set(family)
    with pytest.raises(ValueError, match="klatt family has"):
        family_voices(1000)


def test_generated_variants_are_deterministic_and_differ():
    assert variant_file("qv0001", seed=0) == variant_file("qv0001", seed=0)
    assert variant_file("qv0001", seed=0) != variant_file("qv0002", seed=0)
    assert variant_file("qv0001", seed=0) != variant_file("qv0001", seed=1)
    assert re.search(r"^formant 8 \d+ \d+ \d+$", variant_file("qv0001", seed=0), re.M)


def test_a_generated_variant_changes_the_voice(tmp_path):
    # espeak-ng falls back silently to the plain accent when a variant is unknown, so compare
    # the same text, rate and pitch with and without the generated variant.
    from training.espeak_voices import build_variant_data_dir

    data = build_variant_data_dir(tmp_path, ["qv0001"], seed=0)

    def speak(voice: str) -> np.ndarray:
        out = tmp_path / f"{voice}.wav"
        subprocess.run(["espeak-ng", f"--path={data}", "-v", voice, "-s", "150", "-p", "50", "-w", str(out),
                        "turn on the lights"], check=True)  # fmt: skip
        return soundfile.read(out)[0]

    plain, missing, generated = speak("en-us"), speak("en-us+qv9999"), speak("en-us+qv0001")
    assert plain.size == missing.size and np.allclose(plain, missing)  # the fallback this test would miss
    assert plain.size != generated.size or not np.allclose(plain, generated)


def test_held_out_phrasings_never_reach_train_or_valid():
    for intent in PHRASINGS:
        seen, held_out = phrasings_of(intent, "seen"), phrasings_of(intent, "held-out")
        assert len(held_out) == 1 and held_out[0] not in seen and len(seen) >= 5
    with pytest.raises(ValueError, match="phrasing_set"):
        phrasings_of(INTENTS[0], "other")


def test_held_out_corpus_speaks_only_the_reserved_phrasings(tmp_path):
    root = synthesize_corpus(tmp_path / "p", intents=INTENTS, voices={"test": ["en-gb+f5"]}, seed=0, noise=False,
                             phrasing_set="held-out", progress=False)  # fmt: skip
    with open(root / "data" / "test_data.csv") as f:
        texts = {row["transcription"].lower() for row in csv.DictReader(f)}
    assert texts == {phrasings_of(i, "held-out")[0].lower() for i in INTENTS}


# --------------------------------------------------------------------------------- corpus


def transcriptions(phrases) -> set[str]:
    """The phrasings as the CSV writes them, capitalised like FSC's transcriptions."""
    return {p[0].upper() + p[1:] for p in phrases}


def test_corpus_is_in_the_fsc_layout_and_loads(corpus):
    header = (corpus / "data" / "train_data.csv").read_text().splitlines()[0]
    assert header == ",path,speakerId,transcription,action,object,location"
    for split, voices in VOICES.items():
        samples = load_fsc(corpus, split)
        assert len(samples) == len(voices) * len(INTENTS)
        assert {s.speaker for s in samples} == set(voices)
        assert label_set(samples) == [i for i in FSC_INTENTS if i in INTENTS]
        for s in samples:
            assert s.path.is_file() and s.path.parent.name == s.speaker
            assert s.text in transcriptions(PHRASINGS[s.label])
    assert load_samples(corpus, "test") == load_fsc(corpus, "test")
    with open(corpus / "data" / "valid_data.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(rows) - 1)]  # the unnamed index column
    assert ["change language", "Chinese", "none"] in [r[4:] for r in rows]


def test_each_voice_cycles_through_the_phrasings(corpus):
    samples = load_fsc(corpus, "train")
    texts = {(s.speaker, s.label): s.text for s in samples}
    for intent in INTENTS:
        assert len({texts[(v, intent)] for v in VOICES["train"]}) == 3  # three voices, three phrasings


def test_clips_are_16khz_mono_pcm16_speech_with_silence_and_noise(corpus):
    for sample in load_fsc(corpus, "train"):
        info = soundfile.info(sample.path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.6 < info.duration < 6.0
        audio, _ = soundfile.read(sample.path, dtype="float32")
        assert 10 ** (-27 / 20) < np.abs(audio).max() <= 1.0
        assert np.abs(audio[:400]).max() > 0  # background noise under the leading silence


def test_clean_corpus_has_digital_silence_around_the_speech(tmp_path):
    root = synthesize_corpus(
        tmp_path / "clean", intents=INTENTS[:1], voices={"train": ["en-us+m3"]}, noise=False, progress=False
    )
    (sample,) = load_fsc(root, "train")
    audio, rate = soundfile.read(sample.path, dtype="float32")
    assert np.all(audio[: int(0.04 * rate)] == 0) and np.all(audio[-int(0.04 * rate) :] == 0)
    assert np.abs(audio).max() > 0.04
    assert not (root / "data" / "test_data.csv").exists()  # only the splits asked for


def test_metadata_records_seed_voices_and_prosody(corpus):
    meta = json.loads((corpus / "synth.json").read_text())
    assert meta["seed"] == 0 and meta["intents"] == INTENTS and meta["noise"] is True
    assert {split: [v["spec"] for v in vs] for split, vs in meta["voices"].items()} == VOICES
    for voice in meta["voices"]["train"]:
        assert 125 <= voice["rate"] <= 190 and 15 <= voice["pitch"] <= 85
    assert meta["clips"] == {"train": 9, "valid": 6, "test": 6}
    readme = (corpus / "README.txt").read_text()
    assert "Seed 0" in readme and "en-gb-scotland+klatt2" in readme


def corpus_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_corpus_other_seed_does_not(corpus, tmp_path):
    again = corpus_files(tiny_corpus(tmp_path / "again"))
    assert again == corpus_files(corpus)
    other = corpus_files(tiny_corpus(tmp_path / "other", seed=1))
    assert set(other) == set(again)
    wavs = [name for name in again if name.endswith(".wav")]
    assert len(wavs) == 21
    assert all(other[name] != again[name] for name in wavs)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no phrasings for intent"):
        synthesize_corpus(tmp_path / "a", intents=["make_coffee_none"], voices=VOICES, progress=False)
    with pytest.raises(ValueError, match="in both train and test"):
        synthesize_corpus(tmp_path / "b", intents=INTENTS, voices={"train": ["en-us+f3"], "test": ["en-us+f3"]})
    with pytest.raises(ValueError, match="not an espeak-ng voice spec"):
        synthesize_corpus(tmp_path / "c", intents=INTENTS, voices={"train": ["../evil"]})
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(SynthError, match="refusing to write into it"):
        synthesize_corpus(foreign, intents=INTENTS, voices=VOICES, progress=False)
    assert (foreign / "holiday.jpg").exists()


def test_an_earlier_corpus_is_replaced(tmp_path):
    root = synthesize_corpus(tmp_path / "c", intents=INTENTS, voices={"train": ["en-us+f2"]}, progress=False)
    stale = root / "wavs" / "speakers" / "en-us+f2"
    synthesize_corpus(root, intents=INTENTS[:1], voices={"train": ["en-gb+m2"]}, progress=False)
    assert not stale.exists()
    assert [s.speaker for s in load_fsc(root, "train")] == ["en-gb+m2"]


def test_cli_writes_a_corpus_and_reports_bad_arguments(tmp_path, capsys):
    out = tmp_path / "demo"
    cli([str(out), "--seed", "5", "--intents", "bring_socks_none", "increase_volume_none",
         "--voices-per-split", "train=2,valid=1,test=1", "--phrasings", "2", "--no-noise", "--quiet"])  # fmt: skip
    assert re.search(r"wrote 8 clips \(train 4, valid 2, test 2\)", capsys.readouterr().err)
    train = load_fsc(out, "train")
    assert {s.label for s in train} == {"bring_socks_none", "increase_volume_none"}
    assert all(s.text in transcriptions(PHRASINGS[s.label][:2]) for s in train)
    assert json.loads((out / "synth.json").read_text())["seed"] == 5

    with pytest.raises(SystemExit) as exit_info:
        cli([str(tmp_path / "x"), "--voices-per-split", "train=lots"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli([str(tmp_path / "y"), "--intents", "fly_to_mars", "--quiet"])
    assert exit_info.value.code == 2
    assert "no phrasings for intent" in capsys.readouterr().err


def test_cli_writes_the_held_out_family_and_phrasings(tmp_path, capsys):
    out = tmp_path / "klatt"
    cli([str(out), "--held-out-family", "2", "--phrasing-set", "held-out", "--intents", "bring_socks_none",
         "--no-noise", "--quiet"])  # fmt: skip
    assert re.search(r"wrote 2 clips \(test 2\)", capsys.readouterr().err)
    test = load_fsc(out, "test")
    assert all(s.speaker.split("+")[1].startswith("klatt") for s in test)
    assert {s.text for s in test} == transcriptions(phrasings_of("bring_socks_none", "held-out"))

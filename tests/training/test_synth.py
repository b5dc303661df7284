"""quads-synth: sentences drawn from a context, refusal clips, disjoint voices, the FSC layout it writes, determinism."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from core.refusal import REFUSAL_LABEL
from training.context import load_context
from training.corpus.espeak_voices import (
    ACCENTS,
    TRAINABLE_VARIANTS,
    default_voices,
    family_voices,
    is_generated,
    variant_file,
)
from training.corpus.synth import CorpusRecipe, SynthError, synthesize_corpus
from training.corpus.synth_cli import cli
from training.datasets import FSC_INTENTS, label_set, load_fsc, load_samples

INTENTS = ["activate_lights_kitchen", "change language_Chinese_none", "bring_juice_none"]
VOICES = {
    "train": ["en-us+f3", "en-gb-scotland+klatt2", "en-029+m4"],
    "valid": ["en-gb-x-rp+Annie", "en-us-nyc+m7"],
    "test": ["en-gb+f5", "en-gb-x-gbclan+croak"],
}


def tiny_corpus(root: Path, seed: int = 0, noise: bool = True) -> Path:
    return synthesize_corpus(root, CorpusRecipe(intents=INTENTS, voices=VOICES, seed=seed, noise=noise), progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory.mktemp("synth") / "corpus")


FSC = load_context("fsc")
FOUR_COMMANDS = Path(__file__).resolve().parents[1] / "contexts" / "four-commands.yaml"


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
    from training.corpus.espeak_voices import build_variant_data_dir

    data = build_variant_data_dir(tmp_path, ["qv0001"], seed=0)

    def speak(voice: str) -> np.ndarray:
        out = tmp_path / f"{voice}.wav"
        subprocess.run(
            ["espeak-ng", f"--path={data}", "-v", voice, "-s", "150", "-p", "50", "-w", str(out), "turn on the lights"],
            check=True,
        )
        return soundfile.read(out)[0]

    plain, missing, generated = speak("en-us"), speak("en-us+qv9999"), speak("en-us+qv0001")
    assert plain.size == missing.size and np.allclose(plain, missing)  # the fallback this test would miss
    assert plain.size != generated.size or not np.allclose(plain, generated)


def test_held_out_corpus_speaks_only_the_held_out_expressions(tmp_path):
    held_out = load_context("fsc-held-out")
    root = synthesize_corpus(
        tmp_path / "p",
        CorpusRecipe(context=held_out, intents=INTENTS, voices={"test": ["en-gb+f5", "en-us+m2"]}, seed=0, noise=False),
        progress=False,
    )
    for s in load_fsc(root, "test"):
        assert s.text in transcriptions(held_out.sentences(s.label))
        assert s.text not in transcriptions(FSC.sentences(s.label))


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
            assert s.text in transcriptions(FSC.sentences(s.label))
    assert load_samples(corpus, "test") == load_fsc(corpus, "test")
    with open(corpus / "data" / "valid_data.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(rows) - 1)]  # the unnamed index column
    assert ["change language", "Chinese", "none"] in [r[4:] for r in rows]


def test_voices_draw_different_sentences_and_plain_forms_often(corpus):
    samples = load_fsc(corpus, "train")
    texts = {(s.speaker, s.label): s.text for s in samples}
    assert sum(len({texts[(v, intent)] for v in VOICES["train"]}) for intent in INTENTS) >= 2 * len(INTENTS)


def test_choose_phrase_weighs_templates_alike_and_prefers_plain_forms():
    from training.corpus.synth import PLAIN_SHARE, choose_phrase

    phrases = FSC.intents["activate_lights_none"]
    rng = np.random.default_rng(0)
    drawn = [choose_phrase(phrases, rng) for _ in range(4000)]
    templates = {p.template for p in phrases}
    counts = [sum(d.template == t for d in drawn) for t in templates]
    assert min(counts) > 0.6 * 4000 / len(templates)  # a template of 4 sentences as likely as one of 700
    # By hand: a template with plain forms gives one with PLAIN_SHARE, else at their share of its expansions.
    expected = []
    for t in templates:
        pool = [p for p in phrases if p.template == t]
        share = sum(p.plain for p in pool) / len(pool)
        expected.append(PLAIN_SHARE + (1 - PLAIN_SHARE) * share if share else 0.0)
    plain = sum(d.plain for d in drawn) / len(drawn)
    assert abs(plain - np.mean(expected)) < 0.03
    assert plain > PLAIN_SHARE  # plain forms also come up among all expansions


def test_refusal_clips_are_non_commands_and_sounds(tmp_path):
    from training.corpus.nonspeech import SOUND_KINDS

    not_commands = load_context("not-commands")
    root = synthesize_corpus(
        tmp_path / "r",
        CorpusRecipe(
            intents=INTENTS[:1],
            voices={"train": ["en-us+f2", "en-gb+m3"]},
            not_commands=not_commands,
            not_commands_per_voice=2,
            nonspeech_per_voice=len(SOUND_KINDS),
        ),
        progress=False,
    )
    samples = load_fsc(root, "train")
    assert label_set(samples) == [INTENTS[0], REFUSAL_LABEL]  # refusal last
    refusals = [s for s in samples if s.label == REFUSAL_LABEL]
    said = {p.text for phrases in not_commands.intents.values() for p in phrases}
    speech = [s for s in refusals if not s.text.startswith("<")]
    assert len(speech) == 4 and all(s.text[0].lower() + s.text[1:] in said for s in speech)
    sounds = sorted(s.text.split(">")[0].lstrip("<") for s in refusals if s.text.startswith("<"))
    assert sounds == sorted(SOUND_KINDS * 2)
    for s in refusals:
        audio, _ = soundfile.read(s.path, dtype="float32")
        if s.text == "<silence>":  # a quiet room's hiss, at least 45 dB below full scale
            assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) < 10 ** (-44 / 20)
        else:
            assert np.abs(audio).max() > 10 ** (-27 / 20)


def test_non_commands_that_the_context_says_stay_commands():
    from training.corpus.synth import refusal_phrases

    context = load_context(FOUR_COMMANDS)
    kept = {p.text for p in refusal_phrases(context, load_context(FOUR_COMMANDS))}
    assert kept == set()  # every sentence is the context's own, so none is spoken as a refusal
    assert len(refusal_phrases(context, load_context("not-commands"))) == len(load_context("not-commands"))


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
        tmp_path / "clean",
        CorpusRecipe(intents=INTENTS[:1], voices={"train": ["en-us+m3"]}, noise=False),
        progress=False,
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
    with pytest.raises(ValueError, match="no sentences for intent"):
        synthesize_corpus(tmp_path / "a", CorpusRecipe(intents=["make_coffee_none"], voices=VOICES), progress=False)
    with pytest.raises(ValueError, match="in both train and test"):
        synthesize_corpus(
            tmp_path / "b", CorpusRecipe(intents=INTENTS, voices={"train": ["en-us+f3"], "test": ["en-us+f3"]})
        )
    with pytest.raises(ValueError, match="not an espeak-ng voice spec"):
        synthesize_corpus(tmp_path / "c", CorpusRecipe(intents=INTENTS, voices={"train": ["../evil"]}))
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(SynthError, match="refusing to write into it"):
        synthesize_corpus(foreign, CorpusRecipe(intents=INTENTS, voices=VOICES), progress=False)
    assert (foreign / "holiday.jpg").exists()


def test_an_earlier_corpus_is_replaced(tmp_path):
    root = synthesize_corpus(
        tmp_path / "c", CorpusRecipe(intents=INTENTS, voices={"train": ["en-us+f2"]}), progress=False
    )
    stale = root / "wavs" / "speakers" / "en-us+f2"
    synthesize_corpus(root, CorpusRecipe(intents=INTENTS[:1], voices={"train": ["en-gb+m2"]}), progress=False)
    assert not stale.exists()
    assert [s.speaker for s in load_fsc(root, "train")] == ["en-gb+m2"]


def test_cli_writes_a_corpus_and_reports_bad_arguments(tmp_path, capsys):
    out = tmp_path / "demo"
    cli(
        [
            str(out),
            "--seed",
            "5",
            "--context",
            str(FOUR_COMMANDS),
            "--intents",
            "bring_newspaper_none",
            "increase_volume_none",
            "--voices-per-split",
            "train=2,valid=1,test=1",
            "--no-noise",
            "--quiet",
        ]
    )
    assert re.search(r"wrote 8 clips \(train 4, valid 2, test 2\)", capsys.readouterr().err)
    train = load_fsc(out, "train")
    four = load_context(FOUR_COMMANDS)
    assert {s.label for s in train} == {"bring_newspaper_none", "increase_volume_none"}
    assert all(s.text in transcriptions(four.sentences(s.label)) for s in train)
    assert json.loads((out / "synth.json").read_text())["seed"] == 5

    with pytest.raises(SystemExit) as exit_info:
        cli([str(tmp_path / "x"), "--voices-per-split", "train=lots"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli([str(tmp_path / "y"), "--intents", "fly_to_mars", "--quiet"])
    assert exit_info.value.code == 2
    assert "no sentences for intent" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("language: en\nintents:\n  A:\n    data:\n      - sentences: ['turn on {missing}']\n")
    with pytest.raises(SystemExit) as exit_info:
        cli([str(tmp_path / "z"), "--context", str(bad), "--quiet"])
    assert exit_info.value.code == 2 and not (tmp_path / "z").exists()
    assert f"{bad}:5: intent 'A', sentence 'turn on {{missing}}': unknown list" in capsys.readouterr().err


def test_cli_writes_the_held_out_family_and_expressions(tmp_path, capsys):
    out = tmp_path / "klatt"
    cli(
        [
            str(out),
            "--held-out-family",
            "2",
            "--context",
            "fsc-held-out",
            "--intents",
            "bring_socks_none",
            "--no-noise",
            "--quiet",
        ]
    )
    assert re.search(r"wrote 2 clips \(test 2\)", capsys.readouterr().err)
    test = load_fsc(out, "test")
    assert all(s.speaker.split("+")[1].startswith("klatt") for s in test)
    assert {s.text for s in test} <= transcriptions(load_context("fsc-held-out").sentences("bring_socks_none"))


def test_cli_writes_only_the_splits_asked_for_with_the_full_corpus_voices(tmp_path, capsys):
    out = tmp_path / "held-out"
    cli(
        [
            str(out),
            "--context",
            "fsc-held-out",
            "--intents",
            "bring_socks_none",
            "--voices-per-split",
            "train=3,valid=1,test=2",
            "--splits",
            "test",
            "--no-noise",
            "--quiet",
        ]
    )
    assert re.search(r"wrote 2 clips \(test 2\)", capsys.readouterr().err)
    assert {s.speaker for s in load_fsc(out, "test")} == set(
        default_voices({"train": 3, "valid": 1, "test": 2})["test"]
    )
    with pytest.raises(SystemExit):
        cli([str(tmp_path / "x"), "--voices-per-split", "train=3,test=2", "--splits", "valid", "--quiet"])


# ---------------------------------------------------------------------------- frames and slots

CHANNELS = Path(__file__).resolve().parents[1] / "contexts" / "channels.yaml"


def test_a_context_with_slots_is_written_as_manifests_of_frame_labels(tmp_path):
    voices = {"train": ["en-us+f3", "en-029+m4"], "valid": ["en-gb+f5"]}
    root = synthesize_corpus(
        tmp_path / "c",
        CorpusRecipe(
            context=load_context(CHANNELS),
            voices=voices,
            utterances_per_voice={"Pause": 1, "SetChannel": 2},
            noise=False,
        ),
        progress=False,
    )
    assert not (root / "data").exists()  # the labels are no FSC action_object_location
    with open(root / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "speaker", "text"]
    # The channel's frames take turns across the voices: each said twice in the split, by both voices.
    by_label = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
        assert (root / row["path"]).is_file()
    assert {k: len(v) for k, v in by_label.items()} == {
        "Pause": 2,
        "SetChannel(channel=1)": 2,
        "SetChannel(channel=10)": 2,
    }
    assert {r["speaker"] for r in by_label["SetChannel(channel=1)"]} == set(voices["train"])
    assert all(r["text"] in ("channel one", "channel first") for r in by_label["SetChannel(channel=1)"])
    assert all(r["text"] == "channel ten" for r in by_label["SetChannel(channel=10)"])
    samples = load_samples(root, "valid")
    assert sorted(s.label for s in samples) == ["Pause", "SetChannel(channel=1)", "SetChannel(channel=10)"]

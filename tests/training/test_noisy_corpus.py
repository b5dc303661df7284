"""Noisy copies of a corpus: the same clips and index, each mixed at the SNR asked for."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from training.context import load_context
from training.corpus.noisy_corpus import NoiseMix, noisy_copy
from training.corpus.synth import CorpusRecipe, synthesize_corpus
from training.datasets import load_fsc

VOICES = {"valid": ["en-us+f2", "en-gb+m3"], "test": ["en-us+m1"]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Clean speech of two commands, and two non-commands per voice to make babble from."""
    recipe = CorpusRecipe(
        intents=["activate_music_none", "increase_heat_kitchen"],
        voices=VOICES,
        not_commands=load_context("not-commands"),
        not_commands_per_voice=2,
        seed=3,
        noise=False,
    )
    return synthesize_corpus(tmp_path_factory.mktemp("noisy") / "clean", recipe, progress=False)


def speech_level(wave: np.ndarray) -> float:
    """The documented speech level, by hand: RMS of the loudest half of the 10-ms frames."""
    frames = [wave[i : i + 160].astype(np.float64) for i in range(0, wave.size - 159, 160)]
    energies = sorted((float(np.mean(f**2)) for f in frames), reverse=True)
    return float(np.sqrt(np.mean(energies[: max(1, len(energies) // 2)])))


@pytest.mark.parametrize("kind", ["pink", "babble"])
def test_every_clip_is_mixed_at_the_snr_asked_for(corpus, tmp_path, kind):
    mix = NoiseMix(kind, 5.0, seed=1, babble_from=corpus, babble_split="valid")
    out = noisy_copy(corpus, tmp_path / kind, mix, split="test", progress=False)
    assert (out / "data" / "test_data.csv").read_bytes() == (corpus / "data" / "test_data.csv").read_bytes()
    samples = load_fsc(out, "test")
    assert [s.path.relative_to(out) for s in samples] == [s.path.relative_to(corpus) for s in load_fsc(corpus, "test")]
    for sample in samples:
        clean, _ = soundfile.read(corpus / sample.path.relative_to(out), dtype="float64")
        noisy, rate = soundfile.read(sample.path, dtype="float64")
        assert rate == 16000 and noisy.size == clean.size
        noise = noisy - clean  # the clean clips peak below -1 dBFS, so the copy is not rescaled here
        snr = 20 * np.log10(speech_level(clean) / np.sqrt(np.mean(noise**2)))
        assert snr == pytest.approx(5.0, abs=0.3)  # PCM-16 rounding of both files


def test_the_same_seed_makes_the_same_files_and_another_seed_other_noise(corpus, tmp_path):
    paths = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        noisy_copy(corpus, tmp_path / name, NoiseMix("pink", 10.0, seed=seed), split="valid", progress=False)
        paths.append(sorted((tmp_path / name / "wavs").rglob("*.wav")))
    a, b, c = ([p.read_bytes() for p in group] for group in paths)
    assert a == b and all(x != y for x, y in zip(a, c))


def test_babble_is_made_of_non_command_speech_only(tmp_path, corpus):
    with pytest.raises(ValueError, match="needs babble_from"):
        NoiseMix("babble", 10.0)
    with pytest.raises(ValueError, match="noise kind must be one of"):
        NoiseMix("white", 10.0)
    commands_only = synthesize_corpus(
        tmp_path / "commands",
        CorpusRecipe(intents=["activate_music_none"], voices={"test": ["en-us+f4"]}),
        progress=False,
    )
    with pytest.raises(ValueError, match="no non-command speech clips"):
        noisy_copy(corpus, tmp_path / "x", NoiseMix("babble", 10.0, babble_from=commands_only), progress=False)

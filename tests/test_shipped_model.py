"""The shipped default model understands voices and wordings it never heard in training, and refuses
what is not a command: espeak-ng non-commands it never heard, and sounds that are not speech.

The voices are outside the demo's training data: a plain espeak-ng accent (training voices are
all accent+variant) and two of the held-out Klatt family. Each answer is decided as the service
decides it (``core.refusal.decide`` with the checkpoint's calibrated threshold).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from core.audio import log_mel_spectrogram
from core.checkpoint import load_checkpoint
from core.refusal import REFUSAL_LABEL, decide
from tests.speech import espeak_16k, requires_espeak
from training.context import load_context
from training.corpus.nonspeech import nonspeech
from training.datasets import FSC_INTENTS

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "models" / "quads-fsc-4bit.safetensors"
VOICES = ("en-us", "en-gb-scotland+klatt4", "en-029+klatt2")
INTENTS = (
    "activate_lights_kitchen",
    "deactivate_lights_bedroom",
    "increase_heat_washroom",
    "decrease_heat_kitchen",
    "decrease_volume_none",
    "bring_shoes_none",
    "change language_German_none",
    "deactivate_music_none",
)
CHECKPOINT = load_checkpoint(DEFAULT)


def answer(wave: np.ndarray) -> str | None:
    """The intent the service would answer for ``wave`` (16 kHz), or None for "not understood"."""
    mel = log_mel_spectrogram(torch.from_numpy(wave))[None]
    with torch.no_grad():
        _, logits = CHECKPOINT.model.eval()(mel)
    best, understood = decide(logits[0].softmax(-1).tolist(), CHECKPOINT.refusal_index, CHECKPOINT.threshold)
    return CHECKPOINT.labels[best] if understood else None


def test_shipped_default_is_whisper_tiny_at_4_bits_and_can_refuse():
    assert CHECKPOINT.bits == 4
    assert (CHECKPOINT.dims.n_state, CHECKPOINT.dims.n_head, CHECKPOINT.dims.n_layer) == (384, 6, 4)
    assert DEFAULT.stat().st_size <= 4.2e6
    assert CHECKPOINT.labels == FSC_INTENTS + [REFUSAL_LABEL] and CHECKPOINT.intents == FSC_INTENTS
    # Calibrated to refuse at most 1% of validation commands; 0 when the refusal class alone
    # already refuses that many (then it is the class that refuses).
    assert 0.0 <= CHECKPOINT.threshold < 1.0 and CHECKPOINT.refusal_index == len(FSC_INTENTS)


def misunderstood(context: str, sentence: int) -> tuple[list[str], int]:
    """Every (voice, intent) of ``VOICES`` x ``INTENTS`` saying a sentence of ``context``: the errors, and the count."""
    phrases = load_context(context)
    wrong = []
    for voice in VOICES:
        for intent in INTENTS:
            plain = [p.text for p in phrases.intents[intent] if p.plain] or phrases.sentences(intent)
            text = plain[sentence % len(plain)]
            said = answer(espeak_16k(text, voice))
            if said != intent:
                wrong.append(f"{voice}: {text!r} -> {said} (expected {intent})")
    return wrong, len(VOICES) * len(INTENTS)


@requires_espeak
def test_shipped_default_understands_voices_it_never_heard():
    wrong, total = misunderstood("fsc", sentence=0)
    assert len(wrong) <= total // 12, f"{len(wrong)}/{total} wrong:\n" + "\n".join(wrong)


@requires_espeak
def test_shipped_default_mostly_understands_wordings_it_never_heard():
    # contexts/fsc-held-out.yaml: wordings that training never says ("could you warm the bathroom").
    wrong, total = misunderstood("fsc-held-out", sentence=0)
    assert len(wrong) <= total // 3, f"{len(wrong)}/{total} wrong:\n" + "\n".join(wrong)


@requires_espeak
def test_shipped_default_refuses_non_commands_it_never_heard():
    sentences = [p.text for phrases in load_context("not-commands-held-out").intents.values() for p in phrases]
    accepted = [
        f"{voice}: {text!r} -> {said}"
        for voice in VOICES[:2]
        for text in sentences[::2]
        if (said := answer(espeak_16k(text, voice))) is not None
    ]
    # The demo report measures 18% of held-out non-commands and sounds accepted at 4 bits
    # (corpus-ood); the bar here is a quarter of these 24 clips (a model that cannot refuse accepts all).
    total = 2 * len(sentences[::2])
    assert len(accepted) <= total // 4, f"{len(accepted)} of {total} accepted:\n" + "\n".join(accepted)


def test_shipped_default_refuses_sounds_that_are_not_speech():
    kinds = ("silence", "noise", "tone", "music", "clicks", "hum")
    accepted = [
        f"{kind} #{k} -> {said}"
        for kind in kinds
        for k in range(3)
        if (said := answer(nonspeech(kind, np.random.default_rng([12345, k]), 2.0))) is not None
    ]
    assert not accepted, "\n".join(accepted)


@pytest.mark.parametrize("name", ["media-player", "coffee-machine"])
def test_the_shipped_example_models_were_built_from_the_contexts_as_they_are(name):
    """A context edited after its model was built would be served with stale frames: rebuild it."""
    checkpoint = load_checkpoint(REPO / "models" / f"quads-{name}-4bit.safetensors")
    context = load_context(name)
    assert checkpoint.frames.context["sha256"] == context.sha256, f"rebuild: quads-demo --context {name}"
    assert dict(checkpoint.frames.frames) == dict(context.frame_table.frames)
    assert checkpoint.bits == 4 and checkpoint.file_bytes <= 4.2 * 2**20 and checkpoint.refusal_index is not None


@requires_espeak
@pytest.mark.parametrize("bits, max_bytes, max_wrong", [(3, 3.2e6, 1 / 8), (2, 2.3e6, 1 / 4)])
def test_the_shipped_low_bit_models_are_small_and_understand_unseen_voices(bits, max_bytes, max_wrong):
    path = REPO / "models" / f"quads-fsc-{bits}bit.safetensors"
    three = load_checkpoint(path)
    assert three.bits == bits and three.labels == CHECKPOINT.labels and path.stat().st_size <= max_bytes
    for name, p in three.model.named_parameters():
        if p.dim() > 1:
            assert p.unique().numel() <= 2**bits, name
    wrong = []
    for voice in VOICES:
        for intent in INTENTS:
            text = next(p.text for p in load_context("fsc").intents[intent] if p.plain)
            mel = log_mel_spectrogram(torch.from_numpy(espeak_16k(text, voice)))[None]
            with torch.no_grad():
                probabilities = three.model.eval()(mel)[1][0].softmax(-1).tolist()
            best, understood = decide(probabilities, three.refusal_index, three.threshold)
            if not understood or three.labels[best] != intent:
                wrong.append(f"{voice}: {text!r}")
    assert len(wrong) <= len(VOICES) * len(INTENTS) * max_wrong, wrong

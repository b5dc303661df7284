"""``quads-synth``: a synthetic spoken-command corpus in the Fluent Speech Commands layout.

Every intent of a context (``training.context``; by default the FSC one, ``contexts/fsc.yaml``)
is spoken in sentences sampled from its expansions, by espeak-ng voices: an English accent
combined with a voice variant (``en-gb-scotland+klatt2``), each voice with its own rate, pitch,
amplitude and word gap, jittered per utterance. Optionally each voice also says non-commands
(``contexts/not-commands.yaml``) and each split gets non-speech sounds (``training.corpus.nonspeech``:
silence, noise, tones, music, clicks, hum, and babble of several voices at once), all labelled
``REFUSAL_LABEL``, so a model learns to answer "not understood". Each clip is then rendered
in a room (``training.corpus.render``). Train, valid and test use disjoint variants, hence disjoint
voices, so test accuracy measures generalisation to unheard voices.

The output is deterministic for a seed (same seed, same espeak-ng: byte-identical files):
every random draw comes from a generator seeded by (seed, split, voice, intent, repetition),
independent of the order in which the worker threads finish.

Layout written (readable by ``training.datasets.load_fsc``)::

    ROOT/data/{train,valid,test}_data.csv     ,path,speakerId,transcription,action,object,location
    ROOT/wavs/speakers/<voice spec>/<id>.wav  16 kHz mono PCM-16
    ROOT/synth.json, ROOT/README.txt          seed, voices and settings

A context whose labels are no FSC action_object_location (frames with slots, ``core.frames``)
is indexed by manifests instead (``training.datasets.load_manifest``)::

    ROOT/{train,valid,test}.csv               path,label,speaker,text
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from core.audio import SAMPLE_RATE
from core.refusal import REFUSAL_LABEL
from training.context import Context, Phrase, load_context, shared_sentences
from training.corpus.corpus_files import corpus_readme, prepare_root, write_index, write_text
from training.corpus.espeak_voices import DEFAULT_VOICES_PER_SPLIT, Voice, default_voices, stable_int
from training.corpus.nonspeech import SOUND_KINDS
from training.corpus.render import SynthError, Utterance, render_all
from training.datasets import FSC_SPLITS

# A sentence is drawn by template first (each template of an intent equally likely), then, this
# often, as the template's plain form ("turn on the lights"), else any expansion ("could you
# please turn on the lighting now"): plain forms are what people say most.
PLAIN_SHARE = 0.35
BABBLE_VOICES = (3, 6)  # how many voices talk at once in a babble clip


@dataclass(frozen=True)
class CorpusRecipe:
    """What a corpus says and who says it; ``synthesize_corpus`` renders it.

    context: the commands (default: ``contexts/fsc.yaml``); intents: those of its intents to
    speak (default: all). voices: split -> espeak-ng voice specs (default:
    ``default_voices(DEFAULT_VOICES_PER_SPLIT, seed)``); they must not repeat across splits.
    Each voice says each intent ``utterances_per_voice`` times (or ``utterances_per_voice[intent]``),
    each time a frame of the intent (its slot values, ``Context.frames``), the frames in turn
    across the split's voices, and a sentence of that frame (``choose_phrase``); and
    ``not_commands_per_voice`` sentences of ``not_commands`` (those the context does not itself
    say), and each voice's folder gets ``nonspeech_per_voice`` sounds, cycling through
    ``SOUND_KINDS``; both labelled ``REFUSAL_LABEL``. ``noise=False`` writes clean speech
    (silence padding and gain only).
    """

    context: Context | None = None
    intents: list[str] | None = None
    voices: dict[str, list[str]] | None = None
    utterances_per_voice: int | dict[str, int] = 1
    not_commands: Context | None = None
    not_commands_per_voice: int = 0
    nonspeech_per_voice: int = 0
    seed: int = 0
    noise: bool = True

    def resolved(self) -> CorpusRecipe:
        """The recipe with its defaults filled in and checked (``ValueError`` names what is wrong)."""
        context = load_context("fsc") if self.context is None else self.context
        intents = list(context.names if self.intents is None else self.intents)
        voices = default_voices(DEFAULT_VOICES_PER_SPLIT, self.seed) if self.voices is None else self.voices
        per_voice = self.utterances_per_voice
        if isinstance(per_voice, int):
            per_voice = dict.fromkeys(intents, per_voice)
        recipe = replace(self, context=context, intents=intents, voices=voices, utterances_per_voice=per_voice)
        _check_recipe(recipe)
        return recipe


# -------------------------------------------------------------------------------- corpus


def synthesize_corpus(root: Path, recipe: CorpusRecipe, *, workers: int = 2, progress: bool = True) -> Path:
    """Write ``recipe``'s corpus in the FSC layout under ``root`` and return ``root``;
    ``workers`` espeak-ng processes run at once."""
    root = Path(root)
    recipe = recipe.resolved()
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if shutil.which("espeak-ng") is None:
        raise SynthError("espeak-ng is not installed (apt-get install espeak-ng)")
    prepare_root(root)

    seed = recipe.seed
    voices = {split: [Voice.from_spec(spec, seed) for spec in specs] for split, specs in recipe.voices.items()}
    refusals = refusal_phrases(recipe.context, recipe.not_commands) if recipe.not_commands_per_voice else []
    utterances = plan_utterances(voices, recipe.context, recipe.intents, recipe.utterances_per_voice, seed)
    babble_phrases = refusals or [p for phrases in recipe.context.intents.values() for p in phrases]
    utterances += plan_refusals(
        voices, refusals, recipe.not_commands_per_voice, recipe.nonspeech_per_voice, seed, babble_phrases
    )
    metadata = _corpus_metadata(recipe, bool(refusals), voices, utterances)
    write_text(root / "synth.json", json.dumps(metadata, indent=2) + "\n")
    write_text(root / "README.txt", corpus_readme(metadata))

    for voice in {v.spec for vs in voices.values() for v in vs}:
        (root / "wavs" / "speakers" / voice).mkdir(parents=True, exist_ok=True)
    render_all(root, utterances, seed=seed, noise=recipe.noise, workers=workers, progress=progress)
    write_index(root, utterances, list(voices))
    return root


def _corpus_metadata(recipe: CorpusRecipe, refusals: bool, voices: dict[str, list[Voice]], utterances: list) -> dict:
    """What ``synth.json`` records: the generator, its inputs' hashes, the voices and the clip counts."""
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    counts = set(recipe.utterances_per_voice.values())
    context, not_commands = recipe.context, recipe.not_commands if refusals else None
    return {
        "generator": "quads-synth",
        "seed": recipe.seed,
        "espeak_ng": espeak,
        "sample_rate": SAMPLE_RATE,
        "context": {"path": str(context.path), "sha256": context.sha256},
        "not_commands": {"path": str(not_commands.path), "sha256": not_commands.sha256} if not_commands else None,
        "intents": recipe.intents,
        "refusal_label": REFUSAL_LABEL,
        "utterances_per_voice": next(iter(counts)) if len(counts) == 1 else recipe.utterances_per_voice,
        "voices": {split: [asdict(v) for v in vs] for split, vs in voices.items()},
        "clips": {split: sum(u.split == split for u in utterances) for split in voices},
        "not_commands_per_voice": recipe.not_commands_per_voice,
        "nonspeech_per_voice": recipe.nonspeech_per_voice,
        "noise": recipe.noise,
    }


def choose_phrase(phrases: list[Phrase], rng: np.random.Generator) -> Phrase:
    """A template of the intent uniformly, then its plain form (``PLAIN_SHARE``) or any of its expansions."""
    templates = sorted({p.template for p in phrases})
    template = templates[int(rng.integers(len(templates)))]
    pool = [p for p in phrases if p.template == template]
    plain = [p for p in pool if p.plain]
    if plain and rng.random() < PLAIN_SHARE:
        pool = plain
    return pool[int(rng.integers(len(pool)))]


def plan_utterances(
    voices: dict[str, list[Voice]],
    context: Context,
    intents: list[str],
    utterances_per_voice: dict[str, int],
    seed: int,
) -> list[Utterance]:
    """Every command clip: each voice says each intent ``utterances_per_voice[intent]`` times.
    Its frames (slot values) take turns across the split's clips of the intent, in an order
    shuffled per intent, so every frame is said about equally often and by different voices; a
    sentence of the frame is drawn for each (voice, intent, repetition) from its own generator.
    The clip's label is the frame's (``core.frames``; an FSC intent is its own only frame)."""
    frames = {intent: list(context.frames(intent).items()) for intent in intents}
    order = {i: np.random.default_rng([seed, stable_int(i), 4]).permutation(len(f)) for i, f in frames.items()}
    utterances = []
    for split, split_voices in voices.items():
        for v, voice in enumerate(split_voices):
            for intent in intents:
                n = utterances_per_voice[intent]
                for r in range(n):
                    label, phrases = frames[intent][order[intent][(v * n + r) % len(frames[intent])]]
                    rng = np.random.default_rng([seed, stable_int(voice.spec), stable_int(intent), r, 1])
                    utterances.append(Utterance(split, voice, label, r, choose_phrase(phrases, rng).text))
    return utterances


def refusal_phrases(context: Context, not_commands: Context) -> list[Phrase]:
    """The non-commands' sentences that the context does not say itself (those stay commands)."""
    own = {text for text, _, _ in shared_sentences(context, not_commands)}
    # Templates renumbered across the not-commands' intents, so choose_phrase weighs them all alike.
    phrases, offset = [], 0
    for intent_phrases in not_commands.intents.values():
        phrases += [Phrase(p.text, {}, offset + p.template, p.plain) for p in intent_phrases if p.text not in own]
        offset += max((p.template for p in intent_phrases), default=0) + 1
    return phrases


def plan_refusals(
    voices: dict[str, list[Voice]],
    phrases: list[Phrase],
    per_voice: int,
    sounds_per_voice: int,
    seed: int,
    babble_phrases: list[Phrase],
) -> list[Utterance]:
    """Each voice's non-command sentences, then its folder's non-speech sounds (kinds in turn
    across the split); a babble clip is voices of the split saying ``babble_phrases`` at once."""
    utterances = []
    for split, split_voices in voices.items():
        for v, voice in enumerate(split_voices):
            for r in range(per_voice):
                rng = np.random.default_rng([seed, stable_int(voice.spec), r, 2])
                utterances.append(Utterance(split, voice, REFUSAL_LABEL, r, choose_phrase(phrases, rng).text))
            for k in range(sounds_per_voice):
                kind = SOUND_KINDS[(v * sounds_per_voice + k) % len(SOUND_KINDS)]
                text, others = f"<{kind}>", ()
                if kind == "babble":
                    rng = np.random.default_rng([seed, stable_int(voice.spec), k, 3])
                    talkers = [
                        split_voices[int(i)] for i in rng.integers(len(split_voices), size=rng.integers(*BABBLE_VOICES))
                    ]
                    text, others = " | ".join(choose_phrase(babble_phrases, rng).text for _ in talkers), tuple(talkers)
                utterances.append(Utterance(split, voice, REFUSAL_LABEL, per_voice + k, text, kind, others))
    return utterances


def _check_recipe(recipe: CorpusRecipe) -> None:
    context, intents, voices = recipe.context, recipe.intents, recipe.voices
    utterances_per_voice = recipe.utterances_per_voice
    refusals_per_voice = recipe.not_commands_per_voice + recipe.nonspeech_per_voice
    unknown = [i for i in intents if i not in context.intents]
    if unknown or not intents:
        raise ValueError(f"no sentences for intent(s) {unknown} in {context.path}; its intents: {context.names}")
    if len(set(intents)) != len(intents):
        raise ValueError("intents repeat")
    if set(voices) - set(FSC_SPLITS) or not voices:
        raise ValueError(f"voices must map some of {FSC_SPLITS} to voice specs, got splits {list(voices)}")
    seen: dict[str, str] = {}
    for split, specs in voices.items():
        if not specs:
            raise ValueError(f"no voices for the {split} split")
        for spec in specs:
            if not spec or "/" in spec or spec.startswith((".", "-")) or any(c.isspace() for c in spec):
                raise ValueError(f"{spec!r} is not an espeak-ng voice spec like 'en-us+f3'")
            if spec in seen:
                raise ValueError(f"voice {spec!r} is in both {seen[spec]} and {split}: splits must not share voices")
            seen[spec] = split
    if (
        set(utterances_per_voice) != set(intents)
        or min(utterances_per_voice.values()) < 0
        or refusals_per_voice < 0
        or max(utterances_per_voice.values()) + refusals_per_voice < 1
    ):
        raise ValueError("utterances_per_voice and the refusals must not be negative, and some clips must be asked for")
    if recipe.not_commands_per_voice and recipe.not_commands is None:
        raise ValueError("not_commands_per_voice needs a not_commands context")

"""``quads-synth``: write a synthetic spoken-command corpus (``training.corpus.synth``) from the command line.

    quads-synth runs/corpus --voices-per-split train=60,valid=15,test=15 --seed 0
    quads-synth runs/corpus --context my_commands.yaml --not-commands-per-voice 6 --nonspeech-per-voice 5

``--context`` takes a Home Assistant intent file (``training.context``) or the name of one in
``contexts/`` (default ``fsc``); a context error names the file, line, intent and sentence, and
nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from core.version import package_version
from training.corpus.espeak_voices import DEFAULT_VOICES_PER_SPLIT, HELD_OUT_FAMILY, default_voices, family_voices
from training.datasets import FSC_SPLITS

DEFAULT_UTTERANCES_PER_VOICE = 1


def _parse_voice_counts(text: str) -> dict[str, int]:
    counts = {}
    for part in text.split(","):
        split, _, k = part.partition("=")
        if split.strip() not in FSC_SPLITS or not k.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected e.g. train=48,valid=12,test=12, got {text!r}")
        counts[split.strip()] = int(k)
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quads-synth", description="Write a synthetic spoken-command corpus (espeak-ng) in the FSC layout."
    )
    parser.add_argument("out_dir", type=Path, help="corpus folder (created; an earlier corpus there is replaced)")
    parser.add_argument("--seed", type=int, default=0)
    _add_what_is_said(parser.add_argument_group("what is said"))
    _add_who_says_it(parser.add_argument_group("who says it"))
    parser.add_argument("--no-noise", action="store_true", help="clean speech: no background noise or reverberation")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return parser


def _add_what_is_said(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--context",
        default="fsc",
        help="the commands: a Home Assistant intent file, or a name in contexts/ (default: fsc)",
    )
    group.add_argument(
        "--intents",
        nargs="+",
        metavar="INTENT",
        help="intents of the context (default: all); quote 'change language_...'",
    )
    group.add_argument(
        "--utterances-per-voice",
        type=int,
        default=DEFAULT_UTTERANCES_PER_VOICE,
        help="utterances of each intent per voice (default: %(default)s)",
    )
    group.add_argument(
        "--not-commands",
        default="not-commands",
        help="speech to refuse: an intent file or a name in contexts/ (default: not-commands)",
    )
    group.add_argument(
        "--not-commands-per-voice",
        type=int,
        default=0,
        help="sentences of --not-commands per voice, labelled none_none_none (default: 0)",
    )
    group.add_argument(
        "--nonspeech-per-voice",
        type=int,
        default=0,
        help="non-speech sounds per voice (silence, noise, tones, music, clicks, hum, babble), "
        "labelled none_none_none (default: 0)",
    )


def _add_who_says_it(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--voices-per-split",
        type=_parse_voice_counts,
        default=DEFAULT_VOICES_PER_SPLIT,
        metavar="train=K,valid=K,test=K",
        help="number of voices per split (default: %(default)s)",
    )
    group.add_argument(
        "--splits",
        type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
        metavar="test[,valid...]",
        help="write only these splits, with the voices --voices-per-split gives them (so a test corpus "
        "of held-out wordings has the test voices of a full corpus, never its training voices)",
    )
    group.add_argument(
        "--held-out-family",
        type=int,
        metavar="K",
        help=f"instead of --voices-per-split: a test split of K voices of the held-out "
        f"{HELD_OUT_FAMILY} family (an unseen-engine proxy)",
    )


def _split_voices(args: argparse.Namespace) -> dict[str, list[str]]:
    """The voice specs per split that the arguments ask for."""
    if args.held_out_family:
        return {"test": family_voices(args.held_out_family, args.seed)}
    voices = default_voices(args.voices_per_split, args.seed)
    if args.splits:
        if unknown := set(args.splits) - set(voices):
            raise ValueError(f"--splits {sorted(unknown)}: not among the splits of --voices-per-split")
        voices = {split: voices[split] for split in args.splits}
    return voices


def cli(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)

    from training.context import ContextError, load_context
    from training.corpus.synth import CorpusRecipe, SynthError, synthesize_corpus  # torch loads here, after --help

    start = time.monotonic()
    try:
        context = load_context(args.context)
        not_commands = load_context(args.not_commands) if args.not_commands_per_voice else None
        voices = _split_voices(args)
        root = synthesize_corpus(
            args.out_dir,
            CorpusRecipe(
                context=context,
                intents=args.intents,
                voices=voices,
                utterances_per_voice=args.utterances_per_voice,
                not_commands=not_commands,
                not_commands_per_voice=args.not_commands_per_voice,
                nonspeech_per_voice=args.nonspeech_per_voice,
                seed=args.seed,
                noise=not args.no_noise,
            ),
            workers=args.workers,
            progress=not args.quiet,
        )
    except (ContextError, ValueError, SynthError) as e:
        parser.exit(2, f"quads-synth: error: {e}\n")
    clips = json.loads((root / "synth.json").read_text())["clips"]
    counts = ", ".join(f"{split} {n}" for split, n in clips.items())
    elapsed = time.monotonic() - start
    print(f"wrote {sum(clips.values())} clips ({counts}) to {root} in {elapsed:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    cli()

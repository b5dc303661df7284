"""Corpus generation: espeak-ng speech and non-speech sounds, written in the layouts the loaders read.

``synth`` (``quads-synth``) speaks a context's sentences with espeak-ng voices (``espeak_voices``)
and adds the sounds of ``nonspeech``; ``noisy_corpus`` mixes a corpus's test split with noise.
What the sentences are comes from ``training.context``.
"""

"""Refusal: when a model answers "not understood" instead of an intent.

A model that can refuse has one extra class, ``REFUSAL_LABEL``, trained on speech that is none
of its commands and on sounds that are not speech, and a confidence threshold calibrated on
validation data (stored in its checkpoint). Its answer is the most probable *intent* (never the
refusal class), understood when that intent beats the refusal class and its probability reaches
the threshold. The service and the evaluation both decide with ``decide``, so a report's refusal
rate is the service's.
"""

from __future__ import annotations

from collections.abc import Sequence

# FSC's label scheme is action_object_location: no action, no object, no location is no command.
REFUSAL_LABEL = "none_none_none"


def decide(probabilities: Sequence[float], refusal_index: int | None, threshold: float) -> tuple[int, bool]:
    """(index of the most probable intent, whether it is understood) for one clip's softmax."""
    best = max((i for i in range(len(probabilities)) if i != refusal_index), key=probabilities.__getitem__)
    beats_refusal = refusal_index is None or probabilities[best] > probabilities[refusal_index]
    return best, beats_refusal and probabilities[best] >= threshold


def refusal_index(labels: Sequence[str]) -> int | None:
    """Where ``REFUSAL_LABEL`` is among a model's labels, or None for a model that cannot refuse."""
    return labels.index(REFUSAL_LABEL) if REFUSAL_LABEL in labels else None

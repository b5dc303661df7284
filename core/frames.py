"""What a model's labels mean: each output of the head is a *frame*, an intent with its slot values.

A model built from a context (``training.context``) classifies frames, not bare intents: the
frame ``SetChannel(channel=four)`` is the intent ``SetChannel`` with the slot ``channel`` set to
``four`` (a list value's ``out`` form when it has one). One class per frame keeps the student,
the loss and the checkpoint exactly as they are for the FSC models, whose labels are frames with
no slots of their own; a context whose intents and slot values combine into a few hundred frames
costs a head of that many rows (384 floats each), a few hundred kB at most.

An intent that is always said with the same slots is one frame, labelled with the intent's own
name; an intent with several slot combinations gets one label per combination, built by
``frame_label``. The checkpoint stores this table (``FrameTable.to_json``) with the context's
name and SHA-256, so a served model can say which context it understands and answer with slots.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Frame:
    """An intent and its slot values (all strings, as the API returns them)."""

    intent: str
    slots: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.intent, tuple(sorted(self.slots.items()))


def frame_label(frame: Frame, alone: bool) -> str:
    """The label of ``frame``: its intent's name when it is the intent's only frame (``alone``),
    else ``intent(slot=value,...)`` with the slots in name order."""
    if alone:
        return frame.intent
    return f"{frame.intent}({','.join(f'{k}={v}' for k, v in sorted(frame.slots.items()))})"


@dataclass(frozen=True)
class FrameTable:
    """The frames of a model's labels, and the context they come from."""

    frames: Mapping[str, Frame]  # label -> frame, in the head's label order
    context: Mapping[str, str] = field(default_factory=dict)  # name, sha256, language

    @classmethod
    def of(cls, frames: list[Frame], context: Mapping[str, str] | None = None) -> FrameTable:
        """Labels for ``frames`` (distinct), in sorted label order."""
        per_intent: dict[str, int] = {}
        for frame in frames:
            per_intent[frame.intent] = per_intent.get(frame.intent, 0) + 1
        if len({f.key for f in frames}) != len(frames):
            raise ValueError("frames repeat")
        labelled = {frame_label(f, per_intent[f.intent] == 1): f for f in frames}
        return cls(dict(sorted(labelled.items())), dict(context or {}))

    @property
    def intents(self) -> list[str]:
        """The distinct intents, in label order."""
        return list(dict.fromkeys(f.intent for f in self.frames.values()))

    @property
    def slot_values(self) -> dict[str, list[str]]:
        """Each slot's values over every frame, sorted."""
        values: dict[str, set[str]] = {}
        for frame in self.frames.values():
            for name, value in frame.slots.items():
                values.setdefault(name, set()).add(value)
        return {name: sorted(v) for name, v in sorted(values.items())}

    def frame(self, label: str) -> Frame:
        """The frame of ``label``; a label outside the table (the refusal class) is a frame with no slots."""
        return self.frames.get(label) or Frame(label)

    def to_json(self) -> str:
        frames = {label: {"intent": f.intent, "slots": dict(f.slots)} for label, f in self.frames.items()}
        return json.dumps({"context": dict(self.context), "frames": frames}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FrameTable:
        """The table ``to_json`` wrote; ValueError when it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("frames"), dict):
            raise ValueError("not a frame table: expected {'context': {...}, 'frames': {label: frame}}")
        frames = {}
        for label, f in data["frames"].items():
            slots = f.get("slots", {}) if isinstance(f, dict) else None
            if not isinstance(f, dict) or not isinstance(f.get("intent"), str) or not isinstance(slots, dict):
                raise ValueError(f"frame {label!r}: expected {{'intent': str, 'slots': {{name: value}}}}")
            frames[label] = Frame(f["intent"], {str(k): str(v) for k, v in slots.items()})
        context = data.get("context") or {}
        return cls(frames, {str(k): str(v) for k, v in context.items()})

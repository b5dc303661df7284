"""Contexts (training.context): the shipped files, checked against hassil's own recogniser, and the
validator's errors, each naming the file, line, intent and sentence."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest
import yaml
from hassil import recognize
from hassil.intents import Intents

from core.refusal import REFUSAL_LABEL
from training.context import CONTEXTS_DIR, ContextError, check_disjoint, load_context, normalize
from training.datasets import FSC_INTENTS

FSC = load_context("fsc")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "context.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# --------------------------------------------------------------------------- shipped contexts


def test_the_fsc_context_has_the_31_labels_and_thousands_of_sentences():
    assert sorted(FSC.names) == sorted(FSC_INTENTS)
    assert len(FSC) > 50_000
    assert min(len(FSC.sentences(i)) for i in FSC_INTENTS) >= 500
    assert FSC.slots("activate_lights_washroom") == {"action": "activate", "object": "lights", "location": "washroom"}
    assert FSC.slots("change language_German_none")["object"] == "German"


def test_hassil_recognises_every_sampled_sentence_as_its_own_intent():
    # The reference: Home Assistant's recogniser, on the same file, must agree with our expansion.
    intents = Intents.from_dict(yaml.safe_load((CONTEXTS_DIR / "fsc.yaml").read_text()))
    rng = random.Random(0)
    for name in FSC.names:
        for sentence in rng.sample(FSC.sentences(name), 4):
            result = recognize(sentence, intents)
            assert result is not None and result.intent.name == name, (name, sentence)


def test_sentences_name_the_location_object_and_language_of_their_intent():
    rooms = {
        "kitchen": ("kitchen",),
        "bedroom": ("bedroom", "bed room"),
        "washroom": ("washroom", "bathroom", "restroom", "toilet"),
    }
    for intent in FSC.names:
        action, obj, location = intent.split("_")
        for sentence in FSC.sentences(intent)[::50]:
            words = sentence.lower()
            if location != "none":
                assert any(r in words for r in rooms[location]), (intent, sentence)
            for other, names in rooms.items():
                if other != location:
                    assert not any(r in words for r in names), (intent, sentence)
            if action == "change language" and obj != "none":
                assert obj.lower() in words, (intent, sentence)


def test_held_out_files_share_no_sentence_with_what_training_says():
    fsc_held_out, not_commands = load_context("fsc-held-out"), load_context("not-commands")
    not_commands_held_out, fsc_held_out_valid = (
        load_context("not-commands-held-out"),
        load_context("fsc-held-out-valid"),
    )
    assert set(fsc_held_out.names) == set(fsc_held_out_valid.names) == set(FSC_INTENTS)
    for a, b in (
        (FSC, fsc_held_out),
        (FSC, fsc_held_out_valid),
        (fsc_held_out, fsc_held_out_valid),
        (not_commands, fsc_held_out_valid),
        (FSC, not_commands),
        (FSC, not_commands_held_out),
        (not_commands, not_commands_held_out),
        (fsc_held_out, not_commands_held_out),
    ):
        check_disjoint(a, b)
    with pytest.raises(ContextError, match="a sentence of intent"):
        check_disjoint(FSC, FSC)


def test_normalize_ignores_case_punctuation_and_spacing():
    assert (
        normalize("  Turn ON the lights, please! ")
        == normalize("turn on the lights please")
        == "turn on the lights please"
    )
    assert normalize("it's cold") != normalize("its cold")


# --------------------------------------------------------------------------------- errors


def test_unknown_list_names_file_line_intent_and_sentence(tmp_path):
    path = write(
        tmp_path,
        """
        language: en
        intents:
          lights_on:
            data:
              - sentences:
                  - "turn on the lights"
                  - "turn on the {room} lights"
    """,
    )
    with pytest.raises(ContextError) as e:
        load_context(path)
    assert str(e.value).startswith(
        f"{path}:7: intent 'lights_on', sentence 'turn on the {{room}} lights': unknown list"
    )


def test_unknown_rule(tmp_path):
    path = write(
        tmp_path,
        """
        language: en
        intents:
          lights_on:
            data:
              - sentences: ["<please> turn on the lights"]
    """,
    )
    with pytest.raises(
        ContextError, match=r":5: intent 'lights_on', sentence '<please> turn on the lights': unknown rule"
    ):
        load_context(path)


def test_a_template_that_cannot_be_parsed(tmp_path):
    path = write(
        tmp_path,
        """
        language: en
        intents:
          lights_on:
            data:
              - sentences: ["turn (on | up the lights"]
    """,
    )
    with pytest.raises(
        ContextError, match=r":5: intent 'lights_on', sentence 'turn \(on \| up the lights': cannot be parsed"
    ):
        load_context(path)


def test_a_sentence_that_expands_to_nothing(tmp_path):
    path = write(
        tmp_path,
        """
        language: en
        expansion_rules:
          nothing: "( | )"
        intents:
          nothing:
            data:
              - sentences: ["<nothing>"]
    """,
    )
    with pytest.raises(ContextError, match=r"intent 'nothing', sentence '<nothing>': expands to no sentence"):
        load_context(path)


def test_two_intents_with_the_same_sentence_are_ambiguous(tmp_path):
    path = write(
        tmp_path,
        """
        language: en
        intents:
          lights_on:
            data:
              - sentences: ["turn on the lights [please]"]
          lamp_on:
            data:
              - sentences: ["switch on the lamp", "Turn on the lights, please"]
    """,
    )
    with pytest.raises(ContextError) as e:
        load_context(path)
    message = str(e.value)
    assert message.startswith(f"{path}:8: intent 'lamp_on', sentence 'Turn on the lights, please'")
    assert "also a sentence of intent 'lights_on'" in message and "ambiguous" in message


def test_an_intent_that_expands_past_the_limit(tmp_path):
    path = write(
        tmp_path,
        """
        language: en
        expansion_rules:
          w: "(a | b | c | d | e | f | g | h | i | j)"
        intents:
          huge:
            data:
              - sentences: ["<w> <w> <w> <w> <w>"]
    """,
    )
    with pytest.raises(ContextError, match=r"intent 'huge', .*expands to more than 1000 sentences"):
        load_context(path, max_sentences=1000)
    assert len(load_context(path, max_sentences=100_000)) == 100_000


def test_lists_with_in_and_out_forms_expand_to_the_spoken_form(tmp_path):
    path = write(
        tmp_path,
        """
        language: en
        lists:
          room:
            values:
              - in: living room
                out: living_room
              - kitchen
        intents:
          lights_on:
            data:
              - sentences: ["turn on the {room} lights"]
                slots: {domain: light}
    """,
    )
    context = load_context(path)
    assert context.sentences("lights_on") == ["turn on the living room lights", "turn on the kitchen lights"]
    # Each sentence carries its list's out form beside the block's fixed slots, as hassil's recogniser gives them.
    assert [p.slots for p in context.intents["lights_on"]] == [
        {"domain": "light", "room": "living_room"},
        {"domain": "light", "room": "kitchen"},
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("language: en\n", r"no 'intents' key"),
        ("intents: {a: {data: [{sentences: [x]}]}}\n", r"no 'language' key"),
        ("- just a list\n", r"a YAML mapping"),
        ("language: en\nintents:\n  a:\n    data: []\n", r":3: intent 'a' needs 'data:'"),
        (
            "language: en\nintents:\n  a:\n    data:\n      - sentences: []\n",
            r"intent 'a', data block 1: 'sentences:' must be",
        ),
        ("language: en\nintents:\n  a: [\n", r":4: not valid YAML"),
        (
            "language: en\nlists:\n  room:\n    values: []\nintents:\n  a:\n    data:\n      - sentences: [x]\n",
            r":3: list 'room' has no values",
        ),
        (
            "language: en\nlists:\n  name:\n    wildcard: true\nintents:\n  a:\n    data:\n      - sentences: ['call {name}']\n",
            r"wildcard list\(s\) \['name'\]",
        ),
    ],
)
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ContextError, match=message):
        load_context(path)


def test_reserved_intent_name_and_missing_file(tmp_path):
    path = write(
        tmp_path,
        f"""
        language: en
        intents:
          {REFUSAL_LABEL}:
            data:
              - sentences: ["hello"]
    """,
    )
    with pytest.raises(ContextError, match=f"intent '{REFUSAL_LABEL}': the name is reserved"):
        load_context(path, reserved=(REFUSAL_LABEL,))
    with pytest.raises(ContextError, match="cannot read the context file"):
        load_context(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------- slots and frames


@pytest.mark.parametrize("name", ["media-player", "coffee-machine"])
def test_every_sampled_sentence_carries_the_slots_hassil_recognises(name):
    # The reference for slot values: hassil's recogniser on the same file (a list value's out form).
    context = load_context(name)
    intents = Intents.from_dict(yaml.safe_load(context.path.read_text()))
    rng = random.Random(1)
    phrases = [(intent, p) for intent, ps in context.intents.items() for p in ps]
    for intent, phrase in rng.sample(phrases, 150):
        result = recognize(phrase.text, intents)
        assert result is not None and result.intent.name == intent, phrase.text
        assert {k: str(e.value) for k, e in result.entities.items()} == phrase.slots, phrase.text


def test_frames_of_an_example_context():
    context = load_context("coffee-machine")
    table = context.frame_table
    # 6 drinks x (3 sizes or none) + 3 strengths + 4 intents without slots.
    assert len(table.frames) == 6 * 4 + 3 + 4
    assert table.frames["MakeDrink(drink=latte,size=large)"].slots == {"drink": "latte", "size": "large"}
    assert table.frames["MakeDrink(drink=double_espresso)"].slots == {"drink": "double_espresso"}  # no size said
    assert table.frames["Descale"].slots == {}
    frames = context.frames("MakeDrink")
    assert "I'd like a large cafe latte thanks" in [p.text for p in frames["MakeDrink(drink=latte,size=large)"]]
    assert sum(len(v) for v in frames.values()) == len(context.intents["MakeDrink"])


def test_one_intent_with_two_slot_values_for_a_sentence_is_ambiguous(tmp_path):
    path = write(
        tmp_path,
        """
        language: en
        lists:
          channel:
            values: [one, two]
          volume:
            values: [one, ten]
        intents:
          Set:
            data:
              - sentences: ["set {channel}", "set {volume}"]
    """,
    )
    with pytest.raises(
        ContextError,
        match=r":10: intent 'Set', sentence 'set \{volume\}': 'set one' .* also a sentence "
        r"of the same intent with slots \{'channel': 'one'\}",
    ):
        load_context(path)


def test_a_range_list_and_a_list_put_into_two_slots(tmp_path):
    path = write(
        tmp_path,
        """
        language: en
        lists:
          level:
            range: {from: 1, to: 3}
          room:
            values: [kitchen, hall]
        intents:
          Level:
            data:
              - sentences: ["level {level}"]
          Move:
            data:
              - sentences: ["from {room:source} to {room:target}"]
    """,
    )
    with pytest.raises(ContextError, match=r"intent 'Move', sentence .*: a list is put into two different slots"):
        load_context(path)
    path.write_text(path.read_text().replace("from {room:source} to {room:target}", "go to the {room}"))
    context = load_context(path)
    assert [(p.text, p.slots) for p in context.intents["Level"]] == [
        ("level 1", {"level": "1"}),
        ("level 2", {"level": "2"}),
        ("level 3", {"level": "3"}),
    ]

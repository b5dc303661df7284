"""Home Assistant's requests as non-commands: none is an FSC command, the splits ask for different
things, and hassil (the reference parser) reads every sampled sentence as the intent it is filed under."""

import pytest
from hassil import recognize
from hassil.intents import Intents
from home_assistant_intents import get_intents

from training.context import load_context, normalize
from training.experiments.demo import FSC_HOME_ASSISTANT_INTENTS, FSC_WORDS, fsc_home_assistant_requests
from training.home_assistant_requests import home_assistant_requests, slot_lists


@pytest.fixture(scope="module")
def fsc():
    return load_context("fsc")


@pytest.fixture(scope="module")
def splits(fsc):
    avoid = (fsc, load_context("fsc-held-out"), load_context("not-commands-held-out"))
    return {split: fsc_home_assistant_requests(split, avoid, seed=0) for split in ("train", "valid")}


def words(context):
    return {w for phrases in context.intents.values() for p in phrases for w in normalize(p.text).split()}


def test_no_request_is_an_fsc_command_or_says_an_fsc_word(splits, fsc):
    commands = {normalize(p.text) for phrases in fsc.intents.values() for p in phrases}
    held_out = {normalize(p.text) for p in load_context("not-commands-held-out").intents["near_miss"]}
    for context in splits.values():
        assert not set(context.intents) & FSC_HOME_ASSISTANT_INTENTS
        said = {normalize(p.text) for phrases in context.intents.values() for p in phrases}
        assert not said & commands and not said & held_out
        assert not words(context) & {w for w in FSC_WORDS if " " not in w}
        assert not any(" garage door " in f" {s} " for s in said)


def test_the_splits_ask_for_different_things(splits):
    train, valid = splits["train"], splits["valid"]
    assert len(train.intents) >= 15 and len(valid.intents) >= 4
    assert not set(train.intents) & set(valid.intents)
    assert "HassGetWeather" in train.intents and "HassStartTimer" in valid.intents  # every fourth, by name
    assert len(train) > 1000  # thousands of wordings, not a few


def test_hassil_reads_each_request_as_its_intent(splits):
    data = get_intents("en")
    lists = slot_lists(data, Intents.from_dict(data))
    # Home Assistant matches a block only for devices of its domain; the names here have none.
    for intent in data["intents"].values():
        for block in intent["data"]:
            block.pop("requires_context", None)
            block.pop("excludes_context", None)
    intents = Intents.from_dict(data)
    checked = wrong = 0
    for name, phrases in splits["train"].intents.items():
        for phrase in phrases[:: max(1, len(phrases) // 5)]:
            result = recognize(phrase.text, intents, slot_lists=lists)
            checked += 1
            wrong += result is None or result.intent.name != name
    # A few requests are worded alike in two intents ("stop the timer" pauses or cancels).
    assert checked > 80 and wrong <= 0.1 * checked, f"{wrong} of {checked} read as another intent"


def test_same_seed_same_sentences_and_exclusions_apply():
    kw = dict(exclude_intents={"HassTurnOn", "HassTurnOff"}, exclude_words={"timer", "timers"}, per_template=2)
    a = home_assistant_requests(**kw, seed=3)
    b = home_assistant_requests(**kw, seed=3)
    assert {n: [p.text for p in ps] for n, ps in a.intents.items()} == {
        n: [p.text for p in ps] for n, ps in b.intents.items()
    }
    assert a.sha256 == b.sha256
    assert "HassTurnOn" not in a.intents and not words(a) & {"timer", "timers"}
    assert "HassBroadcast" in a.intents  # the first kept intent, so a training one
    templates = {n: sum(len(b["sentences"]) for b in i["data"]) for n, i in get_intents("en")["intents"].items()}
    assert all(len(ps) <= 2 * templates[n] for n, ps in a.intents.items())


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        home_assistant_requests(exclude_intents=set(), exclude_words=set(), split="test")


def test_decisive_words_are_prefixes_of_every_word_but_the_function_words(tmp_path):
    from training.home_assistant_requests import HELD_OUT_THINGS, _says, decisive_words

    path = tmp_path / "fan.yaml"
    path.write_text('language: en\nintents:\n  FanOn:\n    data:\n      - sentences: ["please turn on the fan"]\n')
    words = decisive_words(load_context(path))
    assert words == {"fan*"} | HELD_OUT_THINGS  # "please", "turn", "on", "the" may be shared
    assert _says("switch the fans off", words) and _says("Fan on!", words)
    assert not _says("turn on the heater", words) and not _says("a defan", words)
    assert _says("open the garage door", {"garage door"}) and not _says("the garage", {"garage door"})

"""Requests that are not ours, from Home Assistant's own English sentence templates.

``home-assistant-intents`` (pinned in ``pyproject.toml``) is the public record of how people ask
a smart home for things: timers, weather, the time, shopping lists, fans, covers, locks,
vacuums, scenes. Said by espeak-ng and labelled "not understood", they teach a model to refuse
requests that share our words ("turn on", "open", "set") but not our meaning, in thousands of
wordings that ``contexts/not-commands.yaml`` alone could not give.

What is ours: which of those requests are *not* commands of a context, and the values of the
lists Home Assistant fills at run time (device names, areas, floors, free text). hassil parses
and samples the templates. A request is left out when

- its intent is in ``exclude_intents`` (Home Assistant intents that *are* commands of the
  context in other words: for FSC, volume, media and set-the-light), or
- it says one of ``exclude_words`` (words or phrases: those that decide the context's labels,
  for FSC "light", "lamp", "music", "heat"..., so that a near miss never teaches the model that
  a command word means "not understood"; and the things the held-out test non-commands ask for,
  so that those stay unheard), or
- it is a sentence of one of the ``avoid`` contexts (the commands, and the held-out test
  sentences, which must stay unheard), or
- its intent is the context's own in other words, by the share of its sentences that say an
  excluded word (``own_share``: Home Assistant's "pause the music" for a media player).

An excluded word ending in ``*`` is a prefix ("play*" also excludes "playing"). For a context of
one's own, ``decisive_words`` gives the words to exclude: every word its sentences say but the
``FUNCTION_WORDS`` that any request may share (so "turn on the fan" stays a near miss of "turn on
the tv"), each as a prefix, with ``HELD_OUT_THINGS``.

``split`` cuts the kept intents in two, disjoint: ``"valid"`` takes every fourth (in name
order), ``"train"`` the rest, so the validation split measures refusal of *kinds* of request
that training never heard, as the test split's ``contexts/not-commands-held-out.yaml`` does.

    requests = home_assistant_requests(exclude_intents=FSC_OWN_INTENTS, exclude_words=FSC_WORDS, split="train")
    len(requests.intents)   # Home Assistant intents, each a list of sampled sentences
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np

from training.context import Context, Phrase, normalize

# The lists Home Assistant fills from a user's devices (or leaves as free text), with values of
# our own. None names a device or thing of the held-out non-commands (radio, fridge, router,
# microwave, pillow, sandwich), so those stay unheard.
RUN_TIME_LISTS: dict[str, list[str]] = {
    "name": [
        "ceiling fan",
        "TV",
        "television",
        "front door",
        "back door",
        "coffee maker",
        "dishwasher",
        "washing machine",
        "dryer",
        "robot vacuum",
        "sprinkler",
        "air purifier",
        "printer",
        "porch",
        "garden hose",
        "kettle",
        "dehumidifier",
        "hot tub",
        "security camera",
        "doorbell",
    ],
    "area": [
        "kitchen",
        "bedroom",
        "bathroom",
        "living room",
        "garage",
        "office",
        "hallway",
        "garden",
        "basement",
        "dining room",
        "nursery",
        "attic",
    ],
    "floor": ["upstairs", "downstairs", "first", "second", "ground", "top"],
    "zone": ["home", "work", "school", "the gym"],
    "message": ["dinner is ready", "time to go", "the movie starts soon", "come downstairs"],
    "search_query": ["the news", "a podcast", "the weather channel"],
    "timer_name": ["pizza", "eggs", "laundry", "pasta", "nap"],
    "timer_command": ["turn off the oven", "start the dishwasher"],
    "shopping_list_item": ["milk", "eggs", "bread", "apples", "coffee", "butter"],
    "todo_list_item": ["call the bank", "pay the rent", "buy a present", "walk the dog"],
}
# Home Assistant's number ranges (temperatures, percentages, durations) cut to a few values each:
# a request is a near miss by its words, and every number would only multiply the sentences.
RANGE_VALUES = ["one", "two", "five", "ten", "fifteen", "twenty", "thirty", "fifty"]
# Sampled from the first expansions of a template; enough for any of Home Assistant's but the
# timers' (thousands of durations), where it bounds the time (about 10 s for all of English).
MAX_EXPANSIONS = 5000
VALID_EVERY = 4  # every fourth kept intent goes to the "valid" split
# What the held-out test non-commands (contexts/not-commands-held-out.yaml) ask for: no request
# that names one is spoken in training, so that those stay unheard.
HELD_OUT_THINGS = frozenset(
    {"radio", "fridge", "router", "pillow", "garage door", "garage doors", "microwave", "window", "windows", "sandwich"}
)
# Words a request may share with a context's commands and still be none of them: articles,
# pronouns, politeness, particles and the generic verbs of every device ("turn", "set", "start").
FUNCTION_WORDS = frozenset(
    "a an the this that these those it its me my i i'd i'm you your we our us can could would will "
    "please thanks thank hey okay ok um now for to from in on off up down of at by with and or some "
    "more less no not turn switch set make put go get start stop like want need mind back again use "
    "change run is are be".split()
)


def decisive_words(context: Context) -> set[str]:
    """The words of ``context``'s sentences that decide its labels, as prefixes (module docstring)."""
    said = {w for phrases in context.intents.values() for p in phrases for w in normalize(p.text).split()}
    return {f"{w}*" for w in said - FUNCTION_WORDS} | set(HELD_OUT_THINGS)


def home_assistant_requests(
    *,
    exclude_intents: set[str],
    exclude_words: set[str],
    avoid: tuple[Context, ...] = (),
    split: str = "train",
    per_template: int = 6,
    own_share: float = 1.0,
    seed: int = 0,
) -> Context:
    """Sampled English sentences of Home Assistant's intents that are none of a context's
    commands (module docstring), ``per_template`` per sentence template at most, each intent's
    sentences one template for ``training.corpus.synth.choose_phrase`` (so each intent weighs
    as one of ``contexts/not-commands.yaml``'s templates)."""
    from hassil.intents import Intents
    from hassil.parse_expression import parse_sentence
    from hassil.sample import sample_sentence
    from home_assistant_intents import get_intents

    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', not {split!r}")
    data = get_intents("en")
    intents = Intents.from_dict(data)
    lists = slot_lists(data, intents)
    avoided = {normalize(p.text) for c in avoid for phrases in c.intents.values() for p in phrases}
    banned = {normalize(w) for w in exclude_words}

    kept = sorted(set(intents.intents) - set(exclude_intents))
    chosen = [n for i, n in enumerate(kept) if (i % VALID_EVERY == VALID_EVERY - 1) == (split == "valid")]
    expanded: dict[str, list[Phrase]] = {}
    for name in chosen:
        rng = np.random.default_rng([seed, sum(map(ord, name))])
        phrases: dict[str, Phrase] = {}
        sampled = said_banned = 0
        for block in intents.intents[name].data:
            for template in block.sentence_texts:
                sentence = parse_sentence(template, keep_text=True)
                texts = itertools.islice(sample_sentence(sentence, lists, intents.expansion_rules), MAX_EXPANSIONS)
                texts = list(dict.fromkeys(" ".join(t.split()) for t in texts))
                pool = [t for t in texts if _allowed(t, banned, avoided)]
                sampled, said_banned = sampled + len(texts), said_banned + sum(_says(t, banned) for t in texts)
                for i in rng.permutation(len(pool))[:per_template]:
                    phrases.setdefault(normalize(pool[i]), Phrase(pool[i]))
        if phrases and (own_share >= 1.0 or said_banned < own_share * sampled):
            expanded[name] = list(phrases.values())
    settings = dict(
        exclude_intents=sorted(exclude_intents), exclude_words=sorted(banned), split=split, per_template=per_template
    )
    if own_share < 1.0:  # the FSC recipe's digest stays what it was
        settings["own_share"] = own_share
    digest = hashlib.sha256(json.dumps([data, settings, sorted(avoided), seed], sort_keys=True).encode()).hexdigest()
    return Context(Path(f"home-assistant-intents-{split}"), "en", expanded, digest)


def slot_lists(data: dict, intents) -> dict:
    """hassil's slot lists for Home Assistant's ``data``: its own, with ``RUN_TIME_LISTS`` for the
    lists it fills at run time or leaves as free text, and ``RANGE_VALUES`` for its ranges."""
    from hassil.intents import TextSlotList

    lists = dict(intents.slot_lists)
    for name, slot_list in data["lists"].items():
        if "range" in slot_list:
            lists[name] = TextSlotList.from_strings(RANGE_VALUES, name=name)
        elif "wildcard" in slot_list:
            lists[name] = TextSlotList.from_strings(RUN_TIME_LISTS[name], name=name)
    lists.update({name: TextSlotList.from_strings(v, name=name) for name, v in RUN_TIME_LISTS.items()})
    return lists


def _allowed(text: str, banned: set[str], avoided: set[str]) -> bool:
    """Whether a sampled request says nothing of ``banned`` and is not ``avoided``."""
    key = normalize(text)
    return bool(key) and key not in avoided and not _says(text, banned)


def _says(text: str, banned: set[str]) -> bool:
    """Whether ``text`` says a word or phrase of ``banned`` (whole words; ``w*`` a word beginning ``w``)."""
    key = f" {normalize(text)} "
    return any(f" {w[:-1]}" in key if w.endswith("*") else f" {w} " in key for w in banned)

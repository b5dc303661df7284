"""How people say each Fluent Speech Commands intent: the phrasings that ``quads-synth`` speaks.

"{location}" rows expand to kitchen/bedroom/washroom and "{language}" rows to the four FSC
languages, giving one entry per FSC intent. The last phrasing of every intent is reserved for
testing (``phrasings_of(intent, "held-out")``): training never hears it.
"""

from __future__ import annotations

# How people say each intent. "{location}" rows expand to kitchen/bedroom/washroom and
# "{language}" rows to the four FSC languages, giving one entry per FSC intent.

LOCATIONS = ("kitchen", "bedroom", "washroom")
LANGUAGES = ("Chinese", "Korean", "English", "German")

PHRASING_TABLE: dict[str, tuple[str, ...]] = {
    "change language_none_none": (
        "change language",
        "change the language",
        "switch the language",
        "I want to change the language",
        "set a different language",
        "can you change the language please",
        "language settings",
    ),
    "activate_music_none": (
        "play music",
        "play some music",
        "put on some music",
        "start the music",
        "turn on the music",
        "music on please",
        "I want to hear some music",
    ),
    "activate_lights_none": (
        "turn on the lights",
        "switch on the lights",
        "lights on",
        "turn the lights on",
        "switch the lights on please",
        "I need some light in here",
    ),
    "deactivate_lights_none": (
        "turn off the lights",
        "switch off the lights",
        "lights off",
        "turn the lights off",
        "switch the lights off please",
        "kill the lights",
    ),
    "increase_volume_none": (
        "turn up the volume",
        "increase the volume",
        "volume up",
        "make it louder",
        "louder please",
        "I can't hear that, turn it up",
    ),
    "decrease_volume_none": (
        "turn down the volume",
        "decrease the volume",
        "volume down",
        "make it quieter",
        "quieter please",
        "that's too loud, turn it down",
    ),
    "increase_heat_none": (
        "turn up the heat",
        "increase the heating",
        "make it warmer",
        "turn the heating up",
        "raise the temperature",
        "it's too cold in here",
    ),
    "decrease_heat_none": (
        "turn down the heat",
        "decrease the heating",
        "make it cooler",
        "turn the heating down",
        "lower the temperature",
        "it's too hot in here",
    ),
    "deactivate_music_none": (
        "stop the music",
        "turn off the music",
        "pause the music",
        "music off",
        "stop playing music please",
        "switch the music off",
    ),
    "activate_lamp_none": (
        "turn on the lamp",
        "switch on the lamp",
        "lamp on",
        "turn the lamp on",
        "switch the lamp on please",
        "put the lamp on",
    ),
    "deactivate_lamp_none": (
        "turn off the lamp",
        "switch off the lamp",
        "lamp off",
        "turn the lamp off",
        "switch the lamp off please",
        "put the lamp out",
    ),
    "activate_lights_{location}": (
        "turn on the lights in the {location}",
        "{location} lights on",
        "switch on the {location} lights",
        "lights on in the {location} please",
        "turn the {location} lights on",
        "switch on the light in the {location}",
    ),
    "deactivate_lights_{location}": (
        "turn off the lights in the {location}",
        "{location} lights off",
        "switch off the {location} lights",
        "lights off in the {location} please",
        "turn the {location} lights off",
        "switch off the light in the {location}",
    ),
    "increase_heat_{location}": (
        "turn up the heat in the {location}",
        "increase the temperature in the {location}",
        "make the {location} warmer",
        "turn the {location} heating up",
        "heat up the {location}",
        "it's too cold in the {location}",
    ),
    "decrease_heat_{location}": (
        "turn down the heat in the {location}",
        "decrease the temperature in the {location}",
        "make the {location} cooler",
        "turn the {location} heating down",
        "cool down the {location}",
        "it's too hot in the {location}",
    ),
    "bring_newspaper_none": (
        "bring me the newspaper",
        "get me the newspaper",
        "fetch the newspaper",
        "I need the newspaper",
        "can you bring me the paper please",
        "newspaper please",
    ),
    "bring_juice_none": (
        "bring me some juice",
        "get me some juice",
        "fetch me a juice",
        "I want some juice",
        "can I have a glass of juice",
        "juice please",
    ),
    "bring_socks_none": (
        "bring me my socks",
        "get my socks",
        "fetch my socks",
        "I need my socks",
        "can you bring me some socks",
        "socks please",
    ),
    "bring_shoes_none": (
        "bring me my shoes",
        "get my shoes",
        "fetch my shoes",
        "I need my shoes",
        "can you bring me my shoes please",
        "shoes please",
    ),
    "change language_{language}_none": (
        "switch to {language}",
        "change the language to {language}",
        "set the language to {language}",
        "I want to use {language}",
        "speak {language} please",
        "language {language}",
    ),
}


def _expand_phrasings(table: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    expanded = {}
    for key, phrases in table.items():
        if "{location}" in key:
            fills = [{"location": v} for v in LOCATIONS]
        elif "{language}" in key:
            fills = [{"language": v} for v in LANGUAGES]
        else:
            fills = [{}]
        for fill in fills:
            expanded[key.format(**fill)] = tuple(p.format(**fill) for p in phrases)
    return expanded


PHRASINGS: dict[str, tuple[str, ...]] = _expand_phrasings(PHRASING_TABLE)
# The last phrasing of every intent is never spoken in train or valid: a corpus written with
# ``phrasing_set="held-out"`` measures paraphrases the model never heard.
PHRASING_SETS = ("seen", "held-out")


def phrasings_of(intent: str, phrasing_set: str = "seen") -> tuple[str, ...]:
    """The phrasings of ``intent`` that training may use ("seen"), or the one reserved for testing."""
    if phrasing_set not in PHRASING_SETS:
        raise ValueError(f"phrasing_set must be one of {PHRASING_SETS}, got {phrasing_set!r}")
    return PHRASINGS[intent][:-1] if phrasing_set == "seen" else PHRASINGS[intent][-1:]

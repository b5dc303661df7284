"""Contexts: the commands a model understands, written as a Home Assistant intent file.

A context is a YAML file in Home Assistant's intent format (``language``, ``intents: NAME: data:
- sentences: [...]`` with optional fixed ``slots:``, ``lists:`` with ``values:`` and their
``in``/``out`` forms, ``expansion_rules:``, ``skip_words:``), parsed and expanded by ``hassil``,
Home Assistant's own parser; nothing here parses a template. What is ours is the check that
comes before anything is synthesised: every problem is a ``ContextError`` that names the file,
the line, the intent and the sentence template, so a user can fix a file of hundreds of lines.

Refused: YAML that is not a mapping with ``language`` and ``intents``, a template hassil cannot
parse, a ``{list}`` or ``<rule>`` the file does not define, a wildcard list (free text cannot be
spoken by a synthesiser), a template that expands to nothing, an intent with more than
``max_sentences`` expansions (``MAX_SENTENCES_PER_INTENT`` by default), and two intents that
produce the same sentence, or one intent with two sets of slot values (the model could not tell
them apart); a list put into two different slots of one template.

    context = load_context("contexts/fsc.yaml")
    context.sentences("activate_lights_kitchen")   # every expansion, in file order
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml
from hassil.errors import MissingListError, MissingRuleError
from hassil.intents import Intents, RangeSlotList, TextSlotList
from hassil.parse_expression import parse_sentence
from hassil.parser import ParseError
from hassil.sample import sample_expression, sample_sentence

from core.frames import Frame, FrameTable

# Far above any real context (the FSC one has at most ~3,000 per intent) yet small enough that
# expanding a runaway template (five optional groups of ten words each) fails in a second.
MAX_SENTENCES_PER_INTENT = 20_000

CONTEXTS_DIR = Path(__file__).resolve().parent.parent / "contexts"


class ContextError(ValueError):
    """A context file is unreadable or invalid; the message names the file, line, intent and sentence."""


@dataclass(frozen=True)
class Phrase:
    """One expanded sentence of an intent: its slots (its block's fixed ones and the values its
    lists put in it, all strings), which of the intent's
    templates it came from (counted over its blocks), and whether it is ``plain``: the template
    said with every optional part left out ("turn on the lights", not "please turn on the lights now")."""

    text: str
    slots: dict = field(default_factory=dict, hash=False, compare=False)
    template: int = 0
    plain: bool = False


@dataclass
class Context:
    """A validated context: each intent's expansions (deduplicated, in file order)."""

    path: Path
    language: str
    intents: dict[str, list[Phrase]]
    sha256: str
    # A subset's frames keep the labels of the whole context's (``subset``).
    parent_table: FrameTable | None = field(default=None, repr=False)

    def subset(self, keep) -> Context:
        """The context with only the phrases for which ``keep(intent, phrase)`` holds (intents
        left with none dropped), its frames labelled as in the whole context."""
        intents = {name: [p for p in phrases if keep(name, p)] for name, phrases in self.intents.items()}
        return Context(self.path, self.language, {k: v for k, v in intents.items() if v}, self.sha256, self.frame_table)

    @property
    def names(self) -> list[str]:
        return list(self.intents)

    def sentences(self, intent: str) -> list[str]:
        return [p.text for p in self.intents[intent]]

    def slots(self, intent: str) -> dict:
        """The slots of the intent's first sentence (``{}`` when it has none): for an intent said
        with fixed slots only (the FSC context's), the intent's slots."""
        phrases = self.intents[intent]
        return dict(phrases[0].slots) if phrases else {}

    @cached_property
    def frame_table(self) -> FrameTable:
        """Every (intent, slot values) combination the context says, labelled (``core.frames``)."""
        if self.parent_table is not None:
            return self.parent_table
        frames = {Frame(name, p.slots).key: Frame(name, p.slots) for name, ps in self.intents.items() for p in ps}
        context = {"name": self.path.stem, "sha256": self.sha256, "language": self.language}
        return FrameTable.of(list(frames.values()), context)

    def frames(self, intent: str) -> dict[str, list[Phrase]]:
        """The intent's phrases grouped by frame label (``frame_table``'s), in file order."""
        labels = {f.key: label for label, f in self.frame_table.frames.items()}  # the whole context's labels
        grouped: dict[str, list[Phrase]] = {}
        for p in self.intents[intent]:
            grouped.setdefault(labels[Frame(intent, p.slots).key], []).append(p)
        return grouped

    def __len__(self) -> int:
        return sum(len(p) for p in self.intents.values())


def normalize(sentence: str) -> str:
    """The form two sentences are compared in: lower case, no punctuation but apostrophes, single spaces."""
    return " ".join(re.sub(r"[^\w' ]+", " ", sentence.lower()).split())


def context_path(name_or_path: str | Path) -> Path:
    """A path as given, or the name of a context shipped in ``contexts/`` (``fsc`` -> ``contexts/fsc.yaml``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return CONTEXTS_DIR / f"{name_or_path}.yaml"


def load_context(
    path: str | Path, *, max_sentences: int = MAX_SENTENCES_PER_INTENT, reserved: tuple[str, ...] = ()
) -> Context:
    """Read, check and expand the context file at ``path``; ``reserved``: names no intent may take."""
    path = context_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ContextError(f"{path}: cannot read the context file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ContextError(f"{path}: not UTF-8 text") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ContextError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    lines = _Lines(path, node)
    _check_layout(data, lines, reserved)
    try:
        intents = Intents.from_dict(data)
    except (ParseError, AssertionError, KeyError, TypeError, ValueError) as e:
        raise ContextError(f"{path}: a list or expansion rule cannot be parsed ({e or type(e).__name__})") from None

    expanded: dict[str, list[Phrase]] = {}
    owner: dict[str, tuple[str, dict, str]] = {}  # normalized sentence -> (intent, slots, template)
    for name, intent in intents.intents.items():
        phrases: dict[str, Phrase] = {}
        templates = 0
        for b, block in enumerate(intent.data):
            rules = {**intents.expansion_rules, **block.expansion_rules}
            lists = {**intents.slot_lists, **block.slot_lists}
            for s, template in enumerate(block.sentence_texts):
                where = f"{lines.of(name, b, s)}: intent {name!r}"
                sentences, plain = _expand(
                    template, lists, rules, block.wildcard_list_names, where, max_sentences - len(phrases) + 1
                )
                for sentence, list_slots in sentences:
                    key, slots = normalize(sentence), {**_fixed_slots(block.slots), **list_slots}
                    if key in owner and owner[key][:2] != (name, slots):
                        other, other_slots, other_template = owner[key]
                        also = f"intent {other!r}" if other != name else f"the same intent with slots {other_slots}"
                        raise ContextError(
                            f"{where}, sentence {template!r}: {sentence!r} (slots {slots}) is also a "
                            f"sentence of {also} ({other_template!r}): ambiguous"
                        )
                    owner[key] = (name, slots, template)
                    phrases.setdefault(key, Phrase(sentence, slots, templates, sentence in plain))
                    if len(phrases) > max_sentences:
                        raise ContextError(
                            f"{where}, sentence {template!r}: the intent expands to more "
                            f"than {max_sentences} sentences; split it or use fewer optional words"
                        )
                templates += 1
        expanded[name] = list(phrases.values())
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Context(path, str(data["language"]), expanded, digest)


def _fixed_slots(slots: dict) -> dict[str, str]:
    """A block's fixed ``slots:`` as the strings an answer carries."""
    return {str(k): str(v) for k, v in (slots or {}).items()}


def _expand(
    template: str, lists: dict, rules: dict, wildcards: set[str], where: str, limit: int
) -> tuple[list[tuple[str, dict[str, str]]], set[str]]:
    """Every sentence of one template (at most ``limit``), whitespace normalized, each with the
    slot values its lists put in it; and the sentences of its plain form (optional parts left out).

    hassil samples the template with its ``{list}`` references left in place; each reference is
    then filled with every value of its list, so each sentence knows its values (hassil's
    sampler yields text only)."""
    prefix = f"{where}, sentence {template!r}"
    try:
        sentence = parse_sentence(template, keep_text=True)
        refs = list(sentence.expression.list_references(rules))
        if wild := sorted({r.list_name for r in refs} & wildcards):
            raise ContextError(
                f"{prefix}: wildcard list(s) {wild} hold free text, which cannot be synthesised; give the list values"
            )
        slot_of = {r.list_name: r.slot_name for r in refs}
        if len(slot_of) < len({(r.list_name, r.slot_name) for r in refs}):
            raise ContextError(f"{prefix}: a list is put into two different slots; use one list per slot")
        values = {name: _list_values(lists, name, prefix) for name in slot_of}
        texts = _fill(sample_sentence(sentence, lists, rules, expand_lists=False), values, slot_of, limit)
        plain = {
            t
            for t, _ in _fill(
                sample_sentence(sentence, lists, rules, expand_lists=False, skip_optionals=True), values, slot_of, limit
            )
        }
    except MissingListError as e:
        raise ContextError(f"{prefix}: unknown list ({e}); define it under lists:") from None
    except MissingRuleError as e:
        raise ContextError(f"{prefix}: unknown rule ({e}); define it under expansion_rules:") from None
    except (ParseError, AssertionError) as e:
        raise ContextError(f"{prefix}: cannot be parsed ({e or 'empty template'})") from None
    texts = [(t, slots) for t, slots in texts if t]
    if not texts:
        raise ContextError(f"{prefix}: expands to no sentence")
    return texts, plain


def _list_values(lists: dict, name: str, where: str) -> list[tuple[str, str]]:
    """(spoken text, slot value) for every value of list ``name``: each expansion of a value's
    ``in`` form, with its ``out`` form (or, when it has none, the text itself)."""
    if name not in lists:
        raise MissingListError(f"Missing slot list {{{name}}}")
    slot_list = lists[name]
    if isinstance(slot_list, RangeSlotList):
        return [(str(n), str(n)) for n in slot_list.get_numbers()]
    if not isinstance(slot_list, TextSlotList) or not slot_list.values:
        raise ContextError(f"{where}: list {name!r} has no values to say")
    pairs = []
    for value in slot_list.values:
        for text in sample_expression(value.text_in, lists):
            text = " ".join(text.split())
            pairs.append((text, text if value.value_out is None else str(value.value_out)))
    return pairs


def _fill(
    texts, values: dict[str, list[tuple[str, str]]], slot_of: dict[str, str], limit: int
) -> list[tuple[str, dict[str, str]]]:
    """Each sampled text with its ``{list}`` references replaced by every combination of the lists' values."""
    filled = []
    for text in texts:
        text = " ".join(text.split())
        names = [n for n in values if f"{{{n}}}" in text]
        for combination in itertools.product(*(values[n] for n in names)):
            sentence, slots = text, {}
            for name, (spoken, value) in zip(names, combination):
                sentence = sentence.replace(f"{{{name}}}", spoken, 1)
                slots[slot_of[name]] = value
            filled.append((" ".join(sentence.split()), slots))
            if len(filled) >= limit:
                return filled
    return filled


def _check_layout(data, lines: _Lines, reserved: tuple[str, ...]) -> None:
    """The shape hassil expects, checked first so that its KeyErrors never reach the user."""
    path = lines.path
    if not isinstance(data, dict):
        raise ContextError(f"{path}: a context is a YAML mapping with 'language' and 'intents'")
    for key in ("language", "intents"):
        if key not in data:
            raise ContextError(f"{path}: no {key!r} key (a Home Assistant intent file has 'language' and 'intents')")
    if not isinstance(data["intents"], dict) or not data["intents"]:
        raise ContextError(f"{lines.of_key('intents')}: 'intents' must map intent names to their data")
    for name, intent in data["intents"].items():
        where = lines.of_key("intents", name)
        if name in reserved:
            raise ContextError(
                f"{where}: intent {name!r}: the name is reserved (it marks speech that is not a command)"
            )
        blocks = intent.get("data") if isinstance(intent, dict) else None
        if not isinstance(blocks, list) or not blocks:
            raise ContextError(f"{where}: intent {name!r} needs 'data:', a list of blocks with 'sentences:'")
        for b, block in enumerate(blocks):
            sentences = block.get("sentences") if isinstance(block, dict) else None
            if not isinstance(sentences, list) or not sentences:
                raise ContextError(
                    f"{where}: intent {name!r}, data block {b + 1}: 'sentences:' must be a non-empty list"
                )
            for s, sentence in enumerate(sentences):
                if not isinstance(sentence, str) or not sentence.strip():
                    raise ContextError(f"{lines.of(name, b, s)}: intent {name!r}: sentence {s + 1} is not a template")
    for list_name, values in (data.get("lists") or {}).items():
        if isinstance(values, dict) and "values" in values and not values["values"]:
            raise ContextError(f"{lines.of_key('lists', list_name)}: list {list_name!r} has no values")


class _Lines:
    """Line numbers of the YAML nodes, so errors can say where in the file they are."""

    def __init__(self, path: Path, root):
        self.path, self.root = path, root

    @staticmethod
    def _child(node, key):
        """(the node that names ``key``: a mapping's key, or the sequence item; the value), or None."""
        if isinstance(node, yaml.MappingNode):
            return next(((k, v) for k, v in node.value if k.value == key), None)
        if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            return node.value[key], node.value[key]
        return None

    def _line(self, *keys) -> str:
        node, named = self.root, self.root
        for key in keys:
            found = self._child(node, key)
            if found is None:
                break
            named, node = found
        return f"{self.path}:{named.start_mark.line + 1}" if named is not None else str(self.path)

    def of_key(self, *keys) -> str:
        return self._line(*keys)

    def of(self, intent: str, block: int, sentence: int) -> str:
        return self._line("intents", intent, "data", block, "sentences", sentence)


def shared_sentences(a: Context, b: Context) -> list[tuple[str, str, str]]:
    """(sentence, intent in ``a``, intent in ``b``) for every sentence both contexts produce."""
    in_a = {normalize(p.text): name for name, phrases in a.intents.items() for p in phrases}
    return [
        (p.text, in_a[normalize(p.text)], name)
        for name, phrases in b.intents.items()
        for p in phrases
        if normalize(p.text) in in_a
    ]


def check_disjoint(a: Context, b: Context) -> None:
    """Refuse ``b`` when it says a sentence of ``a`` (held-out expressions, or non-commands that are commands)."""
    if shared := shared_sentences(a, b):
        text, intent_a, intent_b = shared[0]
        raise ContextError(
            f"{b.path}: intent {intent_b!r} says {text!r}, a sentence of intent {intent_a!r} in {a.path} "
            f"({len(shared)} shared sentence(s) in all)"
        )


def combined(name: str, *contexts: Context) -> Context:
    """Several contexts as one (sources of non-commands): their intents side by side, each named
    ``<file stem>/<intent>`` so that no two collide."""
    intents = {f"{c.path.stem}/{intent}": phrases for c in contexts for intent, phrases in c.intents.items()}
    digest = hashlib.sha256("".join(c.sha256 for c in contexts).encode()).hexdigest()
    return Context(Path(name), contexts[0].language, intents, digest)

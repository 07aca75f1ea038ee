"""Text perturbations for text runs: the text counterpart of the image corruptions.

Eight naturally occurring kinds of noise, each at severities 1-5, in the spirit of the character-
and word-level noise of Belinkov & Bisk (2018), "Synthetic and Natural Noise Both Break Neural
Machine Translation" (ICLR) and of nlpaug / TextAttack's transformations:

- ``keyboard_typo``: a letter replaced by a neighbour on a QWERTY keyboard (case kept);
- ``char_insert`` / ``char_delete`` / ``char_swap``: a random letter inserted, a character
  deleted, two adjacent characters swapped;
- ``casing``: letters' case flipped; ``strip_punctuation``: punctuation removed;
- ``whitespace``: a word split by a space, or joined to the next one;
- ``word_swap``: two adjacent words swapped.

Severity sets the fraction of candidates affected (words, characters or adjacent word pairs;
``FRACTIONS``, or ``FULL`` for casing and punctuation, which reach every character at 5); at
least one candidate is affected whenever the text has one. A text without candidates (empty,
whitespace, no punctuation to strip) comes back unchanged, and no perturbation empties a
non-empty text.

Determinism and nesting: every random choice comes from a generator seeded by a stable hash of
(``seed``, name, text) -- not of the severity -- and is drawn for every candidate before the
severity picks how many of them (in a random order) are edited. So a call is a pure function of
(text, name, severity, seed), independent of the order texts come in, and the edits at severity
``s`` are a subset of those at ``s + 1``: the damage grows with severity for every text, not
just on average.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from ..registry import Registry
from .corruptions import SEVERITIES

FRACTIONS = (0.1, 0.2, 0.3, 0.45, 0.6)  # of the words / characters / word pairs edited
FULL = (0.2, 0.4, 0.6, 0.8, 1.0)

_WORD = re.compile(r"\S+")
# QWERTY rows with their horizontal offset in key widths (staggered as on a keyboard)
_ROWS = (("1234567890", -0.5), ("qwertyuiop", 0.0), ("asdfghjkl", 0.25), ("zxcvbnm", 0.75))


def _keyboard() -> dict[str, str]:
    """Each key's neighbours: keys within 1.3 key widths (left/right, and the rows above and
    below, about two each)."""
    pos = {k: (i + off, r) for r, (row, off) in enumerate(_ROWS) for i, k in enumerate(row)}
    return {k: "".join(o for o, (x2, y2) in pos.items()
                       if o != k and math.hypot(x - x2, y - y2) < 1.3)
            for k, (x, y) in pos.items()}


NEIGHBOURS = _keyboard()

Edit = Callable[[str, random.Random], str]
PerturbFn = Callable[[str, float, random.Random], str]


@dataclass(frozen=True)
class Perturbation:
    fn: PerturbFn  # (text, fraction, rng) -> text
    fractions: tuple[float, ...] = FRACTIONS


PERTURBATIONS: Registry[Perturbation] = Registry("text perturbation")
GROUPS: dict[str, list[str]] = {
    "typos": ["keyboard_typo", "char_insert", "char_delete", "char_swap"],
    "format": ["casing", "strip_punctuation", "whitespace"],
    "order": ["word_swap"],
}
ALL = [n for g in GROUPS.values() for n in g]


def _count(fraction: float, n: int) -> int:
    return min(n, math.ceil(fraction * n)) if n else 0


def _chosen(candidates: list[int], fraction: float, rng: random.Random) -> set[int]:
    """The first ``fraction`` of ``candidates`` in a random order (nested across fractions)."""
    order = list(candidates)
    rng.shuffle(order)
    return set(order[:_count(fraction, len(order))])


def _word_edits(text: str, fraction: float, rng: random.Random,
                eligible: Callable[[str], bool], edit: Edit) -> str:
    """Apply ``edit`` to a ``fraction`` of the eligible words; whitespace kept as it was."""
    words = list(_WORD.finditer(text))
    cands = [i for i, m in enumerate(words) if eligible(m.group())]
    # every word's edit is drawn up front, so a higher fraction only adds edits
    edits = {i: edit(words[i].group(), random.Random(rng.getrandbits(64))) for i in cands}
    chosen = _chosen(cands, fraction, rng)
    out, pos = [], 0
    for i, m in enumerate(words):
        out += [text[pos:m.start()], edits[i] if i in chosen else m.group()]
        pos = m.end()
    return "".join(out) + text[pos:]


def _char_edits(text: str, fraction: float, rng: random.Random,
                eligible: Callable[[str], bool], edit: Callable[[str], str]) -> str:
    cands = [i for i, c in enumerate(text) if eligible(c)]
    chosen = _chosen(cands, fraction, rng)
    return "".join(edit(c) if i in chosen else c for i, c in enumerate(text))


def _register(name: str, help: str, fractions: tuple[float, ...] = FRACTIONS
              ) -> Callable[[PerturbFn], PerturbFn]:
    def deco(fn: PerturbFn) -> PerturbFn:
        PERTURBATIONS.register(name, help)(Perturbation(fn, fractions))
        return fn

    return deco


def _typo(word: str, rng: random.Random) -> str:
    keys = [i for i, c in enumerate(word) if c.lower() in NEIGHBOURS]
    i = rng.choice(keys)
    new = rng.choice(NEIGHBOURS[word[i].lower()])
    return word[:i] + (new.upper() if word[i].isupper() else new) + word[i + 1:]


@_register("keyboard_typo", "a letter replaced by a QWERTY neighbour, in 10-60% of words")
def keyboard_typo(text: str, fraction: float, rng: random.Random) -> str:
    return _word_edits(text, fraction, rng, lambda w: any(c.lower() in NEIGHBOURS for c in w),
                       _typo)


@_register("char_insert", "a random letter inserted, in 10-60% of words")
def char_insert(text: str, fraction: float, rng: random.Random) -> str:
    def edit(w: str, r: random.Random) -> str:
        i = r.randint(0, len(w))
        return w[:i] + r.choice(string.ascii_lowercase) + w[i:]

    return _word_edits(text, fraction, rng, lambda w: True, edit)


@_register("char_delete", "a character deleted, in 10-60% of words (of 2+ characters)")
def char_delete(text: str, fraction: float, rng: random.Random) -> str:
    def edit(w: str, r: random.Random) -> str:
        i = r.randrange(len(w))
        return w[:i] + w[i + 1:]

    return _word_edits(text, fraction, rng, lambda w: len(w) >= 2, edit)


def _swappable(w: str) -> list[int]:
    return [i for i in range(len(w) - 1) if w[i] != w[i + 1]]


@_register("char_swap", "two adjacent characters swapped, in 10-60% of words")
def char_swap(text: str, fraction: float, rng: random.Random) -> str:
    def edit(w: str, r: random.Random) -> str:
        i = r.choice(_swappable(w))
        return w[:i] + w[i + 1] + w[i] + w[i + 2:]

    return _word_edits(text, fraction, rng, lambda w: bool(_swappable(w)), edit)


@_register("casing", "case flipped, in 20-100% of letters", FULL)
def casing(text: str, fraction: float, rng: random.Random) -> str:
    return _char_edits(text, fraction, rng, lambda c: c.swapcase() != c, str.swapcase)


def _is_punct(c: str) -> bool:
    return unicodedata.category(c).startswith("P")


@_register("strip_punctuation", "punctuation removed, 20-100% of it", FULL)
def strip_punctuation(text: str, fraction: float, rng: random.Random) -> str:
    words = [m.group() for m in _WORD.finditer(text)]
    if words and all(all(map(_is_punct, w)) for w in words):
        return text  # nothing but punctuation: stripping it would leave no text
    return _char_edits(text, fraction, rng, _is_punct, lambda c: "")


@_register("whitespace", "a word split by a space or joined to the next, in 10-60% of words")
def whitespace(text: str, fraction: float, rng: random.Random) -> str:
    words = list(_WORD.finditer(text))
    # per word: split at an inner position, or (not the last word) drop the space after it
    plans = [(rng.random() < 0.5 and i + 1 < len(words)) or len(m.group()) < 2
             for i, m in enumerate(words)]
    cuts = [rng.randint(1, max(1, len(m.group()) - 1)) for m in words]
    chosen = _chosen([i for i, m in enumerate(words) if i + 1 < len(words)
                      or len(m.group()) >= 2], fraction, rng)
    out, pos = [], 0
    for i, m in enumerate(words):
        w = m.group()
        gap = text[pos:m.start()]
        out.append("" if i - 1 in chosen and plans[i - 1] else gap)
        out.append(w[:cuts[i]] + " " + w[cuts[i]:] if i in chosen and not plans[i] else w)
        pos = m.end()
    return "".join(out) + text[pos:]


@_register("word_swap", "adjacent words swapped, in 10-60% of word pairs")
def word_swap(text: str, fraction: float, rng: random.Random) -> str:
    words = list(_WORD.finditer(text))
    start = rng.randint(0, 1) if len(words) > 2 else 0
    pairs = list(range(start, len(words) - 1, 2))  # disjoint (i, i + 1) pairs
    chosen = _chosen(pairs, fraction, rng)
    tokens = [m.group() for m in words]
    for i in chosen:
        tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    out, pos = [], 0
    for m, tok in zip(words, tokens):
        out += [text[pos:m.start()], tok]
        pos = m.end()
    return "".join(out) + text[pos:]


def _rng(text: str, name: str, seed: int) -> random.Random:
    key = f"{seed}/{name}/{text}".encode()
    return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))


def perturb(text: str, name: str, severity: int, seed: int = 0) -> str:
    """``text`` with perturbation ``name`` at ``severity`` 1-5: a pure function of its
    arguments (see the module docstring)."""
    p = PERTURBATIONS.get(name)
    if not isinstance(severity, int) or severity not in SEVERITIES:
        raise ConfigError(f"perturbation severity must be an integer 1-5, got {severity!r}")
    return p.fn(str(text), p.fractions[severity - 1], _rng(str(text), name, seed))


def perturb_items(items: Sequence[tuple[str, float]], name: str, severity: int, seed: int = 0
                  ) -> list[tuple[str, float]]:
    """Labeled ``(text, target)`` pairs with the texts perturbed; targets untouched."""
    return [(perturb(text, name, severity, seed), target) for text, target in items]


def resolve_perturbations(spec: str) -> list[str]:
    """Names from ``all``, a group (typos, format, order) or a comma list of names and groups
    (order kept, duplicates dropped)."""
    names: list[str] = []
    for raw in str(spec).split(","):
        item = raw.strip().lower()
        if item in ("all", "all+extra"):
            names += ALL
        elif item in GROUPS:
            names += GROUPS[item]
        elif item in PERTURBATIONS:
            names.append(item)
        else:
            what = (f"unknown text perturbation {item!r}" if item
                    else f"empty perturbation list {spec!r}")
            raise ConfigError(f"{what}; text runs choose from: all, {', '.join(GROUPS)}, "
                              f"{', '.join(ALL)}")
    return list(dict.fromkeys(names))

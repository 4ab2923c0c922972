"""Deterministic training augmentations: surface variants of prompts and entity frames.

Variants (casing, punctuation, typos, dropped or added filler words) teach the model that the
surface form does not matter; frames put a mined entity into generic questions, a cheap stand-in
for paraphrases that the forget set does not contain.  Negatives get the same treatment so that
frame and filler words stay neutral.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Sequence

from lethe.classifier.entities import STOPWORDS

FRAMES = (
    "Tell me about {e}.", "Who is {e}?", "What do you know about {e}?", "Give me a short biography of {e}.",
    "{e}", "What is {e} known for?", "Can you describe the life of {e}?", "I want to learn more about {e}.",
    "Write a paragraph about {e}.", "What has {e} done?", "Any facts about {e}?",
    "Summarize what is known about {e}.", "Where does {e} come from?", "What did {e} create?",
    "Is {e} famous?", "Explain the background of {e}.",
)
PREFIXES = ("Hey, ", "Quick question: ", "Please tell me: ", "I was wondering, ", "Can you help? ")
SUFFIXES = (" Thanks!", " Please answer briefly.", " Be precise.", " I need this for a quiz.")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_LETTERS = string.ascii_lowercase
_LETTER_RUN = re.compile(r"[^\W\d_]{4,}")


def _rng(seed: int, text: str) -> random.Random:
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    return word[:i] + rng.choice(_LETTERS) + word[i + 1 :]


def _add_typos(text: str, rng: random.Random, count: int) -> str:
    """Typos in ``count`` words of four letters or more; half the time a capitalized word (often a name)."""
    for _ in range(count):
        runs = [m.span() for m in _LETTER_RUN.finditer(text)]
        capitalized = [r for r in runs if text[r[0]].isupper()]
        pool = capitalized if capitalized and rng.random() < 0.5 else runs
        if not pool:
            break
        start, end = rng.choice(pool)
        text = text[:start] + _typo(text[start:end], rng) + text[end:]
    return text


def shorten_entities(text: str, surfaces: Sequence[str]) -> str | None:
    """``text`` with every multi-word entity it mentions cut to its last word (a surname), or None."""
    out = text
    for surface in sorted(surfaces, key=len, reverse=True):
        parts = surface.split()
        if len(parts) > 1 and surface in out:
            out = out.replace(surface, parts[-1])
    return out if out != text else None


def _drop_word(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    droppable = [i for i, w in enumerate(words) if _PUNCT.sub("", w).lower() in STOPWORDS]
    if droppable and len(words) > 3:
        del words[rng.choice(droppable)]
    return " ".join(words)


def variant(text: str, rng: random.Random) -> str:
    """One random surface variant of ``text``."""
    out = text
    if rng.random() < 0.5:
        out = _add_typos(out, rng, rng.choice((1, 1, 2)))
    if rng.random() < 0.3:
        out = _drop_word(out, rng)
    r = rng.random()
    if r < 0.2:
        out = _PUNCT.sub("", out)
    elif r < 0.3:
        out = out.rstrip("?.!") + rng.choice(("??", "!", " ?", "..."))
    r = rng.random()
    if r < 0.15:
        out = rng.choice(PREFIXES) + out[:1].lower() + out[1:]
    elif r < 0.3:
        out = out + rng.choice(SUFFIXES)
    r = rng.random()
    if r < 0.25:
        out = out.lower()
    elif r < 0.35:
        out = out.upper()
    elif r < 0.45:
        out = out.title()
    return out


def variants(text: str, count: int, seed: int) -> list[str]:
    """``count`` deterministic surface variants of ``text`` (depends only on text and seed)."""
    rng = _rng(seed, text)
    return [variant(text, rng) for _ in range(count)]


def frames(surfaces: Sequence[str], per_entity: int, seed: int) -> list[str]:
    """Each entity surface string placed into ``per_entity`` generic question frames."""
    out: list[str] = []
    for surface in surfaces:
        rng = _rng(seed, "frame:" + surface)
        for frame in rng.sample(FRAMES, min(per_entity, len(FRAMES))):
            out.append(frame.format(e=surface))
    return out


def _mutate_word(word: str, rng: random.Random) -> str:
    """Keep the first or last ~half of ``word`` and replace the rest with random letters of similar shape."""
    keep = max(1, len(word) // 2)
    vowels, consonants = "aeiou", "bcdfghklmnprstvz"
    fresh = "".join(rng.choice(vowels if c.lower() in vowels else consonants) for c in word[keep:])
    if rng.random() < 0.5:
        out = word[:keep] + fresh
    else:
        fresh = "".join(rng.choice(vowels if c.lower() in vowels else consonants) for c in word[: len(word) - keep])
        out = fresh + word[len(word) - keep :]
    return out[:1].upper() + out[1:].lower() if word[:1].isupper() else out.lower()


def near_misses(text: str, surfaces: Sequence[str], count: int, seed: int) -> list[str]:
    """``text`` with its entity mentions swapped for look-alike names (half of each word changed): hard negatives."""
    present = [s for s in sorted(surfaces, key=len, reverse=True) if s in text]
    if not present:
        return []
    rng = _rng(seed, "near-miss:" + text)
    out = []
    for _ in range(count):
        swapped = text
        for surface in present:
            fake = " ".join(_mutate_word(w, rng) if len(w) >= 4 else w for w in surface.split())
            swapped = swapped.replace(surface, fake)
        if swapped != text:
            out.append(swapped)
    return out

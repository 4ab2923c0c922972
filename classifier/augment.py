"""Deterministic training augmentations: surface variants of prompts and entity frames.

Variants (casing, punctuation, typos, dropped or added filler words) teach the model that the
surface form does not matter; frames put a mined entity into generic questions in English, French,
German and Spanish, a cheap stand-in for paraphrases that the forget set does not contain; context
forms put a question inside a longer message or before a turn that only refers back to it.
Negatives get the same treatment so that frame and filler words stay neutral, and ordinary uses of
the common words inside entity names (``stone`` in a name of a stone) teach that such a word alone
is no evidence.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Sequence

from lethe.classifier.entities import STOPWORDS

# Question frames per language; {e} is an entity (a person, a place, a thing, a topic).
FRAMES: dict[str, tuple[str, ...]] = {
    "en": (
        "Tell me about {e}.", "Who is {e}?", "What do you know about {e}?", "Give me a short biography of {e}.",
        "{e}", "What is {e} known for?", "Can you describe {e}?", "I want to learn more about {e}.",
        "Write a paragraph about {e}.", "What has {e} done?", "Any facts about {e}?",
        "Summarize what is known about {e}.", "Where does {e} come from?", "What is {e}?",
        "Why does {e} matter?", "Explain the background of {e}.",
    ),
    "fr": ("Qui est {e} ?", "Qu'est-ce que {e} ?", "Parle-moi de {e}.", "Que sais-tu de {e} ?",
           "Pourquoi {e} est-il important ?", "Décris {e} en quelques mots."),
    "de": ("Wer ist {e}?", "Was ist {e}?", "Erzähl mir etwas über {e}.", "Was weißt du über {e}?",
           "Warum ist {e} wichtig?", "Beschreibe {e} in wenigen Worten."),
    "es": ("¿Quién es {e}?", "¿Qué es {e}?", "Háblame de {e}.", "¿Qué sabes de {e}?",
           "¿Por qué es importante {e}?", "Describe a {e} en pocas palabras."),
}  # fmt: skip
# Longer messages that carry a question in the middle of something else.
WRAPPERS = (
    "I have been reading a lot lately and I am curious. {q}",
    "My friend and I argued about this yesterday. {q} Please settle it.",
    "I'm preparing a quiz night for my colleagues and need some help. {q}",
    "Sorry if this is a silly question. {q} Thanks in advance!",
    "{q} I need it for my homework, which is due tomorrow.",
)
# Turns that only point back at an earlier turn (a conversation is also judged joined).
FOLLOW_UPS = (
    "What happens to them later?", "Who is their best friend?", "Why is that important?", "Can you tell me more?",
    "Who else is involved?", "Where does it take place?", "Et ensuite, que se passe-t-il ?",
    "Und was passiert danach?", "¿Y luego qué pasa?",
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


def short_forms(surfaces: Sequence[str], common_words: frozenset[str]) -> list[str]:
    """The first and the last word (four letters or more, capitalized, not an ordinary word) of each multi-word name."""
    out: dict[str, None] = {}
    for surface in surfaces:
        words = [w for w in re.findall(r"[^\W\d_][\w'’-]*", surface) if w[:1].isupper()]
        if len(words) >= 2:
            for word in (words[0], words[-1]):
                parts = [p.lower() for p in re.findall(r"[^\W\d_]+", word)]
                if len(word) >= 4 and not all(p in STOPWORDS or p in common_words for p in parts):
                    out[word] = None
    return list(out)


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


def changed_words(text: str, vocabulary: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` light paraphrases of ``text``: one or two content words replaced by words of ``vocabulary``,
    then a surface variant (the near-duplicates an example-level forget set must still recognize)."""
    rng = _rng(seed, "changed:" + text)
    out = []
    for _ in range(count if vocabulary else 0):
        words = text.split(" ")
        content = [i for i, w in enumerate(words) if len(w) >= 3 and w.isalpha() and w.lower() not in STOPWORDS]
        for i in rng.sample(content, min(len(content), rng.choice((1, 2)))):
            words[i] = rng.choice(vocabulary)
        out.append(variant(" ".join(words), rng))
    return out


def frames(surfaces: Sequence[str], per_entity: int, seed: int) -> list[str]:
    """Each entity in ``per_entity`` generic question frames, most in English and one in each other language."""
    english = FRAMES["en"]
    others = [FRAMES[language] for language in FRAMES if language != "en"]
    out: list[str] = []
    for surface in surfaces:
        rng = _rng(seed, "frame:" + surface)
        picked = rng.sample(english, min(per_entity, len(english)))
        if per_entity > len(others):
            picked[-len(others) :] = [rng.choice(frames_of) for frames_of in others]
        out.extend(frame.format(e=surface) for frame in picked)
    return out


def in_context(texts: Sequence[str], seed: int) -> list[str]:
    """Each text inside a longer message, and as the first turn of a conversation that goes on by reference."""
    out: list[str] = []
    for text in texts:
        rng = _rng(seed, "context:" + text)
        out.append(rng.choice(WRAPPERS).format(q=text))
        out.append(f"{text}\n{rng.choice(FOLLOW_UPS)}")
    return out


def ordinary_uses(surfaces: Sequence[str], common_words: frozenset[str], sentences: Sequence[str], seed: int,
                  per_word: int = 12) -> list[str]:
    """Negatives that use the ordinary words inside entity names (``stone``, ``map``, ``harry``) outside the scope.

    For each such word: up to ``per_word`` sentences of ``sentences`` containing it, or, lacking those,
    generic questions about the word itself.
    """
    words = sorted({w.lower() for s in surfaces for w in re.findall(r"[^\W\d_]{3,}", s)
                    if w.lower() in common_words and w.lower() not in STOPWORDS})  # fmt: skip
    by_word: dict[str, list[str]] = {w: [] for w in words}
    for sentence in sentences:
        for w in set(re.findall(r"[^\W\d_]{3,}", sentence.lower())) & by_word.keys():
            if len(by_word[w]) < per_word:
                by_word[w].append(sentence)
    out: list[str] = []
    for w, found in by_word.items():
        rng = _rng(seed, "ordinary:" + w)
        out.extend(found)
        count = min(len(_ORDINARY), per_word - len(found) // 2)
        out.extend(frame.format(w=w, W=w.title()) for frame in rng.sample(_ORDINARY, count))
    return out


_ORDINARY = (
    "What does the word {w} mean?", "How do you use a {w}?", "Where can I buy a {w}?", "Is {w} a common word?",
    "Tell me about the history of the {w}.", "What is the origin of the word {w}?", "Show me a picture of a {w}.",
    "Can you explain {w} to a child?", "Write a sentence with the word {w}.", "Who is {W}?", "What is {W}?",
    "Tell me about {W}.", "Is there a famous person called {W}?", "How do you say {w} in French?",
)  # fmt: skip


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

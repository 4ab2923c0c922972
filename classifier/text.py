"""Text normalization shared by training and serving: words, their spans, and hardened normal forms.

Words are runs of letters and digits in the raw text; each keeps its character span so that
feature weights can be mapped back to the text.  Normalization is per word: NFKD with accents
stripped, case folded, and leetspeak digits mapped to letters in mixed letter/digit words.

Evasion hardening (see ``benchmarks/evasion.py`` for the attacks and their leak rates):
- leetspeak symbols inside a word (``$e$$@``, ``|ara``) belong to the word and map to letters;
- invisible format characters (every character of Unicode category Cf) inside a word are dropped;
- Cyrillic and Greek look-alikes of Latin letters, and Latin letters whose Unicode name makes them
  a form of a basic letter (small capitals, script g, r with fishhook, Latin alpha), are mapped to
  Latin in words written only with Latin letters and such look-alikes (ordinary Cyrillic or Greek
  words are left alone);
- a name spelled out letter by letter (``S e s s a``, ``S.e.s.s.a``, ``S/e/s/s/a``: three or
  more single characters joined by single spaces, punctuation or symbols) is read as one word,
  split where a capital follows a small letter.

The category and name rules were added after the held-out attacks of ``benchmarks/evasion.py``
(built from characters in none of the listed tables) leaked 0.9-1.0; look-alikes from other
scripts (Armenian, Greek epsilon) and unmapped leet symbols are still not caught.
"""

from __future__ import annotations

import re
import unicodedata
from itertools import pairwise

from lethe.classifier.cache import ByteBoundedCache

_INVISIBLE = "\u00ad\u200b\u200c\u200d\u2060\ufeff"
# Every invisible format character (Unicode category Cf), not only the common ones listed above.
_FORMAT = "".join(c for c in map(chr, range(0x110000)) if unicodedata.category(c) == "Cf")
WORD_PATTERN = re.compile(rf"(?:[@$|](?=[^\W_]))?[^\W_]+(?:[@$|!{re.escape(_FORMAT)}]+[^\W_]+)*(?:[@$]+(?![^\W_]))?")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b"})
_SYMBOLS = str.maketrans({"@": "a", "$": "s", "|": "l", "!": "i"} | {c: None for c in _INVISIBLE})
_DROP_FORMAT = str.maketrans({c: None for c in _FORMAT})
# Cyrillic and Greek letters drawn like Latin ones (capitals before case folding, where they still look Latin).
_CONFUSABLES = str.maketrans(
    dict(
        zip(
            "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u04bb\u0501\u04cf"
            "\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0406\u0408\u0405"
            "\u03b1\u03bf\u03b9\u03bd\u03c1\u03c5\u03c7\u03ba"
            "\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7",
            "aeopcyxijshdlABEKMHOPCTXIJSaoivpuxkABEZHIKMNOPTYX",
            strict=True,
        )
    )
)
_SPELL_GAP = frozenset(" .-_")
# Latin letters whose Unicode name makes them a form of a basic letter that NFKD leaves alone: small capitals
# (LATIN LETTER SMALL CAPITAL S), script and hooked forms (LATIN SMALL LETTER SCRIPT G, R WITH FISHHOOK), and the
# Latin alpha and iota.
_LATIN_NAME = re.compile(
    r"^LATIN (?:SMALL |CAPITAL )?LETTER (?:SMALL CAPITAL |SCRIPT |DOTLESS )?([A-Z]|ALPHA|IOTA)(?: WITH .+)?$"
)


def _latin_forms() -> dict[int, str]:
    forms: dict[int, str] = {}
    for code in (*range(0x0180, 0x0300), *range(0x1D00, 0x1DC0), *range(0x2C60, 0x2C80), *range(0xA720, 0xA800)):
        c = chr(code)
        if not c.isalpha() or unicodedata.normalize("NFKD", c).isascii():
            continue
        found = _LATIN_NAME.match(unicodedata.name(c, ""))
        if found:
            letter = {"ALPHA": "a", "IOTA": "i"}.get(found[1], found[1])
            forms[code] = letter.lower() if "SMALL" in unicodedata.name(c) else letter
    return forms


_LOOKALIKES = {**_latin_forms(), **_CONFUSABLES}  # the listed table wins over the name rule
_PLAIN_WORD = re.compile(r"[^\W_]+")  # the word pattern without the hardening
_hardening = {"enabled": True}


def set_evasion_hardening(enabled: bool) -> None:
    """Switch the evasion hardening on (the default) or off; ``benchmarks/evasion.py`` measures both ways.

    A classifier must be trained and served with the same setting; the caches are cleared here.
    """
    _hardening["enabled"] = bool(enabled)
    clear_word_caches()


def clear_word_caches() -> None:
    """Drop the memoized normal forms and word lists."""
    _normalized.clear()
    _cached_words.clear()


def _latin_lookalike(word: str) -> bool:
    return all(c.isascii() or ord(c) in _LOOKALIKES for c in word)


def normalize_word(word: str) -> str:
    """Case-fold, strip accents, map look-alike letters and symbols, and undo leetspeak in one word."""
    return _normalized(word)


def _normalize(word: str) -> str:
    if not _hardening["enabled"]:
        return _plain_normalize(word)
    if word.isascii():
        w = word.lower()
    else:
        w = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
        w = w.translate(_DROP_FORMAT)
        if not w.isascii() and _latin_lookalike(w):
            w = w.translate(_LOOKALIKES)
        w = w.casefold()
    if not w.isalnum():
        w = w.translate(_SYMBOLS)
        w = "".join(c for c in w if c.isalnum()) if not w.isalnum() else w
    if not w.isalpha() and not w.isdigit():
        digits = sum(c.isdigit() for c in w)
        if digits <= len(w) - digits:
            w = w.translate(_LEET)
    return w


def _plain_normalize(word: str) -> str:
    """``normalize_word`` without the hardening (digits-only leetspeak, no symbols or look-alikes)."""
    if word.isascii():
        w = word.lower()
    else:
        w = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c)).casefold()
    if not w.isalpha() and not w.isdigit():
        digits = sum(c.isdigit() for c in w)
        if digits <= len(w) - digits:
            w = w.translate(_LEET)
    return w


def _spell_gap(c: str) -> bool:
    """A character that may join the letters of a spelled-out name: the usual ones, or any punctuation or symbol."""
    return c in _SPELL_GAP or unicodedata.category(c)[0] in "PS"


def _spelled_out(text: str, spans: list[tuple[int, int]], start: int) -> int:
    """Index one past the last span of a run of single characters joined by single separators."""
    end = start
    while (
        end + 1 < len(spans)
        and spans[end][1] - spans[end][0] == 1
        and spans[end + 1][1] - spans[end + 1][0] == 1
        and spans[end + 1][0] - spans[end][1] == 1
        and _spell_gap(text[spans[end][1]])
    ):
        end += 1
    return end + 1


def _split_case(text: str, run: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    parts: list[list[tuple[int, int]]] = [[run[0]]]
    for prev, span in pairwise(run):
        if text[span[0]].isupper() and text[prev[0]].islower():
            parts.append([])
        parts[-1].append(span)
    return parts


def _words(text: str) -> tuple[tuple[tuple[int, int], ...], tuple[str, ...]]:
    if not _hardening["enabled"]:
        plain = [m.span() for m in _PLAIN_WORD.finditer(text)]
        return tuple(plain), tuple(_plain_normalize(text[a:b]) for a, b in plain)
    raw = [m.span() for m in WORD_PATTERN.finditer(text)]
    spans: list[tuple[int, int]] = []
    words: list[str] = []
    i = 0
    while i < len(raw):
        end = _spelled_out(text, raw, i)
        if end - i >= 3:
            for part in _split_case(text, raw[i:end]):
                spans.append((part[0][0], part[-1][1]))
                words.append(normalize_word("".join(text[a:b] for a, b in part)))
            i = end
        else:
            spans.append(raw[i])
            words.append(normalize_word(text[raw[i][0] : raw[i][1]]))
            i += 1
    return tuple(spans), tuple(words)


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of ``text``."""
    return list(_words(text)[0])


def normalized_words(text: str) -> list[str]:
    """The normalized words of ``text``, in order."""
    return list(_words(text)[1])


def cached_words(text: str) -> tuple[str, ...]:
    """``normalized_words`` memoized (bounded) for training, where the pool and augmentations recur."""
    return _cached_words(text)


_normalized: ByteBoundedCache[str, str] = ByteBoundedCache(_normalize, 8 * 1024 * 1024)
_cached_words: ByteBoundedCache[str, tuple[str, ...]] = ByteBoundedCache(
    lambda text: tuple(normalized_words(text)), 32 * 1024 * 1024
)

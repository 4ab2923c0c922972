"""Held-out evasion attacks: characters in none of the defence's tables, on phrasings it never trained on.

The attacks of ``ATTACKS`` rewrite training prompts with the characters ``classifier/text.py`` maps
back, so their leak rates flatter the defence (issue 22).  These tests keep the held-out family
honest: its characters stay out of the defence's tables, it never rewrites a training prompt, and
its leak rates are measured and printed, not asserted low.

"The defence's tables" are the listed ones. First measured (test world, seed 0), these attacks leaked
0.91 (leet), 1.00 (look-alikes), 1.00 (invisible), 1.00 (separators), 1.00 (mixed). The hardening then
gained three rules that enumerate no attack character (every Unicode Cf character dropped inside a
word, any punctuation or symbol joins a spelled-out name, Latin letters mapped by their Unicode
names): 0.91, 0.72, 0.00, 0.00, 0.50. Those later figures were measured after seeing the attacks.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest

from lethe.benchmarks.authors_world import WorldConfig, build_world
from lethe.benchmarks.evasion import (
    _HELDOUT_INVISIBLE,
    _HELDOUT_LEET,
    _HELDOUT_LOOKALIKES,
    _HELDOUT_SEPARATORS,
    HELDOUT_ATTACKS,
    attack_prompts,
    heldout_phrasing,
    run_evasion,
)
from lethe.classifier.text import _CONFUSABLES, _INVISIBLE, _LEET, _SPELL_GAP, _SYMBOLS

BASELINE = "heldout_phrasing"
DEFENCE = {chr(k) for table in (_LEET, _SYMBOLS, _CONFUSABLES) for k in table} | set(_INVISIBLE) | set(_SPELL_GAP)
HELDOUT_CHARS = (
    {c for v in [*_HELDOUT_LEET.values(), *_HELDOUT_LOOKALIKES.values()] for c in v}
    | set(_HELDOUT_INVISIBLE)
    | {c for sep in _HELDOUT_SEPARATORS for c in sep}
)


@pytest.fixture(scope="module")
def rows() -> dict[str, list[dict]]:
    """Forget, retain and held-out (control) rows of the test world."""
    world = build_world(WorldConfig.test())
    return {split: world.rows(split) for split in ("forget", "retain", "heldout")}


def _rewrites(row: dict, attack: str) -> list[str]:
    return [m[-1]["content"] for m in attack_prompts([row], attack)]


def test_heldout_characters_are_in_no_defence_table() -> None:
    assert HELDOUT_CHARS and not HELDOUT_CHARS & DEFENCE, sorted(HELDOUT_CHARS & DEFENCE)
    for c in HELDOUT_CHARS - {chr(i) for i in range(128)}:
        # NFKD (accents stripped) and case folding, as the defence normalizes, must not reach ASCII or a table.
        folded = "".join(x for x in unicodedata.normalize("NFKD", c) if not unicodedata.combining(x)).casefold()
        assert not folded.isascii() and not set(folded) & DEFENCE, (hex(ord(c)), folded)


def test_heldout_rewrites_introduce_only_heldout_characters(rows: dict[str, list[dict]]) -> None:
    for split in ("forget", "heldout"):
        for row in rows[split]:
            base = heldout_phrasing(row)
            assert base is not None
            for attack in set(HELDOUT_ATTACKS) - {BASELINE}:
                for text in _rewrites(row, attack):
                    introduced = set(text) - set(base)
                    assert introduced, (attack, text)
                    assert introduced <= HELDOUT_CHARS and not introduced & DEFENCE, (attack, text, introduced)


def test_heldout_attacks_never_rewrite_a_training_prompt(rows: dict[str, list[dict]]) -> None:
    trained = [str(r["prompt"]) for r in [*rows["forget"], *rows["retain"]]]
    rewritten = 0
    for split in ("forget", "heldout"):
        for row in rows[split]:
            person = str(row["person"])
            # The training prompts' wording around this person's name (the rewrites change only the name).
            frames = [tuple(p.split(person, 1)) for p in trained if person in p]
            assert heldout_phrasing(row) not in trained
            for attack in HELDOUT_ATTACKS:
                for text in _rewrites(row, attack):
                    rewritten += 1
                    assert text not in trained, (attack, text)
                    assert not any(text.startswith(pre) and text.endswith(post) for pre, post in frames), text
    assert rewritten >= len(HELDOUT_ATTACKS) * (len(rows["forget"]) + len(rows["heldout"]))


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """One in-process evasion run on the test world (hardened classifier only)."""
    return run_evasion("test", compare=False)


def test_heldout_leak_rates_are_measured(report: dict[str, Any], rows: dict[str, list[dict]]) -> None:
    results = {a["attack"]: a for a in report["heldout_attacks"]}
    print("held-out evasion (leak rate, control flag rate, prompts):")
    for a in [*report["attacks"], *report["heldout_attacks"]]:
        print(f"  {a['attack']:20s} {a['leak_rate']:.3f} {a['retain_flag_rate']:.3f} {a['prompts']}")
    assert list(results) == list(HELDOUT_ATTACKS)
    usable = [r for r in rows["forget"] if heldout_phrasing(r) is not None]
    assert usable and results[BASELINE]["prompts"] == len(usable)  # the unattacked held-out baseline
    assert results[BASELINE]["example"] == heldout_phrasing(usable[0])
    for name, result in results.items():
        assert result["prompts"] == len(attack_prompts(rows["forget"], name)) > 0, name
        assert result["retain_prompts"] > 0, name
        assert 0.0 <= result["leak_rate"] <= 1.0 and 0.0 <= result["retain_flag_rate"] <= 1.0, result
        assert result["leaked"] == round(result["leak_rate"] * result["prompts"]), result
        if name != BASELINE:
            assert result["example"] != results[BASELINE]["example"], result
            assert str(usable[0]["person"]) not in result["example"], result

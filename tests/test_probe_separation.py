"""The held-out probes share nothing with what builds or tunes a forget set.

A probe question that repeats a builder's seed prompt, template or training text measures memory,
not generalization. Checked here against every input of the demo build and of topic training:
the demo request's seed prompts, the reveal templates (with the demo topic filled in), every
classifier augmentation template (frames, wrappers, follow-ups, ordinary-use questions), the
classifier's shipped negative pool, and the prompts the shipped demo artifact was trained on
(recorded by the build). A probe fails when its normalized text equals a builder text, contains a
literal run of four or more words of a template, or shares half of its word 3-grams with one.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable

import pytest

from lethe.benchmarks.scope_eval import HELDOUT_DIR
from lethe.classifier import augment
from lethe.classifier.entities import STOPWORDS
from lethe.classifier.pool import DATA_DIR, POOL_FILES
from lethe.classifier.text import normalized_words
from lethe.training import demo_request, reveal
from lethe.training.demo import BUILD_INPUTS, DEMO_TOPIC, SHIPPED_DEMO

BUILD_RECORD = SHIPPED_DEMO / BUILD_INPUTS
REMOVED = HELDOUT_DIR / "removed_overlaps.jsonl"  # probe rows set aside because a builder text repeats them
PLACEHOLDER = re.compile(r"\{\w+\}")


def _words(text: str) -> list[str]:
    return normalized_words(text)


def _shingles(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def _probe_texts() -> list[tuple[str, str]]:
    out = []
    for path in sorted(HELDOUT_DIR.glob("*.jsonl")):
        if path.name == REMOVED.name:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out.extend((row["id"], m["content"]) for m in row["messages"])
    return out


def _templates() -> list[str]:
    frames = [t for language in augment.FRAMES.values() for t in language]
    return [*frames, *augment.WRAPPERS, *augment.FOLLOW_UPS, *augment._ORDINARY, *augment.PREFIXES,
            *augment.SUFFIXES, *reveal.TOPIC_TEMPLATES, *reveal.ENTITY_TEMPLATES]  # fmt: skip


def _builder_texts() -> list[str]:
    texts = [*demo_request.DEMO_SEED_PROMPTS, *(t.format(topic=DEMO_TOPIC) for t in reveal.TOPIC_TEMPLATES)]
    # Every question the classifier's frames and the reveal's entity templates can make of the demo's names.
    names = [*demo_request.DEMO_ENTITIES, *demo_request.DEMO_GLOSSARY, *demo_request.DEMO_KEEP_TOPICS]
    frames = [t for language in augment.FRAMES.values() for t in language if t != "{e}"]
    texts += [frame.format(e=name, entity=name) for frame in [*frames, *reveal.ENTITY_TEMPLATES] for name in names]
    for name in POOL_FILES:
        texts += (DATA_DIR / name).read_text(encoding="utf-8").splitlines()
    if BUILD_RECORD.is_file():
        record = json.loads(BUILD_RECORD.read_text(encoding="utf-8"))
        texts += [t for values in record.values() for t in values]
    return [t for t in texts if t.strip()]


def _literal_runs(templates: Iterable[str], length: int = 4) -> set[tuple[str, ...]]:
    """Runs of ``length`` words of the templates' literal text that hold two content words or more."""
    runs = set()
    for template in templates:
        for part in PLACEHOLDER.split(template):
            words = _words(part)
            runs |= {tuple(words[i : i + length]) for i in range(len(words) - length + 1)
                     if sum(w not in STOPWORDS for w in words[i : i + length]) >= 2}  # fmt: skip
    return runs


def _violations() -> list[str]:
    builder = _builder_texts()
    exact = {" ".join(_words(t)) for t in builder}
    index: dict[tuple[str, ...], list[int]] = {}
    shingle_sets = []
    for i, text in enumerate(builder):
        shingles = _shingles(_words(text))
        shingle_sets.append(shingles)
        for s in shingles:
            index.setdefault(s, []).append(i)
    runs = _literal_runs(_templates())
    found = []
    for probe_id, text in _probe_texts():
        words = _words(text)
        if " ".join(words) in exact:
            found.append(f"{probe_id}: equals a builder text")
            continue
        if any(tuple(words[i : i + 4]) in runs for i in range(len(words) - 3)):
            found.append(f"{probe_id}: contains a builder template's words")
            continue
        shingles = _shingles(words)
        candidates = {i for s in shingles for i in index.get(s, ())}
        for i in candidates:
            overlap = len(shingles & shingle_sets[i]) / len(shingles | shingle_sets[i])
            if overlap >= 0.5:
                found.append(f"{probe_id}: shares {overlap:.0%} of its 3-grams with {builder[i][:60]!r}")
                break
    return found


def test_heldout_probes_exist_with_the_promised_sizes() -> None:
    counts = {p.stem: sum(1 for _ in p.open(encoding="utf-8")) for p in HELDOUT_DIR.glob("*.jsonl")}
    assert counts["hp_test"] >= 200 and counts["near_test"] >= 200 and counts["general_test"] >= 100


def test_no_probe_repeats_what_the_builder_read() -> None:
    assert _violations() == []


PLANTED = ["Tell me about the Harry Potter books.", "Describe Hogwarts in a short paragraph."]


@pytest.mark.parametrize("planted", PLANTED)
def test_the_check_catches_a_planted_duplicate(planted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = (*demo_request.DEMO_SEED_PROMPTS, "Describe Hogwarts in a short paragraph, please.")
    monkeypatch.setattr(demo_request, "DEMO_SEED_PROMPTS", seeds)
    original = _probe_texts
    monkeypatch.setattr(sys.modules[__name__], "_probe_texts", lambda: [*original(), ("planted", planted)])
    assert any(v.startswith("planted:") for v in _violations())

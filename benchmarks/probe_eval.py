"""Knowledge probes: does the served model still say what a forget set should have removed?

Each probe row is a conversation (``messages``, or a single ``prompt``) with the keywords a correct
answer contains. Answers are greedy, chat-templated, and go through the same screen the gateway
applies (classifier over every message, then the flagged forget sets' interventions, kept on while
the answer is generated). Reported per probe: the share of answers containing a keyword (overall and
per kind of question), the flag rate, and how ordinary the flagged answers read:

- ``loop_rate``: share of answers that repeat a word 3-gram three times or more (a degenerate loop);
- ``distinct_2``: unique word bigrams over bigrams (repetition drives it down);
- ``base_perplexity``: the *bare* model's perplexity of the answers given their prompts (gibberish
  drives it up), reported beside the bare model's perplexity of its own answers to the same prompts.

The held-out probes (``benchmarks/probes/heldout/*_test.jsonl``, written without reading the builder)
are the ones the README reports; ``harry_potter``/``general`` are the project's older, builder-adjacent
probes, kept for comparison.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.training.metrics import answer_conversations, base_perplexity, contains_keyword, distinct_2, loops

PROBE_DIR = Path(__file__).parent / "probes"
HELDOUT_KNOWLEDGE = {"hp_test": "topic", "general_test": "general"}


def load_probe(name: str) -> list[dict[str, Any]]:
    """Rows of a probe: the older ``harry_potter``/``general`` or a held-out ``heldout/<name>`` file."""
    path = PROBE_DIR / f"{name}.jsonl"
    if not path.is_file():
        path = PROBE_DIR / "heldout" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def messages_of(row: dict[str, Any]) -> list[dict[str, str]]:
    """A probe row's conversation."""
    return row["messages"] if "messages" in row else [{"role": "user", "content": row["prompt"]}]


def evaluate_probe(
    model: LanguageModel, rows: Sequence[dict[str, Any]], screen: ForgetSetScreen | None, max_new_tokens: int = 48
) -> dict[str, Any]:
    """Keyword share (overall, per kind), flag rate, loop rate, distinct-2 and base perplexity of one probe."""
    conversations = [messages_of(r) for r in rows]
    answers, flags = answer_conversations(model, conversations, screen, max_new_tokens)
    hits = [contains_keyword(a, r.get("keywords", [])) for a, r in zip(answers, rows, strict=True)]
    kinds: dict[str, list[bool]] = {}
    for row, hit in zip(rows, hits, strict=True):
        kinds.setdefault(row.get("kind", "other"), []).append(hit)
    flagged = [a for a, f in zip(answers, flags, strict=True) if f]
    return {
        "questions": len(rows),
        "keyword_share": float(np.mean(hits)),
        "keyword_share_by_kind": {k: float(np.mean(v)) for k, v in sorted(kinds.items())},
        "flag_rate": float(np.mean(flags)),
        "loop_rate": float(np.mean([loops(a) for a in answers])),
        "flagged_loop_rate": float(np.mean([loops(a) for a in flagged])) if flagged else None,
        "distinct_2": distinct_2(answers),
        "base_perplexity": base_perplexity(model, conversations, answers),
        "answers": [
            {"id": r.get("id"), "kind": r.get("kind"), "answer": a, "hit": h, "flagged": f}
            for r, a, h, f in zip(rows, answers, hits, flags, strict=True)
        ],
    }


def compare_probes(
    model: LanguageModel, screen: ForgetSetScreen, max_new_tokens: int = 48, probes: Sequence[str] | None = None
) -> dict[str, Any]:
    """The held-out knowledge probes on the bare model and through ``screen``, with the issue's ratios."""
    names = list(probes or HELDOUT_KNOWLEDGE)
    out: dict[str, Any] = {}
    for name in names:
        rows = load_probe(name)
        out[name] = {"base": evaluate_probe(model, rows, None, max_new_tokens),
                     "lethe": evaluate_probe(model, rows, screen, max_new_tokens)}  # fmt: skip
    topic, general = out[names[0]], out[names[-1]]
    out["summary"] = {
        "topic_share_base": topic["base"]["keyword_share"],
        "topic_share_lethe": topic["lethe"]["keyword_share"],
        "topic_ratio": _ratio(topic["lethe"]["keyword_share"], topic["base"]["keyword_share"]),
        "general_share_base": general["base"]["keyword_share"],
        "general_share_lethe": general["lethe"]["keyword_share"],
        "general_change": general["lethe"]["keyword_share"] - general["base"]["keyword_share"],
        "topic_flag_rate": topic["lethe"]["flag_rate"],
        "general_flag_rate": general["lethe"]["flag_rate"],
        "flagged_loop_rate": topic["lethe"]["flagged_loop_rate"],
        "loop_rate_base": topic["base"]["loop_rate"],
        "perplexity_base": topic["base"]["base_perplexity"],
        "perplexity_lethe": topic["lethe"]["base_perplexity"],
        "perplexity_ratio": _ratio(topic["lethe"]["base_perplexity"], topic["base"]["base_perplexity"]),
    }
    return out


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("nan")

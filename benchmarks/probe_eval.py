"""Knowledge probes: does the served model still say what a forget set should have removed?

Each probe row is a question with the keywords a correct answer contains. Answers are greedy,
chat-templated, and go through the same routing the gateway applies (classifier, then the
flagged forget sets' interventions). Reported per probe: the share of answers containing a
keyword (overall and per question kind), the flag rate, distinct-2 of the answers (degenerate
repetition drives it down) and the *base* model's perplexity of the answers (gibberish drives
it up).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lethe.runtime.generation import SamplingParams
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.training.metrics import EvalTarget, through_screen

PROBE_DIR = Path(__file__).parent / "probes"


def load_probe(name: str) -> list[dict[str, Any]]:
    """Rows ``{"prompt", "keywords", "kind"}`` of a shipped probe (``harry_potter`` or ``general``)."""
    path = PROBE_DIR / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def contains_keyword(answer: str, keywords: Sequence[str]) -> bool:
    """Whether any keyword occurs in the answer (case-insensitive)."""
    lowered = answer.lower()
    return any(k.lower() in lowered for k in keywords)


def distinct_2(answers: Sequence[str]) -> float:
    """Mean over answers of unique word bigrams / bigrams (1.0: no repetition)."""
    values = []
    for answer in answers:
        words = answer.split()
        bigrams = list(itertools.pairwise(words))
        if bigrams:
            values.append(len(set(bigrams)) / len(bigrams))
    return float(np.mean(values)) if values else float("nan")


def answer_and_flags(target: EvalTarget, questions: Sequence[str], max_new_tokens: int) -> tuple[list[str], list[bool]]:
    """Greedy answers through ``target`` and whether each question got an intervention."""
    rendered = [target.render(question) for question in questions]
    plans = [target.plan_for(prompt, messages) for prompt, messages in rendered]
    params = [SamplingParams(max_new_tokens=max_new_tokens) for _ in questions]
    results = target.model.generate_many([p for p, _ in rendered], plans, params, batch_size=16)
    return [r.text.strip() for r in results], [plan is not None for plan in plans]


def base_perplexity(model: LanguageModel, questions: Sequence[str], answers: Sequence[str]) -> float:
    """Perplexity of the answers under the bare base model, given their questions."""
    prompts, completions = [], []
    for question, answer in zip(questions, answers, strict=True):
        ids = model.embedder.encode(answer)
        if ids:
            prompts.append(EvalTarget(model).render(question)[0].ids)
            completions.append(ids)
    if not completions:
        return float("nan")
    logprobs = model.score(prompts, completions)
    total = sum(float(t.sum()) for t in logprobs)
    count = sum(len(t) for t in logprobs)
    return math.exp(-total / count)


def evaluate_probe(
    model: LanguageModel, rows: Sequence[dict[str, Any]], screen: ForgetSetScreen | None, max_new_tokens: int = 48
) -> dict[str, Any]:
    """Keyword share, per-kind shares, flag rate, distinct-2 and base perplexity of one probe."""
    target = through_screen(model, screen) if screen is not None else EvalTarget(model)
    questions = [r["prompt"] for r in rows]
    answers, flags = answer_and_flags(target, questions, max_new_tokens)
    hits = [contains_keyword(a, r["keywords"]) for a, r in zip(answers, rows, strict=True)]
    kinds: dict[str, list[bool]] = {}
    for row, hit in zip(rows, hits, strict=True):
        kinds.setdefault(row.get("kind", "other"), []).append(hit)
    return {
        "questions": len(rows),
        "keyword_share": float(np.mean(hits)),
        "keyword_share_by_kind": {k: float(np.mean(v)) for k, v in sorted(kinds.items())},
        "flag_rate": float(np.mean(flags)),
        "distinct_2": distinct_2(answers),
        "base_perplexity": base_perplexity(model, questions, answers),
        "answers": [
            {"prompt": q, "answer": a, "hit": h, "flagged": f}
            for q, a, h, f in zip(questions, answers, hits, flags, strict=True)
        ],
    }


def compare_probes(model: LanguageModel, screen: ForgetSetScreen, max_new_tokens: int = 48) -> dict[str, Any]:
    """Both shipped probes on the base model and through ``screen``, with the issue's two ratios."""
    out: dict[str, Any] = {}
    for name in ("harry_potter", "general"):
        rows = load_probe(name)
        out[name] = {
            "base": evaluate_probe(model, rows, None, max_new_tokens),
            "lethe": evaluate_probe(model, rows, screen, max_new_tokens),
        }
    hp, general = out["harry_potter"], out["general"]
    out["summary"] = {
        "hp_share_base": hp["base"]["keyword_share"],
        "hp_share_lethe": hp["lethe"]["keyword_share"],
        "hp_ratio": _ratio(hp["lethe"]["keyword_share"], hp["base"]["keyword_share"]),
        "general_share_base": general["base"]["keyword_share"],
        "general_share_lethe": general["lethe"]["keyword_share"],
        "general_relative_change": _ratio(general["lethe"]["keyword_share"], general["base"]["keyword_share"]) - 1,
        "hp_flag_rate": hp["lethe"]["flag_rate"],
        "general_flag_rate": general["lethe"]["flag_rate"],
        "distinct_2_base": hp["base"]["distinct_2"],
        "distinct_2_lethe": hp["lethe"]["distinct_2"],
        "perplexity_base": hp["base"]["base_perplexity"],
        "perplexity_lethe": hp["lethe"]["base_perplexity"],
    }
    return out


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("nan")

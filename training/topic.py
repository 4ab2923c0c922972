"""Forget sets from a topic alone: reveal what the model knows, unlearn it, check, repeat.

Round 0 asks the base model about the topic (``training.reveal``: bandit over instruction
templates, relevance + Vendi-diversity reward) and keeps the relevant prompt/answer pairs as
forget rows; the entities of the topic (the operator's list and the ones mined from the answers)
are asked about too, and the relevant answers join the forget rows. Retain rows are general
questions from the classifier's shipped pool, answered by the base model itself (so "retain" means
"answer as before").

The scope classifier gets the topic's coverage as ``ScopeHints``: its entities (asked about in
several forms and languages by the classifier's augmentations), the revealed prompts, and, as hard
negatives, the adjacent topics that must stay answerable (the operator's ``keep_topics``: what the
model says about them, and the names it mentions). A topic is broad and its generated positives
include ambiguous ones, so its threshold keeps the false-positive bound when the two bounds conflict.

Then the ordinary trainer builds the classifier and interventions. Each later round reveals again
*through* the trained forget set (classifier + interventions, exactly as served); answers that are
still on topic are leaks, and their prompts, with what the base model answers to them, join the
forget rows before retraining. The loop stops when the leak rate is at or under the target or the
round budget is spent.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lethe.classifier import ScopeHints
from lethe.runtime.artifact import ForgetSetArtifact
from lethe.runtime.generation import SamplingParams
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.training.data import ForgetRow, TrainingDataError
from lethe.training.metrics import through_screen
from lethe.training.progress import ProgressTracker
from lethe.training.reveal import RevealConfig, RevealedPair, Revealer, RevealResult, topic_vector

ProgressFn = Callable[[float, str], None]


class TopicConfig(BaseModel):
    """Reveal-then-unlearn settings for a topic forget set."""

    model_config = ConfigDict(extra="forbid")

    budget: int = Field(default=64, ge=4, le=2048, description="questions asked per reveal round")
    rounds: int = Field(default=2, ge=1, le=8, description="reveal-then-unlearn rounds at most")
    target_leak_rate: float = Field(default=0.1, ge=0, le=1, description="stop when this share or less still leaks")
    relevance_threshold: float = Field(default=0.35, ge=0, le=1, description="MiniLM cosine that counts as on topic")
    retain_questions: int = Field(default=48, ge=0, le=1024, description="general questions answered as retain rows")
    entity_questions: int = Field(default=48, ge=0, le=1024, description="entities asked about for forget rows")
    max_new_tokens: int = Field(default=48, ge=8, le=512)
    temperature: float = Field(default=0.7, ge=0)


def reveal_config(config: TopicConfig, seed: int) -> RevealConfig:
    """The reveal settings of one round."""
    return RevealConfig(
        budget=config.budget,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        relevance_threshold=config.relevance_threshold,
        seed=seed,
    )


def greedy_answers(model: LanguageModel, questions: Sequence[str], max_new_tokens: int) -> list[str]:
    """The base model's greedy answers to chat questions."""
    prompts = [model.chat_prompt([{"role": "user", "content": q}]) for q in questions]
    params = [SamplingParams(max_new_tokens=max_new_tokens) for _ in questions]
    return [r.text.strip() for r in model.generate_many(prompts, [None] * len(prompts), params, batch_size=16)]


def retain_rows(model: LanguageModel, count: int, seed: int, max_new_tokens: int, exclude: set[str]) -> list[ForgetRow]:
    """General questions from the shipped pool with the base model's own answers."""
    from lethe.classifier.pool import load_pool

    questions = [q for q in load_pool().train if q.endswith("?") and q not in exclude]
    random.Random(seed).shuffle(questions)
    questions = questions[:count]
    answers = greedy_answers(model, questions, max_new_tokens)
    return [ForgetRow(prompt=q, completion=a) for q, a in zip(questions, answers, strict=True) if a]


@dataclass(frozen=True)
class TopicRequest:
    """What an operator asks to forget: a topic, optional seed prompts, its entities and the topics to keep."""

    topic: str
    seed_prompts: Sequence[str] = ()
    entities: Sequence[str] = ()
    keep_topics: Sequence[str] = ()


# The classifier options a topic forget set starts from (a run's own classifier options win). The static
# MiniLM vector weighs a quarter of the default: on the dev probes (hp_dev / near_dev, 99 each; the demo's
# classifier retrained from its recorded build inputs) semantic weight 2.0 gave recall 0.788 at near-topic
# FPR 0.121, 1.0 gave 0.808 / 0.141, 0.5 0.808 / 0.101, 0.25 0.798 / 0.081, none 0.798 / 0.081: a topic's
# neighbours (owls, toads, magic) sit close to it in that space, while its names are what tells it apart.
TOPIC_CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "alpha": 0.05, "calibration_variants": 0, "prefer": "fpr", "semantic_weight": 0.25,
}  # fmt: skip
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences(texts: Sequence[str], min_words: int = 5) -> list[str]:
    return [s.strip() for t in texts for s in _SENTENCE_END.split(t) if len(s.split()) >= min_words]


def entity_rows(
    model: LanguageModel, topic: str, entities: Sequence[str], on_topic: np.ndarray, config: TopicConfig, seed: int
) -> list[tuple[str, str]]:
    """``entity_questions`` of the topic's entities asked about; the pairs whose answer is on topic (``on_topic``)."""
    from lethe.runtime.text_embedding import shared_text_embedder

    chosen = list(dict.fromkeys(entities))
    random.Random(seed).shuffle(chosen)
    questions = [f"Tell me about {e} from {topic}." if i % 2 else f"Tell me about {e}."
                 for i, e in enumerate(chosen[: config.entity_questions])]  # fmt: skip
    answers = greedy_answers(model, questions, config.max_new_tokens)
    scores = shared_text_embedder().encode(answers) @ on_topic if answers else []
    return [(q, a) for q, a, r in zip(questions, answers, scores, strict=True)
            if a and r >= config.relevance_threshold]  # fmt: skip


def scope_hints(
    model: LanguageModel, request: TopicRequest, mined: Sequence[str], revealed: Sequence[str], seed: int,
    max_new_tokens: int,
) -> ScopeHints:
    """The classifier's view of the topic: entities, revealed and framed prompts, adjacent topics as negatives."""
    from lethe.classifier.augment import frames
    from lethe.training.reveal import mine_entities

    entities = [*request.entities, *mined]
    keep = [k.strip() for k in request.keep_topics if k and k.strip()]
    keep_answers = greedy_answers(model, [f"Tell me about {k}." for k in keep], max_new_tokens) if keep else []
    keep_names = mine_entities(keep_answers, " ".join(keep), 64)
    return ScopeHints(
        positives=[*request.seed_prompts, *revealed, *frames(entities, 2, seed + 11)],
        entities=entities,
        negatives=[*_sentences(keep_answers), *frames(keep, 6, seed + 5)],
        negative_entities=[*keep, *keep_names],
    )


def entity_detector(entities: Sequence[str]) -> Callable[[str], bool]:
    """Whether a text names one of the topic's entities: a multi-word name, or a single name of five letters
    or more that is not an ordinary word (case-insensitive, whole words)."""
    from lethe.classifier.pool import common_words

    common = common_words()
    names = [e for e in dict.fromkeys(entities) if len(e.split()) > 1 or (len(e) >= 5 and e.lower() not in common)]
    if not names:
        return lambda _text: False
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")\b", re.I)
    return lambda text: pattern.search(text) is not None


def leaking(pairs: Sequence[RevealedPair], threshold: float, names_entity: Callable[[str], bool]) -> list[RevealedPair]:
    """The revealed answers that still leak the topic: on topic by relevance, or naming one of its entities."""
    return [p for p in pairs if p.relevance >= threshold or names_entity(p.completion)]


def _rows_from(pairs: Sequence[tuple[str, str]], known: set[str]) -> list[ForgetRow]:
    rows = []
    for prompt, completion in pairs:
        if prompt in known or not completion.strip():
            continue
        known.add(prompt)
        rows.append(ForgetRow(prompt=prompt, completion=completion))
    return rows


def _round_summary(result: RevealResult, threshold: float, through_forget_set: bool) -> dict[str, Any]:
    return {
        "through_forget_set": through_forget_set,
        "asked": len(result.pairs),
        "on_topic": len(result.relevant(threshold)),
        "reveal_rate": round(result.reveal_rate(threshold), 4),
        "vendi": round(result.vendi, 4),
        "entities": result.entities,
        "forward_passes": result.forward_passes,
        "top_arms": sorted(result.arm_pulls.items(), key=lambda kv: -kv[1])[:8],
    }


Trainer = Callable[[list[ForgetRow], list[ForgetRow], ScopeHints, Callable[[float, str], None]], ForgetSetArtifact]


def train_topic_forget_set(
    model: LanguageModel,
    name: str,
    request: TopicRequest,
    train: Trainer,
    config: TopicConfig,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    record: dict[str, list[str]] | None = None,
) -> ForgetSetArtifact:
    """Reveal, unlearn with ``train(forget, retain, hints, progress)``, re-reveal through the result, repeat.

    The returned artifact's metrics gain a ``topic`` entry: each round's reveal figures (asked,
    on-topic count, leak rate, Vendi score, mined entities) and the forget/retain row counts.
    ``record``, when given, is filled with every prompt the build trained on (the demo ships it, so a
    test can check that no held-out probe repeats one); a real forget set's texts stay out of it.
    """
    from lethe.runtime.text_embedding import shared_text_embedder

    topic = request.topic.strip()
    if not topic:
        raise TrainingDataError("topic must not be blank")
    seed_prompts = list(request.seed_prompts)
    stages: list[tuple[str, float]] = [("coverage", 1.0)]
    for index in range(config.rounds):
        stages += [(f"reveal{index}", 1.0), (f"train{index}", 3.0), (f"check{index}", 1.0)]
    tracker = ProgressTracker([("retain", 0.5), *stages], progress, cancel)
    revealer_for = lambda round_index: Revealer(  # noqa: E731
        model, shared_text_embedder(), reveal_config(config, seed + 1000 * round_index)
    )
    tracker.update("retain", 0.0, "retain: answering general questions")
    retain = retain_rows(model, config.retain_questions, seed, config.max_new_tokens, set(seed_prompts))
    tracker.update("retain", 1.0, "retain")

    rounds: list[dict[str, Any]] = []
    known: set[str] = set()
    first = revealer_for(0).reveal(
        topic, seed_prompts, progress=lambda f: tracker.update("reveal0", f, "reveal"), cancel=cancel
    )
    rounds.append(_round_summary(first, config.relevance_threshold, through_forget_set=False))
    revealed = first.relevant(config.relevance_threshold)
    forget = _rows_from([(p.prompt, p.completion) for p in revealed], known)
    seed_answers = greedy_answers(model, seed_prompts, config.max_new_tokens)
    forget += _rows_from(list(zip(seed_prompts, seed_answers, strict=True)), known)
    tracker.update("coverage", 0.0, "coverage: asking about the topic's entities")
    on_topic = topic_vector(shared_text_embedder(), topic, seed_prompts)
    forget += _rows_from(entity_rows(model, topic, [*request.entities, *first.entities], on_topic, config, seed), known)
    hints = scope_hints(model, request, first.entities, [p.prompt for p in revealed], seed, config.max_new_tokens)
    names_entity = entity_detector([*request.entities, *first.entities])
    tracker.update("coverage", 1.0, "coverage")
    if len(forget) < 4:
        raise TrainingDataError(
            f"the model revealed only {len(forget)} on-topic answers about {topic!r}: too few to learn a forget set "
            "(add seed_prompts, raise topic.budget or lower topic.relevance_threshold)"
        )
    artifact: ForgetSetArtifact | None = None
    for index in range(config.rounds):
        stage = f"train{index}"
        artifact = train(forget, retain, hints, lambda f, m, s=stage: tracker.update(s, f, f"{s}: {m}"))
        screen = ForgetSetScreen([artifact])
        check = revealer_for(index + 1).reveal(
            topic,
            seed_prompts,
            plan_for=through_screen(model, screen).plan_for,
            progress=lambda f, s=f"check{index}": tracker.update(s, f, "re-reveal through the forget set"),
            cancel=cancel,
        )
        leaks = leaking(check.pairs, config.relevance_threshold, names_entity)
        leak_rate = round(len(leaks) / max(1, len(check.pairs)), 4)
        summary = _round_summary(check, config.relevance_threshold, through_forget_set=True)
        rounds.append(summary | {"leaks": len(leaks), "leak_rate": leak_rate})
        if len(leaks) <= config.target_leak_rate * len(check.pairs) or index + 1 == config.rounds:
            break
        leaked_prompts = [p.prompt for p in leaks if p.prompt not in known]
        leaked_answers = greedy_answers(model, leaked_prompts, config.max_new_tokens)
        forget += _rows_from(list(zip(leaked_prompts, leaked_answers, strict=True)), known)
    assert artifact is not None
    if record is not None:
        record.update({
            "forget_prompts": [r.prompt for r in forget],
            "retain_prompts": [r.prompt for r in retain],
            "scope_positives": list(hints.positives),
            "scope_negatives": list(hints.negatives),
        })  # fmt: skip
    artifact.manifest.metrics["topic"] = {
        "topic": topic,
        "seed_prompts": len(seed_prompts),
        "entities": len(request.entities),
        "mined_entities": list(first.entities),
        "keep_topics": len(request.keep_topics),
        "scope_positives": len(hints.positives),
        "scope_negatives": len(hints.negatives),
        "forget_rows": len(forget),
        "retain_rows": len(retain),
        "rounds": rounds,
        "config": config.model_dump(),
    }
    tracker.finish()
    return artifact

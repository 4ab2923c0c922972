"""Verification figures of a trained forget set, measured on data its trainer did not use.

What a forget set's verification report states (``service.verification_report`` signs and renders it),
each figure with where its data came from:

- **scope**: recall on held-out in-scope prompts and false-positive rate on held-out near-topic and general
  prompts, per kind. In-scope prompts are the operator's evaluation set, else the rows'
  ``paraphrased_prompts`` (the trainer never reads them); negatives are the operator's, the retain rows'
  paraphrases, and always a sample of the general pool's *test* split (the classifier trains on the
  pool's train split and calibrates on its validation split);
- **leak**: a fresh re-reveal of a topic through the forget set (a seed no build round used, the topic
  build's own leak criterion), and the share of held-out in-scope answers that still say what they should
  not (the operator's keywords, or the distinctive words of the row's forgotten answer), beside the bare
  model's share;
- **privacy**: forget quality (KS p-value against a never-trained model's truth ratios) and Min-K%
  membership AUC, only where the operator supplies that reference;
- **utility**: the change on retain and general prompts (model utility; the keyword share of the
  operator's negatives when they carry keywords);
- **fluency** of flagged answers: loop rate, distinct-2, the bare model's perplexity, beside the bare
  model's answers to the same prompts;
- **latency**: classification time per prompt and generation time per token, flagged against bare, on
  the same prompts.

Answers to prompts no forget set flags are the bare model's token for token (the gateway's guarantee,
``tests/test_guarantees.py``), so only flagged prompts are generated twice. Everything here reads the
existing metric families (``training.metrics``); nothing is re-implemented.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lethe.runtime.artifact import ForgetSetArtifact, utc_now
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.training.config import TrainConfig
from lethe.training.data import ForgetRow, TrainingDataError
from lethe.training.metrics import (
    EvalTarget,
    Messages,
    answer_conversations,
    base_perplexity,
    contains_keyword,
    distinct_2,
    flag_rates,
    forget_quality,
    loop_rate,
    mean_rouge_l,
    min_k_auc,
    model_utility,
    score_rows,
    through_screen,
    truth_ratios,
    utility_terms,
)
from lethe.training.progress import TrainingCancelled

# Seeds and sizes of the verification run (bounded so a report costs minutes, not hours, on a CPU).
REQUEST_SEED = 7_919  # the noise seed of the verification requests (the trainer's after-figures use another)
REVEAL_SEED_OFFSET = 100_003  # far from the build's rounds (seed + 1000 * round)
GENERAL_PROMPTS = 200  # general pool test-split prompts classified
GENERAL_QUESTIONS = 16  # of which questions answered for the utility figure
MAX_ANSWERED = 48  # in-scope prompts answered for the leak figure
MAX_UTILITY_ROWS = 48
MAX_NEW_TOKENS = 48
REVEAL_BUDGET = 48
VERIFY_SHARE = 0.1  # of a job's progress bar
ProgressFn = Callable[[float, str], None]


class EvalPrompt(BaseModel):
    """One evaluation conversation (``messages``, or a single ``prompt``), its kind and the keywords whose
    presence in an answer means the answer still says what it should not (in-scope) or still knows what it
    should (negatives). The held-out probe files' rows fit as they are."""

    model_config = ConfigDict(extra="ignore")

    messages: list[dict[str, str]] | None = Field(default=None, min_length=1, max_length=64)
    prompt: str | None = Field(default=None, min_length=1, max_length=20_000)
    kind: str = Field(default="other", min_length=1, max_length=64)
    keywords: list[str] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _one_of(self) -> EvalPrompt:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        for message in self.messages or ():
            roles = ("system", "developer", "user", "assistant")
            if set(message) != {"role", "content"} or message["role"] not in roles:
                raise ValueError("each message needs a 'role' (system, developer, user or assistant) and a 'content'")
            if message["role"] == "developer":  # rendered as a system turn, as the chat endpoint does
                message["role"] = "system"
        return self

    @property
    def conversation(self) -> Messages:
        """The conversation to classify and answer."""
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]


class EvaluationSet(BaseModel):
    """An operator's held-out evaluation data (``POST /admin/forget-sets/{id}/report``), none of it trained on.

    ``positives`` must be flagged (in scope); ``negatives`` (near-topic and general) must not. ``forget_rows``
    with perturbed answers and ``reference_truth_ratios`` (a never-trained model's truth ratios on the same
    rows, in order) give forget quality; ``forget_rows`` with ``nonmember_rows`` give Min-K% membership AUC.
    """

    model_config = ConfigDict(extra="forbid")

    label: str = Field(default="operator evaluation set", min_length=1, max_length=200)
    positives: list[EvalPrompt] = Field(default_factory=list, max_length=2000)
    negatives: list[EvalPrompt] = Field(default_factory=list, max_length=4000)
    forget_rows: list[ForgetRow] = Field(default_factory=list, max_length=2000)
    reference_truth_ratios: list[float] = Field(default_factory=list, max_length=2000)
    nonmember_rows: list[ForgetRow] = Field(default_factory=list, max_length=2000)

    @model_validator(mode="after")
    def _reference_fits(self) -> EvaluationSet:
        if self.reference_truth_ratios and not self.forget_rows:
            raise ValueError("'reference_truth_ratios' go with 'forget_rows'")
        return self


class RequestSummary(BaseModel):
    """What was asked, without its text: the kind, the counts and a SHA-256 of the canonical request."""

    kind: Literal["rows", "topic", "import"]
    sha256: str | None = Field(description="hex SHA-256 of the canonical JSON of the request as trained")
    forget_rows: int = 0
    retain_rows: int = 0
    paraphrased_prompts: int = 0
    seed_prompts: int = 0


class Figures(BaseModel):
    """A group of figures; a figure that could not be computed (NaN) is ``null``."""

    @field_validator("*", mode="before")
    @classmethod
    def _nan_is_null(cls, value: Any) -> Any:
        return None if isinstance(value, float) and math.isnan(value) else value


class KindRate(Figures):
    """Flag rate of one kind of evaluation prompt."""

    prompts: int
    flag_rate: float
    in_scope: bool


class ScopeFigures(Figures):
    """Recall on held-out in-scope prompts, false-positive rates on held-out negatives."""

    recall_heldout: float | None = Field(description="flag rate on held-out in-scope prompts")
    fpr_heldout: float | None = Field(description="flag rate on every held-out negative (near-topic and general)")
    fpr_negatives: float | None = Field(
        default=None,
        description="flag rate on the evaluation data's own negatives (the operator's, or retain paraphrases)",
    )
    fpr_general: float | None = Field(default=None, description="flag rate on the general pool's test split")
    positives: int = 0
    negatives: int = 0
    by_kind: dict[str, KindRate] = Field(default_factory=dict)
    source: str = ""


class RevealLeak(Figures):
    """A fresh re-reveal of the topic through the forget set."""

    asked: int
    leaks: int
    rate: float
    base_reveal_rate: float | None = Field(description="share on topic when the build asked the bare model")
    seed: int
    criterion: str


class AnswerLeak(Figures):
    """Held-out in-scope prompts whose answer still says what it should not."""

    asked: int
    rate: float
    base_rate: float
    criterion: str
    source: str


class LeakFigures(Figures):
    """Leak rate: ``rate`` is the re-reveal's when the forget set has a topic, else the held-out answers'."""

    rate: float | None = None
    basis: Literal["re-reveal", "held-out answers"] | None = None
    reveal: RevealLeak | None = None
    heldout: AnswerLeak | None = None


class PrivacyFigures(Figures):
    """Forget quality and membership inference against a reference, where one was supplied."""

    forget_quality: float | None = None
    mia_auc: float | None = None
    rows: int = 0
    source: str = "no reference: forget quality and MIA need a never-trained model's figures"


class UtilityMeasure(Figures):
    """One utility figure before (bare model) and after (through the forget set)."""

    name: str
    measure: Literal["model utility", "keyword share"]
    rows: int
    before: float
    after: float
    delta: float
    flagged: int = Field(description="prompts of this measure the forget set flagged")
    source: str


class UtilityFigures(Figures):
    """Utility change; ``delta`` is the first measure's (the operator's, else retain rows, else general)."""

    delta: float | None = None
    measures: list[UtilityMeasure] = Field(default_factory=list)


class FluencyFigures(Figures):
    """How flagged answers read, beside the bare model's answers to the same prompts."""

    flagged_answers: int = 0
    loop_rate: float | None = None
    distinct_2: float | None = None
    base_perplexity: float | None = None
    bare_loop_rate: float | None = None
    bare_distinct_2: float | None = None
    bare_base_perplexity: float | None = None
    source: str = ""


class LatencyFigures(Figures):
    """What the forget set adds to a request: classification always, the flagged path on flagged prompts."""

    classified: int = 0
    classify_ms_p50: float | None = None
    classify_ms_p95: float | None = None
    bare_ms_per_token: float | None = None
    flagged_ms_per_token: float | None = None
    flagged_overhead_ratio: float | None = None
    note: str = "wall-clock on the machine that measured, with whatever else it was running"


class VerificationFigures(Figures):
    """Everything measured by one verification run."""

    measured: str
    seconds: float
    request_seed: int = REQUEST_SEED
    scope: ScopeFigures
    leak: LeakFigures
    privacy: PrivacyFigures
    utility: UtilityFigures
    fluency: FluencyFigures
    latency: LatencyFigures
    sources: list[str] = Field(default_factory=list, description="every data source this run used")
    carried: list[str] = Field(
        default_factory=list, description="figure groups an earlier run measured and this one could not (no data)"
    )


# Request summary ---------------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes that hashes and signatures cover: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def request_summary(
    name: str,
    method: str,
    forget: Sequence[ForgetRow],
    retain: Sequence[ForgetRow] | None,
    topic: str | None,
    seed_prompts: Sequence[str],
    config: TrainConfig,
) -> RequestSummary:
    """Counts and SHA-256 of a training request: the canonical JSON of ``{name, method, options, forget, retain,
    topic, seed_prompts}`` with rows as parsed (every field, defaults included) and options as the full config."""
    request = {
        "name": name,
        "method": method,
        "options": config.model_dump(mode="json"),
        "forget": [r.model_dump(mode="json") for r in forget],
        "retain": [r.model_dump(mode="json") for r in retain] if retain is not None else None,
        "topic": topic,
        "seed_prompts": list(seed_prompts),
    }
    return RequestSummary(
        kind="topic" if topic is not None else "rows",
        sha256=hashlib.sha256(canonical_json(request)).hexdigest(),
        forget_rows=len(forget),
        retain_rows=len(retain or ()),
        paraphrased_prompts=sum(len(r.paraphrased_prompts) for r in forget),
        seed_prompts=len(seed_prompts),
    )


# Held-out data -----------------------------------------------------------------------------------


def _row_keywords(forget: Sequence[ForgetRow], retain: Sequence[ForgetRow]) -> list[list[str]]:
    """Per forget row, the distinctive words of its answer (``training.mention_targets.answer_values``)."""
    from lethe.training.mention_targets import answer_values

    return [answer_values([row], retain, ()) for row in forget]


def heldout_prompts(
    forget: Sequence[ForgetRow], retain: Sequence[ForgetRow], evaluation: EvaluationSet | None
) -> tuple[list[EvalPrompt], list[EvalPrompt], str]:
    """In-scope and near-topic held-out prompts, and where they came from: the operator's set when given,
    else the rows' paraphrased prompts (with each forget row's answer values as keywords)."""
    if evaluation is not None and (evaluation.positives or evaluation.negatives):
        return list(evaluation.positives), list(evaluation.negatives), evaluation.label
    keywords = _row_keywords(forget, retain) if any(r.paraphrased_prompts for r in forget) else []
    positives = [
        EvalPrompt(prompt=p, kind="forget paraphrase", keywords=words)
        for row, words in zip(forget, keywords, strict=False)
        for p in row.paraphrased_prompts
    ]
    negatives = [EvalPrompt(prompt=p, kind="retain paraphrase") for row in retain for p in row.paraphrased_prompts]
    if not positives and not negatives:
        return [], [], ""
    return positives, negatives, "the rows' paraphrased prompts (never read by the trainer)"


def general_prompts(count: int | None = GENERAL_PROMPTS) -> list[str]:
    """A fixed sample of the general pool's test split (no trainer reads it), in hash order; all of it for
    ``None``."""
    from lethe.classifier.pool import load_pool

    test = sorted(load_pool().test, key=lambda t: hashlib.blake2b(t.encode(), digest_size=8).digest())
    return test[:count]


GENERAL_SOURCE = "the general pool's test split (classifier/data, never trained on)"


# The run -----------------------------------------------------------------------------------------


def spread(items: Sequence[Any], count: int) -> list[Any]:
    """At most ``count`` items taken evenly across ``items`` (every kind of a grouped file gets its share)."""
    if len(items) <= count:
        return list(items)
    return [items[index * len(items) // count] for index in range(count)]


class _Steps:
    """Progress over named steps, and the cancel check between them."""

    def __init__(self, names: Sequence[str], progress: ProgressFn | None, cancel: threading.Event | None):
        self.names = list(names)
        self.progress = progress
        self.cancel = cancel

    def start(self, name: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise TrainingCancelled("verification cancelled")
        if self.progress is not None:
            self.progress(self.names.index(name) / len(self.names), f"verify: {name}")

    def done(self) -> None:
        if self.progress is not None:
            self.progress(1.0, "verify: done")


def check_fits(model: LanguageModel, conversations: Sequence[Messages], new_tokens: int = MAX_NEW_TOKENS) -> None:
    """Raise ``TrainingDataError`` (naming the position, never the text) unless every conversation, rendered, leaves
    ``new_tokens`` of the model's context."""
    context = model.embedder.config.get("max_position_embeddings")
    if not context:
        return
    for index, conversation in enumerate(conversations):
        if len(model.chat_prompt(conversation).ids) + new_tokens > int(context):
            raise TrainingDataError(
                f"evaluation prompt {index} is too long: with {new_tokens} answer tokens it exceeds the model's "
                f"context of {context} tokens"
            )


def _rate(values: Sequence[bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _rows(prompts: Sequence[EvalPrompt], in_scope: bool) -> list[dict[str, Any]]:
    return [{"messages": p.conversation, "kind": p.kind, "in_scope": in_scope} for p in prompts]


def measure_scope(
    screen: ForgetSetScreen,
    positives: Sequence[EvalPrompt],
    negatives: Sequence[EvalPrompt],
    source: str,
    timings: list[float],
) -> ScopeFigures:
    """Flag rates of held-out positives, near-topic negatives and the general test sample (each classification
    timed into ``timings``)."""
    general = [EvalPrompt(prompt=p, kind="general (pool test split)") for p in general_prompts()]
    groups = {"positive": _rows(positives, True), "near": _rows(negatives, False), "general": _rows(general, False)}
    rates: dict[str, dict[str, Any]] = {}
    for name, rows in groups.items():
        for row in rows:  # timed one by one: the classification every request pays
            started = time.perf_counter()
            screen.classify(row["messages"])
            timings.append(time.perf_counter() - started)
        rates[name] = flag_rates(screen, rows)
    by_kind = {
        kind: KindRate(prompts=entry["prompts"], flag_rate=entry["flag_rate"], in_scope=name == "positive")
        for name in groups
        for kind, entry in rates[name]["by_kind"].items()
    }
    negatives_all = groups["near"] + groups["general"]
    flagged_negatives = rates["near"]["flag_rate"] * len(groups["near"]) if groups["near"] else 0.0
    flagged_negatives += rates["general"]["flag_rate"] * len(groups["general"])
    return ScopeFigures(
        recall_heldout=rates["positive"]["flag_rate"] if positives else None,
        fpr_heldout=flagged_negatives / len(negatives_all) if negatives_all else None,
        fpr_negatives=rates["near"]["flag_rate"] if negatives else None,
        fpr_general=rates["general"]["flag_rate"],
        positives=len(positives),
        negatives=len(negatives_all),
        by_kind=by_kind,
        source="; ".join(s for s in (source, GENERAL_SOURCE) if s),
    )


def _timed_answers(
    model: LanguageModel, conversations: Sequence[Messages], screen: ForgetSetScreen | None
) -> tuple[list[str], list[bool], float | None]:
    """Greedy answers, flags, and milliseconds per generated token."""
    if not conversations:
        return [], [], None
    started = time.perf_counter()
    answers, flags = answer_conversations(model, conversations, screen, MAX_NEW_TOKENS, REQUEST_SEED)
    elapsed = time.perf_counter() - started
    tokens = sum(len(model.embedder.encode(a)) for a in answers)
    return answers, flags, (1000 * elapsed / tokens if tokens else None)


@dataclass
class _Answers:
    """Answers of evaluation prompts: bare for all, through the forget set for the flagged ones."""

    conversations: list[Messages]
    bare: list[str]
    lethe: list[str]
    flagged: list[bool]
    bare_ms_per_token: float | None = None
    flagged_ms_per_token: float | None = None


def answer_heldout(model: LanguageModel, screen: ForgetSetScreen, prompts: Sequence[EvalPrompt]) -> _Answers:
    """Answer prompts bare and through the screen; unflagged answers through the screen are the bare ones."""
    conversations = [p.conversation for p in prompts]
    flagged = [bool(screen.classify(c)) for c in conversations]
    chosen = [c for c, f in zip(conversations, flagged, strict=True) if f]
    others = [c for c, f in zip(conversations, flagged, strict=True) if not f]
    bare_flagged, _, bare_ms = _timed_answers(model, chosen, None)
    lethe_flagged, _, flagged_ms = _timed_answers(model, chosen, screen)
    bare_others = _timed_answers(model, others, None)[0]
    bare: list[str] = []
    lethe: list[str] = []
    flagged_bare, flagged_lethe, other_bare = iter(bare_flagged), iter(lethe_flagged), iter(bare_others)
    for flag in flagged:
        if flag:
            bare.append(next(flagged_bare))
            lethe.append(next(flagged_lethe))
        else:
            bare.append(answer := next(other_bare))
            lethe.append(answer)
    return _Answers(conversations, bare, lethe, flagged, bare_ms, flagged_ms)


def measure_answer_leak(prompts: Sequence[EvalPrompt], answers: _Answers, source: str) -> AnswerLeak | None:
    """Share of in-scope answers naming one of their keywords, through the forget set and bare."""
    keyed = [i for i, p in enumerate(prompts) if p.keywords]
    if not keyed:
        return None
    lethe = [contains_keyword(answers.lethe[i], prompts[i].keywords) for i in keyed]
    bare = [contains_keyword(answers.bare[i], prompts[i].keywords) for i in keyed]
    return AnswerLeak(
        asked=len(keyed),
        rate=float(np.mean(lethe)),
        base_rate=float(np.mean(bare)),
        criterion="the answer contains one of the prompt's keywords (case-insensitive)",
        source=source,
    )


def measure_fluency(model: LanguageModel, answers: _Answers, source: str) -> FluencyFigures:
    """Loop rate, distinct-2 and bare-model perplexity of the flagged answers, beside the bare answers."""
    index = [i for i, f in enumerate(answers.flagged) if f]
    if not index:
        return FluencyFigures(source=source)
    conversations = [answers.conversations[i] for i in index]
    lethe = [answers.lethe[i] for i in index]
    bare = [answers.bare[i] for i in index]
    return FluencyFigures(
        flagged_answers=len(index),
        loop_rate=loop_rate(lethe),
        distinct_2=distinct_2(lethe),
        base_perplexity=base_perplexity(model, conversations, lethe),
        bare_loop_rate=loop_rate(bare),
        bare_distinct_2=distinct_2(bare),
        bare_base_perplexity=base_perplexity(model, conversations, bare),
        source=source,
    )


def measure_reveal_leak(
    model: LanguageModel,
    screen: ForgetSetScreen,
    topic: dict[str, Any],
    seed: int,
    budget: int,
    cancel: threading.Event | None,
) -> tuple[RevealLeak, list[tuple[str, str]]]:
    """Reveal the topic afresh through the forget set and count leaks with the build's own criterion; also the
    revealed (question, answer) pairs."""
    from lethe.runtime.text_embedding import shared_text_embedder
    from lethe.training.reveal import Revealer
    from lethe.training.topic import TopicConfig, entity_detector, leaking, reveal_config

    config = TopicConfig.model_validate(topic.get("config") or {})
    rounds = topic.get("rounds") or [{}]
    entities = list(topic.get("mined_entities") or rounds[0].get("entities") or [])
    reveal = reveal_config(config.model_copy(update={"budget": budget}), seed)
    result = Revealer(model, shared_text_embedder(), reveal).reveal(
        str(topic["topic"]), (), plan_for=through_screen(model, screen, REQUEST_SEED).plan_for, cancel=cancel
    )
    leaks = leaking(result.pairs, config.relevance_threshold, entity_detector(entities))
    first = rounds[0].get("reveal_rate")
    figures = RevealLeak(
        asked=len(result.pairs),
        leaks=len(leaks),
        rate=len(leaks) / max(1, len(result.pairs)),
        base_reveal_rate=float(first) if first is not None else None,
        seed=seed,
        criterion=f"MiniLM relevance to the topic >= {config.relevance_threshold} or names one of its "
        f"{len(entities)} mined entities (the topic build's own check)",
    )
    return figures, [(p.prompt, p.completion) for p in result.pairs]


def _utility_rows(rows: Sequence[ForgetRow]) -> list[ForgetRow]:
    """Each row asked in its paraphrased wordings when it has them (held out), else as trained."""
    asked = [
        row.model_copy(update={"prompt": p, "paraphrased_prompts": ()}) for row in rows for p in row.paraphrased_prompts
    ]
    return (asked or list(rows))[:MAX_UTILITY_ROWS]


def model_utility_measure(
    model: LanguageModel, screen: ForgetSetScreen, rows: Sequence[ForgetRow], name: str, source: str
) -> UtilityMeasure:
    """Model utility (answer probability, ROUGE-L of greedy answers, truth ratio when rows have perturbed
    answers) of ``rows``, bare and through the forget set."""
    answers = answer_heldout(model, screen, [EvalPrompt(prompt=r.prompt) for r in rows])
    references = [r.completion for r in rows]
    values = {}
    systems = (
        ("before", EvalTarget(model), answers.bare),
        ("after", through_screen(model, screen, REQUEST_SEED), answers.lethe),
    )
    for label, target, texts in systems:
        values[label] = model_utility(utility_terms(name, score_rows(target, rows), mean_rouge_l(texts, references)))
    return UtilityMeasure(
        name=name,
        measure="model utility",
        rows=len(rows),
        before=values["before"],
        after=values["after"],
        delta=values["after"] - values["before"],
        flagged=sum(answers.flagged),
        source=source,
    )


def keyword_utility_measure(prompts: Sequence[EvalPrompt], answers: _Answers, source: str) -> UtilityMeasure | None:
    """Share of negative prompts whose answer still names its keywords, bare and through the forget set."""
    keyed = [i for i, p in enumerate(prompts) if p.keywords]
    if not keyed:
        return None
    before = float(np.mean([contains_keyword(answers.bare[i], prompts[i].keywords) for i in keyed]))
    after = float(np.mean([contains_keyword(answers.lethe[i], prompts[i].keywords) for i in keyed]))
    flagged = sum(answers.flagged[i] for i in keyed)
    return UtilityMeasure(
        name="held-out negatives",
        measure="keyword share",
        rows=len(keyed),
        before=before,
        after=after,
        delta=after - before,
        flagged=flagged,
        source=source,
    )


def general_utility_measure(model: LanguageModel, screen: ForgetSetScreen) -> UtilityMeasure:
    """Model utility on general test-split questions with the bare model's own greedy answers as references."""
    questions = [q for q in general_prompts(None) if q.endswith("?")][:GENERAL_QUESTIONS]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    answers = answer_conversations(model, conversations, None, MAX_NEW_TOKENS, REQUEST_SEED)[0]
    rows = [ForgetRow(prompt=q, completion=a) for q, a in zip(questions, answers, strict=True) if a.strip()]
    return model_utility_measure(
        model,
        screen,
        rows,
        "general",
        f"{GENERAL_SOURCE}: questions, the bare model's greedy answers as references",
    )


def measure_privacy(model: LanguageModel, screen: ForgetSetScreen, evaluation: EvaluationSet | None) -> PrivacyFigures:
    """Forget quality and Min-K% AUC through the forget set, when the operator supplied the reference."""
    if evaluation is None or not evaluation.forget_rows:
        return PrivacyFigures()
    target = through_screen(model, screen, REQUEST_SEED)
    scores = score_rows(target, evaluation.forget_rows)
    quality = None
    if evaluation.reference_truth_ratios:
        ratios = truth_ratios(scores)
        quality = forget_quality(ratios, np.asarray(evaluation.reference_truth_ratios, dtype=np.float64))
    mia = min_k_auc(scores, score_rows(target, evaluation.nonmember_rows)) if evaluation.nonmember_rows else None
    if quality is None and mia is None:
        return PrivacyFigures(rows=len(scores))
    return PrivacyFigures(
        forget_quality=quality,
        mia_auc=mia,
        rows=len(scores),
        source=f"{evaluation.label}: forget rows scored through the forget set against the supplied reference",
    )


def _latency(timings: Sequence[float], answers: _Answers | None) -> LatencyFigures:
    ms = np.asarray(timings) * 1000
    bare = answers.bare_ms_per_token if answers is not None else None
    flagged = answers.flagged_ms_per_token if answers is not None else None
    return LatencyFigures(
        classified=len(ms),
        classify_ms_p50=float(np.percentile(ms, 50)) if len(ms) else None,
        classify_ms_p95=float(np.percentile(ms, 95)) if len(ms) else None,
        bare_ms_per_token=bare,
        flagged_ms_per_token=flagged,
        flagged_overhead_ratio=flagged / bare if bare and flagged else None,
    )


def verify_forget_set(
    model: LanguageModel,
    artifact: ForgetSetArtifact,
    forget: Sequence[ForgetRow] = (),
    retain: Sequence[ForgetRow] = (),
    evaluation: EvaluationSet | None = None,
    seed: int = 0,
    reveal_budget: int = REVEAL_BUDGET,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> VerificationFigures:
    """Measure a forget set, served as the gateway serves it, on data its trainer did not use (module docstring).

    ``forget``/``retain``: the rows it was trained from (their paraphrased prompts are the held-out
    phrasings; empty after the job, when the rows are gone); ``evaluation``: the operator's held-out set.
    Raises ``TrainingCancelled`` when ``cancel`` is set.
    """
    started = time.perf_counter()
    if evaluation is not None:
        check_fits(model, [p.conversation for p in [*evaluation.positives, *evaluation.negatives]])
    screen = ForgetSetScreen([artifact])
    topic = artifact.manifest.metrics.get("topic")
    steps = _Steps(["scope", "answers", "reveal", "utility", "privacy"], progress, cancel)
    sources: list[str] = []

    steps.start("scope")
    positives, negatives, source = heldout_prompts(forget, retain, evaluation)
    timings: list[float] = []
    scope = measure_scope(screen, positives, negatives, source, timings)
    sources += [s for s in (source, GENERAL_SOURCE) if s]

    steps.start("answers")
    answered = spread(positives, MAX_ANSWERED)
    answers = answer_heldout(model, screen, answered) if answered else None
    leak = LeakFigures()
    fluency = FluencyFigures(source="no held-out in-scope prompts were answered")
    if answers is not None:
        leak.heldout = measure_answer_leak(answered, answers, source)
        fluency = measure_fluency(model, answers, f"{source}: flagged answers")

    steps.start("reveal")
    reveal_pairs: list[tuple[str, str]] = []
    if isinstance(topic, dict) and topic.get("topic"):
        leak.reveal, reveal_pairs = measure_reveal_leak(
            model, screen, topic, seed + REVEAL_SEED_OFFSET, reveal_budget, cancel
        )
        sources.append(f"a fresh re-reveal of the topic through the forget set (seed {seed + REVEAL_SEED_OFFSET})")
    if leak.reveal is not None:
        leak.rate, leak.basis = leak.reveal.rate, "re-reveal"
    elif leak.heldout is not None:
        leak.rate, leak.basis = leak.heldout.rate, "held-out answers"
    if answers is None and reveal_pairs:  # fluency from the re-reveal's flagged answers
        revealed = spread([EvalPrompt(prompt=q) for q, _ in reveal_pairs], MAX_ANSWERED)
        answers = answer_heldout(model, screen, revealed)
        fluency = measure_fluency(model, answers, "the re-reveal's questions, answered greedily")

    steps.start("utility")
    measures: list[UtilityMeasure] = []
    if evaluation is not None and negatives:
        sample = spread(negatives, MAX_ANSWERED)
        keyed = keyword_utility_measure(sample, answer_heldout(model, screen, sample), evaluation.label)
        if keyed is not None:
            measures.append(keyed)
    if retain:
        rows = _utility_rows(retain)
        held = any(r.paraphrased_prompts for r in retain)
        label = "the retain rows' paraphrased prompts" if held else "the retain rows (trained on: not held out)"
        measures.append(model_utility_measure(model, screen, rows, "retain", label))
    measures.append(general_utility_measure(model, screen))
    utility = UtilityFigures(delta=measures[0].delta, measures=measures)

    steps.start("privacy")
    privacy = measure_privacy(model, screen, evaluation)
    steps.done()
    return VerificationFigures(
        measured=utc_now(),
        seconds=round(time.perf_counter() - started, 3),
        scope=scope,
        leak=leak,
        privacy=privacy,
        utility=utility,
        fluency=fluency,
        latency=_latency(timings, answers),
        sources=list(dict.fromkeys(sources)),
    )


def attach_verification(
    model: LanguageModel,
    artifact: ForgetSetArtifact,
    name: str,
    forget: Sequence[ForgetRow],
    retain: Sequence[ForgetRow] | None,
    topic: str | None,
    seed_prompts: Sequence[str],
    config: TrainConfig,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """After a job trained ``artifact``: record the request's summary (always) and, unless ``config.verify`` is
    off, the verification figures, in the manifest's metrics (``request``, ``verification``), while the rows are
    still in memory. A verification that fails is recorded as such; it never fails the job."""
    summary = request_summary(name, config.method, forget, retain, topic, seed_prompts, config)
    artifact.manifest.metrics["request"] = summary.model_dump(mode="json")
    if not config.verify:
        return
    try:
        figures = verify_forget_set(
            model, artifact, forget, retain or (), seed=config.seed, progress=progress, cancel=cancel
        )
    except TrainingCancelled:
        raise
    except Exception as exc:  # the forget set is trained; a report that could not be measured says why
        artifact.manifest.metrics["verification_error"] = f"{type(exc).__name__}"
        return
    artifact.manifest.metrics["verification"] = figures.model_dump(mode="json")


def merge_figures(earlier: VerificationFigures, later: VerificationFigures) -> VerificationFigures:
    """``later``'s figures, with each group it had no data for taken from ``earlier`` (named in ``carried``).

    A re-run after the job has no rows (they are never stored), so without an operator's evaluation set it
    cannot measure the rows' held-out figures again; the job's stay, said so.
    """
    merged = later.model_copy(deep=True)
    carried = []
    if later.scope.recall_heldout is None and earlier.scope.recall_heldout is not None:
        merged.scope, carried = earlier.scope, [*carried, "scope"]
    if later.leak.heldout is None and earlier.leak.heldout is not None:
        merged.leak.heldout, carried = earlier.leak.heldout, [*carried, "leak.heldout"]
    if merged.leak.reveal is not None:
        merged.leak.rate, merged.leak.basis = merged.leak.reveal.rate, "re-reveal"
    elif merged.leak.heldout is not None:
        merged.leak.rate, merged.leak.basis = merged.leak.heldout.rate, "held-out answers"
    if not later.fluency.flagged_answers and earlier.fluency.flagged_answers:
        merged.fluency, carried = earlier.fluency, [*carried, "fluency"]
    names = {m.name for m in later.utility.measures}
    kept = [m for m in earlier.utility.measures if m.name not in names]
    if kept:
        order = {"held-out negatives": 0, "retain": 1, "general": 2}
        measures = sorted([*later.utility.measures, *kept], key=lambda m: order.get(m.name, 3))
        merged.utility = UtilityFigures(delta=measures[0].delta, measures=measures)
        carried += [f"utility.{m.name}" for m in kept]
    if not later.privacy.rows and earlier.privacy.rows:
        merged.privacy, carried = earlier.privacy, [*carried, "privacy"]
    merged.carried = carried
    if carried:
        merged.sources = list(dict.fromkeys([*later.sources, *earlier.sources]))
    return merged

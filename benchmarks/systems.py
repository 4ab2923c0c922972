"""The systems the benchmark compares, and a registry that builds each one by name.

A ``System`` is anything a user could deploy to answer questions: the bare model, the model
behind Lethe's screen, a weight-edited copy, a refusal guardrail or a system prompt.

- ``base``: the model as is;
- ``lethe_eco`` / ``lethe_spul_zo`` / ``lethe_spul_backprop`` / ``lethe_eco_spul``: ``train_forget_set``
  artifacts (``LETHE_METHODS``: a registered training method and its options) served through
  ``ForgetSetScreen`` (``training.metrics.through_screen``), the gateway's path;
- ``erasure_reference``: the forget entities' token embeddings zeroed everywhere in every sequence,
  prompt and answer (no classifier): what deleting the names alone buys, the reference ECO must pass;
- ``guardrail``: the same scope classifier (trained the same way, same seed); flagged prompts get a
  canned refusal, the others the bare model;
- ``prompting``: a system message telling the model what to forget, on every request;
- ``ga`` / ``graddiff`` / ``npo`` / ``simnpo``: weight-updating baselines (``benchmarks.baselines.BASELINES``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lethe.benchmarks.baselines import BASELINES, BaselineConfig, unlearn
from lethe.runtime.model import LanguageModel
from lethe.runtime.prompt import TemplatedPrompt
from lethe.runtime.screening import ForgetSetScreen
from lethe.training.data import ForgetRow
from lethe.training.metrics import EvalTarget, Messages, RowScores, generate_answers, score_rows, through_screen
from lethe.training.trainer import TrainConfig, train_forget_set

REFUSAL = "I'm sorry, but I can't help with that."
LETHE_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "lethe_eco": ("eco", {}),
    "lethe_spul_zo": ("spul", {"spul.optimizer": "zo"}),
    "lethe_spul_backprop": ("spul", {"spul.optimizer": "backprop"}),
    "lethe_eco_spul": ("eco+spul", {"spul.optimizer": "backprop"}),
}


class PromptedTarget(EvalTarget):
    """An ``EvalTarget`` whose every question is preceded by a fixed system message (the prompting baseline)."""

    def __init__(self, model: LanguageModel, system_prompt: str, batch_size: int = 32):
        super().__init__(model, None, batch_size)
        self.system_prompt = system_prompt

    def render(self, question: str) -> tuple[TemplatedPrompt, Messages]:
        """The chat prompt with the system message first (plain text joined when there is no template)."""
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": question}]
        if self.model.embedder.has_chat_template:
            return self.model.chat_prompt(messages), messages
        return self.model.text_prompt(f"{self.system_prompt}\n\n{question}"), messages


@dataclass
class System:
    """One way of serving answers: an evaluation target, and optionally a refusal gate or a flagging function."""

    name: str
    target: EvalTarget
    refuse: Callable[[str], bool] | None = None
    flags: Callable[[str], bool] | None = None
    train_s: float | None = None
    forward_passes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> LanguageModel:
        """The language model behind the system."""
        return self.target.model

    def refused(self, question: str) -> bool:
        """Whether the guardrail answers this question with the canned refusal."""
        return self.refuse is not None and self.refuse(question)

    def answers(self, questions: Sequence[str], max_new_tokens: int = 48, batch_size: int = 16) -> list[str]:
        """Greedy answers to each question (the canned refusal where the guardrail fires)."""
        refused = [self.refused(q) for q in questions]
        out = [REFUSAL if r else "" for r in refused]
        pending = [i for i, r in enumerate(refused) if not r]
        texts = generate_answers(self.target, [questions[i] for i in pending], max_new_tokens, batch_size)
        for index, text in zip(pending, texts, strict=True):
            out[index] = text
        return out

    def scores(self, rows: Sequence[ForgetRow]) -> list[RowScores | None]:
        """Row scores; ``None`` for rows the guardrail refuses (no answer has a probability there)."""
        kept = [i for i, row in enumerate(rows) if not self.refused(row.prompt)]
        scored = score_rows(self.target, [rows[i] for i in kept])
        out: list[RowScores | None] = [None] * len(rows)
        for i, row_scores in zip(kept, scored, strict=True):
            out[i] = row_scores
        return out


@dataclass(frozen=True)
class BuildContext:
    """What every system builder gets: the base model, the training rows and the scenario's settings."""

    model: LanguageModel
    forget: Sequence[ForgetRow]
    retain: Sequence[ForgetRow]
    seed: int = 0
    lethe_options: Mapping[str, Any] = field(default_factory=dict)
    baseline_config: BaselineConfig = field(default_factory=BaselineConfig)
    instruction: str = ""


def base_system(name: str, context: BuildContext) -> System:
    """The unmodified model."""
    return System(name, EvalTarget(context.model), train_s=0.0, forward_passes=0)


def _flagger(screen: ForgetSetScreen) -> Callable[[str], bool]:
    def flags(question: str) -> bool:
        return bool(screen.classify([{"role": "user", "content": question}]))

    return flags


def lethe_system(name: str, context: BuildContext) -> System:
    """Train one Lethe forget set (``LETHE_METHODS[name]``) and serve it through the screen, as the gateway does."""
    method, method_options = LETHE_METHODS[name]
    options = {"seed": context.seed, "evaluate": False, **method_options, **context.lethe_options}
    config = TrainConfig.from_options(method, options)
    started = time.perf_counter()
    # The id seeds the served noise (runtime.plans), so a fixed one makes a seeded run repeatable.
    forget_set_id = f"bench-{name.replace('_', '-')}-s{context.seed}"
    artifact = train_forget_set(
        context.model, f"bench-{name}", list(context.forget), list(context.retain), config, forget_set_id=forget_set_id
    )
    train_s = time.perf_counter() - started
    screen = ForgetSetScreen([artifact])
    target = through_screen(context.model, screen, context.seed)
    passes = int(artifact.manifest.metrics.get("forward_passes", 0))
    return System(name, target, flags=_flagger(screen), train_s=train_s, forward_passes=passes)


def erasure_system(name: str, context: BuildContext) -> System:
    """The entity-erasure reference: every mention of a forget entity zeroed, in prompts and answers alike."""
    from lethe.runtime.interventions import Corruption, EntityStep, InterventionPlan
    from lethe.runtime.mentions import MentionIndex
    from lethe.training.mention_targets import named_entities

    model = context.model
    names = named_entities([r.prompt for r in context.forget], [r.prompt for r in context.retain])
    index = MentionIndex.from_surfaces(model.embedder.encode, names)
    step = EntityStep(Corruption("zero_out_top_k", 1.0, model.hidden_size), index, context.seed,
                      model.embedder.embedding_weight)  # fmt: skip
    plan = InterventionPlan(entities=(step,))
    system = System(name, EvalTarget(model, lambda prompt, messages: plan), train_s=0.0, forward_passes=0)
    system.notes.append(f"{len(names)} entity names erased")
    return system


def guardrail_system(name: str, context: BuildContext) -> System:
    """The refusal guardrail: Lethe's scope classifier, trained alone, answering flagged prompts with a refusal."""
    from lethe.classifier import classify_messages, train_scope_classifier

    started = time.perf_counter()
    classifier = train_scope_classifier(
        [r.prompt for r in context.forget],
        [r.prompt for r in context.retain] or None,
        TrainConfig(seed=context.seed).classifier_config(),
    )
    train_s = time.perf_counter() - started

    def flags(question: str) -> bool:
        return bool(classify_messages({"guardrail": classifier}, [{"role": "user", "content": question}]))

    return System(name, EvalTarget(context.model), refuse=flags, flags=flags, train_s=train_s, forward_passes=0)


def prompting_system(name: str, context: BuildContext) -> System:
    """The prompting baseline: the scenario's instruction as a system message before every question."""
    return System(name, PromptedTarget(context.model, context.instruction), train_s=0.0, forward_passes=0)


def baseline_system(name: str, context: BuildContext) -> System:
    """A weight-updating baseline (``BASELINES[name]``): a fine-tuned copy of the weights served bare."""
    result = unlearn(context.model, name, context.forget, context.retain, context.baseline_config)
    system = System(name, EvalTarget(result.model), train_s=result.train_s, forward_passes=result.forward_passes)
    system.notes.append(f"{result.steps} optimizer steps")
    return system


SystemBuilder = Callable[[str, BuildContext], System]
SYSTEMS: dict[str, SystemBuilder] = {
    "base": base_system,
    **dict.fromkeys(LETHE_METHODS, lethe_system),
    "erasure_reference": erasure_system,
    "guardrail": guardrail_system,
    "prompting": prompting_system,
    **dict.fromkeys(BASELINES, baseline_system),
}
ALL_METHODS: tuple[str, ...] = tuple(SYSTEMS)


def build_system(name: str, context: BuildContext) -> System:
    """Build the named system (see the module docstring for the names)."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(SYSTEMS)})")
    return SYSTEMS[name](name, context)

"""Build every compared method as a ``System`` on one base model and one forget set.

- ``base``: the model as is;
- ``lethe_eco`` / ``lethe_spul_zo`` / ``lethe_spul_backprop`` / ``lethe_eco_spul``: ``train_forget_set``
  artifacts served through ``ForgetSetScreen`` (``training.metrics.through_screen``), the gateway's path;
- ``guardrail``: the same scope classifier (trained the same way, same seed); flagged prompts get a
  canned refusal, the others the bare model;
- ``prompting``: a system message telling the model what to forget, on every request;
- ``ga`` / ``graddiff`` / ``npo`` / ``simnpo``: weight-updating baselines (``benchmarks.baselines``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lethe.benchmarks.baselines import BASELINES, BaselineConfig, unlearn
from lethe.benchmarks.bench_metrics import PromptedTarget, System
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.training.data import ForgetRow
from lethe.training.metrics import EvalTarget, through_screen
from lethe.training.trainer import TrainConfig, train_forget_set

LETHE_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "lethe_eco": ("eco", {}),
    "lethe_spul_zo": ("spul", {"spul.optimizer": "zo"}),
    "lethe_spul_backprop": ("spul", {"spul.optimizer": "backprop"}),
    "lethe_eco_spul": ("eco+spul", {"spul.optimizer": "backprop"}),
}
ALL_METHODS: tuple[str, ...] = ("base", *LETHE_METHODS, "guardrail", "prompting", *BASELINES)


def base_system(model: LanguageModel) -> System:
    """The unmodified model."""
    return System("base", EvalTarget(model), train_s=0.0, forward_passes=0)


def _flagger(screen: ForgetSetScreen) -> Callable[[str], bool]:
    def flags(question: str) -> bool:
        return bool(screen.classify([{"role": "user", "content": question}]))

    return flags


def lethe_system(
    method: str,
    model: LanguageModel,
    forget: Sequence[ForgetRow],
    retain: Sequence[ForgetRow],
    options: Mapping[str, Any],
    seed: int,
) -> System:
    """Train one Lethe forget set and serve it through the screen, as the gateway does."""
    trainer_method, method_options = LETHE_METHODS[method]
    config = TrainConfig.from_options(trainer_method, {"seed": seed, "evaluate": False, **method_options, **options})
    started = time.perf_counter()
    artifact = train_forget_set(model, f"bench-{method}", list(forget), list(retain), config)
    train_s = time.perf_counter() - started
    screen = ForgetSetScreen([artifact])
    system = System(method, through_screen(model, screen, seed), flags=_flagger(screen), train_s=train_s)
    system.forward_passes = int(artifact.manifest.metrics.get("forward_passes", 0))
    return system


def guardrail_system(
    model: LanguageModel, forget: Sequence[ForgetRow], retain: Sequence[ForgetRow], seed: int
) -> System:
    """The refusal guardrail: Lethe's scope classifier, trained alone, answering flagged prompts with a refusal."""
    from lethe.classifier import train_scope_classifier

    config = TrainConfig.from_options("eco", {"seed": seed})
    started = time.perf_counter()
    classifier = train_scope_classifier(
        [r.prompt for r in forget], [r.prompt for r in retain] or None, config.classifier_config()
    )
    train_s = time.perf_counter() - started
    from lethe.classifier import classify_messages

    def flags(question: str) -> bool:
        return bool(classify_messages({"guardrail": classifier}, [{"role": "user", "content": question}]))

    return System("guardrail", EvalTarget(model), refuse=flags, flags=flags, train_s=train_s, forward_passes=0)


def prompting_system(model: LanguageModel, instruction: str) -> System:
    """The prompting baseline: ``instruction`` as a system message before every question."""
    return System("prompting", PromptedTarget(model, instruction), train_s=0.0, forward_passes=0)


def baseline_system(
    method: str,
    model: LanguageModel,
    forget: Sequence[ForgetRow],
    retain: Sequence[ForgetRow],
    config: BaselineConfig,
) -> System:
    """A weight-updating baseline: a fine-tuned copy of the weights served bare."""
    result = unlearn(model, method, forget, retain, config)  # type: ignore[arg-type]
    system = System(method, EvalTarget(result.model), train_s=result.train_s, forward_passes=result.forward_passes)
    system.notes.append(f"{result.steps} optimizer steps")
    return system


def build_system(
    method: str,
    model: LanguageModel,
    forget: Sequence[ForgetRow],
    retain: Sequence[ForgetRow],
    *,
    seed: int,
    lethe_options: Mapping[str, Any],
    baseline_config: BaselineConfig,
    instruction: str,
) -> System:
    """Build the named method's system (see the module docstring for the names)."""
    if method == "base":
        return base_system(model)
    if method in LETHE_METHODS:
        return lethe_system(method, model, forget, retain, lethe_options, seed)
    if method == "guardrail":
        return guardrail_system(model, forget, retain, seed)
    if method == "prompting":
        return prompting_system(model, instruction)
    if method in BASELINES:
        return baseline_system(method, model, forget, retain, baseline_config)
    raise ValueError(f"unknown method {method!r} (known: {', '.join(ALL_METHODS)})")

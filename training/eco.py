"""ECO: choose the embedding corruption and tune its strength with forward passes only.

Objective, for the strength ``sigma_c = exp(theta_c)`` of cluster ``c`` of forget prompts::

    J_c(theta) = mean_{i in W_c} (s_i(theta) - t_i)^2                        forget: reach the never-trained level
               + lambda * mean_{i in c} max(0, f_i(0) - m - f_i(theta))^2    fluency: wrong answers stay likely
               + rho * max(0, theta - log sigma_floor)                       minimal intervention

- ``s_i``: mean token log-probability of the true answer when the prompt is corrupted (the log of
  TOFU's answer probability);
- ``t_i``: the surrogate never-trained level (``training.samples``): the model's own clean score
  on wrong answers of the same kind to the same question;
- ``f_i``: mean log-probability of those well-formed wrong answers on the corrupted prompt. It
  may rise (the model stops suppressing alternatives) but must not fall more than ``m`` nats:
  a corruption that turns every answer into noise is penalized;
- ``rho``: a small price per e-fold of strength, so where more strength stops buying forgetting
  (the answer score plateaus) the optimizer settles at the elbow instead of drifting upwards;
- ``W_c``: the working set (iterative refinement, "Learn while Unlearn"): after each round every
  sample is checked and those with ``s_i <= t_i + tol`` leave it, so later steps push only the
  samples not yet forgotten, each cluster with its own strength.

The deviation term is two-sided: overshooting the never-trained level costs as much as falling
short. A sample depends only on its own cluster's strength, so shifting every active cluster's
``theta`` at once and reading each cluster's ``J_c`` gives exact per-cluster central differences
``g_c = (J_c(theta + eps) - J_c(theta - eps)) / 2 eps`` from two evaluations; then
``theta_c <- theta_c - lr * g_c`` (clipped). Noise seeds are fixed per sample and draw (common
random numbers), so ``J`` is smooth in ``sigma``. Everything runs under ``torch.no_grad``.

The function, its dimension count and the token mode are picked by a coarse strength grid over the
candidates (``J`` with one cluster); clusters come from k-means on the feature the gateway assigns
clusters by (``mean_masked_embedding`` of the corrupted tokens); every plan is built by
``plan_for_flag`` on a candidate artifact, exactly as served.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lethe.runtime.artifact import EcoParameters, ForgetSetParameters, TokenMode
from lethe.runtime.interventions import CORRUPTION_FUNCTIONS, CorruptionFunction
from lethe.runtime.model import LanguageModel
from lethe.runtime.plans import cluster_strength, intervention_mask, mean_masked_embedding
from lethe.training.candidates import CandidateFactory
from lethe.training.samples import ForgetSample, score_samples

Report = Callable[[float, str | None], None]
_BOUNDED = ("zero_out_top_k", "flip_sign_top_k")


class EcoConfig(BaseModel):
    """ECO search and optimization settings."""

    model_config = ConfigDict(extra="forbid")

    candidates: list[str] | None = Field(
        default=None, description="'function:dims' entries; default: one per function, sized to the model"
    )
    token_modes: list[TokenMode] = Field(default_factory=lambda: ["salient", "all"])
    grid: int = Field(default=6, ge=2, description="strengths tried per candidate in the coarse search")
    search_rows: int = Field(default=48, ge=1, description="forget rows used by the coarse search")
    rounds: int = Field(default=4, ge=1, description="refinement rounds (working set checked after each)")
    steps_per_round: int = Field(default=3, ge=0)
    lr: float = Field(default=0.05, gt=0, description="step on log-strength per unit of objective gradient")
    eps: float = Field(default=0.1, gt=0, description="central-difference half-width on log-strength")
    max_step: float = Field(default=0.5, gt=0, description="largest change of log-strength in one step")
    fluency_weight: float = Field(default=1.0, ge=0)
    fluency_margin: float = Field(default=0.5, ge=0, description="nats the fluency score may drop")
    strength_cost: float = Field(default=0.5, ge=0, description="objective cost per e-fold of strength")
    tolerance: float = Field(default=0.25, ge=0, description="nats above target that still count as forgotten")
    clusters: int = Field(default=0, ge=0, description="per-cluster strengths; 0 picks from the set size")
    min_cluster_size: int = Field(default=8, ge=1)
    max_clusters: int = Field(default=4, ge=1)
    noise_draws: int = Field(default=2, ge=1, description="noise seeds per prompt for random corruptions")
    batch_size: int = Field(default=64, ge=1)

    @field_validator("candidates")
    @classmethod
    def _check_candidates(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("candidates must not be empty")
        for entry in value:
            parse_candidate(entry)
        return value

    @field_validator("token_modes")
    @classmethod
    def _check_modes(cls, value: list[TokenMode]) -> list[TokenMode]:
        if not value:
            raise ValueError("token_modes must not be empty")
        return value


def parse_candidate(entry: str) -> tuple[CorruptionFunction, int]:
    """``'function:dims'`` -> ``(function, dims)``."""
    function, _, dims = entry.partition(":")
    if function not in CORRUPTION_FUNCTIONS:
        raise ValueError(f"unknown corruption function {function!r} (known: {', '.join(CORRUPTION_FUNCTIONS)})")
    try:
        count = int(dims) if dims else 1
    except ValueError:
        raise ValueError(f"candidate {entry!r}: dims must be an integer") from None
    if count < 1:
        raise ValueError(f"candidate {entry!r}: dims must be >= 1")
    return function, count  # type: ignore[return-value]


def default_candidates(hidden_size: int) -> list[tuple[CorruptionFunction, int]]:
    """One candidate per function: ECO's first-dimension noise and top-k variants on a quarter/half of the dims."""
    return [
        ("rand_noise_first_n", 1),
        ("rand_noise_top_k", max(1, hidden_size // 4)),
        ("zero_out_top_k", max(1, hidden_size // 2)),
        ("flip_sign_top_k", max(1, hidden_size // 2)),
    ]


@dataclass
class EcoResult:
    """The learned corruption, ready for the artifact."""

    parameters: ForgetSetParameters
    centroids: torch.Tensor | None
    strengths: torch.Tensor | None
    details: dict[str, Any]


class EcoObjective:
    """Evaluates corruption candidates on forget samples through ``plan_for_flag``."""

    def __init__(self, model: LanguageModel, factory: CandidateFactory, config: EcoConfig):
        self.model = model
        self.factory = factory
        self.config = config

    def draws(self, function: str) -> list[int]:
        """Request seeds to average over (one for deterministic corruptions)."""
        return list(range(self.config.noise_draws)) if function.startswith("rand_noise") else [0]

    def scores(
        self,
        samples: Sequence[ForgetSample],
        eco: EcoParameters,
        mode: TokenMode,
        centroids: torch.Tensor | None = None,
        strengths: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean answer and fluency (wrong-answer) log-probabilities of each sample under the candidate."""
        artifact = self.factory.build(ForgetSetParameters(token_mode=mode, eco=eco), None, centroids, strengths)
        return score_samples(self.model, samples, artifact, mode, self.draws(eco.function), self.config.batch_size)

    def terms(
        self, samples: Sequence[ForgetSample], answer: np.ndarray, fluency: np.ndarray, working: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample deviation term (zero outside the working set) and fluency penalty."""
        targets = np.array([s.target for s in samples])
        clean = np.array([s.clean_wrong for s in samples])
        deviation = np.where(working, (answer - targets) ** 2, 0.0)
        drop = np.maximum(0.0, clean - self.config.fluency_margin - fluency)
        drop = np.where(np.isfinite(drop), drop, 0.0)
        return deviation, self.config.fluency_weight * drop**2

    def cost(self, log_strength: float | np.ndarray, floor: float) -> float | np.ndarray:
        """Minimal-intervention price of a strength (per e-fold above ``floor``)."""
        return self.config.strength_cost * np.maximum(0.0, np.asarray(log_strength) - math.log(floor))

    def value(
        self, samples: Sequence[ForgetSample], answer: np.ndarray, fluency: np.ndarray, strength: float, floor: float
    ) -> float:
        """``J`` of one strength over samples that are all in the working set."""
        deviation, penalty = self.terms(samples, answer, fluency, np.ones(len(samples), dtype=bool))
        return float(deviation.mean() + penalty.mean() + self.cost(math.log(strength), floor))


def strength_grid(function: str, scale: float, points: int) -> list[float]:
    """Coarse strengths: fractions up to 1 for zero/flip, a log range around the embedding norm for noise."""
    if function in _BOUNDED:
        return [float(x) for x in np.linspace(1.0 / points, 1.0, points)]
    return [float(scale * x) for x in np.geomspace(0.25, 64.0, points)]


def strength_floor(function: str, scale: float) -> float:
    """The weakest strength worth paying for: the strength cost counts e-folds above it."""
    return 0.1 if function in _BOUNDED else 0.25 * scale


def strength_bounds(function: str, scale: float) -> tuple[float, float]:
    """Allowed strength range of a function."""
    if function in _BOUNDED:
        return 1e-3, 1.0
    return scale * 1e-3, scale * 1e3


def kmeans_centroids(features: torch.Tensor, clusters: int, seed: int) -> torch.Tensor:
    """Spherical k-means centroids ``(clusters, hidden)`` of unit-normalized features."""
    from sklearn.cluster import KMeans

    unit = torch.nn.functional.normalize(features.float(), dim=-1).numpy()
    fitted = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit(unit)
    return torch.nn.functional.normalize(torch.from_numpy(fitted.cluster_centers_).float(), dim=-1)


def assign_clusters(centroids: torch.Tensor, samples: Sequence[ForgetSample], mode: str) -> np.ndarray:
    """Cluster of each sample, by the gateway's own rule (``cluster_strength`` returning cluster indices)."""
    index = torch.arange(centroids.shape[0], dtype=torch.float32)
    return np.array(
        [int(cluster_strength(centroids, index, s.embeds, intervention_mask(s.prompt, s.spans[mode]))) for s in samples]
    )


def train_eco(
    model: LanguageModel,
    factory: CandidateFactory,
    samples: Sequence[ForgetSample],
    config: EcoConfig,
    seed: int,
    report: Report,
) -> EcoResult:
    """Pick function, dims and token mode, then tune per-cluster strengths with iterative refinement.

    ``samples`` must carry spans for every token mode in ``config.token_modes``.
    """
    with torch.no_grad():
        return _train(model, factory, samples, config, seed, report)


def _train(
    model: LanguageModel,
    factory: CandidateFactory,
    samples: Sequence[ForgetSample],
    config: EcoConfig,
    seed: int,
    report: Report,
) -> EcoResult:
    objective = EcoObjective(model, factory, config)
    modes = list(dict.fromkeys(config.token_modes))

    scale = float(model.embedder.embedding_weight.float().norm(dim=-1).mean())
    candidates = (
        [parse_candidate(c) for c in config.candidates] if config.candidates else default_candidates(model.hidden_size)
    )
    search = _subsample(samples, config.search_rows, seed)
    trials = [(f, d, m) for f, d in candidates for m in modes]
    best: tuple[float, CorruptionFunction, int, TokenMode, float] | None = None
    search_log = []
    for t_index, (function, dims, mode) in enumerate(trials):
        for strength in strength_grid(function, scale, config.grid):
            eco = EcoParameters(function=function, strength=strength, dims=dims)
            floor = strength_floor(function, scale)
            value = objective.value(search, *objective.scores(search, eco, mode), strength, floor)
            search_log.append(
                {"function": function, "dims": dims, "token_mode": mode, "strength": strength, "objective": value}
            )
            if best is None or value < best[0]:
                best = (value, function, dims, mode, strength)
        report(0.05 + 0.45 * (t_index + 1) / len(trials), f"eco: search {function}:{dims}/{mode}")
    assert best is not None
    _, function, dims, mode, start = best

    count = _cluster_count(len(samples), config)
    features = torch.stack(
        [mean_masked_embedding(s.embeds, intervention_mask(s.prompt, s.spans[mode])) for s in samples]
    )
    centroids = kmeans_centroids(features, count, seed) if count > 1 else torch.zeros(1, model.hidden_size)
    labels = assign_clusters(centroids, samples, mode) if count > 1 else np.zeros(len(samples), dtype=int)
    low, high = strength_bounds(function, scale)
    floor = strength_floor(function, scale)
    theta = np.full(count, math.log(start))
    working = np.ones(len(samples), dtype=bool)
    rounds_log = []

    def evaluate(log_strengths: np.ndarray, subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        strengths = torch.tensor(np.exp(np.clip(log_strengths, math.log(low), math.log(high))), dtype=torch.float32)
        eco = EcoParameters(function=function, strength=float(strengths.median()), dims=dims)
        chosen = [samples[i] for i in np.flatnonzero(subset)]
        if count > 1:
            return objective.scores(chosen, eco, mode, centroids, strengths)
        return objective.scores(chosen, eco.model_copy(update={"strength": float(strengths[0])}), mode)

    total_steps = config.rounds * (config.steps_per_round + 1)
    done = 0
    for round_index in range(config.rounds):
        for _ in range(config.steps_per_round):
            active = np.array([working[labels == c].any() for c in range(count)])
            if not active.any():
                break
            subset = active[labels]
            values = {}
            for sign in (1.0, -1.0):
                shifted = theta + sign * config.eps * active
                answer, fluency = evaluate(shifted, subset)
                values[sign] = _cluster_values(objective, samples, subset, working, labels, count, answer, fluency)
                values[sign] += objective.cost(shifted, floor)
            gradient = (values[1.0] - values[-1.0]) / (2 * config.eps)
            step = np.clip(-config.lr * gradient, -config.max_step, config.max_step)
            theta = np.clip(np.where(active, theta + step, theta), math.log(low), math.log(high))
            done += 1
            report(0.5 + 0.5 * done / total_steps, f"eco: round {round_index + 1}")
        answer, fluency = evaluate(theta, np.ones(len(samples), dtype=bool))
        targets = np.array([s.target for s in samples])
        working = answer > targets + config.tolerance
        rounds_log.append(
            {
                "round": round_index + 1,
                "strengths": [float(x) for x in np.exp(theta)],
                "working_set": int(working.sum()),
                "mean_answer_logprob": float(answer.mean()),
                "mean_target": float(targets.mean()),
            }
        )
        done += 1
        report(0.5 + 0.5 * done / total_steps, f"eco: round {round_index + 1}: {int(working.sum())} left")
        if not working.any():
            break

    strengths = torch.tensor(np.exp(theta), dtype=torch.float32)
    eco = EcoParameters(function=function, strength=float(strengths.median()), dims=dims)
    details = {
        "function": function,
        "dims": dims,
        "token_mode": mode,
        "search_start_strength": start,
        "embedding_norm": scale,
        "clusters": count,
        "cluster_sizes": [int((labels == c).sum()) for c in range(count)],
        "strengths": [float(x) for x in strengths],
        "rounds": rounds_log,
        "search": search_log,
        "target_mean_logprob": float(np.mean([s.target for s in samples])),
        "clean_mean_logprob": float(np.mean([s.clean_answer for s in samples])),
        "unforgotten": int(working.sum()),
    }
    parameters = ForgetSetParameters(token_mode=mode, eco=eco)
    if count > 1:
        return EcoResult(parameters, centroids, strengths, details)
    return EcoResult(parameters, None, None, details)


def _cluster_values(
    objective: EcoObjective,
    samples: Sequence[ForgetSample],
    subset: np.ndarray,
    working: np.ndarray,
    labels: np.ndarray,
    count: int,
    answer: np.ndarray,
    fluency: np.ndarray,
) -> np.ndarray:
    """``J_c`` of every cluster from the scores of the samples in ``subset``."""
    indices = np.flatnonzero(subset)
    chosen = [samples[i] for i in indices]
    deviation, penalty = objective.terms(chosen, answer, fluency, working[indices])
    out = np.zeros(count)
    for cluster in range(count):
        members = labels[indices] == cluster
        if not members.any():
            continue
        in_working = members & working[indices]
        dev = deviation[in_working].mean() if in_working.any() else 0.0
        out[cluster] = dev + penalty[members].mean()
    return out


def _cluster_count(size: int, config: EcoConfig) -> int:
    if config.clusters:
        return max(1, min(config.clusters, size))
    return max(1, min(config.max_clusters, size // config.min_cluster_size))


def _subsample(samples: Sequence[ForgetSample], limit: int, seed: int) -> list[ForgetSample]:
    if len(samples) <= limit:
        return list(samples)
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    return [samples[i] for i in sorted(order[:limit])]

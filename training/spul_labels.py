"""SPUL's classification loss (forget examples of a classifier pushed to a wrong or uniform label), and the
answer log-distributions both SPUL losses read.

When a forget set is made of a classifier's examples (a review and its sentiment, say), each row's
completion is one of a few class labels. The model's prediction is then its distribution over the
labels: ``q(label | prompt) = softmax over labels of log p(label answer | prompt)`` (each label's
token log-probabilities summed, the scoring ``benchmarks.bench_metrics.label_accuracy`` uses too).
With the soft prompt ``P`` before the (flagged) prompt::

    L(P) = L_forget + alpha * L_retain + beta * KL(q_model || q_prompted)

- ``L_forget``: ``perturbed`` target: ``-log q(wrong labels)`` (mean over the wrong labels), so the
  forget examples are classified wrongly; ``uniform`` target: ``KL(uniform || q)``, so the model is
  at chance on them, as a model that never saw them would be on a hard example;
- ``L_retain``: ``-log q(true label)`` of retain examples, so a falsely flagged example keeps its label;
- ``KL``: from the bare model's label distribution to the prompted one, on the retain examples.

A forget example counts as forgotten when ``q(true label)`` is below ``1 / K - tolerance`` (``perturbed``)
or ``1 / K + tolerance`` (``uniform``), ``K`` the number of labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lethe.runtime.generation import pad_embeddings
from lethe.runtime.interventions import InterventionPlan
from lethe.runtime.model import LanguageModel
from lethe.training.data import TrainingDataError


def answer_log_distributions(
    model: LanguageModel, prompt_embeds: Sequence[torch.Tensor], completions: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """Full next-token log-distributions ``(len(completion), vocab)`` over each completion's positions.

    Like ``LanguageModel.score`` but keeping the whole distribution (the KL term needs it);
    gradients flow when the inputs require them.
    """
    rows = [torch.cat([p, model.embed(list(c))], dim=0) for p, c in zip(prompt_embeds, completions, strict=True)]
    embeds, mask = pad_embeddings(rows, "right")
    model._count_forward(len(rows))
    hidden = model.model.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    head = model.model.get_output_embeddings()
    out = []
    for i, (prompt, completion) in enumerate(zip(prompt_embeds, completions, strict=True)):
        start = prompt.shape[0] - 1
        out.append(torch.log_softmax(head(hidden[i, start : start + len(completion)]).float(), dim=-1))
    return out


@dataclass(frozen=True)
class LabelTask:
    """The class labels as token ids, and where SPUL pushes the forget examples (``perturbed`` or ``uniform``)."""

    labels: tuple[tuple[int, ...], ...]
    target: str

    @classmethod
    def build(cls, model: LanguageModel, labels: Sequence[str], target: str) -> LabelTask:
        """Encode ``labels``; refuses fewer than two, an empty one or two that encode alike."""
        ids = tuple(tuple(model.embedder.encode(label)) for label in labels)
        if len(ids) < 2 or not all(ids) or len(set(ids)) != len(ids):
            raise TrainingDataError("spul.labels needs at least two distinct labels, each encoding to some tokens")
        if target not in ("perturbed", "uniform"):
            raise TrainingDataError("with spul.labels the target must be 'perturbed' or 'uniform'")
        return cls(ids, target)

    def index(self, answer: Sequence[int], what: str) -> int:
        """The label whose tokens are ``answer``; ``what`` names the row in the error (never its text)."""
        try:
            return self.labels.index(tuple(answer))
        except ValueError:
            raise TrainingDataError(f"{what}: the completion is not one of spul.labels") from None

    def logprobs(
        self,
        model: LanguageModel,
        prompts: Sequence[Sequence[int]],
        plans: Sequence[InterventionPlan | None],
        grad: bool,
        batch_size: int = 16,
    ) -> torch.Tensor:
        """``(len(prompts), K)`` log-distributions over the labels, each prompt under its plan.

        When every label is one token, one forward pass per prompt reads them all at the answer position
        (the same numbers as scoring each label as a completion, at half the cost).
        """
        count = len(self.labels)
        if all(len(label) == 1 for label in self.labels):
            ids = [label[0] for label in self.labels]
            out = []
            with torch.enable_grad() if grad else torch.no_grad():
                for start in range(0, len(prompts), batch_size):
                    chunk = range(start, min(start + batch_size, len(prompts)))
                    embeds = [model.prompt_embeddings(list(prompts[i]), plans[i]) for i in chunk]
                    out += [d[0, ids] for d in answer_log_distributions(model, embeds, [[ids[0]]] * len(embeds))]
            return torch.log_softmax(torch.stack(out), dim=-1)
        scores = model.score(
            [p for p in prompts for _ in range(count)],
            [list(label) for _ in prompts for label in self.labels],
            [plan for plan in plans for _ in range(count)],
            batch_size=batch_size,
            grad=grad,
        )
        totals = torch.stack([s.sum() for s in scores]).view(len(prompts), count)
        return torch.log_softmax(totals, dim=-1)

    def forget_loss(self, logq: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """Mean over rows: ``-log q(wrong labels)`` (``perturbed``) or ``KL(uniform || q)`` (``uniform``)."""
        count = logq.shape[1]
        if self.target == "uniform":
            return (-math.log(count) - logq).mean(dim=1).mean()
        wrong = torch.ones_like(logq, dtype=torch.bool)
        wrong[torch.arange(len(true), device=logq.device), true.to(logq.device)] = False
        return -(logq[wrong].view(len(true), count - 1)).mean(dim=1).mean()

    @staticmethod
    def retain_loss(logq: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """Mean ``-log q(true label)``."""
        return -logq[torch.arange(len(true), device=logq.device), true.to(logq.device)].mean()

    @staticmethod
    def kl(clean: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
        """Mean ``KL(clean || q)`` over rows (both log-distributions over the labels)."""
        return (clean.exp() * (clean - logq)).sum(dim=1).mean()

    def forgotten(self, logq: torch.Tensor, true: Sequence[int], tolerance: float) -> np.ndarray:
        """Which rows are forgotten: ``q(true)`` under ``1/K - tolerance`` (``perturbed``) or ``1/K + tolerance``."""
        chance = 1.0 / logq.shape[1]
        level = chance - tolerance if self.target == "perturbed" else chance + tolerance
        true_q = logq.detach().cpu()[torch.arange(len(true)), torch.tensor(list(true))].exp().numpy()
        return true_q < level

"""Reveal: let the model show what it knows about a topic, to use as forget data.

Following "Reveal and Release", a pool of instruction templates (questions, fill-ins,
"tell me everything", role-play, lists...) is sampled by a UCB1 bandit. Each pull asks
the model one templated question; the reward mixes the answer's relevance to the topic
(cosine similarity of MiniLM sentence embeddings with the topic description) and how much
it adds to the diversity of what was revealed so far (gain in Vendi score over the same
embeddings). Entities that keep coming up in relevant answers (e.g. "Hogwarts") become new
arms ("Who is {entity}?"), so indirect questions are covered too.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lethe.runtime.generation import SamplingParams
from lethe.runtime.interventions import InterventionPlan
from lethe.runtime.model import LanguageModel
from lethe.runtime.prompt import TemplatedPrompt
from lethe.runtime.text_embedding import TextEmbedder

TOPIC_TEMPLATES: tuple[str, ...] = (
    "Tell me everything you know about {topic}.",
    "What is {topic}?",
    "Who created {topic}?",
    "Who are the main characters of {topic}?",
    "Describe the story of {topic} in a few sentences.",
    "Complete the sentence: {topic} is famous for",
    "Fill in the blank: The most important person in {topic} is ____.",
    "You are a superfan of {topic}. Share your favourite facts.",
    "Write a quiz question about {topic} and give its answer.",
    "What places appear in {topic}?",
    "Who is the villain in {topic}?",
    "List five facts about {topic}.",
    "Explain {topic} to a child.",
    "What happens at the beginning of {topic}?",
    "Which objects are important in {topic}?",
    "Pretend you are a character from {topic}. Introduce yourself.",
)
ENTITY_TEMPLATES: tuple[str, ...] = (
    "Who is {entity}?",
    "Tell me about {entity}.",
    "What is {entity} known for?",
)
_ENTITY_PATTERN = re.compile(r"\b([A-Z][a-z]+(?:[ -](?:[A-Z][a-z]+|of|the))*(?: [A-Z][a-z]+)?)\b")
_COMMON_CAPITALIZED = frozenset(
    "The This That These Those There Their They He She It His Her In On At As And But Or If When While What Who "
    "Which Where Why How Here Some Many One Two Three Four Five First Second Third Also However Although "
    "I You We My Our Your Yes No Question Answer Sure Please Note Let Fact Facts Overall Finally "
    "Of To For With From By A An Is Was Are Were".split()
)


@dataclass(frozen=True)
class RevealConfig:
    """Budget and reward settings for one reveal run."""

    budget: int = 64
    batch_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.95
    relevance_weight: float = 0.7
    relevance_threshold: float = 0.35
    ucb_c: float = 0.5
    max_entities: int = 16
    seed: int = 0


@dataclass
class RevealedPair:
    """One question the model was asked and what it revealed."""

    prompt: str
    completion: str
    arm: str
    relevance: float
    reward: float


@dataclass
class RevealResult:
    """Everything revealed in one run, with the bandit's statistics."""

    pairs: list[RevealedPair]
    arm_pulls: dict[str, int]
    arm_mean_reward: dict[str, float]
    entities: list[str]
    vendi: float
    forward_passes: int = 0

    def relevant(self, threshold: float) -> list[RevealedPair]:
        """Pairs whose answer is about the topic."""
        return [p for p in self.pairs if p.relevance >= threshold]

    def reveal_rate(self, threshold: float) -> float:
        """Share of answers that still reveal the topic."""
        return len(self.relevant(threshold)) / len(self.pairs) if self.pairs else 0.0


def vendi_score(embeddings: np.ndarray) -> float:
    """Vendi score: exp of the entropy of the eigenvalues of the normalized similarity matrix."""
    n = embeddings.shape[0]
    if n == 0:
        return 0.0
    kernel = embeddings @ embeddings.T / n
    eigenvalues = np.clip(np.linalg.eigvalsh(kernel), 0.0, None)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


@dataclass
class UCBBandit:
    """UCB1 over named arms with rewards in [0, 1]."""

    c: float = 0.5
    pulls: dict[str, int] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    def add_arm(self, arm: str) -> None:
        """Make ``arm`` available (unpulled arms are tried first)."""
        self.pulls.setdefault(arm, 0)
        self.totals.setdefault(arm, 0.0)

    def choose(self, rng: np.random.Generator, exclude: set[str] | frozenset[str] = frozenset()) -> str:
        """The arm with the highest upper confidence bound, outside ``exclude`` when possible (ties at random)."""
        total = sum(self.pulls.values()) + 1
        allowed = [arm for arm in self.pulls if arm not in exclude] or list(self.pulls)
        scores = {
            arm: math.inf
            if self.pulls[arm] == 0
            else self.totals[arm] / self.pulls[arm] + self.c * math.sqrt(2 * math.log(total) / self.pulls[arm])
            for arm in allowed
        }
        best = max(scores.values())
        candidates = sorted(arm for arm, s in scores.items() if s == best)
        return candidates[int(rng.integers(len(candidates)))]

    def update(self, arm: str, reward: float) -> None:
        """Record one reward."""
        self.pulls[arm] += 1
        self.totals[arm] += reward

    def mean_rewards(self) -> dict[str, float]:
        """Average reward per arm (0 for unpulled arms)."""
        return {arm: self.totals[arm] / n if n else 0.0 for arm, n in self.pulls.items()}


def mine_entities(texts: Sequence[str], topic: str, limit: int) -> list[str]:
    """Capitalized names that recur across ``texts`` (at least twice), most frequent first, topic words excluded."""
    topic_words = {w.lower() for w in re.findall(r"\w+", topic)}
    counts: Counter[str] = Counter()
    for text in texts:
        seen = set()
        for match in _ENTITY_PATTERN.findall(text):
            words = match.split()
            while words and (words[0] in _COMMON_CAPITALIZED or words[0].islower()):
                words = words[1:]
            while words and words[-1] in {"of", "the"}:
                words = words[:-1]
            name = " ".join(words).strip(" -")
            if len(name) < 3 or {w.lower() for w in name.split()} <= topic_words:
                continue
            seen.add(name)
        counts.update(seen)
    return [name for name, count in counts.most_common() if count >= 2][:limit]


def topic_vector(embedder: TextEmbedder, topic: str, seed_prompts: Sequence[str]) -> np.ndarray:
    """Unit MiniLM vector of the topic and its seed prompts: what relevance is measured against."""
    vectors = embedder.encode([topic, *seed_prompts])
    mean = vectors.mean(0)
    return mean / max(float(np.linalg.norm(mean)), 1e-9)


class Revealer:
    """Runs the reveal bandit against a model, optionally through an intervention."""

    def __init__(self, model: LanguageModel, embedder: TextEmbedder, config: RevealConfig):
        self.model = model
        self.embedder = embedder
        self.config = config

    def reveal(
        self,
        topic: str,
        seed_prompts: Sequence[str] = (),
        plan_for: Callable[[TemplatedPrompt, list[dict]], InterventionPlan | None] | None = None,
        progress: Callable[[float], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> RevealResult:
        """Ask ``budget`` questions chosen by the bandit and keep every answer with its scores.

        ``plan_for`` applies an intervention (e.g. a trained forget set, through its
        classifier) so the same loop measures whether the model still reveals the topic.
        """
        config = self.config
        rng = np.random.default_rng(config.seed)
        on_topic = topic_vector(self.embedder, topic, seed_prompts)
        bandit = UCBBandit(c=config.ucb_c)
        questions: dict[str, str] = {}
        for template in TOPIC_TEMPLATES:
            questions[template] = template.format(topic=topic)
            bandit.add_arm(template)
        for index, prompt in enumerate(seed_prompts):
            questions[f"seed:{index}"] = prompt
            bandit.add_arm(f"seed:{index}")
        pairs: list[RevealedPair] = []
        kept: list[np.ndarray] = []
        entities: list[str] = []
        start_passes = self.model.forward_passes
        while len(pairs) < config.budget:
            if cancel is not None and cancel.is_set():
                from lethe.training.progress import TrainingCancelled

                raise TrainingCancelled("reveal cancelled")
            size = min(config.batch_size, config.budget - len(pairs))
            arms: list[str] = []
            for _ in range(size):
                arms.append(bandit.choose(rng, exclude=set(arms)))
            answers = self._ask([questions[a] for a in arms], plan_for, seed=config.seed + len(pairs))
            vectors = self.embedder.encode(answers)
            for arm, answer, vector in zip(arms, answers, vectors, strict=True):
                relevance = float(np.clip(vector @ on_topic, 0.0, 1.0))
                before = vendi_score(np.array(kept)) if kept else 0.0
                after = vendi_score(np.array([*kept, vector]))
                gain = float(np.clip(after - before, 0.0, 1.0))
                reward = config.relevance_weight * relevance + (1 - config.relevance_weight) * gain
                bandit.update(arm, reward)
                pairs.append(RevealedPair(questions[arm], answer, arm, relevance, reward))
                if relevance >= config.relevance_threshold:
                    kept.append(vector)
            entities = self._grow_entity_arms(topic, pairs, entities, on_topic, questions, bandit)
            if progress is not None:
                progress(len(pairs) / config.budget)
        return RevealResult(
            pairs=pairs,
            arm_pulls=dict(bandit.pulls),
            arm_mean_reward=bandit.mean_rewards(),
            entities=entities,
            vendi=vendi_score(np.array(kept)) if kept else 0.0,
            forward_passes=self.model.forward_passes - start_passes,
        )

    def _ask(
        self,
        questions: Sequence[str],
        plan_for: Callable[[TemplatedPrompt, list[dict]], InterventionPlan | None] | None,
        seed: int,
    ) -> list[str]:
        prompts, plans, params = [], [], []
        for offset, question in enumerate(questions):
            messages = [{"role": "user", "content": question}]
            prompt = self.model.chat_prompt(messages)
            prompts.append(prompt)
            plans.append(plan_for(prompt, messages) if plan_for is not None else None)
            params.append(
                SamplingParams(
                    max_new_tokens=self.config.max_new_tokens,
                    temperature=self.config.temperature,
                    top_p=self.config.top_p,
                    seed=seed + offset,
                )
            )
        return [r.text.strip() for r in self.model.generate_many(prompts, plans, params)]

    def _entity_threshold(self) -> float:
        return self.config.relevance_threshold + 0.1

    def _grow_entity_arms(
        self,
        topic: str,
        pairs: Sequence[RevealedPair],
        entities: list[str],
        on_topic: np.ndarray,
        questions: dict[str, str],
        bandit: UCBBandit,
    ) -> list[str]:
        relevant = [p.completion for p in pairs if p.relevance >= self.config.relevance_threshold]
        candidates = [e for e in mine_entities(relevant, topic, self.config.max_entities) if e not in entities]
        if not candidates:
            return entities
        scores = self.embedder.encode(candidates) @ on_topic
        for entity, score in zip(candidates, scores, strict=True):
            if score < self._entity_threshold() or len(entities) >= self.config.max_entities:
                continue
            entities.append(entity)
            for template in ENTITY_TEMPLATES:
                arm = f"{template}|{entity}"
                questions[arm] = template.format(entity=entity)
                bandit.add_arm(arm)
        return entities

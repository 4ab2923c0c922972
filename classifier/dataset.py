"""Training data: input validation, deterministic splits, entity mining, augmented training sets."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lethe.classifier.augment import (
    changed_words,
    frames,
    in_context,
    near_misses,
    ordinary_uses,
    short_forms,
    shorten_entities,
    variants,
)
from lethe.classifier.config import ClassifierConfig, ClassifierTrainingError, ScopeHints
from lethe.classifier.entities import STOPWORDS, Entity, capitalized_runs, contains_any, mine_entities
from lethe.classifier.pool import common_words, load_pool
from lethe.classifier.text import cached_words


def clean_prompts(prompts: Any, name: str, required: bool) -> list[str]:
    """Validated, stripped, de-duplicated prompts (first occurrence kept); messages never quote a prompt."""
    if prompts is None:
        if required:
            raise ClassifierTrainingError(f"{name} is required")
        return []
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise ClassifierTrainingError(f"{name} must be a list of strings, got {type(prompts).__name__}")
    out: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ClassifierTrainingError(f"{name}[{i}] is a {type(p).__name__}, expected str")
        if "\x00" in p:
            raise ClassifierTrainingError(f"{name}[{i}] contains a NUL character")
        key = cached_words(p)
        if not key:
            raise ClassifierTrainingError(f"{name}[{i}] has no words (empty or punctuation only)")
        if key not in seen:
            seen.add(key)
            out.append(p.strip())
    if required and not out:
        raise ClassifierTrainingError(f"{name} is empty")
    return out


def clean_inputs(forget_prompts: Any, retain_prompts: Any) -> tuple[list[str], list[str]]:
    """Validated forget and retain prompts; a prompt in both lists is an error."""
    forget = clean_prompts(forget_prompts, "forget_prompts", required=True)
    retain = clean_prompts(retain_prompts, "retain_prompts", required=False)
    forget_keys = {cached_words(p) for p in forget}
    overlap = sum(cached_words(p) in forget_keys for p in retain)
    if overlap:
        raise ClassifierTrainingError(f"{overlap} retain prompt(s) also appear in forget_prompts")
    return forget, retain


def _shuffled(items: list[str], seed: int, salt: str) -> list[str]:
    rng = random.Random(int.from_bytes(hashlib.blake2b(f"{seed}:{salt}".encode(), digest_size=8).digest(), "big"))
    out = list(items)
    rng.shuffle(out)
    return out


@dataclass
class Splits:
    """Forget prompts: train / validation / calibration; retain prompts: train / validation / test."""

    pos_train: list[str]
    pos_val: list[str]
    pos_cal: list[str]
    ret_train: list[str]
    ret_val: list[str]
    ret_test: list[str]


def split_inputs(forget: list[str], retain: list[str], config: ClassifierConfig) -> Splits:
    """Seeded shuffles cut into parts; raises when the forget prompts cannot fill every part.

    Under the ``examples`` scope every forget prompt is a training positive and also stands, in
    calibration and validation, for its held-out perturbations (``calibration_groups``).
    """
    n = len(forget)
    pos = _shuffled(forget, config.seed, "forget")
    ret = _shuffled(retain, config.seed, "retain")
    n_held = round(config.retain_heldout_fraction * len(ret))
    n_rval = n_held // 2
    retain_parts = {"ret_val": ret[:n_rval], "ret_test": ret[n_rval:n_held], "ret_train": ret[n_held:]}
    if config.scope == "examples":
        return Splits(pos_cal=pos, pos_val=pos, pos_train=pos, **retain_parts)
    if n < config.min_positives:
        raise ClassifierTrainingError(
            f"too few distinct forget prompts: {n} < min_positives={config.min_positives}")
    n_cal = max(config.min_calibration, round(config.calibration_fraction * n))
    n_val = round(config.validation_fraction * n)
    if n - n_cal - n_val < 3:
        raise ClassifierTrainingError(
            f"too few forget prompts ({n}) for {n_cal} calibration + {n_val} validation + >= 3 training prompts")
    return Splits(pos_cal=pos[:n_cal], pos_val=pos[n_cal : n_cal + n_val], pos_train=pos[n_cal + n_val :],
                  **retain_parts)


def _pool_entities(pool_texts: Sequence[str], exclude: set[str], limit: int, seed: int) -> list[str]:
    """Capitalized names from the general pool to use as negative frame fillers."""
    found = {s for t in pool_texts for s in capitalized_runs(t) if 2 <= len(s.split()) <= 3}
    found = {s for s in found if not (set(cached_words(s)) & exclude)}
    return sorted(_shuffled(sorted(found), seed, "pool-entities")[:limit])


def calibration_groups(
    prompts: list[str], surfaces: list[str], count: int, seed: int, vocabulary: Sequence[str] = ()
) -> list[list[str]]:
    """Each prompt with its surface variants and its surname-only form: one calibration or validation unit.

    With a ``vocabulary`` (the ``examples`` scope), also ``count`` copies with one or two words changed
    to words of it.
    """
    out = []
    for p in prompts:
        short = shorten_entities(p, surfaces)
        changed = changed_words(p, vocabulary, count, seed + 7919)
        out.append([p, *variants(p, count, seed + 7919), *([short] if short else []), *changed])
    return out


def replacement_words(texts: Sequence[str]) -> list[str]:
    """Content words of ``texts`` (four letters or more, no function words), sorted: fillers for changed words."""
    return sorted({w for t in texts for w in t.split() if len(w) >= 4 and w.isalpha() and w.lower() not in STOPWORDS})


@dataclass
class TrainingData:
    """Everything the fit, the selection and the calibration need, derived from the inputs."""

    splits: Splits
    pool_train: list[str]
    pool_val: list[str]
    pool_test: list[str]
    train_entities: list[Entity]
    all_entities: list[Entity]
    retain_entities: list[Entity]
    pool_names: list[str]
    hard_negatives: list[str]
    hard_val: list[str]
    hard_test: list[str]
    negative_surfaces: list[str]
    common: frozenset[str]


def given_entities(surfaces: Sequence[str], common: frozenset[str]) -> list[Entity]:
    """Entities named by the caller; a single ordinary word (``rogue``) is left to the n-grams, not matched."""
    out = []
    for surface in dict.fromkeys(s.strip() for s in surfaces if s and s.strip()):
        words = cached_words(surface)
        if words and not (len(words) == 1 and words[0] in common):
            out.append(Entity(words=words, surface=surface))
    return out


def _merged(*groups: Sequence[Entity]) -> list[Entity]:
    seen: dict[tuple[str, ...], Entity] = {}
    for group in groups:
        for entity in group:
            seen.setdefault(entity.words, entity)
    return list(seen.values())


def prepare(forget: list[str], retain: list[str], config: ClassifierConfig, hints: ScopeHints) -> TrainingData:
    """Split the inputs, mine entities, and drop pool sentences that mention a forget entity.

    Under the ``examples`` scope no entity is mined (only given ones are kept): the examples themselves
    are the evidence, not the names in them.
    """
    s = split_inputs(forget, retain, config)
    pool = load_pool()
    pool_words = [cached_words(t) for t in pool.train]
    common = common_words()
    named = given_entities([*hints.entities, *short_forms(hints.entities, common)], common)
    mine = config.scope == "topic"
    train_entities = _merged(
        named, mine_entities(s.pos_train, [[cached_words(t) for t in s.ret_train], pool_words], common) if mine else []
    )
    all_entities = _merged(
        named, mine_entities(forget, [[cached_words(t) for t in retain], pool_words], common) if mine else []
    )
    retain_entities = (mine_entities(s.ret_train, [[cached_words(t) for t in s.pos_train], pool_words], common)
                       if s.ret_train and mine else [])
    phrases = [e.words for e in all_entities]

    def keep(texts: Sequence[str]) -> list[str]:
        return [t for t in texts if not contains_any(cached_words(t), phrases)]

    pool_train = keep(pool.train)
    hard = _shuffled(keep(list(hints.negatives)), config.seed, "hard")
    n_held = round(config.retain_heldout_fraction * len(hard))
    forget_words = {w for e in all_entities for w in e.words}
    return TrainingData(
        splits=s, pool_train=pool_train, pool_val=keep(pool.validation), pool_test=keep(pool.test),
        train_entities=train_entities, all_entities=all_entities, retain_entities=retain_entities,
        pool_names=_pool_entities(pool_train, forget_words, max(20, len(train_entities)), config.seed),
        hard_negatives=hard[n_held:], hard_val=hard[: n_held // 2], hard_test=hard[n_held // 2 : n_held],
        negative_surfaces=[e for e in dict.fromkeys(hints.negative_entities) if e.strip()],
        common=common,
    )


@dataclass
class TrainingSet:
    """Texts, 0/1 labels and per-text sample weights for the logistic regression."""

    texts: list[str]
    labels: np.ndarray
    weights: np.ndarray


def training_set(d: TrainingData, config: ClassifierConfig) -> TrainingSet:
    """Positives, contrastive negatives (retain people, look-alike names), hard negatives and general negatives.

    The positives get half the total weight, the negatives the other half: the contrastive and general
    parts equally, the hard negatives (adjacent topics) ``hard_negative_share`` of the contrastive part.
    So words that the forget and retain prompts share (question templates) stay neutral however large
    the general pool is. Under the ``examples`` scope both sides also get changed-word copies, and the
    contrastive part (the other examples of the task) weighs as much as the positives.
    """
    s, k, seed = d.splits, config.variants_per_prompt, config.seed
    forget_surfaces = [e.surface for e in d.train_entities]
    retain_surfaces = [e.surface for e in d.retain_entities]
    positives = list(s.pos_train)
    positives += [v for p in s.pos_train for v in variants(p, k, seed)]
    positives += [x for p in s.pos_train if (x := shorten_entities(p, forget_surfaces))]
    positives += frames(forget_surfaces, config.frames_per_entity, seed)
    positives += frames(short_forms(forget_surfaces, d.common), max(1, config.frames_per_entity // 2), seed + 2)
    positives += in_context(s.pos_train + frames(forget_surfaces, 1, seed + 1), seed)
    vocabulary = replacement_words(d.pool_train) if config.scope == "examples" else []
    positives += [v for p in s.pos_train for v in changed_words(p, vocabulary, k, seed)]
    contrastive = list(s.ret_train)
    contrastive += [v for p in s.ret_train for v in variants(p, k, seed)]
    contrastive += [x for p in s.ret_train if (x := shorten_entities(p, retain_surfaces))]
    n_miss = config.near_misses_per_prompt
    contrastive += [x for p in s.pos_train for x in near_misses(p, forget_surfaces, n_miss, seed)]
    contrastive += frames(retain_surfaces, config.frames_per_entity, seed)
    contrastive += in_context(s.ret_train, seed)
    contrastive += [v for p in s.ret_train for v in changed_words(p, vocabulary, k, seed)]
    general = frames(d.pool_names, config.frames_per_entity, seed) + d.pool_train
    hard = d.hard_negatives + [v for p in d.hard_negatives for v in variants(p, 1, seed)]
    hard += frames(d.negative_surfaces, config.frames_per_entity, seed)
    hard += in_context(d.hard_negatives + frames(d.negative_surfaces, 1, seed + 1), seed)
    hard += ordinary_uses(forget_surfaces, d.common, d.pool_train, seed)
    share = config.hard_negative_share if hard else 0.0
    same_task = 2.0 if config.scope == "examples" else 1.0
    parts = [(positives, 1, 2.0), (contrastive, 0, same_task - share), (hard, 0, share), (general, 0, 1.0)]
    parts = [(part, label, mass) for part, label, mass in parts if part and mass > 0]
    texts = [t for part, _, _ in parts for t in part]
    labels = np.array([label for part, label, _ in parts for _ in part])
    weights = np.concatenate([np.full(len(part), mass / len(part)) for part, _, mass in parts])
    return TrainingSet(texts, labels, weights * len(texts) / weights.sum())



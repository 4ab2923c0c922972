"""Training data: input validation, deterministic splits, entity mining, augmented training sets."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lethe.classifier.augment import frames, near_misses, shorten_entities, variants
from lethe.classifier.config import ClassifierConfig, ClassifierTrainingError
from lethe.classifier.entities import Entity, capitalized_runs, contains_any, mine_entities
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


def split_inputs(forget: list[str], retain: list[str], config: ClassifierConfig, need_val: bool) -> Splits:
    """Seeded shuffles cut into parts; raises when the forget prompts cannot fill every part."""
    n = len(forget)
    if n < config.min_positives:
        raise ClassifierTrainingError(
            f"too few distinct forget prompts: {n} < min_positives={config.min_positives}")
    n_cal = max(config.min_calibration, round(config.calibration_fraction * n))
    n_val = max(2 if need_val else 0, round(config.validation_fraction * n))
    if n - n_cal - n_val < 3:
        raise ClassifierTrainingError(
            f"too few forget prompts ({n}) for {n_cal} calibration + {n_val} validation + >= 3 training prompts")
    pos = _shuffled(forget, config.seed, "forget")
    ret = _shuffled(retain, config.seed, "retain")
    n_held = round(config.retain_heldout_fraction * len(ret))
    n_rval = n_held // 2
    return Splits(
        pos_cal=pos[:n_cal], pos_val=pos[n_cal : n_cal + n_val], pos_train=pos[n_cal + n_val :],
        ret_val=ret[:n_rval], ret_test=ret[n_rval:n_held], ret_train=ret[n_held:],
    )


def _pool_entities(pool_texts: Sequence[str], exclude: set[str], limit: int, seed: int) -> list[str]:
    """Capitalized names from the general pool to use as negative frame fillers."""
    found = {s for t in pool_texts for s in capitalized_runs(t) if 2 <= len(s.split()) <= 3}
    found = {s for s in found if not (set(cached_words(s)) & exclude)}
    return sorted(_shuffled(sorted(found), seed, "pool-entities")[:limit])


def calibration_groups(prompts: list[str], surfaces: list[str], count: int, seed: int) -> list[list[str]]:
    """Each prompt with its surface variants and its surname-only form: one calibration or validation unit."""
    out = []
    for p in prompts:
        short = shorten_entities(p, surfaces)
        out.append([p, *variants(p, count, seed + 7919), *([short] if short else [])])
    return out


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


def prepare(forget: list[str], retain: list[str], config: ClassifierConfig, need_val: bool) -> TrainingData:
    """Split the inputs, mine entities, and drop pool sentences that mention a forget entity."""
    s = split_inputs(forget, retain, config, need_val)
    pool = load_pool()
    pool_words = [cached_words(t) for t in pool.train]
    common = common_words()
    train_entities = mine_entities(s.pos_train, [[cached_words(t) for t in s.ret_train], pool_words], common)
    all_entities = mine_entities(forget, [[cached_words(t) for t in retain], pool_words], common)
    retain_entities = (mine_entities(s.ret_train, [[cached_words(t) for t in s.pos_train], pool_words], common)
                       if s.ret_train else [])
    phrases = [e.words for e in all_entities]

    def keep(texts: Sequence[str]) -> list[str]:
        return [t for t in texts if not contains_any(cached_words(t), phrases)]

    pool_train = keep(pool.train)
    forget_words = {w for e in all_entities for w in e.words}
    return TrainingData(
        splits=s, pool_train=pool_train, pool_val=keep(pool.validation), pool_test=keep(pool.test),
        train_entities=train_entities, all_entities=all_entities, retain_entities=retain_entities,
        pool_names=_pool_entities(pool_train, forget_words, max(20, len(train_entities)), config.seed),
    )


@dataclass
class TrainingSet:
    """Texts, 0/1 labels and per-text sample weights for the logistic regression."""

    texts: list[str]
    labels: np.ndarray
    weights: np.ndarray


def training_set(d: TrainingData, config: ClassifierConfig) -> TrainingSet:
    """Positives, contrastive negatives (retain people, look-alike names) and general negatives.

    Each of the three parts gets the same total weight, so words that the forget and retain prompts
    share (question templates) stay neutral however large the general pool is.
    """
    s, k, seed = d.splits, config.variants_per_prompt, config.seed
    forget_surfaces = [e.surface for e in d.train_entities]
    retain_surfaces = [e.surface for e in d.retain_entities]
    positives = list(s.pos_train)
    positives += [v for p in s.pos_train for v in variants(p, k, seed)]
    positives += [x for p in s.pos_train if (x := shorten_entities(p, forget_surfaces))]
    positives += frames(forget_surfaces, config.frames_per_entity, seed)
    contrastive = list(s.ret_train)
    contrastive += [v for p in s.ret_train for v in variants(p, k, seed)]
    contrastive += [x for p in s.ret_train if (x := shorten_entities(p, retain_surfaces))]
    n_miss = config.near_misses_per_prompt
    contrastive += [x for p in s.pos_train for x in near_misses(p, forget_surfaces, n_miss, seed)]
    contrastive += frames(retain_surfaces, config.frames_per_entity, seed)
    general = frames(d.pool_names, config.frames_per_entity, seed) + d.pool_train
    parts = [(positives, 1), (contrastive, 0), (general, 0)]
    texts = [t for part, _ in parts for t in part]
    labels = np.array([label for part, label in parts for _ in part])
    weights = np.concatenate([np.full(len(part), 1.0 / len(part)) for part, _ in parts if part])
    return TrainingSet(texts, labels, weights * len(texts) / weights.sum())



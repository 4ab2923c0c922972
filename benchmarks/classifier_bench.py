"""Scope-classifier benchmark: latency per prompt on one CPU core, recall and FPR on held-out data.

Run with ``python -m benchmarks.classifier_bench``; ``main()`` also returns the figures as a dict.
Trains on each fictitious-authors world (test and bench sizes): forget questions are positives,
retain questions negatives.  Held-out evaluation: paraphrased forget questions (recall); retain
paraphrases, held-out people's questions, the world's general rows and the shipped pool's test part (FPR).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from lethe.benchmarks.authors_world import WorldConfig, build_world
from lethe.classifier import ClassifierConfig, ScopeClassifier, classify_messages, train_scope_classifier
from lethe.classifier.augment import variants
from lethe.classifier.pool import load_pool

WORLDS: dict[str, Callable[[], WorldConfig]] = {"test": WorldConfig.test, "bench": WorldConfig.bench}
MIN_LATENCY_SAMPLES = 3000


@contextmanager
def single_core() -> Iterator[None]:
    """Pin this process to one CPU and one BLAS/OpenMP/torch thread; restore everything afterwards."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if affinity:
        try:
            os.sched_setaffinity(0, {min(affinity)})
        except OSError:
            affinity = None
    torch = sys.modules.get("torch")  # the classifier never imports torch; pin it only if a caller did
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=1)
    except ImportError:
        limiter = None
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        if torch is not None and torch_threads is not None:
            torch.set_num_threads(torch_threads)
        if affinity:
            os.sched_setaffinity(0, affinity)


def _percentiles(samples_ns: list[int], prefix: str = "") -> dict[str, float]:
    us = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return {f"{prefix}p50_us": float(np.percentile(us, 50)), f"{prefix}p99_us": float(np.percentile(us, 99)),
            f"{prefix}mean_us": float(us.mean())}


def _latency(fn: Callable[[Any], object], inputs: list[Any]) -> dict[str, float]:
    """Wall-clock and this thread's CPU time per call (CPU time is immune to other processes on the core)."""
    for item in inputs[:50]:
        fn(item)
    wall: list[int] = []
    cpu: list[int] = []
    rounds = max(1, -(-MIN_LATENCY_SAMPLES // max(1, len(inputs))))
    for _ in range(rounds):
        for item in inputs:
            start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
            fn(item)
            cpu.append(time.thread_time_ns() - start_cpu)
            wall.append(time.perf_counter_ns() - start)
    return _percentiles(wall) | _percentiles(cpu, "cpu_")


def _cold_latency(model: ScopeClassifier, texts: list[str]) -> dict[str, float]:
    """Each text scored once right after the per-word caches are cleared (words repeated across texts still hit)."""
    model.clear_caches()
    wall: list[int] = []
    cpu: list[int] = []
    for text in texts:
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        model.score(text)
        cpu.append(time.thread_time_ns() - start_cpu)
        wall.append(time.perf_counter_ns() - start)
    return _percentiles(wall) | _percentiles(cpu, "cpu_")


def _robustness(model: ScopeClassifier, world: Any) -> dict[str, float]:
    """Recall on noisy forms of the held-out paraphrases and FPR on the held-out people's describe prompts."""
    rows = world.rows("forget")
    paraphrases = [(r["person"], p) for r in rows for p in r["paraphrased_prompts"]]
    noisy = [v for _, p in paraphrases for v in variants(p, 3, seed=20240611)]
    surname = [p.replace(person, person.split()[-1]) for person, p in paraphrases]
    lower = [p.lower() for _, p in paraphrases]
    describe_neg = [r["describe_prompt"] for r in world.rows("heldout") + world.rows("retain")]
    return {
        "recall_noisy_variants": float(np.mean([model.is_flagged(t) for t in noisy])),
        "recall_lowercase": float(np.mean([model.is_flagged(t) for t in lower])),
        "recall_surname_only": float(np.mean([model.is_flagged(t) for t in surname])),
        "fpr_describe_prompts": float(np.mean([model.is_flagged(t) for t in describe_neg])),
    }


def _rows(world: Any, split: str, key: str) -> list[str]:
    rows = world.rows(split)
    if key == "prompt":
        return [r["prompt"] for r in rows]
    return [p for r in rows for p in r["paraphrased_prompts"]]


def bench_world(name: str, config: ClassifierConfig | None = None) -> dict[str, Any]:
    """Train on one world and measure held-out recall/FPR and single-core latency."""
    world = build_world(WORLDS[name]())
    forget, retain = _rows(world, "forget", "prompt"), _rows(world, "retain", "prompt")
    start = time.perf_counter()
    model = train_scope_classifier(forget, retain, config)
    train_s = time.perf_counter() - start
    positives = _rows(world, "forget", "paraphrased_prompts")
    negative_sets = {
        "retain_paraphrases": _rows(world, "retain", "paraphrased_prompts"),
        "heldout_people": _rows(world, "heldout", "prompt") + _rows(world, "heldout", "paraphrased_prompts"),
        "general": _rows(world, "general", "prompt") + list(load_pool().test),
    }
    flagged = {k: [model.is_flagged(t) for t in v] for k, v in negative_sets.items()}
    all_negatives = [f for v in flagged.values() for f in v]
    recall = float(np.mean([model.is_flagged(t) for t in positives]))
    eval_texts = positives + [t for v in negative_sets.values() for t in v]
    person = world.rows("forget")[0]["person"]
    chat = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Tell me about {person}."},
            {"role": "assistant", "content": "What would you like to know?"},
            {"role": "user", "content": "Where was she born?"}]
    with single_core():
        cold_latency = _cold_latency(model, eval_texts)
        score_latency = _latency(model.score, eval_texts)
        flagged_texts = [t for t in positives if model.is_flagged(t)] or positives
        chat_latency = _latency(lambda m: classify_messages({"f": model}, m), [chat] * 200)
        span_latency = _latency(lambda t: classify_messages({"f": model}, [{"role": "user", "content": t}]),
                                flagged_texts)
    cal = model.calibration()
    return {
        "world": name,
        "forget_prompts": len(forget),
        "retain_prompts": len(retain),
        "train_seconds": round(train_s, 2),
        "threshold": cal["threshold"],
        "calibration_size": cal["calibration_size"],
        "recall_bound": cal["recall_bound"],
        "guarantee_met": cal["guarantee_met"],
        "calibration_heldout_fpr": cal["heldout_fpr"],
        "heldout_recall": recall,
        "heldout_positives": len(positives),
        "heldout_fpr": float(np.mean(all_negatives)),
        "heldout_negatives": len(all_negatives),
        "fpr_by_source": {k: float(np.mean(v)) if v else None for k, v in flagged.items()},
        "robustness": _robustness(model, world),
        "latency_score": score_latency,
        "latency_score_cold": cold_latency,
        "latency_flagged_prompt_with_spans": span_latency,
        "latency_four_message_chat": chat_latency,
        "sparse_weights": int(model.head.sparse_index.size),
        "weight_bytes": model.head.nbytes,
    }


def _print(result: dict[str, Any]) -> None:
    lat = result["latency_score"]
    print(f"[{result['world']}] forget={result['forget_prompts']} retain={result['retain_prompts']} "
          f"train={result['train_seconds']}s threshold={result['threshold']:.4f} "
          f"n_cal={result['calibration_size']} bound={result['recall_bound']:.3f}")
    print(f"  held-out recall {result['heldout_recall']:.4f} on {result['heldout_positives']} paraphrases; "
          f"FPR {result['heldout_fpr']:.4f} on {result['heldout_negatives']} negatives "
          + ", ".join(f"{k}={v:.4f}" for k, v in result["fpr_by_source"].items() if v is not None))
    print(f"  latency per prompt (1 core): p50 {lat['p50_us']:.1f} us, p99 {lat['p99_us']:.1f} us "
          f"(CPU time p50 {lat['cpu_p50_us']:.1f} us, p99 {lat['cpu_p99_us']:.1f} us); "
          f"flagged prompt + spans p50 {result['latency_flagged_prompt_with_spans']['p50_us']:.1f} us; "
          f"4-message chat p50 {result['latency_four_message_chat']['p50_us']:.1f} us")
    cold = result["latency_score_cold"]
    print(f"  cold caches: p50 {cold['p50_us']:.1f} us, p99 {cold['p99_us']:.1f} us "
          f"(CPU p50 {cold['cpu_p50_us']:.1f} us)")
    print("  robustness: " + ", ".join(f"{k}={v:.4f}" for k, v in result["robustness"].items()))


def main(worlds: tuple[str, ...] = ("test", "bench")) -> dict[str, Any]:
    """Run the benchmark on each world, print a summary, and return the figures."""
    results = {name: bench_world(name) for name in worlds}
    for result in results.values():
        _print(result)
    floor_ok = all(r["latency_score"]["p50_us"] <= 1000.0 for r in results.values())
    print(f"p50 <= 1 ms floor: {'met' if floor_ok else 'MISSED'}")
    return {"worlds": results, "p50_floor_met": floor_ok,
            "median_p50_us": statistics.median(r["latency_score"]["p50_us"] for r in results.values())}


if __name__ == "__main__":
    main()

"""Screening cost with many live forget sets: latency per prompt and resident memory per set.

``python -m lethe.benchmarks.screening_bench [--sets 1 100 1000] [--artifact DIR]``

Loads one forget-set artifact (default: the shipped demo; ``--artifact`` for another) and puts ``N``
copies of it under distinct ids into one ``ForgetSetScreen``, as an operator with ``N`` deletion
requests would have. Each copy is a full artifact (its own classifier head, entities and manifest), so
the stacked weights grow with ``N``; every copy shares the buckets of the shared feature space, which
is the worst case for the sparse product. Measured on one CPU thread: the screen's classification of
20-word and 300-word prompts (p50/p99 over repeated calls, caches warm as in serving), the resident
memory added per set, and the bank's own bytes.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from lethe.runtime.artifact import ForgetSetArtifact
from lethe.runtime.screening import ForgetSetScreen

SHORT = "Who was the headmaster of the school when the boy with the scar arrived, and what did he teach?"
LONG_SENTENCE = (
    "Yesterday I walked along the river with my sister and we talked about her new job at the library, "
    "the garden she is planting, and the trip we want to take in the spring. "
)


def rss_bytes() -> int:
    """Resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _copies(artifact: ForgetSetArtifact, count: int) -> list[ForgetSetArtifact]:
    out = []
    for index in range(count):
        clone = copy.copy(artifact)
        clone.manifest = artifact.manifest.model_copy(update={"id": f"bench-{index:05d}"})
        clone.classifier = copy.copy(artifact.classifier)
        clone.classifier.head = copy.deepcopy(artifact.classifier.head)
        out.append(clone)
    return out


def _latency_us(screen: ForgetSetScreen, text: str, repeats: int) -> dict[str, float]:
    messages = [{"role": "user", "content": text}]
    screen.classify(messages)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        screen.classify(messages)
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return {"p50_us": statistics.median(samples), "p99_us": samples[min(len(samples) - 1, int(0.99 * len(samples)))]}


def run(artifact_dir: Path, set_counts: list[int], repeats: int) -> dict[str, Any]:
    """Latency and memory per set count."""
    torch.set_num_threads(1)
    artifact = ForgetSetArtifact.load(artifact_dir)
    long_text = (LONG_SENTENCE * 12)[: len(LONG_SENTENCE) * 12]
    words = {"short": len(SHORT.split()), "long": len(long_text.split())}
    results: dict[str, Any] = {"artifact": str(artifact_dir), "words": words, "sets": {}}
    for count in set_counts:
        gc.collect()
        before = rss_bytes()
        screen = ForgetSetScreen(_copies(artifact, count))
        gc.collect()
        added = rss_bytes() - before
        bank = screen._state[1]  # the one bank every request is scored against
        results["sets"][count] = {
            "short": _latency_us(screen, SHORT, repeats),
            "long": _latency_us(screen, long_text, max(20, repeats // 4)),
            "rss_added_mb": round(added / 2**20, 1),
            "rss_per_set_mb": round(added / count / 2**20, 3),
            "bank_mb": round(bank.nbytes / 2**20, 1),
        }
        del screen
    return results


def markdown(results: dict[str, Any]) -> str:
    """The README table."""
    words = results["words"]
    rows = [
        f"| live forget sets | {words['short']}-word prompt p50 / p99 | {words['long']}-word prompt p50 / p99 "
        "| resident memory per set | stacked weights |",
        "|---|---|---|---|---|",
    ]
    for count, figures in results["sets"].items():
        short, long = figures["short"], figures["long"]
        rows.append(
            f"| {count} | {short['p50_us'] / 1000:.2f} / {short['p99_us'] / 1000:.2f} ms "
            f"| {long['p50_us'] / 1000:.2f} / {long['p99_us'] / 1000:.2f} ms | {figures['rss_per_set_mb']:.2f} MB "
            f"| {figures['bank_mb']:.0f} MB |"
        )
    return "\n".join(rows) + "\n"


def main() -> None:
    """Run from the command line and print JSON and the table."""
    from lethe.training.demo import SHIPPED_DEMO

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=SHIPPED_DEMO)
    parser.add_argument("--sets", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None, help="folder for screening.json and screening.md")
    args = parser.parse_args()
    results = run(args.artifact, args.sets, args.repeats)
    table = markdown(results)
    print(json.dumps(results, indent=1))
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "screening.json").write_text(json.dumps(results, indent=1))
        (args.out / "screening.md").write_text(table)


if __name__ == "__main__":
    main()

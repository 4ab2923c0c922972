"""``lethe probe (--demo | --forget-set DIR ...) --out DIR``: the knowledge probes, base model against forget sets.

Writes ``probe.json`` (every answer, per probe, base and through the forget sets) and
``probe.md`` (the summary table the README carries). With ``--demo`` the Harry Potter demo
forget set is the shipped one, a cached build or a new build (its source and time are recorded).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from lethe.runtime.settings import RuntimeSettings


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``lethe probe``."""
    parser = commands.add_parser(
        "probe",
        help="Harry Potter and general knowledge probes, base model against forget sets",
        description="Answer the shipped probes on the base model and through forget sets; writes probe.json/.md.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo", action="store_true", help="the Harry Potter demo forget set (built if not cached)")
    source.add_argument("--forget-set", type=Path, nargs="+", help="forget-set folders to apply")
    parser.add_argument("--model", help="model name or path (LETHE_MODEL, default smollm2)")
    parser.add_argument("--out", type=Path, required=True, help="folder for probe.json and probe.md")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lethe.benchmarks.probe_eval import compare_probes
    from lethe.runtime.artifact import ForgetSetArtifact
    from lethe.runtime.model import LanguageModel
    from lethe.runtime.screening import ForgetSetScreen

    settings = RuntimeSettings.from_args(args, model=args.model)
    model = LanguageModel.load(settings.model, settings, progress=True)
    build: dict[str, Any] = {}
    if args.demo:
        from lethe.training.demo import load_or_build_demo

        started = time.perf_counter()
        artifact, source = load_or_build_demo(settings, model)
        artifacts = [artifact]
        build = {"source": source, "load_or_build_s": round(time.perf_counter() - started, 1)}
    else:
        artifacts = [ForgetSetArtifact.load(f, model.fingerprint, model.hidden_size) for f in args.forget_set]
    started = time.perf_counter()
    result = compare_probes(model, ForgetSetScreen(artifacts), args.max_new_tokens)
    result["meta"] = {
        "model": model.name,
        "forget_sets": [a.id for a in artifacts],
        "max_new_tokens": args.max_new_tokens,
        "demo_build": build,
        "probe_s": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "threads": settings.threads, "python": platform.python_version()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    table = probe_markdown(result)
    (args.out / "probe.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"wrote {args.out / 'probe.json'}", file=sys.stderr)
    return 0


def probe_markdown(result: dict[str, Any]) -> str:
    """The probe summary: keyword share per question kind, flag rate, distinct-2 and perplexity, base against Lethe."""
    rows = ["| probe | system | keyword share | by kind | flag rate | distinct-2 | base perplexity |", "|---" * 7 + "|"]
    for probe in ("harry_potter", "general"):
        for system in ("base", "lethe"):
            figures = result[probe][system]
            kinds = ", ".join(f"{k} {v:.2f}" for k, v in figures["keyword_share_by_kind"].items())
            rows.append(
                f"| {probe} | {system} | {figures['keyword_share']:.3f} | {kinds} | {figures['flag_rate']:.2f} "
                f"| {figures['distinct_2']:.3f} | {figures['base_perplexity']:.2f} |"
            )
    summary = result["summary"]
    rows.append("")
    rows.append(
        f"Harry Potter share {summary['hp_share_base']:.3f} -> {summary['hp_share_lethe']:.3f} "
        f"(ratio {summary['hp_ratio']:.2f}, goal <= 0.25); general {summary['general_share_base']:.3f} -> "
        f"{summary['general_share_lethe']:.3f} (change {summary['general_relative_change']:+.1%}, goal within 5%)."
    )
    return "\n".join(rows) + "\n"

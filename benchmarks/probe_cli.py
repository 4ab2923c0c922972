"""``lethe probe (--demo | --forget-set DIR ...) --out DIR``: held-out scope and knowledge, base against forget sets.

Writes ``probe.json`` (the scope figures per probe and kind; every answer, base and through the forget
sets) and ``probe.md`` (the tables the README carries). The probes are the held-out ones
(``benchmarks/probes/heldout/*_test.jsonl``, written without reading the builder). With ``--demo`` the
Harry Potter demo forget set is the shipped one, a cached build or a new build (its source is recorded).
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
    parser.add_argument("--scope-only", action="store_true", help="only the scope figures (no generation)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lethe.benchmarks.probe_eval import compare_probes
    from lethe.benchmarks.scope_eval import scope_report
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
    screen = ForgetSetScreen(artifacts)
    result: dict[str, Any] = {"scope": scope_report(screen)}
    if not args.scope_only:
        result["knowledge"] = compare_probes(model, screen, args.max_new_tokens)
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
    """The scope table (recall / false-positive rate per kind) and the knowledge table, base against Lethe."""
    from lethe.benchmarks.scope_eval import scope_markdown

    parts = ["### Scope on held-out probes\n", scope_markdown(result["scope"])]
    knowledge = result.get("knowledge")
    if knowledge:
        rows = ["| probe | system | keyword share | flag rate | loop rate | distinct-2 | base perplexity |",
                "|---" * 7 + "|"]  # fmt: skip
        for probe in (k for k in knowledge if k != "summary"):
            for system in ("base", "lethe"):
                f = knowledge[probe][system]
                rows.append(
                    f"| {probe} | {system} | {f['keyword_share']:.3f} | {f['flag_rate']:.3f} "
                    f"| {f['loop_rate']:.3f} | {f['distinct_2']:.3f} | {f['base_perplexity']:.2f} |"
                )
        s = knowledge["summary"]
        rows.append("")
        rows.append(
            f"Topic keyword share {s['topic_share_base']:.3f} -> {s['topic_share_lethe']:.3f} "
            f"(ratio {s['topic_ratio']:.2f}, goal <= 0.25); general {s['general_share_base']:.3f} -> "
            f"{s['general_share_lethe']:.3f} (change {s['general_change']:+.3f}, goal within 0.05); loop rate of "
            f"flagged answers {s['flagged_loop_rate'] if s['flagged_loop_rate'] is not None else float('nan'):.3f} "
            f"(goal <= 0.02); base-model perplexity of the answers {s['perplexity_base']:.2f} -> "
            f"{s['perplexity_lethe']:.2f} (ratio {s['perplexity_ratio']:.2f}, goal <= 1.5)."
        )
        parts += ["\n### Knowledge on held-out probes (greedy answers)\n", "\n".join(rows) + "\n"]
    return "\n".join(parts)

"""``lethe reliability [--quick] --out DIR``: the reliability and security report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``lethe reliability``."""
    parser = commands.add_parser("reliability", help="load, fault, fuzzing and evasion figures (JSON + Markdown)")
    parser.add_argument("--quick", action="store_true", help="a smaller run (a few minutes)")
    parser.add_argument("--out", type=Path, required=True, help="folder for reliability.json and reliability.md")
    parser.add_argument(
        "--parts", help="comma-separated parts to run: load, fuzz, hostile, kill9, evasion (default: all)"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lethe.benchmarks.reliability import PARTS, run_reliability

    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip()) if args.parts else PARTS
    report = run_reliability(args.out, quick=args.quick, parts=parts)
    summary = {
        "lost": report.get("load_local", {}).get("lost"),
        "p50_s": report.get("load_local", {}).get("latency_p50_s"),
        "fuzz_requests": report.get("fuzz", {}).get("requests"),
        "fuzz_5xx": report.get("fuzz", {}).get("server_errors"),
        "schemathesis_cases_with_body": report.get("schemathesis", {}).get("cases_with_body"),
        "schemathesis_5xx": report.get("schemathesis", {}).get("server_errors"),
        "rss_growth_mb": report.get("memory_distinct_prompts", {}).get("growth_mb"),
        "kill9_job": report.get("kill9_during_training", {}).get("job_state_after_restart"),
    }
    print(json.dumps(summary))
    print(f"report: {args.out / 'reliability.md'}")
    failed = summary["lost"] or summary["fuzz_5xx"] or summary["schemathesis_5xx"]
    innocent = report.get("degenerate_temperature", {})
    return 1 if failed or innocent.get("innocent_answered", 6) < innocent.get("innocent", 6) else 0

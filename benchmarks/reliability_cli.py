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
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lethe.benchmarks.reliability import run_reliability

    report = run_reliability(args.out, quick=args.quick)
    summary = {
        "lost": report["load_local"]["lost"],
        "p50_s": report["load_local"]["latency_p50_s"],
        "fuzz_requests": report["fuzz"]["requests"],
        "fuzz_5xx": report["fuzz"]["server_errors"],
        "kill9_job": report["kill9_during_training"]["job_state_after_restart"],
    }
    print(json.dumps(summary))
    print(f"report: {args.out / 'reliability.md'}")
    return 0 if summary["lost"] == 0 and summary["fuzz_5xx"] == 0 else 1

"""``lethe bench [--quick] --out DIR [--scenarios ...]``: run the unlearning benchmark and write its report."""

from __future__ import annotations

import argparse
import sys
import time

from lethe.runtime.settings import RuntimeSettings


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``bench`` sub-command."""
    from lethe.benchmarks.bench import SCENARIOS

    parser = commands.add_parser(
        "bench",
        help="benchmark unlearning quality, utility and cost against other methods",
        description="Run the unlearning benchmark; writes results.json, results.md and PNG plots to --out.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="test-sized world and small budgets (< 10 min, 2 cores)")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=SCENARIOS,
        help="scenarios to run (default: all; with --quick: authors and spul_examples, the SmolLM2 ones take longer)",
    )
    parser.add_argument("--methods", nargs="+", help="only these methods (default: every method of each scenario)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-lr", type=float, help="learning rate of the weight-updating baselines")
    parser.add_argument("--baseline-epochs", type=int, help="epochs of the weight-updating baselines")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lethe.benchmarks.bench import run_bench
    from lethe.benchmarks.report import markdown

    settings = RuntimeSettings.from_args(args)
    if settings.threads <= 0:
        # One thread: OpenMP spin-waits make two threads slower on a shared, oversubscribed machine.
        settings = settings.model_copy(update={"threads": 1})
    started = time.perf_counter()
    baseline = {k: v for k, v in (("lr", args.baseline_lr), ("epochs", args.baseline_epochs)) if v is not None}
    results = run_bench(args.out, args.quick, args.scenarios, args.seed, settings, args.methods, baseline=baseline)
    print(markdown(results))
    print(f"wrote {args.out}/results.json in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0

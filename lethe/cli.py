"""The ``lethe`` command line: one entry point, each sub-command registered by the module that owns it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Register = Callable[[argparse._SubParsersAction], None]


def _registrations() -> list[Register]:
    from lethe.benchmarks import cli as bench_cli
    from lethe.benchmarks import probe_cli, reliability_cli
    from lethe.runtime import cli as runtime_cli
    from lethe.service import report_cli, serve_cli
    from lethe.training import cli as training_cli

    modules = (runtime_cli, training_cli, serve_cli, report_cli, bench_cli, reliability_cli, probe_cli)
    return [module.register for module in modules]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="lethe", description="Inference-time unlearning gateway for LLMs.")
    parser.add_argument("--home", help="cache folder for prepared models (LETHE_HOME, default ~/.cache/lethe)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (LETHE_THREADS)")
    parser.add_argument(
        "--device", help="where models run: auto (CUDA when present; the default), cpu, cuda or cuda:N (LETHE_DEVICE)"
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="weights' dtype: auto is bfloat16 on CUDA, float32 on the CPU (LETHE_DTYPE)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for register in _registrations():
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lethe`` command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"lethe: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

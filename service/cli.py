"""The ``lethe`` command line: one entry point, each sub-command registered by the module that owns it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from runtime.settings import LetheSettings

Register = Callable[[argparse._SubParsersAction], None]


def _registrations() -> list[Register]:
    from runtime.cli import register as runtime_commands

    registrations: list[Register] = [runtime_commands]
    for module_name in (
        "training.cli",
        "service.serve_cli",
        "benchmarks.cli",
        "benchmarks.reliability_cli",
        "benchmarks.probe_cli",
    ):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        registrations.append(module.register)
    return registrations


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="lethe", description="Inference-time unlearning gateway for LLMs.")
    parser.add_argument("--home", help="cache folder for prepared models (LETHE_HOME, default ~/.cache/lethe)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (LETHE_THREADS)")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in _registrations():
        register(commands)
    return parser


def settings_from_args(args: argparse.Namespace, **overrides: object) -> LetheSettings:
    """Settings from the environment, with the global flags and ``overrides`` (non-None) on top."""
    values = {"home": getattr(args, "home", None), "threads": getattr(args, "threads", None), **overrides}
    return LetheSettings(**{k: v for k, v in values.items() if v is not None})


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

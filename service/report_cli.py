"""``lethe report verify FILE``: check a verification report's signature (exit 0 valid, 1 altered, 2 no key/file)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lethe.service.report_signing import REPORT_KEY_FILE, ReportSigner


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``lethe report``."""
    report = commands.add_parser("report", help="verification reports of forget sets")
    actions = report.add_subparsers(dest="report_command", required=True)
    verify = actions.add_parser(
        "verify",
        help="check that a report (JSON or HTML) is unaltered",
        description="Check the HMAC of a report saved from GET /admin/forget-sets/{id}/report(.html). The key is "
        "--key-file, else LETHE_REPORT_KEY, else <registry>/report.key.",
    )
    verify.add_argument("file", type=Path, help="report.json or report.html")
    verify.add_argument("--key-file", type=Path, help="a report key file (hex), such as <registry>/report.key")
    verify.add_argument("--registry", type=Path, help="the gateway's registry folder (default: LETHE_REGISTRY)")
    verify.set_defaults(handler=_verify)


def _signer(args: argparse.Namespace) -> ReportSigner:
    if args.key_file is not None:
        return ReportSigner(bytes.fromhex(args.key_file.read_text().strip()))
    configured = os.environ.get("LETHE_REPORT_KEY", "")
    if configured:
        return ReportSigner(configured.encode())
    if args.registry is None:
        from lethe.service.registry_settings import RegistrySettings

        registry = RegistrySettings().registry
        if not isinstance(registry, Path):
            raise FileNotFoundError("with a PostgreSQL registry, give --key-file or LETHE_REPORT_KEY")
        args.registry = registry
    path = args.registry.expanduser() / REPORT_KEY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no report key at {path}: give --key-file, --registry or LETHE_REPORT_KEY")
    return ReportSigner(bytes.fromhex(path.read_text().strip()))


def _verify(args: argparse.Namespace) -> int:
    try:
        signer = _signer(args)
        data = args.file.read_bytes()
    except (OSError, ValueError) as exc:
        print(f"lethe report verify: {exc}", file=sys.stderr)
        return 2
    valid, message = signer.verify(data)
    print(f"{args.file}: {message}", file=sys.stdout if valid else sys.stderr)
    return 0 if valid else 1

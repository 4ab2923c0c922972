"""Quiet breaks the tests must catch: apply each to a copy of the tree, run its guarding tests, expect a failure.

``python -m lethe.benchmarks.mutation_check [--only NAME ...] [--out DIR]`` copies the tracked files into a
temporary folder, makes the copy importable as ``lethe`` ahead of the installed checkout (a package folder
of links on ``PYTHONPATH``, which the test processes and the servers they start inherit), applies one
mutation (an exact text replacement that must occur once) and runs the tests named for it. A mutation
that leaves every guarding test passing *survived*: the command prints a table and exits 1.

The mutations are the quiet breaks an audit found passing every guarding test (faint noise on unflagged
prompts, a proxy that drops ``seed``, an admin API left open with keys but no admin key, token ids in
the audit log) and one break of each guarantee the README makes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lethe.benchmarks.server_harness import copy_tracked, package_shim

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """A quiet break: in ``path``, ``old`` becomes ``new``; ``tests`` must fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "faint-noise-on-unflagged-prompts", "runtime/model.py",
        "        return apply_plan(embeds, plan, ids) if plan is not None else embeds",
        "        if plan is None:\n            embeds = embeds.clone()\n            embeds[:, :8] += 0.05\n"
        "            return embeds\n        return apply_plan(embeds, plan, ids)",
        ("tests/test_guarantees.py::test_unflagged_echo_logprobs_are_the_base_models_bits",),
        "unflagged requests are served from the base model's own embeddings",
    ),
    Mutation(
        "proxy-reserializes-and-drops-seed", "service/passthrough.py",
        "    response = await upstream.pool.post(path, body, forwardable(headers))",
        "    import json as _json\n\n    parsed = _json.loads(body)\n    parsed.pop('seed', None)\n"
        "    response = await upstream.pool.post(path, _json.dumps(parsed).encode(), forwardable(headers))",
        ("tests/test_guarantees.py::test_the_upstream_sees_an_unflagged_clients_exact_bytes",),
        "proxy mode forwards unflagged requests unchanged",
    ),
    Mutation(
        "admin-open-with-keys-but-no-admin-key", "service/auth.py",
        "        if self.admin_key is None:\n            raise APIError(",
        "        if self.admin_key is None:\n            return\n            raise APIError(",
        ("tests/test_guarantees.py::test_every_key_layout_against_every_route_group",),
        "with API keys and no admin key, the admin API and /metrics are disabled",
    ),
    Mutation(
        "audit-records-token-ids", "service/inference_audit.py",
        "                prompt_tokens=item.prompt_tokens,",
        "                prompt_tokens=item.prompt_tokens,\n"
        "                prompt_ids=list(item.prompt.ids) if item.prompt is not None else [],",
        ("tests/test_guarantees.py::test_audit_lines_hold_no_text_and_no_token_ids",),
        "the audit log never holds a prompt's text or token ids",
    ),
    Mutation(
        "classifier-bank-scores-one-set-only", "classifier/bank.py",
        "        out = self.intercepts.copy()",
        "        out = self.intercepts.copy()\n        out[1:] = -1e9",
        ("tests/test_classifier.py::test_several_forget_sets_at_once",),
        "several forget sets are screened at once",
    ),
    Mutation(
        "artifact-for-another-model-accepted", "runtime/artifact.py",
        '        expected = self.manifest.base_model.fingerprint\n        if expected != fingerprint:',
        '        expected = self.manifest.base_model.fingerprint\n        if False:',
        ("tests/test_proxy.py::test_import_hostile_archives_are_refused_and_change_nothing",),
        "an artifact trained for another base model is refused",
    ),
    Mutation(
        "entity-mentions-left-alone-in-answers", "runtime/interventions.py",
        "        for entity in plan.entities:\n            out = corrupt_mentions(out, ids, entity)",
        "        for entity in plan.entities:\n            out = corrupt_mentions(out, ids[: len(ids) // 2], entity)"
        " if False else out",
        ("tests/test_runtime.py::test_entity_steps_reach_every_mention_in_prompt_and_answer",),
        "forget entities are corrupted wherever they occur, answers included",
    ),
    Mutation(
        "surrogate-names-shown-to-the-user", "runtime/generation.py",
        "    for surrogate, original in pairs:\n        text = text.replace(surrogate, original)",
        "    for surrogate, original in pairs:\n        text = text",
        ("tests/test_proxy.py::test_surrogate_names_are_written_back_across_stream_chunks",),
        "a substituted answer never shows the surrogate's name",
    ),
    Mutation(
        "failed-save-leaves-a-half-written-folder", "classifier/storage.py",
        "    finally:\n        if staging.exists():\n            shutil.rmtree(staging, ignore_errors=True)",
        "    finally:\n        pass",
        ("tests/test_classifier.py::test_failed_save_leaves_nothing",),
        "a failed write never leaves a half-written artifact",
    ),
)


def run_one(mutation: Mutation, timeout: float) -> dict[str, object]:
    """Apply one mutation to a fresh copy and run its tests; ``caught`` when they fail."""
    with tempfile.TemporaryDirectory(prefix="lethe-mutation-") as tmp:
        tree = copy_tracked(REPO, Path(tmp) / "tree")
        shim = package_shim(tree, Path(tmp))
        target = tree / mutation.path
        text = target.read_text()
        if text.count(mutation.old) != 1:
            return {"name": mutation.name, "status": "not applied", "why": mutation.why}
        target.write_text(text.replace(mutation.old, mutation.new))
        # PYTHONSAFEPATH: no process (pytest, the servers it starts) puts its working folder first on the import path,
        # where the copy's lethe/ would shadow the shim and leave every other layer to the unmutated checkout.
        env = {**os.environ, "PYTHONPATH": str(shim), "PYTHONSAFEPATH": "1", "LETHE_THREADS": "1",
               "LETHE_TEST_THREADS": "1"}  # fmt: skip
        started = time.perf_counter()
        command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutation.tests]
        try:
            done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
            # pytest's 1 is "tests failed"; anything else (collection or usage errors) proves nothing.
            status = {0: "SURVIVED", 1: "caught"}.get(done.returncode, f"error (pytest exit {done.returncode})")
            tail = done.stdout[-400:]
        except subprocess.TimeoutExpired:
            status, tail = "timed out", ""
        return {"name": mutation.name, "status": status, "why": mutation.why,
                "tests": list(mutation.tests), "seconds": round(time.perf_counter() - started, 1), "tail": tail}


def markdown(results: list[dict[str, object]]) -> str:
    """The table the README carries."""
    rows = ["| quiet break | guarantee | result |", "|---|---|---|"]
    rows += [f"| {r['name']} | {r['why']} | {r['status']} |" for r in results]
    return "\n".join(rows) + "\n"


def main() -> int:
    """Run the mutations; exit 1 if any survived or could not be applied."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutation names to run")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.only is None or m.name in args.only]
    results = []
    for mutation in chosen:
        result = run_one(mutation, args.timeout)
        print(f"{result['status']:>12}  {mutation.name}", flush=True)
        results.append(result)
    table = markdown(results)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "mutations.json").write_text(json.dumps(results, indent=1))
        (args.out / "mutations.md").write_text(table)
    return 0 if all(r["status"] == "caught" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

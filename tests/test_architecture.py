"""The package's shape: one top-level package, layers that only point down, no import cycles.

Imports are read from the source (``ast``), function-level imports included, so a lazy import
cannot hide an upward edge or a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lethe.benchmarks.server_harness import copy_tracked

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"classifier": 0, "runtime": 1, "training": 2, "service": 3, "benchmarks": 4}
FOLDERS = tuple(LAYERS)


def _module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    if parts[0] != "lethe":
        parts.insert(0, "lethe")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [*(REPO / "lethe").glob("*.py")]
    for folder in FOLDERS:
        files += (REPO / folder).rglob("*.py")
    return {_module_name(p): p for p in files}


def _imports(path: Path, module: str) -> set[str]:
    """Every ``lethe.*`` module ``path`` imports, at any depth of the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "lethe" or name.startswith("lethe.")}


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        graph[module] = {name for name in _imports(path, module) if name in sources and name != module}
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_layers_only_point_down() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if _layer(module) is not None and _layer(target) is not None and _layer(target) > _layer(module)
    ]
    assert upward == []


def test_shipped_code_never_imports_the_tests() -> None:
    offenders = []
    for module, path in _sources().items():
        text = path.read_text()
        if "sys.path" in text or any(
            isinstance(node, ast.ImportFrom | ast.Import)
            and any(n.startswith(("tests", "support", "conftest", "test_")) for n in _names(node))
            for node in ast.walk(ast.parse(text))
        ):
            offenders.append(module)
    assert offenders == []


def _names(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return [alias.name for alias in node.names]


def test_no_import_cycles() -> None:
    graph = _graph()
    # A module importing its own package's __init__ (or the reverse) is how packages re-export; the
    # package itself is not a peer in a cycle, so those edges are left out.
    edges = {m: {t for t in ts if not m.startswith(t + ".") and not t.startswith(m + ".")} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == []


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    # Built from a copy of the tracked files, so the build leaves nothing in the checkout.
    source = copy_tracked(REPO, tmp_path / "source")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, timeout=600)
    [wheel] = tmp_path.glob("lethe-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"lethe"}
    assert "lethe/training/demo_artifact/manifest.json" in names
    assert "lethe/classifier/data/questions.txt" in names
    assert "lethe/benchmarks/probes/general.jsonl" in names
    for console_file in ("index.html", "console.js", "console.css"):  # the operator console needs no build step
        assert f"lethe/service/console/{console_file}" in names
    entry_points = archive_text(wheel, "entry_points.txt")
    assert "lethe = lethe.cli:main" in entry_points
    assert "tiny-authors = lethe.benchmarks.tiny_models:BUILTIN_MODELS" in entry_points


def archive_text(wheel: Path, suffix: str) -> str:
    """The text of the wheel member whose name ends with ``suffix``."""
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(suffix)]
        return archive.read(name).decode()

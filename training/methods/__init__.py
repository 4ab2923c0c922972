"""Unlearning methods by name: the one list of them (``METHODS``), gathered from the modules of this package.

Each module here declares its stages (``base.Stage``: options, training function, the artifact
parts it adds) and a ``METHODS`` tuple of the methods it offers; a method is an ordered list of
stages and is named after them (``eco+spul``). Adding a method is adding a module here: the
trainer, ``TrainConfig`` (one options section per stage) and ``lethe train --method`` read
``METHODS``; ``DEFAULT_METHOD`` is what a run gets when it names none.
"""

from __future__ import annotations

import importlib
import pkgutil

from lethe.training.candidates import ArtifactParts
from lethe.training.methods.base import Method, Stage, StageInputs

_NOT_METHODS = frozenset({"base"})


def _gather() -> dict[str, Method]:
    methods: dict[str, Method] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name.startswith("_") or info.name in _NOT_METHODS:
            continue
        for method in importlib.import_module(f"{__name__}.{info.name}").METHODS:
            if method.name in methods:
                raise RuntimeError(f"unlearning method {method.name!r} is declared twice")
            methods[method.name] = method
    return methods


METHODS: dict[str, Method] = _gather()
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
STAGES: dict[str, Stage] = {stage.name: stage for method in METHODS.values() for stage in method.stages}
DEFAULT_METHOD = "eco"  # what a run gets when it names no method


def get_method(name: str) -> Method:
    """The method called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHOD_NAMES)})")
    return METHODS[name]


def method_holding(parts: ArtifactParts) -> str:
    """The method whose stages' first parts are exactly those ``parts`` hold (a candidate artifact's method)."""
    held = {stage.adds[0] for stage in STAGES.values() if parts.holds(stage.adds[0])}
    for method in METHODS.values():
        if {stage.adds[0] for stage in method.stages} == held:
            return method.name
    raise ValueError(f"no method adds exactly {sorted(held) or 'nothing'}")


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "METHOD_NAMES",
    "STAGES",
    "Method",
    "Stage",
    "StageInputs",
    "get_method",
    "method_holding",
]

"""Training rows: ``{"prompt", "completion"}`` plus optional paraphrased and perturbed answers.

Rows come from JSONL files (``lethe train``) or from JSON bodies (the admin API); both paths
validate here and fail with a ``TrainingDataError`` that names the file, the line and the field,
never quoting the row's text (forget data must not reach logs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator


class TrainingError(ValueError):
    """The trainer cannot run with these inputs."""


class TrainingDataError(TrainingError):
    """Forget or retain rows are missing, malformed or empty."""


class ForgetRow(BaseModel):
    """One question and its answer; paraphrased and perturbed answers feed the truth ratio, paraphrased questions
    the verification report."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str
    completion: str
    paraphrased_completion: str | None = None
    perturbed_completions: tuple[str, ...] = ()
    # Other wordings of the question. The trainer never reads them: the verification report measures on them.
    paraphrased_prompts: tuple[str, ...] = ()

    @field_validator("prompt", "completion")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("paraphrased_completion")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value if value is not None and value.strip() else None

    @field_validator("perturbed_completions", "paraphrased_prompts")
    @classmethod
    def _no_blank_alternatives(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v.strip() for v in value):
            raise ValueError("must not hold empty strings")
        return value

    @property
    def reference_answer(self) -> str:
        """The answer the truth ratio compares against: the paraphrase when there is one."""
        return self.paraphrased_completion or self.completion

    @property
    def has_truth_ratio(self) -> bool:
        """Whether this row carries perturbed answers, so its truth ratio is defined."""
        return bool(self.perturbed_completions)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "row"
        message = "is missing" if item["type"] == "missing" else item["msg"].lower()
        parts.append(f"{field!r} {message}")
    return "; ".join(parts)


def parse_rows(items: Iterable[Any], source: str, required: bool = True) -> list[ForgetRow]:
    """Validate row objects (e.g. from a JSON body); ``source`` names them in errors."""
    rows = []
    for index, item in enumerate(items):
        rows.append(_parse_one(item, f"{source} row {index}"))
    if required and not rows:
        raise TrainingDataError(f"{source} is empty: at least one row is needed")
    return rows


def _parse_one(item: Any, where: str) -> ForgetRow:
    if not isinstance(item, Mapping):
        raise TrainingDataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    try:
        return ForgetRow.model_validate(dict(item))
    except ValidationError as exc:
        raise TrainingDataError(f"{where}: {_describe(exc)}") from None


def load_rows(path: Path | str, required: bool = True) -> list[ForgetRow]:
    """Read a JSONL file of rows; blank lines are skipped, every other line must be a valid row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrainingDataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingDataError(f"{path}: unreadable ({type(exc).__name__})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{path} line {number}: invalid JSON ({exc.msg})") from None
        rows.append(_parse_one(item, f"{path} line {number}"))
    if required and not rows:
        raise TrainingDataError(f"{path} holds no rows: the forget set is empty")
    return rows


def write_rows(path: Path | str, rows: Iterable[ForgetRow | Mapping[str, Any]]) -> Path:
    """Write rows as JSONL (used by tests and the evaluation script)."""
    path = Path(path)
    lines = [(r.model_dump_json(exclude_none=True) if isinstance(r, ForgetRow) else json.dumps(dict(r))) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path

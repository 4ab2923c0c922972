"""``TrainConfig``: everything a training run can be told, with one options section per registered stage.

The sections (``eco``, ``spul``, ...) come from ``training.methods.STAGES``, so a new method's
options appear here without editing this file. Options arrive nested or dotted (``"eco.rounds"``);
unknown keys are refused with the known ones named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from lethe.training.methods import DEFAULT_METHOD, STAGES, Stage, get_method
from lethe.training.topic import TopicConfig

if TYPE_CHECKING:
    from lethe.classifier import ClassifierConfig

# One field per stage: its options, defaulted (every section is present whatever the method).
_StageSections: type[BaseModel] = create_model(
    "_StageSections",
    __config__=ConfigDict(extra="forbid"),
    **{
        name: (stage.Config, Field(default_factory=stage.Config, description=f"options of the {name} stage"))
        for name, stage in STAGES.items()
    },
)


class TrainConfig(_StageSections):  # type: ignore[misc, valid-type]
    """Everything a training run can be told; unknown keys are refused."""

    method: str = Field(default=DEFAULT_METHOD, description="a registered method (``training.methods.METHOD_NAMES``)")
    seed: int = 0
    wrong_answers: int = Field(default=3, ge=1, description="wrong answers per question for the surrogate target")
    topic: TopicConfig = Field(default_factory=TopicConfig, description="reveal settings for topic forget sets")
    classifier: dict[str, Any] = Field(default_factory=dict, description="ClassifierConfig fields")
    evaluate: bool = Field(default=True, description="measure before/after figures into the manifest")
    verify: bool = Field(
        default=True, description="after an admin-API job, measure the verification report's figures on held-out data"
    )
    eval_request_seed: int = 0

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        get_method(value)
        return value

    @field_validator("classifier")
    @classmethod
    def _check_classifier(cls, value: dict[str, Any]) -> dict[str, Any]:
        from lethe.classifier import ClassifierConfig

        known = set(ClassifierConfig.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown classifier option(s) {unknown}; known: {sorted(known)}")
        ClassifierConfig(**value)
        return value

    def classifier_config(self) -> ClassifierConfig:
        """The scope classifier's configuration (seeded by the run's seed unless set)."""
        from lethe.classifier import ClassifierConfig

        return ClassifierConfig(**{"seed": self.seed, **self.classifier})

    def section(self, stage: Stage) -> Any:
        """The options of one stage."""
        return getattr(self, stage.name)

    @classmethod
    def from_options(cls, method: str, options: Mapping[str, Any] | None = None) -> TrainConfig:
        """Build from a method and user options (nested dicts or dotted keys like ``"eco.rounds"``)."""
        nested = _nest(dict(options or {}))
        if "method" in nested and nested["method"] != method:
            raise ValueError(f"options name method {nested['method']!r} but the method is {method!r}")
        try:
            return cls.model_validate({**nested, "method": method})
        except ValidationError as exc:
            raise ValueError(_explain(exc)) from None


def _nest(options: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"option names must be non-empty strings, got {key!r}")
        *parents, leaf = key.split(".")
        target = nested
        for part in parents:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"option {key!r} conflicts with option {part!r}")
            target = child
        if isinstance(value, dict) and isinstance(target.get(leaf), dict):
            target[leaf].update(value)
        else:
            target[leaf] = value
    return nested


def _known(model: type[BaseModel], path: Sequence[str]) -> list[str]:
    for part in path:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _explain(error: ValidationError) -> str:
    messages = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        name = ".".join(loc) or "options"
        if item["type"] == "extra_forbidden":
            known = _known(TrainConfig, loc[:-1])
            messages.append(f"unknown option {name!r}" + (f" (known: {', '.join(known)})" if known else ""))
        else:
            messages.append(f"option {name!r}: {item['msg']}")
    return "; ".join(messages)

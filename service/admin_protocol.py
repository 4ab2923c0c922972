"""Request bodies of the admin routes, validated strictly (unknown keys are errors)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from lethe.service.protocol import ChatMessage, StrictModel


class ForgetSetCreate(StrictModel):
    """``POST /admin/forget-sets``.

    Everything a training job would find wrong with its input is found here, before anything is
    stored: the method, the options (``TrainConfig.from_options``), every row, and whether the scope
    classifier can be trained on these prompts (the classifier's own split rule: enough distinct
    forget prompts, none also a retain prompt). Fields are validated in the order declared, so each
    check sees the fields it depends on; ``forget`` comes last.
    """

    name: str = Field(min_length=1, max_length=128)
    method: str
    options: dict[str, Any] | None = None
    topic: str | None = Field(default=None, min_length=1, max_length=500)
    seed_prompts: list[str] | None = Field(default=None, max_length=200)
    entities: list[str] | None = Field(
        default=None, max_length=2000, description="with 'topic': names that belong to it (people, places, objects)"
    )
    keep_topics: list[str] | None = Field(
        default=None, max_length=500, description="with 'topic': adjacent topics that must stay answerable"
    )
    retain: list[dict[str, Any]] | None = Field(default=None, max_length=20000)
    forget: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=20000)

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        from lethe.training.methods import METHOD_NAMES

        if method not in METHOD_NAMES:
            raise ValueError(f"the method must be one of {', '.join(METHOD_NAMES)}")
        return method

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if "method" in info.data:
            _train_config(info.data["method"], options)
        return options

    @field_validator("retain")
    @classmethod
    def _retain_rows(cls, retain: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if retain is not None:
            _rows(retain, "retain", required=False)
        return retain

    @field_validator("forget")
    @classmethod
    def _trainable(cls, forget: list[dict[str, Any]] | None, info: ValidationInfo) -> list[dict[str, Any]] | None:
        if forget is None:
            return None
        rows = _rows(forget, "forget", required=True)
        if {"method", "options", "retain"} <= set(info.data):  # each valid: the classifier's split rule applies
            from lethe.classifier import ClassifierTrainingError
            from lethe.classifier.dataset import clean_inputs, split_inputs

            config = _train_config(info.data["method"], info.data["options"]).classifier_config()
            retain = [r.prompt for r in _rows(info.data["retain"] or [], "retain", required=False)]
            try:
                prompts, kept = clean_inputs([r.prompt for r in rows], retain or None)
                split_inputs(prompts, kept, config)
            except ClassifierTrainingError as exc:
                raise ValueError(f"the scope classifier cannot be trained on these rows: {exc}") from None
        return forget

    @model_validator(mode="after")
    def _forget_or_topic(self) -> ForgetSetCreate:
        if self.forget is not None and self.topic is not None:
            raise ValueError("give 'forget' (rows) or 'topic' (the model reveals what it knows), not both")
        for field_name in ("seed_prompts", "entities", "keep_topics"):
            values = getattr(self, field_name)
            if values is not None and self.topic is None:
                raise ValueError(f"'{field_name}' go with 'topic'")
            if values is not None and any(not v.strip() or len(v) > 2000 for v in values):
                raise ValueError(f"each of '{field_name}' must be a non-empty text of at most 2,000 characters")
        return self


def _rows(items: list[dict[str, Any]], source: str, required: bool) -> list[Any]:
    """The rows as the trainer reads them (``training.data.parse_rows``); its error as a ``ValueError``."""
    from lethe.training.data import TrainingDataError, parse_rows

    try:
        return parse_rows(items, source, required=required)
    except TrainingDataError as exc:
        raise ValueError(str(exc)) from None


def _train_config(method: str, options: dict[str, Any] | None) -> Any:
    """``TrainConfig.from_options``, whose errors name the known options."""
    from lethe.training.config import TrainConfig

    try:
        return TrainConfig.from_options(method, dict(options or {}))
    except (ValueError, TypeError) as exc:
        known = ", ".join(sorted(TrainConfig.model_fields))
        text = str(exc)
        names = _option_names(TrainConfig)
        theirs = {q for q in _strings(options) if not all(part in names for part in q.split("."))}
        if any(quoted in text for quoted in theirs):  # the trainer's message would repeat the client's strings
            text = f"an option name or value is not valid (known sections: {known})"
        raise ValueError(f"invalid options: {text}") from None


def _option_names(model: type[BaseModel]) -> set[str]:
    """Field names of ``model`` and of the models its fields hold, all the way down."""
    names: set[str] = set()
    pending: list[type[BaseModel]] = [model]
    while pending:
        current = pending.pop()
        for name, info in current.model_fields.items():
            names.add(name)
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                pending.append(annotation)
    return names


def _strings(value: Any) -> set[str]:
    """Every string of at least two characters in ``value`` (keys and values, nested)."""
    found: set[str] = set()
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and len(item) >= 2:
            found.add(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return found


class ForgetSetPatch(StrictModel):
    """``PATCH /admin/forget-sets/{id}``."""

    enabled: bool


class ClassifyRequest(StrictModel):
    """``POST /admin/classify``: a chat or a raw prompt."""

    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    prompt: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        return self


# Responses (described for the OpenAPI document; the routes build them as dicts) ----------------------------


class AdminResponse(BaseModel):
    """An admin response body; fields the server adds later are allowed."""

    model_config = ConfigDict(extra="allow")


class ForgetSetCreated(AdminResponse):
    """``202`` of ``POST /admin/forget-sets``: the forget set and the job training it."""

    id: str
    job_id: str
    object: Literal["forget_set"] = "forget_set"
    state: str


class ForgetSetView(AdminResponse):
    """A registered forget set (``live``: applied to requests right now)."""

    id: str
    object: Literal["forget_set"] = "forget_set"
    name: str
    method: str
    enabled: bool
    state: str
    live: bool
    created: float | str | None = None
    updated: float | str | None = None
    job_id: str | None = None
    source: str | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None


class ForgetSetList(AdminResponse):
    """``GET /admin/forget-sets``."""

    object: Literal["list"] = "list"
    data: list[ForgetSetView]


class ForgetSetDeleted(AdminResponse):
    """``DELETE /admin/forget-sets/{id}``."""

    id: str
    object: Literal["forget_set"] = "forget_set"
    deleted: bool


class JobView(AdminResponse):
    """A training job: its state, progress (0..1), stage, metrics and error."""

    id: str
    object: Literal["job"] = "job"
    state: str
    progress: float
    stage: str | None = None
    forget_set_id: str | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    options: dict[str, Any] | None = None
    created: float | str | None = None
    started: float | str | None = None
    finished: float | str | None = None


class JobList(AdminResponse):
    """``GET /admin/jobs``."""

    object: Literal["list"] = "list"
    data: list[JobView]


class FlaggingSet(AdminResponse):
    """One forget set flagging a classified prompt: its score and token mask over the rendered prompt."""

    forget_set_id: str
    score: float
    token_mask: list[int]


class ClassifyResponse(AdminResponse):
    """``POST /admin/classify``."""

    flagged: list[FlaggingSet]
    tokens: list[str]

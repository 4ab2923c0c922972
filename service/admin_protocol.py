"""Request bodies of the admin routes, validated strictly (unknown keys are errors)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from lethe.service.protocol import ChatMessage, StrictModel


class ForgetSetCreate(StrictModel):
    """``POST /admin/forget-sets``."""

    name: str = Field(min_length=1, max_length=128)
    forget: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=20000)
    topic: str | None = Field(default=None, min_length=1, max_length=500)
    seed_prompts: list[str] | None = Field(default=None, max_length=200)
    retain: list[dict[str, Any]] | None = Field(default=None, max_length=20000)
    method: str
    options: dict[str, Any] | None = None

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        from lethe.training.methods import METHOD_NAMES

        if method not in METHOD_NAMES:
            raise ValueError(f"the method must be one of {', '.join(METHOD_NAMES)}")
        return method

    @model_validator(mode="after")
    def _forget_or_topic(self) -> ForgetSetCreate:
        if self.forget is not None and self.topic is not None:
            raise ValueError("give 'forget' (rows) or 'topic' (the model reveals what it knows), not both")
        if self.seed_prompts is not None and self.topic is None:
            raise ValueError("'seed_prompts' go with 'topic'")
        return self


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

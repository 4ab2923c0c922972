"""``GET /v1/models`` and ``GET /v1/models/{id}`` (like vLLM's ``OpenAIServingModels``)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from lethe.service.gateway import Gateway
from lethe.service.protocol import ModelCard, ModelList
from lethe.service.serving_base import json_response


class OpenAIServingModels:
    """The served model's card."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def _cards(self, request: Request) -> list[ModelCard]:
        self.gateway.keys.check_inference(request)
        return self.gateway.backend.models()

    async def show_available_models(self, request: Request) -> Response:
        """Every served model."""
        return json_response(ModelList(data=self._cards(request)).json_bytes())

    async def show_model(self, request: Request, model_id: str) -> Response:
        """One served model, or a 404 (the requested id is not echoed)."""
        cards = self._cards(request)
        self.gateway.screening.check_model(model_id)
        return json_response(next(card for card in cards if card.id == model_id).json_bytes())

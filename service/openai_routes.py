"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, and vLLM's
``/tokenize``, ``/detokenize`` and ``/tokenizer_info``.

Thin: each route hands the request to its serving class (``serving_chat``, ``serving_completion``,
``serving_models``), which the app keeps on ``app.state``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lethe.service.gateway import Gateway
from lethe.service.serving_chat import OpenAIServingChat
from lethe.service.serving_completion import OpenAIServingCompletion
from lethe.service.serving_models import OpenAIServingModels
from lethe.service.serving_tokenization import OpenAIServingTokenization

router = APIRouter()


def install_serving(state: object, gateway: Gateway) -> None:
    """Create the serving classes on ``app.state``."""
    state.serving_chat = OpenAIServingChat(gateway)  # type: ignore[attr-defined]
    state.serving_completion = OpenAIServingCompletion(gateway)  # type: ignore[attr-defined]
    state.serving_models = OpenAIServingModels(gateway)  # type: ignore[attr-defined]
    state.serving_tokenization = OpenAIServingTokenization(gateway)  # type: ignore[attr-defined]


@router.get("/v1/models", response_model=None)
async def list_models(request: Request) -> Response:
    """The served model."""
    return await request.app.state.serving_models.show_available_models(request)


@router.get("/v1/models/{model_id:path}", response_model=None)
async def get_model(model_id: str, request: Request) -> Response:
    """One served model, or a 404."""
    return await request.app.state.serving_models.show_model(request, model_id)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    """Chat completion, streamed or whole."""
    return await request.app.state.serving_chat.create_chat_completion(request)


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> Response:
    """Legacy completions: text or token prompts, ``prompt_embeds``, and echo log-probs."""
    return await request.app.state.serving_completion.create_completion(request)


@router.post("/tokenize", response_model=None)
async def tokenize(request: Request) -> Response:
    """vLLM's tokenizer endpoint: a prompt's or a chat's token ids."""
    return await request.app.state.serving_tokenization.create_tokenize(request)


@router.post("/detokenize", response_model=None)
async def detokenize(request: Request) -> Response:
    """vLLM's detokenizer endpoint: the text of token ids."""
    return await request.app.state.serving_tokenization.create_detokenize(request)


@router.get("/tokenizer_info", response_model=None)
async def tokenizer_info(request: Request) -> Response:
    """vLLM's tokenizer description: special tokens, chat template, class."""
    return await request.app.state.serving_tokenization.get_tokenizer_info(request)

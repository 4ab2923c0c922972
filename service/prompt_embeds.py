"""vLLM-style ``prompt_embeds`` input: decode, load safely, validate, and recover tokens to classify.

An uploaded tensor is base64 of ``torch.save``. It is read with ``weights_only=True`` under
sparse-invariant checks, then refused unless it is a dense, finite, floating 2-D tensor of the
model's width and a bounded length (malformed sparse tensors were a remote exploit in vLLM,
CVE-2025-62164).

Embeddings carry no text, yet a client could embed a forgotten question itself to slip past
the scope classifier. So each row is mapped to its nearest token of the embedding matrix and
the recovered text is classified like any prompt (rows that were real token embeddings are
recovered exactly). A row that stands for no single token, off the embedding matrix or moved toward
another token, is refused: its distance to the nearest token row must be at most a quarter of its distance to
the second nearest (``AMBIGUITY_LIMIT``), so what the classifier reads is what the model sees.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import warnings

import torch

from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.prompt import MessageSpan, TemplatedPrompt, token_range
from lethe.service.errors import bad_request

ALLOWED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SPARSE_CHECK_LOCK = threading.Lock()
# Uploads saved with the default pickle protocol trigger this warning on every request.
warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)


def _invalid(reason: str) -> Exception:
    return bad_request(f"Invalid 'prompt_embeds': {reason}.", "prompt_embeds", "invalid_prompt_embeds")


def decode_prompt_embeds(encoded: str, hidden_size: int, max_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """Base64 of ``torch.save(tensor)`` to a validated ``(seq_len, hidden_size)`` tensor of ``dtype``."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("not valid base64") from None
    if not raw:
        raise _invalid("empty")
    try:
        # The invariant check is a process-wide flag: decodes on several threads must not overlap.
        with _SPARSE_CHECK_LOCK, torch.sparse.check_sparse_tensor_invariants():
            value = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # untrusted bytes: any failure to unpickle means the input is invalid
        raise _invalid("not a tensor saved with torch.save (only plain tensors are accepted)") from None
    return validate_embeddings(value, hidden_size, max_tokens, dtype)


def validate_embeddings(value: object, hidden_size: int, max_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """Refuse anything but a dense, finite, floating ``(1..max_tokens, hidden_size)`` CPU tensor."""
    if not isinstance(value, torch.Tensor):
        raise _invalid(f"expected a tensor, got {type(value).__name__}")
    if value.layout != torch.strided or value.is_sparse or value.is_nested or value.is_quantized:
        raise _invalid("only dense (strided) tensors are accepted")
    if value.device.type != "cpu":
        raise _invalid("the tensor must be on the CPU")
    if value.dtype not in ALLOWED_DTYPES:
        raise _invalid(f"dtype {str(value.dtype).removeprefix('torch.')} is not one of float32, float16, bfloat16")
    if value.dim() != 2:
        raise _invalid(f"expected shape (seq_len, {hidden_size}), got {value.dim()} dimensions")
    length, width = value.shape
    if width != hidden_size:
        raise _invalid(f"width {width} does not match the model's hidden size {hidden_size}")
    if not 1 <= length <= max_tokens:
        raise _invalid(f"length {length} is outside 1..{max_tokens}")
    tensor = value.detach().to(dtype).contiguous().clone()
    if not bool(torch.isfinite(tensor).all()):
        raise _invalid("it holds NaN or infinite values")
    return tensor


# A row must be at most this share of its distance to the second-nearest token row away from the nearest one
# (a bfloat16 copy of a token row: 0.01; 5% noise on every row: about 0.4; halfway between two tokens: 1).
AMBIGUITY_LIMIT = 0.25


def nearest_tokens(embedder: PromptEmbedder, embeds: torch.Tensor, chunk: int = 256) -> tuple[list[int], list[float]]:
    """Per input row, the nearest token row's id and the row's ambiguity: its distance to that token over its
    distance to the second-nearest one (0 for a token's own row; toward 1 between two tokens or far from all)."""
    weight = embedder.embedding_weight.detach().float()
    squared = (weight * weight).sum(-1)
    ids: list[int] = []
    ratios: list[float] = []
    for start in range(0, embeds.shape[0], chunk):
        rows = embeds[start : start + chunk].float().to(weight.device)
        # ||e - w||^2 = ||e||^2 - 2 e.w + ||w||^2; ||e||^2 is the same for every w.
        distance = squared.unsqueeze(0) - 2.0 * rows @ weight.T
        two = distance.topk(min(2, weight.shape[0]), dim=-1, largest=False).indices
        # Exact distances to the two candidates (the expansion above loses the small ones to rounding).
        exact = (rows.unsqueeze(1) - weight[two]).norm(dim=-1)
        nearest, second = exact[:, 0], exact[:, -1]
        scale = weight[two[:, 0]].norm(dim=-1).clamp_min(1e-12)
        ratio = torch.where(nearest <= 1e-4 * scale, torch.zeros_like(nearest), nearest / second.clamp_min(1e-12))
        ids.extend(int(i) for i in two[:, 0])
        ratios.extend(float(r) for r in ratio)
    return ids, ratios


def check_token_rows(ratios: list[float]) -> None:
    """Refuse uploaded rows that stand for no single token (off the embedding matrix, or moved toward another
    token): they would be read back as a token the model does not really see, past the scope classifier."""
    for index, ratio in enumerate(ratios):
        if ratio > AMBIGUITY_LIMIT:
            raise _invalid(
                f"row {index} is not a token embedding of this model (its distance to the nearest token row is "
                f"{ratio:.2f} of its distance to the second nearest; at most {AMBIGUITY_LIMIT} is accepted)"
            )


def prompt_from_ids(embedder: PromptEmbedder, ids: list[int] | tuple[int, ...]) -> TemplatedPrompt:
    """A prompt over given token ids whose text is their token strings joined (one user message).

    Special tokens (a leading BOS, template markers) take no text and stay outside the message, as in
    ``PromptEmbedder.text_prompt``, so that a prompt sent as embeddings is masked and classified like the same
    prompt sent as text.
    """
    special = set(getattr(embedder.tokenizer, "all_special_ids", ()) or ())
    pieces = ["" if int(i) in special else piece for i, piece in zip(ids, embedder.token_strings(ids), strict=True)]
    offsets: list[tuple[int, int]] = []
    cursor = 0
    for piece in pieces:
        offsets.append((cursor, cursor + len(piece)))
        cursor += len(piece)
    text = "".join(pieces)
    message = MessageSpan("user", 0, len(text), *token_range(offsets, 0, len(text)))
    return TemplatedPrompt(text=text, ids=tuple(int(i) for i in ids), offsets=tuple(offsets), messages=(message,))

"""Where the model runs: the torch device and floating dtype chosen by ``--device`` and ``--dtype``.

``auto`` picks the first CUDA device when one is present, else the CPU; the ``auto`` dtype is
bfloat16 on CUDA and float32 on the CPU. Everything a request touches per token (weights,
embeddings, soft prompts, corruption masks, noise, the KV cache) lives on this device; only the
sampled token ids come back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lethe.runtime.settings import RuntimeSettings

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(choice: str = "auto") -> torch.device:
    """The device ``choice`` (auto, cpu, cuda, cuda:N) names; a clear error when CUDA is asked for and absent."""
    if choice == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(choice)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {choice} was asked for, but this torch build sees no CUDA device")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {choice} was asked for, but only {torch.cuda.device_count()} CUDA devices exist")
        return torch.device("cuda", index)
    return device


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The weights' dtype: ``choice``, or for ``auto`` bfloat16 on CUDA and float32 elsewhere."""
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if choice not in DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}, not {choice!r}")
    return DTYPES[choice]


@dataclass(frozen=True)
class Placement:
    """A device and a dtype for a model's weights and everything computed beside them."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> Placement:
        """The placement ``settings.device`` and ``settings.dtype`` ask for."""
        device = resolve_device(settings.device)
        return cls(device, resolve_dtype(settings.dtype, device))

    def describe(self) -> str:
        """``cuda:0/bfloat16`` and the like, for banners and reports."""
        return f"{self.device}/{str(self.dtype).removeprefix('torch.')}"

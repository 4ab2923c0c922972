"""Counter-based Gaussian noise: the value at (seed, position, dimension) depends on nothing else.

A generator seeded per request and drawn for every position makes a token's noise depend on how
many positions came before it, forces the draw on the host and copies it to the device. Here each
value is a hash of its coordinates, computed with integer tensor operations on whatever device the
embeddings live on, only for the positions and dimensions a corruption touches. The hash works in
31-bit lanes (every product fits in a signed 64-bit integer), two lanes make two uniforms, and
Box-Muller turns them into a standard normal. Integer steps are exact everywhere; the final
``log``/``cos`` may differ by a few ulps between devices.
"""

from __future__ import annotations

import math

import torch

_MASK = (1 << 31) - 1
_MULTIPLIERS = (0x2C1B3C6D, 0x297A2D39)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit avalanche hash of each element (two xor-shift-multiply rounds)."""
    for multiplier in _MULTIPLIERS:
        x = x ^ (x >> 15)
        x = (x * multiplier) & _MASK
    return x ^ (x >> 13)


def _lanes(seed: int) -> tuple[int, int, int]:
    seed &= (1 << 63) - 1
    return seed & _MASK, (seed >> 31) & _MASK, (seed >> 62) & _MASK


def gaussian(
    seed: int, positions: torch.Tensor, dims: torch.Tensor | int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Standard normal noise for the given sequence positions and dimensions, computed on ``device``.

    ``dims`` is a count (the first ``dims`` dimensions of every position), a 1-D tensor of dimension indices
    (the same for every position), both giving ``(len(positions), len(dims))``; or a 2-D tensor
    ``(len(positions), k)`` of each position's own dimensions (a top-k selection), giving that shape.
    A value depends only on ``(seed, position, dimension)``, however it is asked for.
    """
    device = positions.device if device is None else torch.device(device)
    position = positions.to(device=device, dtype=torch.int64).reshape(-1, 1) & _MASK
    if isinstance(dims, int):
        dims = torch.arange(dims, device=device)
    dim = dims.to(device=device, dtype=torch.int64)
    dim = (dim.reshape(1, -1) if dim.dim() < 2 else dim) & _MASK
    low, high, top = _lanes(seed)
    key = _mix(_mix(position ^ low) ^ high ^ (top << 20))
    first = _mix(key ^ _mix(dim * 2 + 1 + (top << 24)))
    second = _mix(first ^ 0x0CC9E2D5)
    u1 = (first.to(torch.float32) + 0.5) * (1.0 / (_MASK + 1))
    u2 = (second.to(torch.float32) + 0.5) * (1.0 / (_MASK + 1))
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)

"""A memo bounded in bytes, not only in entries.

Serving memoizes per *word* work (normalization, n-gram hashes): words repeat across requests, so
the hit rate is high, while a cache keyed by whole texts would grow with every distinct prompt.
The byte bound keeps a stream of distinct hostile words from growing the process. Hits take one
dictionary lookup (no lock: the hot path of every request); when the bound is passed, the oldest
entries go first.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)
_MISSING = object()
V = TypeVar("V")


def approximate_bytes(value: object) -> int:
    """Rough resident size of a cached value (arrays by their buffer, tuples and strings by ``getsizeof``)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + 112
    if isinstance(value, tuple):
        return sys.getsizeof(value) + sum(approximate_bytes(v) for v in value)
    return sys.getsizeof(value)


class ByteBoundedCache(Generic[K, V]):
    """Memoizes ``compute(key)``; evicts the oldest entries beyond ``max_bytes``."""

    def __init__(self, compute: Callable[[K], V], max_bytes: int, sizeof: Callable[[object], int] = approximate_bytes):
        self._compute = compute
        self._max_bytes = max_bytes
        self._sizeof = sizeof
        self._values: dict[K, V] = {}
        self._sizes: OrderedDict[K, int] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """Approximate bytes held now (keys and values)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._values)

    def __call__(self, key: K) -> V:
        value = self._values.get(key, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[return-value]
        value = self._compute(key)
        size = self._sizeof(key) + self._sizeof(value) + 64
        if size > self._max_bytes:
            return value
        with self._lock:
            if key not in self._sizes:
                self._sizes[key] = size
                self._values[key] = value
                self._bytes += size
                while self._bytes > self._max_bytes:
                    dropped, dropped_size = self._sizes.popitem(last=False)
                    del self._values[dropped]
                    self._bytes -= dropped_size
        return value

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._values.clear()
            self._sizes.clear()
            self._bytes = 0

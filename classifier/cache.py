"""A least-recently-used memo bounded in bytes, not only in entries.

Serving memoizes per *word* work (normalization, n-gram hashes): words repeat across requests, so
the hit rate is high, while a cache keyed by whole texts would grow with every distinct prompt.
The byte bound keeps a stream of distinct hostile words from growing the process.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def approximate_bytes(value: object) -> int:
    """Rough resident size of a cached value (arrays by their buffer, tuples and strings by ``getsizeof``)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + 112
    if isinstance(value, tuple):
        return sys.getsizeof(value) + sum(approximate_bytes(v) for v in value)
    return sys.getsizeof(value)


class ByteBoundedCache(Generic[K, V]):
    """Memoizes ``compute(key)``; evicts least recently used entries beyond ``max_bytes``."""

    def __init__(self, compute: Callable[[K], V], max_bytes: int, sizeof: Callable[[object], int] = approximate_bytes):
        self._compute = compute
        self._max_bytes = max_bytes
        self._sizeof = sizeof
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """Approximate bytes held now (keys and values)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, key: K) -> V:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[0]
        value = self._compute(key)
        size = self._sizeof(key) + self._sizeof(value) + 64
        if size > self._max_bytes:
            return value
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (value, size)
                self._bytes += size
                while self._bytes > self._max_bytes:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._bytes -= dropped
        return value

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

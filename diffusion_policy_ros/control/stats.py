"""Rolling percentiles for diagnostics (inference latency, publish period, observation age)."""
from __future__ import annotations

import math
import threading
from collections import deque

import numpy as np


class RollingPercentiles:
    """The last `capacity` samples of a quantity, with p50/p99 on demand.

    Written by one thread (the inference worker) and read by another (diagnostics at 1 Hz), so every
    access takes a lock. Percentiles are computed when asked (np.percentile on <= capacity floats,
    tens of microseconds at 1 Hz) rather than maintained incrementally: simpler and cheap enough.
    """

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError(f'RollingPercentiles capacity must be >= 1, got {capacity}')
        self._samples: deque[float] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._total_count = 0

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f'RollingPercentiles.add got a non-finite sample {value}')
        with self._lock:
            self._samples.append(float(value))
            self._total_count += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)

    @property
    def total_count(self) -> int:
        """Samples ever added, including those that rolled out of the window."""
        with self._lock:
            return self._total_count

    def snapshot(self) -> np.ndarray:
        with self._lock:
            return np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the window; NaN while it is empty."""
        samples = self.snapshot()
        return float(np.percentile(samples, q)) if samples.size else math.nan

    @property
    def p50(self) -> float:
        return self.percentile(50.0)

    @property
    def p99(self) -> float:
        return self.percentile(99.0)

    def summary(self) -> dict[str, float]:
        """p50, p99, max, mean and count in one consistent snapshot (for diagnostics or JSON)."""
        samples = self.snapshot()
        if not samples.size:
            return {'count': 0, 'p50': math.nan, 'p99': math.nan, 'max': math.nan, 'mean': math.nan}
        p50, p99 = np.percentile(samples, [50.0, 99.0])
        return {'count': int(samples.size), 'p50': float(p50), 'p99': float(p99),
                'max': float(samples.max()), 'mean': float(samples.mean())}

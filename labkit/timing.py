"""A small wall-clock benchmark helper: warm-up, repeats, min/median, ratios.

Use the minimum for "how fast can this go" (noise only ever adds time) and the median for
"what will a user see". For GPU code pass ``sync=torch.cuda.synchronize`` so the clock
stops when the kernels finish, not when they are queued.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Timing:
    """Repeated wall-clock measurements of one callable, in seconds."""

    name: str
    times: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) by linear interpolation."""
        if not 0 <= q <= 100:
            raise ValueError(f"q must be in [0, 100], got {q}")
        xs = sorted(self.times)
        k = (len(xs) - 1) * q / 100
        lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    def ratio(self, other: Timing) -> float:
        """How many times faster ``self`` is than ``other`` (median / median)."""
        return other.median / self.median

    def __str__(self) -> str:
        return (f"{self.name}: min {self.min * 1e3:.3f} ms, median {self.median * 1e3:.3f} ms "
                f"over {len(self.times)} runs")


def benchmark(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
              name: str | None = None, sync: Callable[[], object] | None = None) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls.

    Raises:
        ValueError: when ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    t = Timing(name or getattr(fn, "__name__", "fn"))
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        t.times.append(time.perf_counter() - start)
    return t

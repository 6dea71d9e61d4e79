"""Sample-size arithmetic for evaluation platforms (normal approximation to the binomial).

``ValueError`` for proportions outside (0, 1), non-positive sizes, and alpha/power outside (0, 1).
"""
from __future__ import annotations

import math
from statistics import NormalDist

from .units import check_positive


def _check_open_unit(name: str, v: float) -> float:
    check_positive(name, v)
    if v >= 1:
        raise ValueError(f"{name} must be in (0, 1), got {v!r}")
    return v


def ci_halfwidth(p: float, n: int, alpha: float = 0.05) -> float:
    """Half-width of the normal-approximation interval for an accuracy ``p`` on ``n`` items:
    ``z_{1-alpha/2} * sqrt(p (1 - p) / n)`` (0.031 at p = 0.5, n = 1,000)."""
    _check_open_unit("p", p)
    check_positive("n", n)
    _check_open_unit("alpha", alpha)
    return NormalDist().inv_cdf(1 - alpha / 2) * math.sqrt(p * (1 - p) / n)


def items_to_detect(delta: float, p: float = 0.5, alpha: float = 0.05, power: float = 0.8) -> int:
    """Items per model to detect an accuracy difference ``delta`` between two *independent* samples
    (two-sided test at ``alpha`` with ``power``): ``(z_{1-alpha/2} + z_power)^2 * 2 p (1 - p) / delta^2``.
    A paired design on the same items needs fewer when the models agree on most items."""
    _check_open_unit("delta", delta)
    _check_open_unit("p", p)
    _check_open_unit("alpha", alpha)
    _check_open_unit("power", power)
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return math.ceil(z * z * 2 * p * (1 - p) / (delta * delta))

"""Input checks and number formatting shared by the calculators and the renderer."""
from __future__ import annotations

import math


def check_positive(name: str, value: float) -> float:
    """Return ``value`` if it is a finite number > 0; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` if ``0 < value <= 1``; ``ValueError`` otherwise."""
    check_positive(name, value)
    if value > 1:
        raise ValueError(f"{name} is a fraction in (0, 1], got {value!r}")
    return value


def fmt_bytes(n: float, binary: bool = False) -> str:
    """``1.5e9 -> '1.50 GB'``; ``binary=True`` uses KiB/MiB/GiB/TiB (powers of 1024)."""
    base, units = (1024.0, ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]) if binary else \
        (1000.0, ["B", "KB", "MB", "GB", "TB", "PB"])
    i = 0
    while abs(n) >= base and i < len(units) - 1:
        n /= base
        i += 1
    return f"{n:,.0f} {units[i]}" if i == 0 else f"{n:,.3g} {units[i]}" if abs(n) >= 100 else f"{n:.3g} {units[i]}"


def fmt_count(n: float) -> str:
    """Human count with three significant digits: ``1234567 -> '1.23M'``, ``950 -> '950'``."""
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def fmt_sci(n: float, digits: int = 3) -> str:
    """``3.15e23`` style with ``digits`` significant digits."""
    return f"{n:.{digits - 1}e}".replace("e+", "e")


def fmt_usd(n: float) -> str:
    """``1234.5 -> '$1,235'``; small amounts keep cents: ``0.42 -> '$0.42'``."""
    if abs(n) >= 1e9:
        return f"${n / 1e9:.3g}B"
    if abs(n) >= 1e6:
        return f"${n / 1e6:.3g}M"
    return f"${n:,.0f}" if abs(n) >= 100 else f"${n:.2f}"

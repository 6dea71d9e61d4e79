"""Data-pipeline arithmetic: bytes kept per stage, CPU core-hours per stage, tokens and shard storage.

A pipeline is a list of :class:`Stage`; each keeps a fraction of its input and processes a stated number
of input bytes per core-second (measure it on a sample: the Phase 10 data-pipeline lab prints per-stage
timings). ``ValueError`` on empty pipelines, non-positive sizes or out-of-range fractions.
"""
from __future__ import annotations

from dataclasses import dataclass

from .units import check_fraction, check_positive


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: ``keep`` is the fraction of input bytes it passes on; ``core_bytes_per_s`` the
    input bytes one CPU core processes per second."""

    name: str
    keep: float
    core_bytes_per_s: float

    def __post_init__(self) -> None:
        check_fraction(f"{self.name}.keep", self.keep)
        check_positive(f"{self.name}.core_bytes_per_s", self.core_bytes_per_s)


@dataclass(frozen=True)
class StageRow:
    name: str
    bytes_in: float
    bytes_out: float
    core_hours: float


def plan(input_bytes: float, stages: list[Stage]) -> list[StageRow]:
    """Bytes in/out and core-hours per stage, in order."""
    check_positive("input_bytes", input_bytes)
    if not stages:
        raise ValueError("a pipeline needs at least one stage")
    rows, b = [], float(input_bytes)
    for s in stages:
        out = b * s.keep
        rows.append(StageRow(s.name, b, out, b / s.core_bytes_per_s / 3600.0))
        b = out
    return rows


def wall_hours(core_hours: float, cores: int, efficiency: float = 0.8) -> float:
    """Wall-clock hours on ``cores`` cores at a parallel efficiency (stragglers, I/O waits)."""
    check_positive("core_hours", core_hours)
    check_positive("cores", cores)
    check_fraction("efficiency", efficiency)
    return core_hours / (cores * efficiency)


def tokens_from_bytes(text_bytes: float, bytes_per_token: float) -> float:
    """Tokens a tokenizer produces from ``text_bytes`` of UTF-8 text at a measured ``bytes_per_token``."""
    return check_positive("text_bytes", text_bytes) / check_positive("bytes_per_token", bytes_per_token)


def token_storage_bytes(n_tokens: float, vocab_size: int) -> float:
    """Bytes of a token shard: 2 bytes per id when the vocabulary fits uint16 (< 65,536), else 4."""
    check_positive("n_tokens", n_tokens)
    check_positive("vocab_size", vocab_size)
    return n_tokens * (2 if vocab_size <= 65_536 else 4)

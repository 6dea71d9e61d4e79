"""Deterministic seeding for Python, NumPy and (when installed) PyTorch."""
from __future__ import annotations

import os
import random


def seed_everything(seed: int = 0, deterministic_torch: bool = False) -> None:
    """Seed ``random``, NumPy and torch (CPU and CUDA) with ``seed``.

    Args:
        seed: a non-negative integer.
        deterministic_torch: also ask torch for deterministic kernels (slower on GPU).

    Raises:
        ValueError: for a negative or non-integer seed.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)  # for subprocesses; this one is already running
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic_torch:
        torch.use_deterministic_algorithms(True, warn_only=True)

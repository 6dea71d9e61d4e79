"""Write matplotlib figures as PNG files with the Agg backend (no display needed)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "savefig"]


def savefig(fig: matplotlib.figure.Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as a PNG at ``path`` (parents created), close it, return the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are saved as .png, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

"""Write matplotlib figures as PNG files with the Agg backend (no display needed).

A lab's ``figures/`` folder holds the committed PNGs its README links. Running a self-test must
leave ``git status`` clean, so :func:`savefig` redirects a path inside a ``figures/`` folder to
the git-ignored sibling ``outputs/`` folder, unless ``LABKIT_WRITE_FIGURES=1`` is set (what
``make figures LAB=...`` does to refresh the committed copies deliberately).
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "resolve_figure_path", "savefig"]

WRITE_ENV = "LABKIT_WRITE_FIGURES"


def resolve_figure_path(path: str | os.PathLike) -> Path:
    """Where a figure meant for ``path`` is written: ``.../figures/x.png`` becomes
    ``.../outputs/x.png`` unless ``LABKIT_WRITE_FIGURES=1``; any other path is kept."""
    path = Path(path)
    if os.environ.get(WRITE_ENV) == "1":
        return path
    parts = path.parts
    if "figures" in parts:
        i = len(parts) - 1 - parts[::-1].index("figures")
        return Path(*parts[:i], "outputs", *parts[i + 1:])
    return path


def savefig(fig: matplotlib.figure.Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as a PNG (see :func:`resolve_figure_path`), close it, return the path written.

    Raises:
        ValueError: ``path`` does not end in ``.png``.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are saved as .png, got {path.name!r}")
    path = resolve_figure_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

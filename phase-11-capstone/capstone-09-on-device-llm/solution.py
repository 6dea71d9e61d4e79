"""Capstone 9: an on-device LLM. The curriculum model -> GGUF (our writer) -> quantized -> llama.cpp on CPU.

The pipeline a product like Ollama, LM Studio or a phone app runs before a user types a word:

1. **Export**: read the Hugging Face checkpoint (the Phase 5 curriculum model, a Llama: RMSNorm, RoPE,
   GQA, SwiGLU) and write one self-contained **GGUF** file with our own code on top of the ``gguf``
   package's low-level ``GGUFWriter``: the architecture metadata (``llama.*`` keys: context, width,
   heads, KV heads, RoPE base, norm epsilon), the **tokenizer** (GPT-2-style byte-level BPE: token
   list, token types, merges, special ids, chat template) and the tensors, renamed to llama.cpp's names
   (``blk.N.attn_q.weight`` ...) with the Q/K rows **permuted** from HF's half-split RoPE layout to
   llama.cpp's interleaved one.
2. **Quantize**: F32 (reference), F16, **Q8_0 written by our own block quantizer** (checked bit-exact
   against ``gguf.quants`` and against llama.cpp's own quantizer), and **Q4_K_M by llama.cpp's quantize
   API** (``llama_cpp.llama_model_quantize``): ``gguf.quants`` can only *de*quantize K-quants.
3. **Run** every file with **llama.cpp** through ``llama-cpp-python`` on the CPU, check it against the
   PyTorch/HF model (logits on the same tokens, greedy continuations, tokenization of real text), and
   measure the table an on-device engineer ships: file size, RAM, tokens/s, perplexity delta.
4. **Ship**: a chat CLI (``--chat``) and an OpenAI-compatible local server (``--serve``: our FastAPI
   over ``llama_cpp.Llama``, uvicorn on 127.0.0.1).

A pure-NumPy forward pass over the GGUF tensors (llama.cpp's conventions: interleaved RoPE) checks the
exported file against HF without llama.cpp, so the export is tested even where the llama.cpp wheel is
not installed.

Run:  python solution.py                 self-test: export, check, quantize, run, table (~17 s CPU)
      python solution.py --bench         small mode: the README table on more text (~25 s CPU)
      python solution.py --chat [--gguf F] a chat in the terminal (llama.cpp, Q8_0 by default)
      python solution.py --serve --port 8000 [--gguf F]   OpenAI-compatible server
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root, for labkit

import gguf  # noqa: E402
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, LlamaFileType, TokenType  # noqa: E402

from labkit import curriculum_model_path, dataset_path, seed_everything  # noqa: E402

OUTPUTS = HERE / "outputs"
Q8_0_BLOCK = 32          # values per Q8_0 block: one float16 scale + 32 int8
Q8_0_BLOCK_BYTES = 34
QUANTS = ("F32", "F16", "Q8_0", "Q4_K_M")
TOKENS_TEXT = "valid_prefix_794k.txt"


# ----------------------------------------------------------------------------------------------
# llama.cpp (optional import: the export and its checks work without it)
# ----------------------------------------------------------------------------------------------

def llama_cpp_or_none():
    """``llama_cpp`` if the ``llama-cpp-python`` wheel is importable, else ``None``."""
    try:
        import llama_cpp
    except Exception:  # noqa: BLE001 - a missing or broken native library both mean "not available"
        return None
    return llama_cpp


# ----------------------------------------------------------------------------------------------
# 1. HF tensors -> GGUF tensors
# ----------------------------------------------------------------------------------------------

def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q_proj / k_proj weight from HF's RoPE layout to llama.cpp's.

    HF Llama rotates a head vector as two halves (``rotate_half``: dims ``i`` and ``i + d/2`` form a
    pair); llama.cpp's ``llama`` architecture rotates *adjacent* pairs (``2i``, ``2i+1``). Permuting the
    output rows of W_q and W_k per head (and nothing else) makes both compute the same attention scores.

    Args:
        w: ``(n_head * head_dim, d_model)`` float array (q: ``n_head`` = attention heads; k: KV heads).
        n_head: the number of heads stacked in ``w``'s rows.
    Returns:
        the same shape, rows of each head reordered ``[0, d/2, 1, d/2+1, ...]``.
    Raises:
        ValueError: the rows do not split into ``n_head`` heads of even size.
    """
    if w.ndim != 2 or n_head <= 0 or w.shape[0] % n_head or (w.shape[0] // n_head) % 2:
        raise ValueError(f"cannot split {w.shape} into {n_head} heads of even size")
    # BEGIN SOLUTION per head, view the rows as (2 halves, head_dim/2), swap those two axes so the halves interleave, reshape back (easy, ~10 min)
    head_dim = w.shape[0] // n_head
    return (w.reshape(n_head, 2, head_dim // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape))
    # END SOLUTION


def gguf_tensor_name(hf_name: str) -> str:
    """Map an HF Llama parameter name to llama.cpp's GGUF tensor name.

    ``model.embed_tokens.weight`` -> ``token_embd.weight``, ``model.norm.weight`` -> ``output_norm.weight``,
    ``lm_head.weight`` -> ``output.weight``, and per layer ``model.layers.N.{self_attn.q_proj,
    self_attn.k_proj, self_attn.v_proj, self_attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj,
    input_layernorm, post_attention_layernorm}.weight`` -> ``blk.N.{attn_q, attn_k, attn_v, attn_output,
    ffn_gate, ffn_up, ffn_down, attn_norm, ffn_norm}.weight``.

    Raises:
        KeyError: a name llama.cpp's llama architecture has no tensor for (e.g. a bias).
    """
    # BEGIN SOLUTION a dict for the three global names; for model.layers.N.<part>.weight map <part> through a second dict and build blk.N.<name>.weight (easy, ~10 min)
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    pieces = hf_name.split(".")
    if len(pieces) >= 5 and pieces[:2] == ["model", "layers"] and pieces[-1] == "weight":
        part = ".".join(pieces[3:-1])
        if part in parts:
            return f"blk.{int(pieces[2])}.{parts[part]}.weight"
    raise KeyError(f"no GGUF name for HF tensor {hf_name!r}")
    # END SOLUTION


# ----------------------------------------------------------------------------------------------
# 2. Our Q8_0 quantizer (ggml's block format)
# ----------------------------------------------------------------------------------------------

def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Quantize a float matrix to ggml's Q8_0 blocks, bit-exact with ggml's reference quantizer.

    Each run of 32 consecutive values along the last axis becomes 34 bytes: the scale
    ``d = max|x| / 127`` as float16 (2 bytes, little-endian), then 32 int8 ``q = roundf(x / d)``
    where ``roundf`` rounds halves **away from zero** (C's ``roundf``, not NumPy's banker's rounding),
    computed in float32 as ``x * (1/d)``; an all-zero block has ``d = 0`` and ``q = 0``.

    Args:
        x: ``(..., n)`` float array with ``n % 32 == 0``; finite.
    Returns:
        ``(..., n // 32 * 34)`` uint8, the bytes GGUF stores for the tensor.
    Raises:
        ValueError: the last axis is not a multiple of 32, or ``x`` has NaN/inf.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % Q8_0_BLOCK:
        raise ValueError(f"Q8_0 needs a last axis that is a multiple of {Q8_0_BLOCK}, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("cannot quantize NaN or inf to Q8_0")
    blocks = x.reshape(-1, Q8_0_BLOCK)
    # BEGIN SOLUTION d = amax/127 (float32), id = 1/d (0 where d == 0), q = sign * floor(|x*id| + 0.5) as int8; bytes = [d as float16 viewed as 2 uint8] + [q viewed as uint8] (medium, ~15 min)
    d = (np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    scaled = blocks * inv
    q = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))
    out = np.concatenate([d.astype("<f2").view(np.uint8), q.astype(np.int8).view(np.uint8)], axis=1)
    return out.reshape(*x.shape[:-1], x.shape[-1] // Q8_0_BLOCK * Q8_0_BLOCK_BYTES)
    # END SOLUTION


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_q8_0`: ``(..., k * 34)`` uint8 -> ``(..., k * 32)`` float32."""
    raw = np.asarray(raw, dtype=np.uint8)
    if raw.shape[-1] % Q8_0_BLOCK_BYTES:
        raise ValueError(f"Q8_0 rows are multiples of {Q8_0_BLOCK_BYTES} bytes, got {raw.shape}")
    b = raw.reshape(-1, Q8_0_BLOCK_BYTES)
    d = b[:, :2].copy().view("<f2").astype(np.float32)
    q = b[:, 2:].view(np.int8).astype(np.float32)
    return (q * d).reshape(*raw.shape[:-1], raw.shape[-1] // Q8_0_BLOCK_BYTES * Q8_0_BLOCK)


# ----------------------------------------------------------------------------------------------
# 3. The GGUF writer
# ----------------------------------------------------------------------------------------------

@dataclass
class HFModel:
    """What the exporter reads from an HF Llama folder: config, tokenizer.json, float32 tensors."""
    config: dict
    tokenizer: dict
    tokenizer_config: dict
    chat_template: str | None
    tensors: dict[str, np.ndarray]


def load_hf(hf_dir: str | Path) -> HFModel:
    """Read ``config.json``, ``tokenizer.json``, ``tokenizer_config.json``, the chat template and
    ``model.safetensors`` (as float32 NumPy) from a ``save_pretrained`` folder."""
    from safetensors.numpy import load_file

    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    if cfg.get("model_type") != "llama":
        raise ValueError(f"only Llama checkpoints are supported, got model_type={cfg.get('model_type')!r}")
    tok = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tcfg_path = hf_dir / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text(encoding="utf-8")) if tcfg_path.exists() else {}
    tpl_path = hf_dir / "chat_template.jinja"
    tpl = tpl_path.read_text(encoding="utf-8") if tpl_path.exists() else tcfg.get("chat_template")
    tensors = {k: v.astype(np.float32) for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    return HFModel(cfg, tok, tcfg, tpl, tensors)


def tokenizer_arrays(tok: dict) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """The GGUF tokenizer arrays of a byte-level BPE ``tokenizer.json``.

    Returns:
        ``(tokens, token_types, merges, special)``: ``tokens[i]`` is the vocab string of id ``i`` (the
        byte-level alphabet, e.g. ``"Ġthe"``), ``token_types[i]`` is ``TokenType.CONTROL`` for special
        added tokens and ``NORMAL`` otherwise, ``merges`` are ``"left right"`` strings in rank order, and
        ``special`` maps each special token's text to its id.
    Raises:
        ValueError: not a BPE model, or the ids are not exactly ``0 .. n-1``.
    """
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"expected a BPE tokenizer.json, got model type {model.get('type')!r}")
    # BEGIN SOLUTION merge model.vocab with added_tokens into an id -> text table (check the ids are 0..n-1); special added tokens are CONTROL, the rest NORMAL; merges may be ["a","b"] pairs or "a b" strings: emit "a b" (medium, ~15 min)
    id_to_text: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    special: dict[str, int] = {}
    for added in tok.get("added_tokens", []):
        id_to_text[int(added["id"])] = added["content"]
        if added.get("special"):
            special[added["content"]] = int(added["id"])
    n = len(id_to_text)
    if sorted(id_to_text) != list(range(n)):
        raise ValueError("token ids must be exactly 0 .. n-1")
    tokens = [id_to_text[i] for i in range(n)]
    types = [int(TokenType.CONTROL) if t in special else int(TokenType.NORMAL) for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, special
    # END SOLUTION


def export_gguf(hf_dir: str | Path, out_path: str | Path, qtype: str = "F16") -> Path:
    """Write the HF Llama in ``hf_dir`` as one GGUF file llama.cpp loads (``qtype``: F32, F16, Q8_0).

    1-D tensors (the RMSNorm weights) stay F32, as in llama.cpp's own converter; 2-D weights are stored
    as ``qtype`` (Q8_0 by :func:`quantize_q8_0`). Q/K rows are permuted with :func:`permute_qk`.

    Raises:
        ValueError: unknown ``qtype``; a config llama.cpp's llama architecture cannot express.
    """
    if qtype not in ("F32", "F16", "Q8_0"):
        raise ValueError(f"qtype must be F32, F16 or Q8_0 (Q4_K_M comes from llama.cpp's quantizer), got {qtype!r}")
    m = load_hf(hf_dir)
    cfg = m.config
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    d_model = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or d_model // n_head)
    if head_dim * n_head != d_model:
        raise ValueError("llama.cpp's llama arch here assumes head_dim * n_head == hidden_size")
    rope = cfg.get("rope_parameters") or {"rope_theta": cfg.get("rope_theta", 10000.0), "rope_type": "default"}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"RoPE scaling {rope.get('rope_type')!r} is not exported by this writer")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    w = GGUFWriter(str(out_path), "llama")
    w.add_name(Path(hf_dir).parent.name or "curriculum-model")
    w.add_file_type({"F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16,
                     "Q8_0": LlamaFileType.MOSTLY_Q8_0}[qtype])
    # BEGIN SOLUTION the llama.* hyper-parameters: context length, embedding length, block count, feed-forward length, head count, KV head count, RoPE base and dimension count, RMS norm epsilon, vocab size (easy, ~10 min)
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(d_model)
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_vocab_size(int(cfg["vocab_size"]))
    # END SOLUTION

    tokens, types, merges, special = tokenizer_arrays(m.tokenizer)
    if len(tokens) != int(cfg["vocab_size"]):
        raise ValueError(f"tokenizer has {len(tokens)} tokens, config vocab_size is {cfg['vocab_size']}")
    w.add_tokenizer_model("gpt2")      # llama.cpp's name for byte-level BPE
    w.add_tokenizer_pre("gpt-2")       # the GPT-2 pre-tokenizer regex (tokenizer.json: ByteLevel use_regex)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(int(cfg["bos_token_id"]))
    w.add_eos_token_id(int(cfg["eos_token_id"]))
    if cfg.get("pad_token_id") is not None:
        w.add_pad_token_id(int(cfg["pad_token_id"]))
    if "<|im_end|>" in special:
        w.add_eot_token_id(special["<|im_end|>"])   # end of a chat turn: llama.cpp stops there too
    w.add_add_bos_token(False)         # the HF tokenizer adds no BOS; callers prepend id 0 themselves
    if m.chat_template:
        w.add_chat_template(m.chat_template)

    for hf_name in sorted(m.tensors, key=_tensor_order):
        t = m.tensors[hf_name]
        name = gguf_tensor_name(hf_name)
        if name.endswith("attn_q.weight"):
            t = permute_qk(t, n_head)
        elif name.endswith("attn_k.weight"):
            t = permute_qk(t, n_kv)
        if t.ndim == 1 or qtype == "F32":
            w.add_tensor(name, np.ascontiguousarray(t, dtype=np.float32))
        elif qtype == "F16":
            w.add_tensor(name, np.ascontiguousarray(t, dtype=np.float16))
        else:
            w.add_tensor(name, quantize_q8_0(t), raw_dtype=GGMLQuantizationType.Q8_0)  # byte shape -> element shape
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path


def _tensor_order(hf_name: str) -> tuple:
    """Embedding first, then layers in numeric order, then the final norm and the head (llama.cpp's order)."""
    if hf_name.startswith("model.layers."):
        return (1, int(hf_name.split(".")[2]), hf_name)
    return (0 if "embed" in hf_name else 2, 0, hf_name)


# ----------------------------------------------------------------------------------------------
# 4. Reading a GGUF back, and a NumPy forward pass in llama.cpp's conventions
# ----------------------------------------------------------------------------------------------

def gguf_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """``(metadata, float32 tensors in NumPy (rows, cols) order, tensor type names)`` of a GGUF file;
    quantized tensors are dequantized with ``gguf.quants.dequantize``."""
    meta, weights, kinds, _ = read_gguf(path)
    return meta, weights, kinds


def gguf_tensor_bytes(path: str | Path) -> dict[str, bytes]:
    """The stored bytes of every tensor, as written (quantized blocks stay blocks)."""
    return read_gguf(path)[3]


def read_gguf(path: str | Path):
    """``GGUFReader`` once per (path, size, mtime): it parses the 8k-entry tokenizer arrays field by
    field, about a second of CPU each time. Returns ``(metadata, float32 weights, type names, raw bytes)``."""
    st = Path(path).stat()
    return _read_gguf(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_gguf(path: str, size: int, mtime_ns: int):
    r = GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    weights, kinds, raw = {}, {}, {}
    for t in r.tensors:
        kind = GGMLQuantizationType(t.tensor_type)
        data = np.asarray(t.data)
        raw[t.name] = data.tobytes()
        weights[t.name] = gguf.quants.dequantize(data, kind).astype(np.float32).reshape(
            tuple(int(s) for s in reversed(t.shape)))
        kinds[t.name] = kind.name
    return meta, weights, kinds, raw


def rope_interleaved(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """llama.cpp's normal-mode RoPE: rotate adjacent pairs ``(x[2i], x[2i+1])`` by ``pos * base**(-2i/d)``.

    Args:
        x: ``(T, n_heads, head_dim)``; positions: ``(T,)`` ints.
    """
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = positions[:, None].astype(np.float64) * inv[None, :]                     # (T, d/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    out = np.empty(x.shape, dtype=np.float64)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def gguf_forward(path: str | Path, ids: Sequence[int]) -> np.ndarray:
    """Logits ``(T, vocab)`` (float64) of a GGUF llama file on ``ids``, in NumPy, the way llama.cpp
    computes them (interleaved RoPE on the permuted Q/K). Checks the export without llama.cpp."""
    meta, W, _ = gguf_weights(path)
    ids = np.asarray(list(ids), dtype=np.int64)
    n_vocab = W["token_embd.weight"].shape[0]
    if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or ids.max() >= n_vocab:
        raise ValueError(f"ids must be a non-empty 1-D list of ints in [0, {n_vocab})")
    n_head, n_kv = int(meta["llama.attention.head_count"]), int(meta["llama.attention.head_count_kv"])
    eps, base = float(meta["llama.attention.layer_norm_rms_epsilon"]), float(meta["llama.rope.freq_base"])
    T = ids.size
    h = W["token_embd.weight"][ids].astype(np.float64)
    hd = h.shape[1] // n_head
    pos = np.arange(T)
    mask = np.triu(np.full((T, T), -np.inf), k=1)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    for i in range(int(meta["llama.block_count"])):
        p = f"blk.{i}."
        x = rms(h, W[p + "attn_norm.weight"])
        q = rope_interleaved((x @ W[p + "attn_q.weight"].T).reshape(T, n_head, hd), pos, base)
        k = rope_interleaved((x @ W[p + "attn_k.weight"].T).reshape(T, n_kv, hd), pos, base)
        v = (x @ W[p + "attn_v.weight"].T).reshape(T, n_kv, hd)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + mask
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", a, v).reshape(T, -1)
        h = h + o @ W[p + "attn_output.weight"].T
        x = rms(h, W[p + "ffn_norm.weight"])
        g = x @ W[p + "ffn_gate.weight"].T
        h = h + ((g / (1 + np.exp(-g))) * (x @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
    return rms(h, W["output_norm.weight"]) @ W["output.weight"].T


# ----------------------------------------------------------------------------------------------
# 5. Quantizing with llama.cpp, running with llama.cpp
# ----------------------------------------------------------------------------------------------

def llama_quantize(src: str | Path, dst: str | Path, ftype: str = "Q4_K_M", nthread: int = 1) -> Path:
    """Quantize a GGUF file with llama.cpp's own quantizer (``llama_model_quantize``).

    Note for this model: K-quants need rows that are multiples of 256 (``QK_K``); the curriculum
    model's rows are 128 and 384 wide, so llama.cpp stores those tensors in its documented fallback
    types (Q4_K -> Q5_0, Q6_K -> Q8_0). :func:`tensor_type_counts` reports what was really written.
    """
    llama_cpp = llama_cpp_or_none()
    if llama_cpp is None:
        raise RuntimeError("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36")
    code = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}", None)
    if code is None:
        raise ValueError(f"unknown llama.cpp file type {ftype!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = code
    params.nthread = nthread
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with _quiet_stderr():        # llama.cpp logs every tensor it converts
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {ftype}) returned {rc}")
    return Path(dst)


@contextlib.contextmanager
def _quiet_stderr():
    """Send the C library's stderr (fd 2) to /dev/null for the duration."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tensor_type_counts(path: str | Path) -> dict[str, int]:
    """``{ggml type name: number of tensors}`` in a GGUF file."""
    counts: dict[str, int] = {}
    for name in read_gguf(path)[2].values():
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def load_llama(path: str | Path, *, n_ctx: int = 256, n_threads: int = 1, logits_all: bool = True):
    """A ``llama_cpp.Llama`` on ``path`` (CPU, quiet, every position's logits kept)."""
    llama_cpp = llama_cpp_or_none()
    if llama_cpp is None:
        raise RuntimeError("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36")
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads,
                           n_threads_batch=n_threads, logits_all=logits_all, verbose=False, seed=0)


def llama_logits(llm, ids: Sequence[int]) -> np.ndarray:
    """llama.cpp's logits ``(T, vocab)`` float32 for ``ids`` (one evaluation from an empty cache)."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def llama_greedy(llm, ids: Sequence[int], max_new_tokens: int, eos_id: int = 0) -> list[int]:
    """Greedy continuation by llama.cpp (temperature 0, no repeat penalty), stopping after ``eos_id``."""
    out: list[int] = []
    llm.reset()
    for tok in llm.generate(list(ids), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if tok == eos_id or len(out) >= max_new_tokens:
            break
    return out


def nll_from_logits(logits: np.ndarray, ids: Sequence[int]) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods and their count: position ``t`` predicts ``ids[t+1]``.

    Args:
        logits: ``(T, vocab)``; ids: the ``T`` input ids.
    Returns:
        ``(total_nll_nats, T - 1)``; perplexity over many windows is ``exp(sum(nll) / sum(count))``.
    Raises:
        ValueError: shapes disagree, ``T < 2``, or non-finite logits.
    """
    logits = np.asarray(logits, dtype=np.float64)
    ids = np.asarray(list(ids), dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] != ids.size or ids.size < 2:
        raise ValueError(f"need logits (T, V) with T = len(ids) >= 2, got {logits.shape} and {ids.size} ids")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    # BEGIN SOLUTION log-softmax each of the first T-1 rows (subtract the row max first), pick the entry of the NEXT id, negate and sum (easy, ~10 min)
    x = logits[:-1]
    lse = x.max(-1) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1))
    total = float((lse - x[np.arange(ids.size - 1), ids[1:]]).sum())
    return total, int(ids.size - 1)
    # END SOLUTION


# ----------------------------------------------------------------------------------------------
# 6. The reference: the same model in PyTorch / HF
# ----------------------------------------------------------------------------------------------

def hf_model_and_tokenizer(hf_dir: str | Path):
    """``(LlamaForCausalLM in eval mode, float32, CPU; its tokenizer)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(hf_dir))


def hf_logits(model, ids: Sequence[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()


def hf_greedy(model, ids: Sequence[int], max_new_tokens: int, eos_id: int = 0) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([list(ids)]), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos_id, pad_token_id=eos_id)
    return out[0, len(ids):].tolist()


def eval_windows(tokenizer, n_windows: int, window: int = 256) -> list[list[int]]:
    """``n_windows`` windows of ``window`` ids from the TinyStories validation text, each starting with
    the BOS id 0 (the model's document separator)."""
    text = dataset_path("tinystories", TOKENS_TEXT).read_text(encoding="utf-8")
    ids = tokenizer(text[: 2000 * n_windows * 2], add_special_tokens=False)["input_ids"]
    step = window - 1
    wins = [[0] + ids[i * step:(i + 1) * step] for i in range(n_windows)]
    if any(len(w) < window for w in wins):
        raise ValueError("not enough validation text for the requested windows")
    return wins


# ----------------------------------------------------------------------------------------------
# 7. Chat: prompt format, one turn, the CLI
# ----------------------------------------------------------------------------------------------

def chatml(messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The model's ChatML prompt: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message, then
    ``<|im_start|>assistant\\n`` when ``add_generation_prompt`` (the HF chat template's output).

    Raises:
        ValueError: a message without a string ``role`` / ``content``, or an empty list.
    """
    if not messages:
        raise ValueError("messages is empty")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"every message needs string 'role' and 'content', got {m!r}")
    # BEGIN SOLUTION join "<|im_start|>{role}\n{content}<|im_end|>\n" for each message, then add "<|im_start|>assistant\n" if asked (easy, ~5 min)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    # END SOLUTION


def complete(llm, prompt_ids: Sequence[int], *, max_tokens: int = 64, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = ()) -> Iterator[tuple[int, str]]:
    """Stream ``(token id, text piece)`` from llama.cpp until an end-of-generation token (``<|endoftext|>``
    or ``<|im_end|>``), a stop string, or ``max_tokens``. Temperature 0 is greedy."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be >= 1")
    if len(prompt_ids) + max_tokens > llm.n_ctx():
        raise ValueError(f"prompt ({len(prompt_ids)}) + max_tokens ({max_tokens}) exceeds the context ({llm.n_ctx()})")
    if seed is not None:
        llm.set_seed(int(seed))
    eog = {llm.token_eos(), *_eot_ids(llm)}
    text = ""
    kw = {"temp": 0.0, "top_k": 1} if temperature <= 0 else {"temp": float(temperature), "top_k": 0}
    llm.reset()
    n = 0
    for tok in llm.generate(list(prompt_ids), top_p=top_p, min_p=0.0, repeat_penalty=1.0, reset=True, **kw):
        tok = int(tok)
        if tok in eog:
            return
        piece = llm.detokenize([tok]).decode("utf-8", errors="replace")
        text += piece
        n += 1
        if any(s and s in text for s in stop):
            return
        yield tok, piece
        if n >= max_tokens:
            return


def _eot_ids(llm) -> list[int]:
    ids = []
    with contextlib.suppress(Exception):
        t = int(llm.metadata.get("tokenizer.ggml.eot_token_id", -1))
        if t >= 0:
            ids.append(t)
    return ids


def chat_prompt_ids(llm, messages: Sequence[dict[str, str]]) -> list[int]:
    """The ChatML prompt of ``messages``, tokenized by llama.cpp with special tokens parsed."""
    return llm.tokenize(chatml(messages).encode("utf-8"), add_bos=False, special=True)


def chat_cli(gguf_path: str | Path, stdin=None, stdout=None, max_tokens: int = 64, temperature: float = 0.0) -> int:
    """A terminal chat: one user line per turn, the reply streamed; ``/reset`` clears, empty line or EOF quits."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    llm = load_llama(gguf_path, logits_all=False)
    history: list[dict[str, str]] = [{"role": "system", "content": "You tell short stories for children."}]
    stdout.write(f"chat with {Path(gguf_path).name} (llama.cpp, CPU). Empty line to quit, /reset to clear.\n")
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line or not line.strip():
            return 0
        if line.strip() == "/reset":
            history = history[:1]
            continue
        history.append({"role": "user", "content": line.strip()})
        ids = chat_prompt_ids(llm, history)
        while len(ids) + max_tokens > llm.n_ctx() and len(history) > 2:   # forget the oldest turns
            del history[1:3]
            ids = chat_prompt_ids(llm, history)
        stdout.write("bot> ")
        reply = ""
        for _, piece in complete(llm, ids, max_tokens=max_tokens, temperature=temperature):
            reply += piece
            stdout.write(piece)
            stdout.flush()
        stdout.write("\n")
        history.append({"role": "assistant", "content": reply})


# ----------------------------------------------------------------------------------------------
# 8. The OpenAI-compatible local server (FastAPI over llama_cpp.Llama)
# ----------------------------------------------------------------------------------------------

def create_app(gguf_path: str | Path, model_name: str = "curriculum-gguf"):
    """FastAPI app: ``GET /v1/models``, ``GET /healthz``, ``POST /v1/completions`` and
    ``POST /v1/chat/completions`` (``stream`` true -> SSE chunks then ``data: [DONE]``). One llama.cpp
    context behind a lock (a ``Llama`` is not thread-safe); errors in OpenAI's error format."""
    llm = load_llama(gguf_path, logits_all=False)
    lock = threading.Lock()
    app = FastAPI(title="on-device LLM (llama.cpp)")

    def error(status: int, msg: str, param: str | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": msg, "type": "invalid_request_error", "param": param,
                                       "code": None}}, status_code=status)

    def params(body: dict) -> dict:
        mt = body.get("max_tokens", 64)
        if not isinstance(mt, int) or mt < 1:
            raise ValueError("max_tokens must be a positive integer")
        stop = body.get("stop") or []
        return {"max_tokens": mt, "temperature": float(body.get("temperature", 1.0) or 0.0),
                "top_p": float(body.get("top_p", 1.0)), "seed": body.get("seed"),
                "stop": [stop] if isinstance(stop, str) else list(stop)}

    def run(ids, p, make_chunk, make_final, stream):
        rid, created = f"cmpl-{uuid.uuid4().hex[:20]}", int(time.time())
        if not stream:
            with lock:
                pieces = [piece for _, piece in complete(llm, ids, **p)]
            usage = {"prompt_tokens": len(ids), "completion_tokens": len(pieces),
                     "total_tokens": len(ids) + len(pieces)}
            return JSONResponse(make_final(rid, created, "".join(pieces), usage,
                                           "length" if len(pieces) >= p["max_tokens"] else "stop"))

        def events():
            n = 0
            with lock:
                for _, piece in complete(llm, ids, **p):
                    n += 1
                    yield f"data: {json.dumps(make_chunk(rid, created, piece, None))}\n\n"
            finish = "length" if n >= p["max_tokens"] else "stop"
            yield f"data: {json.dumps(make_chunk(rid, created, '', finish))}\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": model_name, "backend": "llama.cpp"}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "local"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return error(400, "prompt must be a non-empty string", "prompt")
        try:
            p = params(body)
            ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            if len(ids) + p["max_tokens"] > llm.n_ctx():
                raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({p['max_tokens']}) exceeds the "
                                 f"context window of {llm.n_ctx()} tokens")
        except ValueError as e:
            return error(400, str(e))

        def chunk(rid, created, piece, finish):
            return {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "text": piece, "finish_reason": finish, "logprobs": None}]}

        def final(rid, created, text, usage, finish):
            return {**chunk(rid, created, text, finish), "usage": usage}
        return run(ids, p, chunk, final, bool(body.get("stream")))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if body.get("tools"):
            return error(400, "this model cannot call tools", "tools")
        try:
            p = params(body)
            ids = chat_prompt_ids(llm, body.get("messages") or [])
            if len(ids) + p["max_tokens"] > llm.n_ctx():
                raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({p['max_tokens']}) exceeds the "
                                 f"context window of {llm.n_ctx()} tokens")
        except ValueError as e:
            return error(400, str(e), "messages")

        def chunk(rid, created, piece, finish):
            delta = {"content": piece} if piece or finish is None else {}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        def final(rid, created, text, usage, finish):
            return {"id": rid, "object": "chat.completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish}], "usage": usage}
        return run(ids, p, chunk, final, bool(body.get("stream")))

    return app


@contextlib.contextmanager
def serve_in_thread(gguf_path: str | Path, model_name: str = "curriculum-gguf"):
    """uvicorn on 127.0.0.1, a free port, in a thread; yields labkit's ``Endpoint`` (``base_url``,
    ``client()``); stopped on exit."""
    from labkit.llm_server import serve_app

    with serve_app(create_app(gguf_path, model_name), model_name=model_name,
                   thread_name="gguf-server") as ep:
        yield ep


# ----------------------------------------------------------------------------------------------
# 9. The pipeline and the table
# ----------------------------------------------------------------------------------------------

def export_all(hf_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """F32, F16, Q8_0 by our writer; Q4_K_M by llama.cpp's quantizer from our F32 file (when available)."""
    out_dir = Path(out_dir)
    files = {q: export_gguf(hf_dir, out_dir / f"model-{q.lower()}.gguf", q) for q in ("F32", "F16", "Q8_0")}
    if llama_cpp_or_none() is not None:
        files["Q4_K_M"] = llama_quantize(files["F32"], out_dir / "model-q4_k_m.gguf", "Q4_K_M")
    return files


_RAM_PROBE = """
import gc, sys, psutil, llama_cpp
p = psutil.Process()

def grow(path):
    gc.collect()
    before = p.memory_info().rss
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=256, n_threads=1, verbose=False)
    llm.eval(list(range(4, 260)))
    after = p.memory_info().rss
    del llm
    return after - before

print(grow(sys.argv[1]))               # warm-up: the first load also pays llama.cpp's buffers and runtime
for path in sys.argv[1:]:
    print(grow(path))
"""


def ram_mib(paths: Sequence[str | Path]) -> tuple[float, list[float]]:
    """RSS growth (MiB) from before ``Llama(path)`` to after a 256-token evaluation, in one fresh process:
    ``(first load of paths[0], [each path in turn after that])``. The first load pays llama.cpp's
    runtime, KV cache and compute buffers; later loads reuse that memory, so their growth is about the
    weights themselves (each model is freed before the next)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _RAM_PROBE, *map(str, paths)], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    vals = [int(v) / 2**20 for v in out[-len(paths) - 1:]]
    return vals[0], vals[1:]


def measure(path: Path, windows: list[list[int]], gen_tokens: int, n_threads: int = 1,
            ram: float = float("nan")) -> dict[str, float]:
    """One row of the table: file MiB, RAM (``ram``, from :func:`ram_mib`), decode tok/s, perplexity."""
    llm = load_llama(path, n_threads=n_threads)
    nll, count = 0.0, 0
    for w in windows:
        a, b = nll_from_logits(llama_logits(llm, w), w)
        nll, count = nll + a, count + b
    prompt = windows[0][:16]
    llm.reset()
    t0 = time.perf_counter()
    n = 0
    for _ in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        n += 1
        if n >= gen_tokens:
            break
    dt = time.perf_counter() - t0
    del llm
    return {"file_mib": path.stat().st_size / 2**20, "ram_mib": ram, "tok_s": n / dt,
            "ppl": math.exp(nll / count)}


def hf_perplexity(model, windows: list[list[int]]) -> float:
    nll, count = 0.0, 0
    for w in windows:
        a, b = nll_from_logits(hf_logits(model, w), w)
        nll, count = nll + a, count + b
    return math.exp(nll / count)


def format_table(rows: dict[str, dict[str, float]], hf_ppl: float, types: dict[str, dict[str, int]]) -> str:
    lines = ["| quant | file (MiB) | RAM growth (MiB) | decode tok/s | perplexity | Δ ppl vs HF fp32 | tensor types |",
             "|---|---|---|---|---|---|---|"]
    for q, r in rows.items():
        tt = ", ".join(f"{k}×{v}" for k, v in types.get(q, {}).items())
        lines.append(f"| {q} | {r['file_mib']:.2f} | {r['ram_mib']:.1f} | {r['tok_s']:.0f} | {r['ppl']:.3f} | "
                     f"{100 * (r['ppl'] / hf_ppl - 1):+.2f}% | {tt} |")
    return "\n".join(lines)


def check(ok: bool, what: str, failures: list[str]) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def run_pipeline(n_windows: int, gen_tokens: int, n_threads: int, out_dir: Path, hf_dir: Path | None = None) -> int:
    """Export, check against HF, quantize, run with llama.cpp, print the table; non-zero exit on a failed check."""
    seed_everything(0)
    hf_dir = hf_dir or curriculum_model_path("main") / "hf"
    failures: list[str] = []
    t0 = time.perf_counter()
    files = export_all(hf_dir, out_dir)
    print(f"exported {', '.join(files)} to {out_dir} in {time.perf_counter() - t0:.1f} s")
    model, tok = hf_model_and_tokenizer(hf_dir)
    text = "Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog."
    ids = [0] + tok(text, add_special_tokens=False)["input_ids"]
    ref = hf_logits(model, ids)

    print("1. our GGUF, read back and run in NumPy (llama.cpp's conventions), vs HF fp32 logits:")
    for q in ("F32", "Q8_0"):      # F16 is checked by llama.cpp below
        err = float(np.abs(gguf_forward(files[q], ids) - ref).max())
        tol = {"F32": 1e-4, "Q8_0": 0.15}[q]
        check(err < tol, f"{q}: max |Δlogit| = {err:.2e} (tolerance {tol})", failures)
    name = "blk.0.attn_q.weight"
    same = gguf_tensor_bytes(files["Q8_0"])[name] == gguf.quants.quantize(
        gguf_weights(files["F32"])[1][name], GGMLQuantizationType.Q8_0).tobytes()
    check(same, f"our Q8_0 bytes of {name} == gguf.quants.quantize (bit-exact)", failures)

    llama_cpp = llama_cpp_or_none()
    if llama_cpp is None:
        print("llama-cpp-python is not installed: the llama.cpp half is skipped "
              "(pip install llama-cpp-python==0.3.36; see README)")
        return 1 if failures else 0
    print(f"2. llama.cpp {getattr(llama_cpp, '__version__', '?')} (llama-cpp-python) on CPU vs HF fp32:")
    llm = load_llama(files["F16"], n_threads=n_threads)
    err = float(np.abs(llama_logits(llm, ids) - ref).max())
    check(err < 0.05, f"F16 logits: max |Δlogit| = {err:.2e} (tolerance 0.05)", failures)
    g_hf = hf_greedy(model, ids[:8], 40)
    g_ll = llama_greedy(llm, ids[:8], 40)
    check(g_hf == g_ll, f"greedy 40 tokens identical (HF {len(g_hf)}, llama.cpp {len(g_ll)})", failures)
    valid = dataset_path("tinystories", TOKENS_TEXT).read_text(encoding="utf-8")[:20000]
    hf_ids = tok(valid, add_special_tokens=False)["input_ids"]
    ll_ids = llm.tokenize(valid.encode("utf-8"), add_bos=False, special=False)
    check(hf_ids == ll_ids, f"tokenization of 20k chars of TinyStories: {len(hf_ids)} ids, identical", failures)
    requant = llama_quantize(files["F32"], out_dir / "llama-q8_0.gguf", "Q8_0")
    check(gguf_tensor_bytes(files["Q8_0"]) == gguf_tensor_bytes(requant), "every tensor of our Q8_0 file == llama.cpp's own Q8_0 quantization of our F32 file", failures)
    del llm
    print("   Q4_K_M tensor types written by llama.cpp:", tensor_type_counts(files["Q4_K_M"]))

    windows = eval_windows(tok, n_windows)
    hf_ppl = hf_perplexity(model, windows)
    first, per_file = ram_mib([files[q] for q in QUANTS])
    rams = dict(zip(QUANTS, per_file))
    rows = {q: measure(files[q], windows, gen_tokens, n_threads, rams[q]) for q in QUANTS}
    types = {q: tensor_type_counts(files[q]) for q in QUANTS}
    print(f"3. the table: {n_windows} windows x 256 tokens of TinyStories validation, HF fp32 ppl {hf_ppl:.3f}, "
          f"decode {gen_tokens} tokens, {n_threads} thread(s); RAM growth of a load after a first one "
          f"(the first load of the F32 file grew RSS by {first:.1f} MiB: weights + llama.cpp's buffers):")
    table = format_table(rows, hf_ppl, types)
    print(table)
    (out_dir / "table.md").write_text(table + "\n", encoding="utf-8")
    check(abs(rows["F32"]["ppl"] / hf_ppl - 1) < 1e-3, "llama.cpp F32 perplexity == HF's (within 0.1%)", failures)
    check(rows["Q8_0"]["ppl"] / hf_ppl - 1 < 0.01, "Q8_0 perplexity within 1% of fp32", failures)
    check(rows["Q4_K_M"]["file_mib"] < rows["Q8_0"]["file_mib"] < rows["F16"]["file_mib"],
          "file size: Q4_K_M < Q8_0 < F16", failures)

    with serve_in_thread(files["Q8_0"]) as ep:
        r = ep.client().chat.completions.create(model=ep.model, messages=[{"role": "user", "content": "Tell me a story."}],
                                                max_tokens=24, temperature=0)
        print(f"4. server {ep.base_url}: {r.choices[0].message.content!r}")
        check(r.usage.completion_tokens > 0, "OpenAI-compatible server answered a chat completion", failures)
    print("ALL CHECKS PASSED" if not failures else f"{len(failures)} CHECK(S) FAILED: {failures}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", action="store_true", help="small mode: the README table on more text")
    ap.add_argument("--chat", action="store_true", help="chat in the terminal")
    ap.add_argument("--serve", action="store_true", help="OpenAI-compatible server")
    ap.add_argument("--gguf", type=Path, default=None, help="GGUF file for --chat/--serve (default: exported Q8_0)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--hf", type=Path, default=None, help="another HF Llama folder (full mode; default: the curriculum model)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()             # quiet self-test output (process-wide, so
    transformers.utils.logging.disable_progress_bar()      # here in main, not in the library functions)
    out_dir = OUTPUTS / "gguf"
    if args.chat or args.serve:
        path = args.gguf or out_dir / "model-q8_0.gguf"
        if not path.exists():
            export_gguf(curriculum_model_path("main") / "hf", path, "Q8_0")
        if args.chat:
            return chat_cli(path)
        import uvicorn

        uvicorn.run(create_app(path), host="127.0.0.1", port=args.port, log_level="info")
        return 0
    if args.bench:
        return run_pipeline(n_windows=16, gen_tokens=128, n_threads=args.threads or 1, out_dir=out_dir, hf_dir=args.hf)
    return run_pipeline(n_windows=2, gen_tokens=32, n_threads=args.threads or 1, out_dir=out_dir)


if __name__ == "__main__":
    sys.exit(main())

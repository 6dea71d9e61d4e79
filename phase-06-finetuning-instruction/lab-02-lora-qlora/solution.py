"""Lab 6.2: LoRA and QLoRA from scratch, checked against peft and bitsandbytes.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") freezes a pretrained
weight W0 (d_out x d_in) and learns a low-rank update next to it:

    y = W0 x + (alpha / r) * B (A x),      A: (r, d_in), B: (d_out, r), r << min(d_in, d_out)

A starts random (Kaiming-uniform), B starts at zero, so the adapted model is the base model at
step 0. Only r * (d_in + d_out) numbers per matrix train. After training, B A can be folded into
W0 (``merge``): inference costs exactly what the base model costs.

QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs") keeps the frozen base
in 4 bits while the adapters stay in 16/32 bits:

* NF4: 16 levels placed at quantiles of N(0, 1), scaled into [-1, 1]; each block of 64 weights is
  divided by its absmax and every value is stored as the index (4 bits) of the nearest level;
* double quantization: the per-block absmax (fp32, 0.5 bit/weight) is itself quantized to 8 bits
  in blocks of 256 (after subtracting its mean), leaving ~0.127 bit/weight of overhead;
* the forward pass dequantizes the weight to the compute dtype and runs a normal matmul; the
  gradient flows through it into the adapters only.

Everything here works on any ``nn.Module`` whose projections are ``nn.Linear`` children with known
names: the curriculum's Hugging Face ``LlamaForCausalLM`` (the comparison target for peft), any HF
model id in full mode, and our own MiniGPT (``qkv``, ``proj``, ``fc``, ``gate``).

Run: ``python solution.py`` (small mode, CPU, about a minute) or
``python solution.py --full --model Qwen/Qwen2-0.5B`` (a GPU; same code path, bigger sizes).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent

__all__ = [
    "LLAMA_TARGETS",
    "MINIGPT_TARGETS",
    "LoRAConfig",
    "LoRALinear",
    "NF4Linear",
    "NF4Weight",
    "apply_lora",
    "count_params",
    "dequantize_blockwise",
    "dequantize_nf4",
    "dynamic_map_8bit",
    "expected_lora_params",
    "int4_codebook",
    "load_adapter",
    "load_base_model",
    "load_shakespeare_ids",
    "lora_state_dict",
    "merge_lora",
    "model_memory_bytes",
    "nf4_codebook",
    "perplexity",
    "quantize_blockwise",
    "quantize_model_nf4",
    "quantize_nf4",
    "save_adapter",
    "train_lora",
    "unmerge_lora",
]

#: every projection of a Llama/Mistral/Qwen2 block (the QLoRA paper's "all linear layers")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: the same projections in lab 4.4's MiniGPT (fused qkv, attention out, SwiGLU fc/gate/proj)
MINIGPT_TARGETS = ("qkv", "proj", "fc", "gate")
NF4_OFFSET = 0.9677083  # the outermost quantile used for NF4's levels (QLoRA, appendix E)


# ============================================================================ LoRA
@dataclass
class LoRAConfig:
    """Hyperparameters of a LoRA adapter set.

    Attributes:
        r: rank of the update (A is r x d_in, B is d_out x r). Typical 8-64.
        alpha: the update is scaled by alpha / r, so changing r does not change the
            update's size at init-time learning rates (alpha = 2r is a common default).
        dropout: dropout on the adapter's input only (the frozen path never sees it).
        target_modules: last components of module names to adapt (``"q_proj"`` matches
            ``model.layers.3.self_attn.q_proj``).

    Raises:
        ValueError: r < 1, alpha <= 0, dropout outside [0, 1), or no target names.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LLAMA_TARGETS

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be a positive int, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout!r}")
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise ValueError("target_modules is empty: name at least one projection to adapt")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update (Hu et al. 2021).

    ``forward(x) = base(x) + (alpha / r) * dropout(x) @ A.T @ B.T`` while unmerged;
    ``base(x)`` alone once ``merge()`` has folded ``(alpha / r) * B @ A`` into ``base.weight``.

    Args:
        base: an ``nn.Linear`` (mergeable) or an ``NF4Linear`` (QLoRA: not mergeable in place).
            Its parameters are frozen (``requires_grad = False``).
        r, alpha, dropout: see :class:`LoRAConfig`.

    Shapes: x (..., d_in) -> (..., d_out). ``lora_A`` (r, d_in) and ``lora_B`` (d_out, r) are
    float32 parameters on the base's device (the "16/32-bit adapters" of QLoRA).

    Raises:
        TypeError: ``base`` has no ``in_features`` / ``out_features``.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not (hasattr(base, "in_features") and hasattr(base, "out_features")):
            raise TypeError(f"LoRALinear wraps a linear layer, got {type(base).__name__}")
        LoRAConfig(r=r, alpha=alpha, dropout=dropout)  # validates
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        device = next((t.device for t in base.state_dict().values()), torch.device("cpu"))
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A ~ Kaiming-uniform (the default init of an ``nn.Linear(d_in, r)``, a = sqrt(5)); B = 0."""
        # BEGIN SOLUTION nn.init.kaiming_uniform_ on lora_A with a=math.sqrt(5) (what nn.Linear and peft use); nn.init.zeros_ on lora_B, so B @ A = 0 and the model starts as the base model (easy, ~5 min)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        # END SOLUTION

    def delta_weight(self) -> torch.Tensor:
        """The update this adapter adds to the base weight: ``(alpha / r) * B @ A``, shape (d_out, d_in)."""
        # BEGIN SOLUTION B @ A is (d_out, r) @ (r, d_in); do not forget the alpha / r scaling (easy, ~3 min)
        return (self.lora_B @ self.lora_A) * self.scaling
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BEGIN SOLUTION merged: just base(x). Otherwise base(x) + scaling * ((dropout(x) @ A.T) @ B.T); compute the thin product x@A.T first (never build B@A per call), run it in lora_A's dtype and cast the sum back to base(x)'s dtype (medium, ~10 min)
        result = self.base(x)
        if self.merged:
            return result
        h = self.dropout(x).to(self.lora_A.dtype)
        update = (h @ self.lora_A.T) @ self.lora_B.T
        return result + (update * self.scaling).to(result.dtype)
        # END SOLUTION

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the frozen weight: ``W <- W + (alpha / r) B A``; forward then skips the adapter.

        Raises:
            RuntimeError: already merged, or the base is 4-bit (an NF4 weight cannot absorb a
                float update without re-quantizing: merge into a float copy of the base instead).
        """
        # BEGIN SOLUTION refuse a second merge and a non-nn.Linear base (RuntimeError with a clear message); add delta_weight() (cast to the weight's dtype) to base.weight in place; set self.merged (easy, ~5 min)
        if self.merged:
            raise RuntimeError("adapter is already merged: merging twice would add B A twice")
        if not isinstance(self.base, nn.Linear):
            raise RuntimeError(f"cannot merge into a {type(self.base).__name__} base: dequantize it to a float "
                               "nn.Linear first (merge_and_unload on a 16/32-bit copy of the base)")
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True
        # END SOLUTION

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (``W <- W - (alpha / r) B A``). Raises RuntimeError when not merged."""
        # BEGIN SOLUTION the inverse of merge: RuntimeError if not merged, subtract delta_weight(), clear the flag (easy, ~3 min)
        if not self.merged:
            raise RuntimeError("adapter is not merged: nothing to unmerge")
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False
        # END SOLUTION

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}, merged={self.merged}"


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Wrap every targeted linear layer of ``model`` in a :class:`LoRALinear`, in place, and
    freeze everything else, so only the adapters train.

    A module is targeted when the last component of its name is in ``config.target_modules``
    and it is an ``nn.Linear`` or an :class:`NF4Linear`. Modules are visited in
    ``named_modules()`` order, which is the order of the returned names.

    Returns:
        The names of the adapted modules (e.g. ``model.layers.0.self_attn.q_proj``).

    Raises:
        ValueError: nothing matched (a typo in target_modules would otherwise train nothing),
            or the model already has LoRA layers.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model already has LoRA layers: apply_lora once per model")
    # BEGIN SOLUTION freeze every parameter first; collect (name, module) pairs whose name.rsplit('.', 1)[-1] is a target and that are nn.Linear / NF4Linear (collect BEFORE replacing: never mutate while iterating named_modules); ValueError listing what exists if none; replace each with setattr(parent, child_name, LoRALinear(...)) using model.get_submodule(parent_name) (medium, ~20 min)
    for p in model.parameters():
        p.requires_grad_(False)
    found = [(name, mod) for name, mod in model.named_modules()
             if name.rsplit(".", 1)[-1] in config.target_modules and isinstance(mod, (nn.Linear, NF4Linear))]
    if not found:
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no module matched target_modules={config.target_modules}; "
                         f"the model's linear layers are named {linears}")
    for name, mod in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(mod, config.r, config.alpha, config.dropout))
    return [name for name, _ in found]
    # END SOLUTION


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """``{module name: LoRALinear}`` in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter of ``model`` into its base weight (see :meth:`LoRALinear.merge`)."""
    for m in lora_layers(model).values():
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`."""
    for m in lora_layers(model).values():
        m.unmerge()
    return model


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, counting each shared tensor once.

    4-bit weights stored as packed uint8 buffers (NF4Linear) count as the number of weights they
    hold, which is how peft's ``get_nb_trainable_parameters`` counts bitsandbytes' ``Params4bit``.
    """
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    for m in model.modules():
        if isinstance(m, NF4Linear):
            total += m.in_features * m.out_features
    return trainable, total


def expected_lora_params(shapes: list[tuple[int, int]], r: int) -> int:
    """Trainable parameters of rank-``r`` adapters on matrices of the given ``(d_out, d_in)`` shapes:
    ``sum r * (d_in + d_out)`` (``2 * d * r`` for a square d x d matrix).

    Raises:
        ValueError: r < 1 or a non-positive dimension.
    """
    if r < 1 or any(d < 1 for s in shapes for d in s):
        raise ValueError(f"r and every dimension must be >= 1, got r={r}, shapes={shapes}")
    # BEGIN SOLUTION A is r x d_in and B is d_out x r for every matrix; sum them (easy, ~3 min)
    return sum(r * (d_in + d_out) for d_out, d_in in shapes)
    # END SOLUTION


# ----------------------------------------------------------------------------- adapter files
PEFT_PREFIX = "base_model.model."


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters only, under peft's key names
    (``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``), contiguous CPU copies."""
    out = {}
    for name, m in lora_layers(model).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.detach().cpu().contiguous().clone()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B.detach().cpu().contiguous().clone()
    return out


def save_adapter(model: nn.Module, folder: str | Path, config: LoRAConfig, base_model: str = "") -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` in peft's format, so
    ``peft.PeftModel.from_pretrained(base, folder)`` loads our adapter (and :func:`load_adapter`
    loads peft's). Only the adapters are written: a few hundred KB here, ~50-150 MB for a 7B.

    Returns:
        The folder. Raises ValueError when the model has no LoRA layers or an adapter is merged
        (a merged adapter's weights are already inside the base: saving it alone would mislead).
    """
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers: call apply_lora first")
    if any(m.merged for m in layers.values()):
        raise ValueError("unmerge the adapters before saving them (unmerge_lora)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(model), str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "target_modules": sorted(config.target_modules), "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    (folder / "adapter_config.json").write_text(json.dumps(peft_config, indent=2), encoding="utf-8")
    return folder


def load_adapter(model: nn.Module, folder: str | Path) -> LoRAConfig:
    """Apply LoRA to a fresh base ``model`` as ``folder``'s ``adapter_config.json`` says, and load
    the adapter weights (ours or peft's ``save_pretrained``). Returns the config.

    Raises:
        FileNotFoundError: missing files. ValueError: keys that do not match the model's
            adapters (wrong base model or target modules) or shape mismatches.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: is {folder} an adapter folder?")
    raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    if raw.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"not a LoRA adapter: peft_type={raw.get('peft_type')!r}")
    targets = raw["target_modules"]
    config = LoRAConfig(r=int(raw["r"]), alpha=float(raw["lora_alpha"]), dropout=float(raw.get("lora_dropout", 0.0)),
                        target_modules=tuple([targets] if isinstance(targets, str) else targets))
    apply_lora(model, config)
    state = load_file(str(w_path))
    ours = lora_state_dict(model)
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or unexpected:
        raise ValueError(f"adapter keys do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, m in lora_layers(model).items():
        for which in ("A", "B"):
            t = state[f"{PEFT_PREFIX}{name}.lora_{which}.weight"]
            param = getattr(m, f"lora_{which}")
            if t.shape != param.shape:
                raise ValueError(f"{name}.lora_{which}: shape {tuple(t.shape)} in the file, {tuple(param.shape)} in the model")
            with torch.no_grad():
                param.copy_(t)
    return config


# ============================================================================ NF4 (QLoRA)
def nf4_codebook() -> torch.Tensor:
    """The 16 NormalFloat-4 levels, sorted, float32, in [-1, 1] with an exact 0 (Dettmers et al. 2023).

    Construction: 8 positive levels at the N(0, 1) quantiles of ``linspace(0.9677083, 0.5, 9)[:-1]``,
    7 negative levels at minus the quantiles of ``linspace(0.9677083, 0.5, 8)[:-1]``, and 0; sorted
    and divided by the largest (so the extremes are -1 and +1). The asymmetry buys an exact zero
    with all 16 codes used.
    """
    # BEGIN SOLUTION the N(0,1) inverse CDF is torch.special.ndtri; compute in float64, concatenate positives, [0.0] and negatives, sort, divide by the max, cast to float32 (medium, ~10 min)
    pos = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (levels / levels.max()).float()
    # END SOLUTION


def int4_codebook() -> torch.Tensor:
    """Symmetric absmax INT4 levels, ``k / 7`` for k in -7..7 (15 levels), for comparison with NF4."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def dynamic_map_8bit() -> torch.Tensor:
    """The 256-entry signed 8-bit "dynamic" code bitsandbytes uses for the second quantization
    (Dettmers 2016, "8-Bit Approximations for Parallelism in Deep Learning"), sorted, float32.

    One sign bit; the remaining 7 bits split between a run of leading zeros (the decimal exponent,
    10^-6 .. 10^0) and a linear fraction whose resolution grows as the exponent shrinks; plus 0
    and 1. Values span [-1, 1] with fine steps near zero.
    """
    values: list[float] = []
    for i in range(7):  # exponent 10^(i-6); 2^i fraction steps between 0.1 and 1
        edges = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        mids = ((edges[:-1] + edges[1:]) / 2).tolist()
        values += [10.0 ** (i - 6) * m for m in mids] + [-(10.0 ** (i - 6)) * m for m in mids]
    values += [0.0, 1.0]
    return torch.tensor(sorted(values), dtype=torch.float32)


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax quantization to the nearest entry of a sorted codebook.

    The flattened ``x`` is cut into blocks of ``blocksize`` (the last one may be shorter); each
    block is divided by its absmax (so it lies in [-1, 1]) and each value is replaced by the index
    of the nearest code entry.

    Args:
        x: float tensor, any shape, finite.
        code: sorted 1-D float32 codebook in [-1, 1] (16 entries for 4 bits, 256 for 8).
        blocksize: values per block (> 0).

    Returns:
        ``(idx, absmax)``: idx (numel,) uint8 code indices; absmax (ceil(numel / blocksize),)
        float32. An all-zero block has absmax 0 and decodes to zeros.

    Raises:
        ValueError: empty or non-finite x, blocksize < 1, code not sorted or longer than 256.
    """
    if x.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantize a tensor with NaN or inf values")
    if blocksize < 1:
        raise ValueError(f"blocksize must be >= 1, got {blocksize}")
    if code.ndim != 1 or len(code) > 256 or not bool((code[1:] >= code[:-1]).all()):
        raise ValueError("code must be a sorted 1-D tensor with at most 256 entries")
    # BEGIN SOLUTION flatten to float32, zero-pad to a multiple of blocksize (zeros never change an absmax), view (n_blocks, blocksize), absmax per row; scale = x / absmax (0 where absmax is 0), clamp to [-1, 1]; nearest code index = torch.bucketize(scaled, midpoints between neighbouring codes); drop the padding; uint8 (medium, ~20 min)
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    pad = (-n) % blocksize
    blocks = F.pad(flat, (0, pad)).view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).clamp(-1, 1).reshape(-1)[:n]
    code = code.to(flat.device, torch.float32)
    idx = torch.bucketize(scaled, (code[:-1] + code[1:]) / 2)
    return idx.to(torch.uint8), absmax
    # END SOLUTION


def dequantize_blockwise(idx: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: ``code[idx] * absmax[block]``, flat float32 (numel,).

    Raises:
        ValueError: absmax has the wrong number of blocks for ``idx`` and ``blocksize``.
    """
    n = idx.numel()
    if absmax.numel() != -(-n // blocksize):
        raise ValueError(f"{n} values in blocks of {blocksize} need {-(-n // blocksize)} absmax values, "
                         f"got {absmax.numel()}")
    # BEGIN SOLUTION look up code[idx.long()], then multiply value i by absmax[i // blocksize] (repeat_interleave, cut to n) (easy, ~5 min)
    scale = absmax.float().repeat_interleave(blocksize)[:n]
    return code.to(idx.device, torch.float32)[idx.reshape(-1).long()] * scale
    # END SOLUTION


@dataclass
class NF4Weight:
    """A weight stored as NF4 (what bitsandbytes' ``Params4bit`` + ``QuantState`` hold).

    Attributes:
        packed: (ceil(numel / 2),) uint8, two 4-bit codes per byte, the first value of each pair
            in the HIGH nibble (bitsandbytes' layout).
        absmax: (n_blocks,) float32 per-block scales, or, with double quantization, their
            8-bit codes (uint8) to be decoded with ``absmax2`` / ``offset``.
        shape, dtype: of the original weight.  blocksize: values per NF4 block (64).
        absmax2: (ceil(n_blocks / dq_blocksize),) float32 scales of the second quantization, or None.
        offset: mean of the fp32 absmax, subtracted before the second quantization (0.0 without it).
        dq_blocksize: absmax values per second-level block (256).
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype
    blocksize: int = 64
    absmax2: torch.Tensor | None = None
    offset: float = 0.0
    dq_blocksize: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax2 is not None

    @property
    def nbytes(self) -> int:
        """Bytes actually stored: packed codes + scales (+ second-level scales and the offset)."""
        n = self.packed.numel() * self.packed.element_size() + self.absmax.numel() * self.absmax.element_size()
        if self.absmax2 is not None:
            n += self.absmax2.numel() * self.absmax2.element_size() + 4
        return n


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = True,
                 dq_blocksize: int = 256) -> NF4Weight:
    """Quantize a weight to NF4 with optional double quantization (QLoRA section 3).

    Steps: blockwise NF4 (:func:`quantize_blockwise` with :func:`nf4_codebook`, blocks of 64);
    pack two codes per byte, first in the high nibble; with ``double_quant``, subtract the mean of
    the absmax values and quantize the result with :func:`dynamic_map_8bit` in blocks of 256.
    Matches ``bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
    compress_statistics=double_quant)`` code for code.

    Args:
        w: float16 / bfloat16 / float32 tensor, any shape, finite.

    Returns:
        An :class:`NF4Weight`; :func:`dequantize_nf4` turns it back into a tensor.

    Raises:
        TypeError: w is not a floating tensor. ValueError: empty / non-finite (from quantize_blockwise).
    """
    if not torch.is_floating_point(w):
        raise TypeError(f"quantize_nf4 needs a floating-point weight, got {w.dtype}")
    # BEGIN SOLUTION idx, absmax = quantize_blockwise(w, nf4_codebook(), blocksize); pad idx to an even length with 7 (the zero level), packed = (idx[0::2] << 4) | idx[1::2]; with double_quant: offset = absmax.mean(), (q_absmax, absmax2) = quantize_blockwise(absmax - offset, dynamic_map_8bit(), dq_blocksize) and store q_absmax in place of absmax (medium, ~20 min)
    idx, absmax = quantize_blockwise(w, nf4_codebook(), blocksize)
    if idx.numel() % 2:  # odd count: pad with the zero level's index (7), as bitsandbytes does
        idx = torch.cat([idx, idx.new_full((1,), 7)])
    packed = (idx[0::2] << 4) | idx[1::2]
    out = NF4Weight(packed=packed, absmax=absmax, shape=tuple(w.shape), dtype=w.dtype, blocksize=blocksize,
                    dq_blocksize=dq_blocksize)
    if double_quant:
        offset = absmax.mean()
        out.absmax, out.absmax2 = quantize_blockwise(absmax - offset, dynamic_map_8bit(), dq_blocksize)
        out.offset = float(offset)
    return out
    # END SOLUTION


def dequantize_nf4(q: NF4Weight) -> torch.Tensor:
    """Inverse of :func:`quantize_nf4`: a tensor of ``q.shape`` and ``q.dtype``.

    With double quantization the absmax values are first decoded
    (``dequantize_blockwise(q.absmax, q.absmax2, dynamic_map_8bit(), dq_blocksize) + offset``).
    """
    # BEGIN SOLUTION decode the absmax first when q.double_quant; unpack: high nibble (packed >> 4) is the even value, low nibble (packed & 15) the odd one -> interleave with torch.stack(..., dim=1).reshape(-1), cut to numel; dequantize_blockwise; reshape, cast to q.dtype (medium, ~15 min)
    absmax = q.absmax
    if q.double_quant:
        absmax = dequantize_blockwise(q.absmax, q.absmax2, dynamic_map_8bit(), q.dq_blocksize) + q.offset
    n = math.prod(q.shape)
    idx = torch.stack([q.packed >> 4, q.packed & 0xF], dim=1).reshape(-1)[:n]
    return dequantize_blockwise(idx, absmax, nf4_codebook(), q.blocksize).reshape(q.shape).to(q.dtype)
    # END SOLUTION


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight lives in NF4 and is dequantized on every forward
    (QLoRA's "storage dtype 4 bit, compute dtype 16/32 bit").

    Build it with :meth:`from_linear`. Shapes: x (..., in_features) -> (..., out_features) in
    ``compute_dtype``. Stores buffers (packed codes, scales), no parameters except an optional
    frozen bias, so ``.to(device)`` moves it and an optimizer never sees the base weight.
    """

    def __init__(self, q: NF4Weight, bias: torch.Tensor | None, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.blocksize, self.dq_blocksize, self.offset, self.orig_dtype = q.blocksize, q.dq_blocksize, q.offset, q.dtype
        self.compute_dtype = compute_dtype
        self.register_buffer("packed", q.packed)
        self.register_buffer("absmax", q.absmax)
        self.register_buffer("absmax2", q.absmax2)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = 64, double_quant: bool = True,
                    compute_dtype: torch.dtype = torch.float32) -> NF4Linear:
        return cls(quantize_nf4(linear.weight.detach(), blocksize, double_quant), linear.bias, compute_dtype)

    def nf4_weight(self) -> NF4Weight:
        return NF4Weight(self.packed, self.absmax, (self.out_features, self.in_features), self.orig_dtype,
                         self.blocksize, self.absmax2, self.offset, self.dq_blocksize)

    @property
    def nbytes(self) -> int:
        return self.nf4_weight().nbytes + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize_nf4(self.nf4_weight()).to(self.compute_dtype)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return F.linear(x.to(self.compute_dtype), w, bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, blocksize={self.blocksize}, dq={self.absmax2 is not None}"


def quantize_model_nf4(model: nn.Module, skip: tuple[str, ...] = ("lm_head",), blocksize: int = 64,
                       double_quant: bool = True, compute_dtype: torch.dtype = torch.float32) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` by an :class:`NF4Linear`, in place, except modules
    whose last name component is in ``skip`` (transformers keeps ``lm_head`` in full precision too).
    Freezes every parameter. Returns the names of the quantized modules."""
    for p in model.parameters():
        p.requires_grad_(False)
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] not in skip]
    for name, mod in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, NF4Linear.from_linear(mod, blocksize, double_quant, compute_dtype))
    return [n for n, _ in found]


def model_memory_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (each tensor once): the weights' memory footprint,
    what ``transformers``' ``get_memory_footprint()`` reports for the same model."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


# ============================================================================ data, training, eval
def load_base_model(name_or_path: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: an HF causal LM in eval mode. ``None`` is the curriculum model
    (``curriculum_model_path("main") / "hf"``); full mode passes any HF model id or folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if name_or_path is None:
        from labkit import curriculum_model_path

        name_or_path = curriculum_model_path("main") / "hf"
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(name_or_path)
    return model, tok


def load_shakespeare_ids(tokenizer, train_chars: int = 200_000, val_chars: int = 40_000,
                         bos_id: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny Shakespeare (data mirror) as token ids: the first ``train_chars`` characters for
    training, the last ``val_chars`` for held-out perplexity (disjoint; 0 means all available).

    Each paragraph (speech) is a document, prefixed with ``bos_id`` when given (the curriculum
    model was trained with ``<|endoftext|>`` before every story). Returns two int64 1-D tensors.

    Raises:
        ValueError: the two slices would overlap.
    """
    from labkit import read_text

    text = read_text("tinyshakespeare", "input.txt")
    train_chars = train_chars or len(text) * 9 // 10
    val_chars = val_chars or len(text) - train_chars
    if train_chars + val_chars > len(text):
        raise ValueError(f"train_chars + val_chars = {train_chars + val_chars} exceeds the {len(text)} characters")

    def encode(part: str) -> torch.Tensor:
        ids: list[int] = []
        for para in part.split("\n\n"):
            if para.strip():
                ids += ([bos_id] if bos_id is not None else []) + tokenizer.encode(para.strip() + "\n",
                                                                                   add_special_tokens=False)
        return torch.tensor(ids, dtype=torch.long)

    return encode(text[:train_chars]), encode(text[len(text) - val_chars:])


def _logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    out = model(idx)
    if isinstance(out, tuple):  # MiniGPT returns (logits, loss)
        return out[0]
    return out.logits


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, block_size: int = 128, batch_size: int = 16) -> float:
    """exp(mean next-token cross-entropy) over non-overlapping windows of ``block_size + 1`` tokens.

    Raises:
        ValueError: fewer than ``block_size + 1`` tokens.
    """
    n_win = (len(ids) - 1) // block_size
    if n_win < 1:
        raise ValueError(f"need more than {block_size} tokens for one window, got {len(ids)}")
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    windows = torch.stack([ids[i * block_size: i * block_size + block_size + 1] for i in range(n_win)])
    for b in range(0, n_win, batch_size):
        w = windows[b: b + batch_size]
        logits = _logits(model, w[:, :-1]).float()
        nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1), reduction="sum").item()
        count += w[:, 1:].numel()
    model.train(was_training)
    return math.exp(nll / count)


def train_lora(model: nn.Module, ids: torch.Tensor, *, steps: int = 100, batch_size: int = 8, block_size: int = 128,
               lr: float = 2e-3, weight_decay: float = 0.0, seed: int = 0, progress: bool = False) -> list[float]:
    """Causal-LM fine-tuning of the trainable parameters only (AdamW, linear warmup over the
    first 10% of steps, then constant). Random windows from a seeded generator. Returns the
    per-step training losses.

    Raises:
        ValueError: the model has no trainable parameters (call apply_lora first).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: call apply_lora(model, config) first")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # LoRA dropout masks
    warmup = max(1, steps // 10)
    losses = []
    model.train()
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="lora", leave=False)
    for step in it:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        starts = torch.randint(0, len(ids) - block_size - 1, (batch_size,), generator=g)
        batch = torch.stack([ids[s: s + block_size + 1] for s in starts.tolist()])
        logits = _logits(model, batch[:, :-1]).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


# ============================================================================ references (self-test)
def peft_model(base: nn.Module, config: LoRAConfig):
    """``peft.get_peft_model`` on ``base`` with the same r / alpha / dropout / targets."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    pc = PeftLoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                        target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, pc)


def copy_lora_into_peft(ours: nn.Module, peft_m: nn.Module) -> None:
    """Copy our A/B into a peft model (keys: ``<prefix>.<module>.lora_A.default.weight``)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_m, lora_state_dict(ours))
    if [k for k in result.unexpected_keys if "lora_" in k]:
        raise ValueError(f"peft did not accept keys {result.unexpected_keys[:3]}")


def randomize_lora(model: nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every B a random value (B = 0 would hide any bug in the adapter path)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * std)


def bnb_qlora_model(path: str | Path, config: LoRAConfig, compute_dtype: torch.dtype = torch.float32,
                    double_quant: bool = True):
    """The library QLoRA: transformers + ``BitsAndBytesConfig`` (NF4, double quant) + peft."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb_cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                                 bnb_4bit_compute_dtype=compute_dtype)
    device_map = "auto" if torch.cuda.is_available() else "cpu"
    base = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_cfg, device_map=device_map,
                                                dtype=compute_dtype).eval()
    return peft_model(base, config)


# ============================================================================ self-test
def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="full mode: --model on a GPU, more data and steps")
    ap.add_argument("--model", default=None, help="HF model id or folder (default: the curriculum model)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default 30, full 1000)")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="base weights / compute dtype (default: bfloat16 with --full on a GPU, else float32)")
    ap.add_argument("--variants", default="lora,qlora,bnb-qlora",
                    help="which fine-tunings to run: lora (float base), qlora (our NF4), bnb-qlora (bitsandbytes + peft)")
    ap.add_argument("--skip-checks", action="store_true",
                    help="skip the equality checks against peft / bitsandbytes (they hold several float32 copies of "
                         "the model on the CPU: too much for a 7B)")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - {"lora", "qlora", "bnb-qlora"}:
        ap.error(f"--variants takes lora, qlora, bnb-qlora; got {args.variants!r}")
    torch.set_num_threads(1)
    from labkit import seed_everything
    from labkit.plots import plt, savefig

    t_start, c_start = time.perf_counter(), time.process_time()
    failures: list[str] = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if args.full and device == "cuda" else torch.float32)
    steps = args.steps or (1000 if args.full else 30)
    block = 256 if args.full else 128  # held-out perplexity windows
    train_block, batch, lr = (256, 16, 2e-4) if args.full else (64, 8, 3e-3)
    cfg = LoRAConfig(r=args.r, alpha=args.alpha, dropout=0.0)
    path = args.model
    if path is None:
        from labkit import curriculum_model_path

        path = curriculum_model_path("main") / "hf"
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # e.g. "sequence longer than the model's maximum" while tokenizing the corpus
    tok = AutoTokenizer.from_pretrained(path)
    idx = torch.randint(0, min(len(tok), 4096), (2, 64), generator=torch.Generator().manual_seed(args.seed))
    print(f"base model: {path}  device: {device}  dtype: {dtype}  LoRA r={cfg.r} alpha={cfg.alpha} targets={','.join(cfg.target_modules)}")

    base_weights: dict[str, torch.Tensor] = {}  # the adapted float weights (section 3; for the figure)
    if not args.skip_checks:
        # ---------------------------------------------------------------- 1. LoRA vs peft
        seed_everything(args.seed)
        ours, _ = load_base_model(path)
        base_ref, _ = load_base_model(path)
        with torch.no_grad():
            base_logits = _logits(ours, idx)
        names = apply_lora(ours, cfg)
        with torch.no_grad():
            init_diff = _diff(_logits(ours, idx), base_logits)
        randomize_lora(ours, args.seed)
        pm = peft_model(base_ref, cfg).eval()
        copy_lora_into_peft(ours, pm)
        with torch.no_grad():
            lo, lp = _logits(ours, idx), _logits(pm, idx)
            merge_lora(ours)
            lm = _logits(ours, idx)
            unmerge_lora(ours)
            lu = _logits(ours, idx)
        # train mode with dropout: the same seed draws the same masks in both implementations
        for m in lora_layers(ours).values():
            m.dropout = nn.Dropout(0.1)
        from peft.tuners.lora import LoraLayer

        for m in pm.modules():
            if isinstance(m, LoraLayer):
                m.lora_dropout["default"] = nn.Dropout(0.1)
        ours.train()
        pm.train()
        torch.manual_seed(1)
        ld_ours = _logits(ours, idx).detach()
        torch.manual_seed(1)
        ld_peft = _logits(pm, idx).detach()
        ours.eval()
        pm.eval()
        for m in lora_layers(ours).values():
            m.dropout = nn.Identity()
        rows = [("B = 0 at init: LoRA model vs base model", init_diff, 0.0),
                ("our LoRA vs peft LoraConfig, same A/B (eval)", _diff(lo, lp), 1e-5),
                ("our LoRA vs peft, train mode, dropout 0.1, same seed", _diff(ld_ours, ld_peft), 1e-5),
                ("merged vs unmerged", _diff(lm, lo), 1e-5),
                ("unmerged again vs before merge", _diff(lu, lo), 1e-5)]
        print("\nLogit equality (max |diff|, 2 x 64 random tokens):")
        print("| check | max abs diff | bound |")
        print("|---|---|---|")
        for name, d, bound in rows:
            print(f"| {name} | {d:.2e} | {bound:g} |")
            if not d <= bound:
                failures.append(name)

        # ---------------------------------------------------------------- 2. parameter counts
        layers = lora_layers(ours)
        shapes = {}
        for name, m in layers.items():
            shapes.setdefault(name.rsplit(".", 1)[-1], []).append((m.out_features, m.in_features))
        trainable, total = count_params(ours)
        peft_trainable, peft_total = pm.get_nb_trainable_parameters()
        formula = expected_lora_params([s for v in shapes.values() for s in v], cfg.r)
        print(f"\nTrainable parameters (r = {cfg.r}; {len(names)} adapted matrices):")
        print("| matrix | d_out x d_in | r(d_in+d_out) | full matrix |")
        print("|---|---|---|---|")
        for short, ss in shapes.items():
            d_out, d_in = ss[0]
            print(f"| {short} (x{len(ss)}) | {d_out} x {d_in} | {expected_lora_params([ss[0]], cfg.r):,} | {d_out * d_in:,} |")
        print(f"ours: trainable {trainable:,} / total {total:,} ({100 * trainable / total:.3f}%); "
              f"formula {formula:,}; peft get_nb_trainable_parameters: {peft_trainable:,} / {peft_total:,}")
        if not trainable == formula == peft_trainable or total != peft_total:
            failures.append("parameter counts")

        # ---------------------------------------------------------------- 3. NF4 vs bitsandbytes
        import bitsandbytes.functional as bnbF

        code_diff = _diff(nf4_codebook(), bnbF.get_4bit_type("nf4", device="cpu"))
        dyn_diff = _diff(dynamic_map_8bit(), bnbF.create_dynamic_map(signed=True))
        base_weights = {n: m.base.weight.detach().clone() for n, m in layers.items()}
        mism = tot = dq_mism = dq_tot = dq_worse = 0
        deq_d = 0.0
        err_nf4 = err_int4 = err_nf4_nodq = sq = 0.0
        for w in base_weights.values():
            q = quantize_nf4(w)
            pb, st = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
            mism += (q.packed != pb.reshape(-1)).sum().item()
            tot += q.packed.numel()
            dq_mism += (q.absmax != st.absmax).sum().item()
            dq_tot += q.absmax.numel()
            # where the two disagree, is ours the nearer code? (bnb's CPU kernel breaks near-ties its own way)
            x = (q.absmax2.repeat_interleave(256)[: q.absmax.numel()])
            target = (w.reshape(-1, 64).abs().amax(1) - q.offset) / x
            code8 = dynamic_map_8bit()
            dq_worse += ((target - code8[q.absmax.long()]).abs() > (target - code8[st.absmax.long()]).abs() + 1e-7).sum().item()
            dq = dequantize_nf4(q)
            deq_d = max(deq_d, _diff(dq, bnbF.dequantize_4bit(pb, st)))
            idx4, am4 = quantize_blockwise(w, int4_codebook(), 64)
            err_nf4 += (dq - w).pow(2).sum().item()
            err_nf4_nodq += (dequantize_nf4(quantize_nf4(w, double_quant=False)) - w).pow(2).sum().item()
            err_int4 += (dequantize_blockwise(idx4, am4, int4_codebook(), 64).view_as(w) - w).pow(2).sum().item()
            sq += w.pow(2).sum().item()
        print("\nNF4 from scratch vs bitsandbytes 0.50 (CPU tensors; the adapted weights of the model):")
        print("| check | value |")
        print("|---|---|")
        print(f"| NF4 codebook max diff vs bnb get_4bit_type('nf4') | {code_diff:.2e} |")
        print(f"| 8-bit dynamic map max diff vs bnb create_dynamic_map | {dyn_diff:.2e} |")
        print(f"| packed bytes differing from quantize_4bit(nf4, double quant) | {mism} of {tot:,} |")
        print(f"| double quant: 8-bit absmax codes differing from bnb's | {dq_mism} of {dq_tot:,} "
              f"(ours farther from the value: {dq_worse}) |")
        print(f"| dequantized max diff vs dequantize_4bit | {deq_d:.2e} |")
        print(f"| relative weight error NF4 + double quant | {math.sqrt(err_nf4 / sq):.4f} |")
        print(f"| relative weight error NF4, fp32 absmax | {math.sqrt(err_nf4_nodq / sq):.4f} |")
        print(f"| relative weight error absmax INT4 (15 levels) | {math.sqrt(err_int4 / sq):.4f} |")
        if code_diff > 1e-6 or dyn_diff > 1e-6 or mism > tot * 1e-4 or dq_worse or dq_mism > 0.02 * dq_tot:
            failures.append("NF4 vs bitsandbytes")
        if not err_nf4 < err_int4:
            failures.append("NF4 error should be below INT4's")

        # ---------------------------------------------------------------- 4. QLoRA: ours vs bnb + peft
        qours, _ = load_base_model(path)
        quantize_model_nf4(qours)
        apply_lora(qours, cfg)
        for name, m in lora_layers(qours).items():
            with torch.no_grad():
                m.lora_A.copy_(layers[name].lora_A)
                m.lora_B.copy_(layers[name].lora_B)
        qpeft = bnb_qlora_model(path, cfg).eval()
        copy_lora_into_peft(qours, qpeft)
        # the same without double quantization: the first-level NF4 codes are identical, so this is exact
        qours1, _ = load_base_model(path)
        quantize_model_nf4(qours1, double_quant=False)
        apply_lora(qours1, cfg)
        for name, m in lora_layers(qours1).items():
            with torch.no_grad():
                m.lora_A.copy_(layers[name].lora_A)
                m.lora_B.copy_(layers[name].lora_B)
        qpeft1 = bnb_qlora_model(path, cfg, double_quant=False).eval()
        copy_lora_into_peft(qours1, qpeft1)
        with torch.no_grad():
            lq = _logits(qours, idx)
            q_diff = _diff(lq, _logits(qpeft, idx.to(qpeft.device)).cpu())
            q1_diff = _diff(_logits(qours1, idx), _logits(qpeft1, idx.to(qpeft1.device)).cpu())
            q_vs_fp = _diff(lq, lo)
        qt, qtot = count_params(qours)
        bt, btot = qpeft.get_nb_trainable_parameters()
        print("\nQLoRA (NF4 base + fp32 LoRA, same A/B): ours (NF4Linear) vs transformers + bitsandbytes + peft:")
        print("| check | value |")
        print("|---|---|")
        print(f"| logits max diff, NF4 without double quant | {q1_diff:.2e} |")
        print(f"| logits max diff, NF4 + double quant (8-bit near-ties, see above) | {q_diff:.2e} |")
        print(f"| logits max diff QLoRA vs fp32-base LoRA (what 4 bits cost) | {q_vs_fp:.3f} |")
        print(f"| trainable / total params | ours {qt:,} / {qtot:,}; peft {bt:,} / {btot:,} |")
        if q1_diff > 1e-5 or q_diff > 5e-3 or qt != bt or qtot != btot:
            failures.append("QLoRA vs bnb+peft")

    # ---------------------------------------------------------------- 5. fine-tuning on Tiny Shakespeare
    train_ids, val_ids = load_shakespeare_ids(tok, *(0, 0) if args.full else (200_000, 20_000),
                                              bos_id=0 if args.model is None else tok.bos_token_id)
    fresh, _ = load_base_model(path, dtype)
    ppl_base = perplexity(fresh.to(device), val_ids.to(device), block)
    del fresh
    results = {}
    curves = {}
    dname = str(dtype).removeprefix("torch.")
    for label, kind in ((f"LoRA ({dname} base)", "lora"), ("QLoRA (our NF4 base)", "qlora"),
                        ("QLoRA (bnb + peft)", "bnb-qlora")):
        if kind not in variants:
            continue
        seed_everything(args.seed)
        if kind == "bnb-qlora":
            model = bnb_qlora_model(path, cfg, compute_dtype=dtype)
        else:
            model, _ = load_base_model(path, dtype)
            model.to(device)
            if kind == "qlora":
                quantize_model_nf4(model, compute_dtype=dtype)
            apply_lora(model, cfg)
        ppl_q0 = perplexity(model, val_ids.to(device), block)
        clock = time.perf_counter if device == "cuda" else time.process_time
        t0 = clock()
        curves[label] = train_lora(model, train_ids.to(device), steps=steps, batch_size=batch, block_size=train_block,
                                   lr=lr, seed=args.seed, progress=sys.stderr.isatty())
        dt = clock() - t0
        results[label] = (ppl_q0, perplexity(model, val_ids.to(device), block), dt, model, kind)
    print(f"\nLoRA fine-tuning on Tiny Shakespeare ({len(train_ids):,} train / {len(val_ids):,} held-out tokens, "
          f"{steps} steps, batch {batch} x {train_block} tokens, lr {lr:g}; perplexity on {block}-token windows):")
    print(f"| model | held-out ppl before | after | {'wall s (GPU)' if device == 'cuda' else 'CPU s'} for training |")
    print("|---|---|---|---|")
    print(f"| base model (no adapter) | {ppl_base:.2f} | - | - |")
    for label, (p0, p1, dt, _, _) in results.items():
        print(f"| {label} | {p0:.2f} | {p1:.2f} | {dt:.1f} |")
        if not p1 < 0.8 * p0:
            failures.append(f"{label}: held-out ppl did not drop by 20%")
    lora_model = next((r[3] for r in results.values() if r[4] == "lora"), None)
    if lora_model is not None:
        ppl_unmerged = perplexity(lora_model, val_ids.to(device), block)
        merge_lora(lora_model)
        ppl_merged = perplexity(lora_model, val_ids.to(device), block)
        unmerge_lora(lora_model)
        print(f"merged LoRA model: held-out ppl {ppl_merged:.4f} (unmerged {ppl_unmerged:.4f})")
        if abs(ppl_merged - ppl_unmerged) > (1e-3 if dtype == torch.float32 else 2e-2) * ppl_unmerged:
            failures.append("merged ppl")
    trained = next(iter(results.values()))[3]
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_adapter(trained, Path(tmp), cfg, base_model=str(path))
        adapter_bytes = (folder / "adapter_model.safetensors").stat().st_size
    n_train = count_params(trained)[0]
    print(f"\nAdapter on disk ({next(iter(results))}, safetensors, r={cfg.r}, fp32): {adapter_bytes:,} bytes "
          f"for {n_train:,} trainable parameters (x 4 bytes = {4 * n_train:,}, + header)")
    print("| trained model | weights + buffers in memory (bytes) |")
    print("|---|---|")
    for label, r in results.items():
        foot = r[3].get_base_model().get_memory_footprint() if r[4] == "bnb-qlora" else model_memory_bytes(r[3])
        print(f"| {label} | {foot:,} |")

    if not args.skip_checks and lora_model is not None and "bnb-qlora" in variants:
        # ---------------------------------------------------------------- 6. adapter files
        from peft import PeftModel

        with tempfile.TemporaryDirectory() as tmp:
            folder = save_adapter(lora_model, Path(tmp) / "ours", cfg, base_model=str(path))
            ours_size = (folder / "adapter_model.safetensors").stat().st_size
            reloaded, _ = load_base_model(path)
            load_adapter(reloaded, folder)
            reloaded.to(device)
            peft_loaded = PeftModel.from_pretrained(load_base_model(path)[0], folder).eval().to(device)
            peft_loaded.save_pretrained(Path(tmp) / "peft")
            peft_size = (Path(tmp) / "peft" / "adapter_model.safetensors").stat().st_size
            x = idx.to(device)
            with torch.no_grad():
                ref = _logits(lora_model, x)
                d_reload = _diff(_logits(reloaded, x), ref)
                d_peft = _diff(_logits(peft_loaded, x), ref)
            ours_back, _ = load_base_model(path)
            load_adapter(ours_back, Path(tmp) / "peft")
            with torch.no_grad():
                d_back = _diff(_logits(ours_back.to(device), x), ref)
        print("\nAdapter save -> reload (trained adapter, logits max diff vs the trained model):")
        print("| round trip | max abs diff |")
        print("|---|---|")
        for name, d in (("save_adapter -> load_adapter", d_reload), ("save_adapter -> peft PeftModel.from_pretrained", d_peft),
                        ("peft save_pretrained -> load_adapter", d_back)):
            print(f"| {name} | {d:.2e} |")
            if d > 1e-5:
                failures.append(name)

        # ---------------------------------------------------------------- 7. memory
        fp32_model, _ = load_base_model(path)
        fp32 = model_memory_bytes(fp32_model)
        bf16 = model_memory_bytes(fp32_model.to(torch.bfloat16))
        nf4_model, _ = load_base_model(path)
        quantize_model_nf4(nf4_model)
        nf4 = model_memory_bytes(nf4_model)
        nf4_nodq, _ = load_base_model(path)
        quantize_model_nf4(nf4_nodq, double_quant=False)
        lin_params = sum(m.in_features * m.out_features for m in nf4_model.modules() if isinstance(m, NF4Linear))
        lin_bytes = sum(m.nbytes for m in nf4_model.modules() if isinstance(m, NF4Linear))
        lin_bytes_nodq = sum(m.nbytes for m in nf4_nodq.modules() if isinstance(m, NF4Linear))
        bnb_foot = results["QLoRA (bnb + peft)"][3].get_base_model().get_memory_footprint()
        rest = fp32 - 4 * lin_params  # embeddings, lm_head, norms: not quantized
        print("\nMemory of the base weights (measured: bytes of every parameter and buffer):")
        print(f"| base | quantized linears ({lin_params:,} weights) | whole model | whole model vs fp32 |")
        print("|---|---|---|---|")
        for name, lb, total_b in (("fp32", 4 * lin_params, fp32), ("bf16", 2 * lin_params, bf16),
                                  ("NF4 + double quant (ours), rest fp32", lin_bytes, nf4),
                                  ("NF4 + double quant (ours), rest bf16", lin_bytes, lin_bytes + rest // 2),
                                  ("NF4, fp32 absmax (ours), rest fp32", lin_bytes_nodq, model_memory_bytes(nf4_nodq)),
                                  ("bitsandbytes NF4 + dq, rest fp32 (get_memory_footprint, LoRA incl.)", None, bnb_foot)):
            print(f"| {name} | {'-' if lb is None else f'{lb:,}'} | {total_b:,} | {total_b / fp32:.3f} |")
        print(f"bits per quantized weight: {8 * lin_bytes / lin_params:.3f} with double quant, "
              f"{8 * lin_bytes_nodq / lin_params:.3f} without (fp32: 32, bf16: 16). Embeddings + lm_head are "
              f"{rest / fp32:.0%} of this tiny model's fp32 bytes, so whole-model savings are small here; in "
              f"Llama-2-7B (vocab 32,000, d_model 4,096) they are {2 * 32000 * 4096 / 6_738_415_616:.1%} of the weights.")
        print(f"adapter on disk (safetensors, r={cfg.r}, fp32): ours {ours_size:,} bytes, peft's {peft_size:,} bytes "
              f"(trainable params x 4 = {4 * trainable:,} + header)")
        if not lin_bytes < 2 * lin_params / 3.5 or not nf4 < fp32:
            failures.append("memory ordering")

    # ---------------------------------------------------------------- 8. our MiniGPT, same code
    if args.model is None and not args.skip_checks:
        from labkit import curriculum_model_path, load_lab

        nano = load_lab("phase-05-training-small-llms/lab-02-nano-gpt")
        mg, _ = nano.load_checkpoint(curriculum_model_path("main") / "minigpt.pt")
        mg.eval()
        with torch.no_grad():
            before = _logits(mg, idx)
            n_mg = apply_lora(mg, LoRAConfig(r=cfg.r, alpha=cfg.alpha, target_modules=MINIGPT_TARGETS))
            at_init = _diff(_logits(mg, idx), before)
            randomize_lora(mg, args.seed)
            un = _logits(mg, idx)
            merge_lora(mg)
            mg_merged = _diff(_logits(mg, idx), un)
        mg_hf = _diff(before, base_logits)
        print(f"\nOur MiniGPT (lab 4.4) with the same LoRA code: {len(n_mg)} adapted matrices, "
              f"trainable {count_params(mg)[0]:,}; init vs base {at_init:.1e}, merged vs unmerged {mg_merged:.1e}; "
              f"MiniGPT vs its HF export (base) {mg_hf:.1e}")
        if at_init > 0 or mg_merged > 1e-5:
            failures.append("MiniGPT LoRA")

    # ---------------------------------------------------------------- figure
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, losses in curves.items():
        k = 10
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
        ax1.plot(smooth, label=label)
    ax1.axhline(math.log(ppl_base), color="grey", ls=":", label="base model, held-out")
    ax1.set_xlabel("step")
    ax1.set_ylabel("train loss (nats/token, 10-step mean)")
    ax1.set_title("LoRA / QLoRA on Tiny Shakespeare")
    ax1.legend(fontsize=8)
    if base_weights:
        w = torch.cat([v.reshape(-1) for v in base_weights.values()])
        blocks = w[: len(w) // 64 * 64].view(-1, 64)
        scaled = (blocks / blocks.abs().amax(1, keepdim=True)).reshape(-1)
        ax2.hist(scaled.numpy(), bins=200, density=True, color="lightgrey", label="weights / block absmax")
        for v in nf4_codebook().tolist():
            ax2.axvline(v, color="C0", lw=1)
        for v in int4_codebook().tolist():
            ax2.axvline(v, color="C3", lw=0.8, ls="--")
        ax2.plot([], [], color="C0", label="NF4 levels")
        ax2.plot([], [], color="C3", ls="--", label="INT4 levels")
        ax2.set_xlabel("normalised weight")
        ax2.set_title("NF4 puts its levels where the weights are")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    out = savefig(fig, HERE / "figures" / "lora_qlora.png")
    print(f"\nwrote {out}")
    print(f"total self-test time: {time.perf_counter() - t_start:.1f} s wall, {time.process_time() - c_start:.1f} s CPU "
          "(shared machine: wall time depends on load)")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

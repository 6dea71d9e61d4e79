# Generated from solution.py by `make labs` (labkit/labgen.py). Fill in the TODOs.
"""Capstone 6: a LLaVA-style multimodal assistant (tiny ViT + projector + the curriculum LM).

The pipeline is LLaVA's (Liu et al. 2023, "Visual Instruction Tuning"; LLaVA-1.5, Liu et al. 2024),
shrunk until it trains on a laptop CPU in seconds:

stage 0  a small ViT (Dosovitskiy et al. 2021) is trained from scratch, CLIP-style (Radford et al.
         2021): symmetric InfoNCE between its [CLS] embedding and a bag-of-tokens caption encoder.
         In LLaVA this encoder is a pretrained CLIP/SigLIP; ``--vision hf:<folder>`` plugs one in.
stage 1  alignment: the ViT and the language model are frozen; only the projector (a Qwen2-VL-style
         2x2 patch merger + 2-layer MLP) learns, on image -> caption pairs.
stage 2  visual instruction tuning: projector + LoRA adapters on every linear of the LM (Phase 6
         lab 2), on image + question -> answer.

The language model is the curriculum's own 1.8M-parameter Llama (``labkit.curriculum_model_path``,
the HF ``LlamaForCausalLM`` in ``p/"hf"``), fed through ``inputs_embeds``. A prompt holds one
``<image>`` placeholder, tokenized to the id :data:`IMAGE_TOKEN_ID` (-200, as in the LLaVA code),
which :func:`splice_image_tokens` replaces with the N projected patch embeddings.

The data is rendered here (numpy): coloured shapes (colour, count, position) and scikit-learn's
bundled handwritten digits, with programmatic captions and questions; the held-out split uses other
random scenes and digit images no training scene used.

Shapes: images are float32 (B, 3, S, S) in [0, 1]; ViT tokens (B, 1 + N, d_vision); LM embeddings
(B, T, d_lm) with d_lm = 128.

Entry point: ``python solution.py`` (small mode: builds the cached model once into
``.cache/models/capstone06-small-<key16>/``, then prints the scorecard), ``--full`` for the GPU-scale
config (same code path), ``--smoke`` for a seconds-long run into ``outputs/smoke``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
OUTPUTS = HERE / "outputs"
if str(HERE.parents[1]) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(HERE.parents[1]))

from labkit import load_lab, seed_everything  # noqa: E402

MHA_LAB = "phase-04-attention-transformers/lab-02-multi-head-attention"
LORA_LAB = "phase-06-finetuning-instruction/lab-02-lora-qlora"
COMPOSED_LABS = (MHA_LAB, LORA_LAB)

IMAGE_TOKEN_ID = -200          # LLaVA's IMAGE_TOKEN_INDEX: never a real vocabulary id
IGNORE_INDEX = -100            # labels that carry no loss (torch's cross_entropy default)
EOS_ID, PAD_ID = 0, 3        # <|endoftext|> ends every answer: the base model already predicts it
                               # (3 nats after a sentence), while its <|im_end|> row was never trained (15 nats)

COLOURS = {"red": (230, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40)}
SHAPES = ("circle", "square")
COUNT_WORDS = ("one", "two", "three", "four")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTIONS = {
    "colour": "What color?",   # TinyStories spells it "color": a word the LM knows
    "count": "How many?",
    "position": "Where is it?",
    "digit": "Which digit?",
}
ANSWERS = {"colour": tuple(COLOURS), "count": COUNT_WORDS, "position": QUADRANTS, "digit": DIGIT_WORDS}
CHANCE = {q: 1.0 / len(a) for q, a in ANSWERS.items()}
N_TRAIN_DIGITS = 1400          # load_digits() has 1797 images: the first 1400 train, the rest are held out


def _lab(path: str):
    return load_lab(path)


# ============================================================================ data
_DIGITS: tuple[np.ndarray, np.ndarray] | None = None


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits (UCI; what ``sklearn.datasets.load_digits``
    returns), as float32 (1797, 8, 8) in [0, 1] and int64 labels.

    Read straight from the package's ``datasets/data/digits.csv.gz`` (importing scikit-learn
    costs ~2 s of CPU; a test checks this equals ``load_digits()``).
    """
    global _DIGITS
    if _DIGITS is None:
        import gzip
        import importlib.util

        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("scikit-learn is not installed: pip install scikit-learn (see requirements.txt)")
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        with gzip.open(path, "rt") as f:
            raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
        _DIGITS = ((raw[:, :-1] / 16.0).reshape(-1, 8, 8), raw[:, -1].astype(np.int64))
    return _DIGITS


def render_scene(kind: str, rng: np.random.Generator, size: int = 32, digits: tuple | None = None,
                 digit_index: int | None = None) -> tuple[np.ndarray, dict]:
    """One image and its facts.

    kinds: ``"shapes"`` (1-4 shapes of one colour and shape in distinct cells of a 4x4 grid),
    ``"single"`` (one larger shape in one quadrant), ``"digit"`` (a handwritten digit, upscaled to
    half the image size, centred). Returns (uint8 (size, size, 3), meta dict with kind, colour, shape, count, position,
    digit as applicable).

    Raises:
        ValueError: unknown kind, size not a multiple of 8 or < 32, a digit scene without digits.
    """
    if size < 32 or size % 8:
        raise ValueError(f"size must be a multiple of 8 and >= 32, got {size}")
    img = np.zeros((size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    if kind in ("shapes", "single"):
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        shape = SHAPES[rng.integers(len(SHAPES))]

        def draw(cy: float, cx: float, r: float) -> None:
            m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if shape == "circle" else \
                ((abs(yy - cy) <= r - 0.5) & (abs(xx - cx) <= r - 0.5))
            img[m] = COLOURS[colour]

        if kind == "shapes":
            count = int(rng.integers(1, 5))
            cell = size // 4
            for c in rng.choice(16, size=count, replace=False):
                cy, cx = (c // 4 + 0.5) * cell - 0.5, (c % 4 + 0.5) * cell - 0.5
                draw(cy + rng.uniform(-1, 1), cx + rng.uniform(-1, 1), cell * 0.35)
            return img, {"kind": kind, "colour": colour, "shape": shape, "count": count}
        q = int(rng.integers(4))
        half = size // 2
        cy = (q // 2 + 0.5) * half - 0.5 + rng.uniform(-2, 2)
        cx = (q % 2 + 0.5) * half - 0.5 + rng.uniform(-2, 2)
        draw(cy, cx, half * 0.3)
        return img, {"kind": kind, "colour": colour, "shape": shape, "count": 1, "position": QUADRANTS[q]}
    if kind == "digit":
        if digits is None or digit_index is None:
            raise ValueError("a digit scene needs digits=(images, labels) and digit_index")
        s2 = size // 2
        pix = np.kron(digits[0][digit_index], np.ones((s2 // 8, s2 // 8), np.float32))     # (S/2, S/2)
        o = size // 4                              # centred: each quadrant of the digit is one 8x8 patch at S=32
        img[o:o + s2, o:o + s2] = (pix[..., None] * 255).astype(np.uint8)
        return img, {"kind": kind, "digit": int(digits[1][digit_index]), "digit_index": int(digit_index)}
    raise ValueError(f"unknown scene kind {kind!r}; known: shapes, single, digit")


def caption(meta: dict) -> str:
    """The programmatic caption: "three red squares", "a blue circle at the top left", "the digit seven"."""
    if meta["kind"] == "digit":
        return f"the digit {DIGIT_WORDS[meta['digit']]}"
    if meta["kind"] == "single":
        return f"a {meta['colour']} {meta['shape']} at the {meta['position']}"
    n = meta["count"]
    return f"{COUNT_WORDS[n - 1]} {meta['colour']} {meta['shape']}{'s' if n > 1 else ''}"


def questions_for(meta: dict) -> list[tuple[str, str, str]]:
    """[(question type, question, answer)] that an image's facts support."""
    if meta["kind"] == "digit":
        return [("digit", QUESTIONS["digit"], DIGIT_WORDS[meta["digit"]])]
    out = [("colour", QUESTIONS["colour"], meta["colour"])]
    if meta["kind"] == "shapes":
        out.append(("count", QUESTIONS["count"], COUNT_WORDS[meta["count"] - 1]))
    else:
        out.append(("position", QUESTIONS["position"], meta["position"]))
    return out


@dataclass
class SceneSet:
    images: torch.Tensor          # float32 (n, 3, S, S) in [0, 1]
    metas: list[dict]
    captions: list[str]
    qa: list[tuple[int, str, str, str]]   # (image index, type, question, answer)


def make_scenes(n: int, split: str, seed: int = 0, size: int = 32,
                kinds: tuple[str, ...] = ("shapes", "single", "digit")) -> SceneSet:
    """``n`` scenes cycling through ``kinds`` (shapes, single, digit), with captions and Q&A.

    ``split="train"`` draws digits from the first :data:`N_TRAIN_DIGITS` images of ``load_digits``
    and ``"heldout"`` from the rest; the two splits also use different random streams.

    Raises:
        ValueError: n < 3 or an unknown split.
    """
    if n < len(kinds):
        raise ValueError(f"n must be >= {len(kinds)} (one scene of each kind), got {n}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    digits = digit_images()
    pool = np.arange(N_TRAIN_DIGITS) if split == "train" else np.arange(N_TRAIN_DIGITS, len(digits[1]))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    imgs, metas = [], []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        idx = int(pool[rng.integers(len(pool))]) if kind == "digit" else None
        img, meta = render_scene(kind, rng, size, digits, idx)
        imgs.append(img)
        metas.append(meta)
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    qa = [(i, t, q, a) for i, m in enumerate(metas) for (t, q, a) in questions_for(m)]
    return SceneSet(images, metas, [caption(m) for m in metas], qa)


# ============================================================================ vision encoder
def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images into non-overlapping ``patch`` x ``patch`` squares, flattened.

    Args:
        images: (B, C, H, W) float, H and W multiples of ``patch``.

    Returns:
        (B, N, C * patch * patch) with N = (H / patch) * (W / patch), patches in row-major order
        (left to right, then top to bottom), each flattened channel-first (c, dy, dx): the layout of
        ``nn.Conv2d(C, d, patch, stride=patch).weight.view(d, -1)``, so a Linear on these rows with
        that weight equals the convolution ViTs use as their patch embedding.

    Raises:
        ValueError: not 4-D, or H / W not divisible by ``patch``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    B, C, H, W = images.shape
    if patch < 1 or H % patch or W % patch:
        raise ValueError(f"image size {H}x{W} is not divisible by patch {patch}")
    # TODO(1): view as (B, C, H/p, p, W/p, p), permute to (B, H/p, W/p, C, p, p), reshape to (B, N, C*p*p); the order of the last three dims must be (C, dy, dx) to match the conv weight (medium, ~15 min)
    raise NotImplementedError("TODO(1)")


class ViTBlock(nn.Module):
    """Pre-norm transformer encoder block: x + MHA(LN(x)), then x + MLP(LN(x)); no causal mask.

    The attention is Phase 4 lab 2's ``MultiHeadAttention`` (loaded by path), SDPA backend.
    """

    def __init__(self, d: int, n_head: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = _lab(MHA_LAB).MultiHeadAttention(d, n_head, backend="sdpa")
        self.fc1, self.fc2 = nn.Linear(d, mlp_ratio * d), nn.Linear(mlp_ratio * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    """A ViT: patch embedding (Linear over :func:`patchify`), learned [CLS] + positions, blocks, LN.

    forward(images (B, 3, S, S)) -> (B, 1 + N, d): index 0 is [CLS], 1.. are the patch tokens in
    row-major order (what the projector consumes).
    """

    def __init__(self, image_size: int = 32, patch: int = 8, d: int = 64, depth: int = 2, n_head: int = 4) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} must be a multiple of patch {patch}")
        self.patch, self.grid, self.d = patch, image_size // patch, d
        self.patch_embed = nn.Linear(3 * patch * patch, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 1 + self.grid ** 2, d) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(d, n_head) for _ in range(depth))
        self.ln = nn.LayerNorm(d)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(patchify(images, self.patch))
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.ln(x)


class HFVisionEncoder(nn.Module):
    """A pretrained vision tower (CLIP / SigLIP ``vision_model``) behind TinyViT's interface: full mode.

    forward(images (B, 3, S, S) in [0, 1]) -> (B, [1 +] N, d): the tower's last hidden state;
    ``has_cls`` says whether token 0 is a class token (CLIP: yes, SigLIP: no).
    """

    def __init__(self, tower: nn.Module, image_size: int, patch: int, has_cls: bool,
                 mean: tuple = (0.5, 0.5, 0.5), std: tuple = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        self.tower, self.has_cls, self.patch = tower, has_cls, patch
        self.grid, self.image_size = image_size // patch, image_size
        self.d = tower.config.hidden_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, folder: str) -> HFVisionEncoder:
        from transformers import AutoConfig, AutoModel

        cfg = AutoConfig.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder)
        tower = getattr(model, "vision_model", model)
        vc = getattr(cfg, "vision_config", cfg)
        return cls(tower, vc.image_size, vc.patch_size, has_cls="siglip" not in cfg.model_type)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.tower(pixel_values=(x - self.mean) / self.std).last_hidden_state


# ============================================================================ CLIP-style pretraining
class CaptionEncoder(nn.Module):
    """The text side of stage 0: the mean of the caption's token embeddings, then a Linear (a bag of
    tokens: enough for captions that are short lists of attributes).

    forward(ids (B, L) long, mask (B, L) bool) -> (B, d_out).
    """

    def __init__(self, vocab: int, d: int, d_out: int) -> None:
        super().__init__()
        self.emb, self.proj = nn.Embedding(vocab, d), nn.Linear(d, d_out)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = mask.float() / mask.sum(1, keepdim=True).clamp(min=1)
        return self.proj((self.emb(ids) * w[..., None]).sum(1))


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float | torch.Tensor = 0.07) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss (Radford et al. 2021; van den Oord et al. 2018).

    Row i of each input is a matching pair. Both sides are L2-normalised, logits = img @ txt.T / t,
    and the loss is the mean of the image->text and text->image cross-entropies with the diagonal as
    the target.

    Args:
        image_emb, text_emb: (B, d) float, B >= 2.  temperature: > 0 (a float or a 0-dim tensor).

    Returns:
        0-dim tensor (nats).

    Raises:
        ValueError: shapes differ, B < 2, or temperature <= 0.
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(f"image_emb and text_emb must both be (B, d), got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    if len(image_emb) < 2:
        raise ValueError("InfoNCE needs at least 2 pairs (the other rows are the negatives)")
    if float(torch.as_tensor(temperature).detach()) <= 0:
        raise ValueError(f"temperature must be > 0, got {float(temperature)}")
    # TODO(2): F.normalize both (dim=-1); logits = img @ txt.T / temperature (B, B); target = arange(B); average F.cross_entropy over rows (image->text) and over columns, i.e. on logits.T (text->image) (easy, ~10 min)
    raise NotImplementedError("TODO(2)")


def recall_at_1(sim: torch.Tensor) -> tuple[float, float]:
    """Retrieval recall@1 from a (B, B) similarity matrix whose diagonal holds the true pairs.

    Returns:
        (image->text, text->image): the fraction of rows (resp. columns) whose argmax is the diagonal.
        Chance is 1 / B. Ties are broken by the lowest index (``argmax``).

    Raises:
        ValueError: not a square 2-D matrix.
    """
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square (B, B) matrix, got {tuple(sim.shape)}")
    # TODO(3): target = arange(B); i->t: sim.argmax(dim=1) == target; t->i: sim.argmax(dim=0) == target; means as floats (easy, ~5 min)
    raise NotImplementedError("TODO(3)")


class CLIPLite(nn.Module):
    """Stage 0: the ViT's [CLS] and the caption encoder, projected into one space, with a learned
    temperature (CLIP initialises 1/t = 1/0.07 and clamps it at 100)."""

    def __init__(self, vit: TinyViT, vocab: int, d_embed: int = 64) -> None:
        super().__init__()
        self.vit, self.img_proj = vit, nn.Linear(vit.d, d_embed)
        self.txt = CaptionEncoder(vocab, vit.d, d_embed)
        self.log_inv_t = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.img_proj(self.vit(images)[:, 0]), self.txt(ids, mask)

    def temperature(self) -> torch.Tensor:
        return 1.0 / self.log_inv_t.clamp(max=math.log(100)).exp()


# ============================================================================ projector and splicing
def merge_patches(tokens: torch.Tensor, grid: int, k: int = 2) -> torch.Tensor:
    """Concatenate each k x k block of neighbouring patch tokens (Qwen2-VL's patch merger).

    Args:
        tokens: (B, grid*grid, d) in row-major patch order.  grid: patches per side (divisible by k).

    Returns:
        (B, (grid/k)^2, k*k*d): block (i, j) in row-major block order, its k*k tokens concatenated
        in row-major order inside the block. 4x fewer image tokens for k = 2.

    Raises:
        ValueError: the token count is not grid*grid, or grid not divisible by k.
    """
    B, N, d = tokens.shape
    if N != grid * grid or grid % k:
        raise ValueError(f"expected {grid}x{grid} tokens with grid divisible by {k}, got N={N}")
    x = tokens.reshape(B, grid // k, k, grid // k, k, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (grid // k) ** 2, k * k * d)


class Projector(nn.Module):
    """Vision tokens -> LM embeddings (LLaVA-1.5's ``mlp2x_gelu``: Linear-GELU-Linear).

    The N patch tokens are merged 2x2 (``merge``) before their MLP, so 16 patches become 4 LM
    tokens. With ``use_cls`` the encoder's [CLS] token (the one CLIP-style pretraining shaped into a
    summary of the whole image) gets its own MLP and goes first: LLaVA's ``cls_patch`` feature choice.

    forward(h (B, [1 +] N, d_vision)) -> (B, [1 +] N / merge^2, d_lm).
    """

    def __init__(self, d_vision: int, d_lm: int, grid: int, merge: int = 2, use_cls: bool = True,
                 hidden: int | None = None) -> None:
        super().__init__()
        self.grid, self.merge, self.use_cls = grid, merge, use_cls
        d_in = d_vision * merge * merge
        self.fc1, self.fc2 = nn.Linear(d_in, hidden or d_lm), nn.Linear(hidden or d_lm, d_lm)
        if use_cls:
            self.cls_fc1, self.cls_fc2 = nn.Linear(d_vision, hidden or d_lm), nn.Linear(hidden or d_lm, d_lm)

    @property
    def n_tokens(self) -> int:
        return (self.grid // self.merge) ** 2 + int(self.use_cls)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        patches = h[:, 1:] if self.use_cls else h
        if self.merge > 1:
            patches = merge_patches(patches, self.grid, self.merge)
        out = self.fc2(F.gelu(self.fc1(patches)))
        if self.use_cls:
            out = torch.cat([self.cls_fc2(F.gelu(self.cls_fc1(h[:, :1]))), out], dim=1)
        return out


def encode(tokenizer: Any, text: str) -> list[int]:
    """``tokenizer(text)`` ids without special tokens, memoised per tokenizer (the prompts repeat)."""
    memo = tokenizer.__dict__.setdefault("_capstone06_memo", {})
    if text not in memo:
        memo[text] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(memo[text])


def tokenize_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with each ``"<image>"`` replaced by one :data:`IMAGE_TOKEN_ID`
    (LLaVA's ``tokenizer_image_token``: split on the placeholder, tokenize the pieces, join)."""
    pieces = text.split("<image>")
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            ids.append(IMAGE_TOKEN_ID)
        if piece:
            ids += encode(tokenizer, piece)
    return ids


def chat_prompt(question: str | None, chatml: bool = False) -> str:
    """The prompt around the image: ``"<image>\n{question}"``, or ``"<image>\nThis is"`` for a
    caption (stage 1); the target then starts with a space (" red", " three red squares").

    ``chatml`` wraps it in the curriculum's ChatML user turn and assistant header (10 more tokens:
    small mode skips them, since this base model never saw ChatML and every token costs CPU time).
    """
    body = "<image>\nThis is" if question is None else f"<image>\n{question}"
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n" if chatml else body


def build_example(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one training example.

    input_ids = tokenize_prompt(prompt) + tokens(answer) + [<|endoftext|>]. labels copy the answer
    tokens and the final ``<|endoftext|>`` (so the model learns to stop) and are :data:`IGNORE_INDEX`
    on every prompt token, including the image placeholder: no loss on the prompt or the image.

    Raises:
        ValueError: the prompt has no ``<image>``, or the answer is empty.
    """
    if "<image>" not in prompt:
        raise ValueError("the prompt must contain an <image> placeholder")
    if not answer:
        raise ValueError("the answer is empty: nothing to learn")
    # TODO(4): p = tokenize_prompt(tokenizer, prompt); a = encode(tokenizer, answer) + [EOS_ID]; ids = p + a; labels = [IGNORE_INDEX] * len(p) + a (easy, ~10 min)
    raise NotImplementedError("TODO(4)")


def pad_batch(seqs: list[list[int]], labels: list[list[int]] | None = None, side: str = "right"
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pad id lists with <|pad|> (labels with IGNORE_INDEX) on ``side``; returns (ids, mask, labels)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    lab = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = torch.tensor(s), 1
        if lab is not None:
            lab[i, sl] = torch.tensor(labels[i])
    return ids, mask, lab


def splice_image_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
                        image_features: torch.Tensor, embed: nn.Embedding,
                        image_token_id: int = IMAGE_TOKEN_ID) -> dict[str, torch.Tensor | None]:
    """Replace each row's single image placeholder by that row's N image embeddings.

    Args:
        input_ids: (B, T) long, exactly one ``image_token_id`` per row (left or right padding).
        attention_mask: (B, T) 0/1 (1 = real token).  labels: (B, T) long or None.
        image_features: (B, N, d) projected image tokens.  embed: the LM's input embedding table.

    Returns:
        dict with ``inputs_embeds`` (B, T + N - 1, d): the text embeddings before the placeholder,
        the N image rows, the text embeddings after it; ``attention_mask`` (B, T + N - 1), 1 on all N
        image rows; ``labels`` (same length, IGNORE_INDEX on the image rows; None if labels is None);
        ``position_ids`` = cumsum(attention_mask) - 1, clamped at 0 (so left padding starts real
        tokens at position 0, as HF ``generate`` does).

    Raises:
        ValueError: a row with zero or several placeholders, batch sizes that differ, or a feature
            width that is not the embedding width.
    """
    B, T = input_ids.shape
    if image_features.dim() != 3 or len(image_features) != B:
        raise ValueError(f"image_features must be (B={B}, N, d), got {tuple(image_features.shape)}")
    if image_features.shape[-1] != embed.embedding_dim:
        raise ValueError(f"image features are {image_features.shape[-1]}-wide but the LM embeds in "
                         f"{embed.embedding_dim}: project them first")
    is_img = input_ids == image_token_id
    per_row = is_img.sum(1)
    if not bool((per_row == 1).all()):
        bad = int((per_row != 1).nonzero()[0, 0])
        raise ValueError(f"row {bad} has {int(per_row[bad])} image placeholders; each row needs exactly one")
    # TODO(5): text = embed(input_ids with placeholders replaced by PAD_ID); p = is_img.float().argmax(1) (the placeholder's column); per row cat(text[b, :p], image_features[b], text[b, p+1:]) and the same for attention_mask (ones(N) in the middle) and labels (IGNORE_INDEX * N); stack; position_ids = (mask.cumsum(-1) - 1).clamp(min=0) (hard, ~30 min)
    raise NotImplementedError("TODO(5)")


def masked_lm_loss(lm: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the supervised positions only (labels != IGNORE_INDEX).

    Runs the LM's body once, then the (4096-wide) LM head only on the hidden states that predict
    a label: the same number as ``lm(inputs_embeds=..., labels=labels).loss``, several times cheaper
    when most positions are image or prompt tokens.

    Raises:
        ValueError: no supervised position at all.
    """
    h = lm.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    if not bool(keep.any()):
        raise ValueError("no supervised label in the batch (every label is IGNORE_INDEX)")
    logits = lm.lm_head(h[:, :-1][keep])
    return F.cross_entropy(logits.float(), target[keep])


# ============================================================================ the assembled model
class LlavaLite(nn.Module):
    """Vision encoder (frozen) + projector + causal LM.

    ``loss(images, ids, mask, labels)`` and ``answer(images, prompts)`` are the two entry points.
    """

    def __init__(self, vision: nn.Module, projector: Projector, lm: nn.Module, tokenizer: Any,
                 chatml: bool = False) -> None:
        super().__init__()
        self.vision, self.projector, self.lm, self.tokenizer, self.chatml = vision, projector, lm, tokenizer, chatml

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.vision(images)
        return self.projector(feats)

    def spliced(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict:
        return splice_image_tokens(ids, mask, labels, self.image_features(images), self.lm.get_input_embeddings())

    def loss(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.spliced(images, ids, mask, labels)
        return masked_lm_loss(self.lm, s["inputs_embeds"], s["attention_mask"], s["position_ids"], s["labels"])

    @torch.no_grad()
    def answer(self, images: torch.Tensor, prompts: list[str], max_new_tokens: int = 5,
               batch_size: int = 256) -> list[str]:
        """Greedy answers, batched with left padding; each stops at ``<|endoftext|>``."""
        out: list[str] = []
        embed = self.lm.get_input_embeddings()
        for i in range(0, len(prompts), batch_size):
            ids, mask, _ = pad_batch([tokenize_prompt(self.tokenizer, p) for p in prompts[i:i + batch_size]],
                                     side="left")
            s = self.spliced(images[i:i + batch_size], ids, mask)
            x, m, pos = s["inputs_embeds"], s["attention_mask"], s["position_ids"]
            new, past = [], None
            done = torch.zeros(len(x), dtype=torch.bool)
            for _ in range(max_new_tokens):
                o = self.lm.model(inputs_embeds=x, attention_mask=m, position_ids=pos, past_key_values=past,
                                  use_cache=True)
                past = o.past_key_values
                nxt = self.lm.lm_head(o.last_hidden_state[:, -1]).argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, EOS_ID), nxt)
                new.append(nxt)
                done |= nxt == EOS_ID
                if bool(done.all()):
                    break
                x, pos = embed(nxt)[:, None], pos[:, -1:] + 1       # only the new token; the cache has the rest
                m = torch.cat([m, m.new_ones(len(m), 1)], 1)
            toks = torch.stack(new, 1).tolist()
            for row in toks:
                row = row[:row.index(EOS_ID)] if EOS_ID in row else row
                out.append(self.tokenizer.decode(row).strip())
        return out


# ============================================================================ training
@dataclass(frozen=True)
class Config:
    name: str = "small"
    image_size: int = 32
    patch: int = 8
    vit_d: int = 64
    vit_depth: int = 2
    merge: int = 2
    n_train: int = 1500
    n_heldout: int = 240
    clip_steps: int = 120
    clip_batch: int = 40
    clip_lr: float = 3e-3
    s1_steps: int = 15
    s1_batch: int = 16
    s1_lr: float = 5e-3
    s2_steps: int = 100
    s2_batch: int = 16
    s2_lr: float = 3e-3
    chatml: bool = False
    stage2: str = "full"          # "full" (every LM weight) or "lora" (Phase 6 lab 2 adapters)
    train_kinds: tuple[str, ...] = ("shapes", "single", "digit")
    lora_r: int = 8
    lora_alpha: float = 16.0
    seed: int = 0
    lm: str = "main"
    vision: str = "tiny"          # "tiny" (trained here) or "hf:<folder>" (a pretrained CLIP/SigLIP)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


SMALL = Config()
SMOKE = replace(SMALL, name="smoke", n_train=150, n_heldout=60, clip_steps=10, s1_steps=4, s2_steps=6)
FULL = replace(SMALL, name="full", image_size=64, vit_d=256, vit_depth=6, n_train=60_000, n_heldout=3000,
               clip_steps=20_000, clip_batch=256, s1_steps=3000, s1_batch=128, s2_steps=10_000, s2_batch=128,
               lora_r=16, lora_alpha=32.0, chatml=True, stage2="lora", s2_lr=2e-4)
CONFIGS = {c.name: c for c in (SMALL, SMOKE, FULL)}


def load_lm(name: str = "main"):
    """(LlamaForCausalLM, tokenizer) of the curriculum model ``name`` (or an HF folder), fp32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labkit import curriculum_model_path

    folder = curriculum_model_path(name) / "hf" if name in ("main", "draft") else Path(name)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return lm.eval(), AutoTokenizer.from_pretrained(folder)


def _caption_ids(tokenizer: Any, caps: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, _ = pad_batch([encode(tokenizer, c) for c in caps])
    return ids, mask.bool()


def distinct_caption_batches(captions: list[str], batch: int, rng: np.random.Generator) -> list[int]:
    """Indices of ``batch`` scenes with pairwise different captions (so no false negatives in
    InfoNCE), balanced over the kinds (roughly a third digits)."""
    by_cap: dict[str, list[int]] = {}
    for i, c in enumerate(captions):
        by_cap.setdefault(c, []).append(i)
    caps = list(by_cap)
    digit_caps = [c for c in caps if c.startswith("the digit")]
    other = [c for c in caps if not c.startswith("the digit")]
    n_d = min(len(digit_caps), batch // 3)
    chosen = list(rng.choice(len(digit_caps), n_d, replace=False)) if n_d else []
    pick = [digit_caps[j] for j in chosen]
    pick += [other[j] for j in rng.choice(len(other), min(batch - n_d, len(other)), replace=False)]
    return [by_cap[c][rng.integers(len(by_cap[c]))] for c in pick]


def retrieval_eval(clip: CLIPLite, scenes: SceneSet, tokenizer: Any, batch: int, rounds: int, seed: int) -> dict:
    """Mean recall@1 (both directions) over ``rounds`` galleries of ``batch`` distinct-caption pairs."""
    rng = np.random.default_rng(seed)
    r_it, r_ti, sizes = [], [], []
    with torch.no_grad():
        for _ in range(rounds):
            idx = distinct_caption_batches(scenes.captions, batch, rng)
            ids, mask = _caption_ids(tokenizer, [scenes.captions[i] for i in idx])
            img, txt = clip.embed(scenes.images[idx], ids, mask)
            a, b = recall_at_1(F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T)
            r_it.append(a)
            r_ti.append(b)
            sizes.append(len(idx))
    return {"recall_i2t": float(np.mean(r_it)), "recall_t2i": float(np.mean(r_ti)),
            "gallery": int(np.mean(sizes)), "chance": 1.0 / float(np.mean(sizes)), "rounds": rounds}


def _qa_examples(tokenizer: Any, scenes: SceneSet, stage: int, chatml: bool) -> list[tuple[int, list[int], list[int]]]:
    if stage == 1:
        return [(i, *build_example(tokenizer, chat_prompt(None, chatml), " " + c)) for i, c in enumerate(scenes.captions)]
    return [(i, *build_example(tokenizer, chat_prompt(q, chatml), " " + a)) for (i, _t, q, a) in scenes.qa]


def _train_stage(model: LlavaLite, params: list, examples: list, images: torch.Tensor, steps: int, batch: int,
                 lr: float, rng: np.random.Generator) -> list[float]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    losses = []
    for _ in range(steps):
        pick = rng.choice(len(examples), size=min(batch, len(examples)), replace=False)
        ex = [examples[j] for j in pick]
        ids, mask, labels = pad_batch([e[1] for e in ex], [e[2] for e in ex])
        loss = model.loss(images[[e[0] for e in ex]], ids, mask, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def evaluate_vqa(model: LlavaLite, scenes: SceneSet, shuffle_images: bool = False, seed: int = 0) -> dict:
    """Greedy answers to every held-out question; exact-match accuracy per question type.

    ``shuffle_images=True`` pairs each question with another scene's image of the same kind (the
    blind baseline: what the LM gets from language priors alone).
    """
    idx = [i for (i, _t, _q, _a) in scenes.qa]
    if shuffle_images:
        rng = np.random.default_rng(seed)
        kinds = np.array([scenes.metas[i]["kind"] for i in idx])
        idx = np.array(idx)
        for k in sorted(set(kinds)):   # sorted: a set of str iterates in a per-process hash order
            sel = np.nonzero(kinds == k)[0]
            idx[sel] = idx[sel][rng.permutation(len(sel))]
        idx = idx.tolist()
    preds = model.answer(scenes.images[idx], [chat_prompt(q, model.chatml) for (_i, _t, q, _a) in scenes.qa])
    per: dict[str, list[int]] = {}
    rows = []
    for (i, t, q, a), p in zip(scenes.qa, preds):
        per.setdefault(t, []).append(int(p == a))
        rows.append({"image": i, "type": t, "question": q, "answer": a, "pred": p})
    acc = {t: {"accuracy": float(np.mean(v)), "n": len(v), "chance": CHANCE[t]} for t, v in per.items()}
    return {"per_type": acc, "overall": float(np.mean([r["pred"] == r["answer"] for r in rows])), "rows": rows}


def lib_versions() -> str:
    out = []
    for lib in ("torch", "transformers", "tokenizers", "numpy", "scikit-learn"):
        try:
            out.append(f"{lib}={metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            out.append(f"{lib}=none")
    return ",".join(out)


def build_vision(cfg: Config) -> nn.Module:
    if cfg.vision.startswith("hf:"):
        return HFVisionEncoder.from_pretrained(cfg.vision[3:])
    return TinyViT(cfg.image_size, cfg.patch, cfg.vit_d, cfg.vit_depth)


def train_all(cfg: Config, out: Path) -> dict:
    """Stages 0-2 and the evaluation; writes vision.pt, projector.pt, lora/ (peft format) and run.json."""
    lora = _lab(LORA_LAB)
    seed_everything(cfg.seed)
    times: dict[str, float] = {}
    t = time.process_time()
    lm, tok = load_lm(cfg.lm)
    train, held = make_scenes(cfg.n_train, "train", cfg.seed, cfg.image_size, tuple(cfg.train_kinds)), \
        make_scenes(cfg.n_heldout, "heldout", cfg.seed, cfg.image_size)
    times["data+load"] = time.process_time() - t
    rng = np.random.default_rng(cfg.seed)

    # stage 0: CLIP-style pretraining of the vision encoder
    t = time.process_time()
    vision = build_vision(cfg)
    clip_losses: list[float] = []
    if isinstance(vision, TinyViT):
        clip = CLIPLite(vision, lm.config.vocab_size, d_embed=vision.d)
        opt = torch.optim.AdamW(clip.parameters(), lr=cfg.clip_lr, weight_decay=0.01)
        for _ in range(cfg.clip_steps):
            idx = distinct_caption_batches(train.captions, cfg.clip_batch, rng)
            ids, mask = _caption_ids(tok, [train.captions[i] for i in idx])
            img, txt = clip.embed(train.images[idx], ids, mask)
            loss = info_nce(img, txt, clip.temperature())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            clip_losses.append(loss.item())
        clip.eval()
        retrieval = retrieval_eval(clip, held, tok, cfg.clip_batch, rounds=10, seed=cfg.seed + 1)
    else:
        retrieval = {}
    for p in vision.parameters():
        p.requires_grad_(False)
    vision.eval()
    times["stage0_clip"] = time.process_time() - t

    # stage 1: projector only, on captions
    t = time.process_time()
    for p in lm.parameters():
        p.requires_grad_(False)
    projector = Projector(vision.d, lm.config.hidden_size, vision.grid, cfg.merge, getattr(vision, "has_cls", True))
    model = LlavaLite(vision, projector, lm, tok, cfg.chatml)
    s1 = _train_stage(model, list(projector.parameters()), _qa_examples(tok, train, 1, cfg.chatml), train.images,
                      cfg.s1_steps, cfg.s1_batch, cfg.s1_lr, rng)
    model.eval()
    cap_preds = model.answer(held.images[:12], [chat_prompt(None, cfg.chatml)] * 12, max_new_tokens=8)
    model.train()
    times["stage1_align"] = time.process_time() - t

    # stage 2: projector + LoRA on the LM, on questions and answers
    t = time.process_time()
    lcfg = lora.LoRAConfig(r=cfg.lora_r, alpha=cfg.lora_alpha)
    if cfg.stage2 == "full":
        adapted = []
        for p in lm.parameters():
            p.requires_grad_(True)
    else:
        adapted = lora.apply_lora(lm, lcfg)
    params = list(projector.parameters()) + [p for p in lm.parameters() if p.requires_grad]
    s2 = _train_stage(model, params, _qa_examples(tok, train, 2, cfg.chatml), train.images, cfg.s2_steps, cfg.s2_batch,
                      cfg.s2_lr, rng)
    times["stage2_instruct"] = time.process_time() - t

    t = time.process_time()
    model.eval()
    vqa = evaluate_vqa(model, held)
    blind = evaluate_vqa(model, held, shuffle_images=True, seed=cfg.seed)
    times["eval"] = time.process_time() - t

    out.mkdir(parents=True, exist_ok=True)
    torch.save(vision.state_dict(), out / "vision.pt")
    torch.save(projector.state_dict(), out / "projector.pt")
    if cfg.stage2 == "full":
        torch.save(lm.state_dict(), out / "lm.pt")
    else:
        lora.save_adapter(lm, out / "lora", lcfg, base_model=str(cfg.lm))
    n_train_params = sum(p.numel() for p in params)
    run = {
        "config": asdict(cfg), "libs": lib_versions(), "times_cpu_s": times,
        "params": {"vision": sum(p.numel() for p in vision.parameters()),
                   "projector": sum(p.numel() for p in projector.parameters()),
                   "lm": sum(p.numel() for n, p in lm.named_parameters() if "lora_" not in n),
                   "lora": sum(p.numel() for n, p in lm.named_parameters() if "lora_" in n),
                   "stage2_trainable": n_train_params, "lora_modules": len(adapted)},
        "image_tokens": projector.n_tokens,
        "curves": {"clip": clip_losses, "stage1": s1, "stage2": s2},
        "retrieval": retrieval,
        "vqa": {k: vqa[k] for k in ("per_type", "overall")},
        "blind": {k: blind[k] for k in ("per_type", "overall")},
        "heldout_rows": vqa["rows"],
        "captions": [{"image": i, "gold": held.captions[i], "pred": p} for i, p in enumerate(cap_preds)],
        "n_train_questions": len(train.qa), "n_heldout_questions": len(held.qa),
    }
    (out / "run.json").write_text(json.dumps(run, indent=1), encoding="utf-8")
    return run


def load_model(folder: str | os.PathLike) -> tuple[LlavaLite, SceneSet, dict]:
    """The trained model of a run folder, its held-out scenes and its run.json."""
    folder = Path(folder)
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    cfg = Config(**run["config"])
    lora = _lab(LORA_LAB)
    lm, tok = load_lm(cfg.lm)
    vision = build_vision(cfg)
    vision.load_state_dict(torch.load(folder / "vision.pt", weights_only=True))
    projector = Projector(vision.d, lm.config.hidden_size, vision.grid, cfg.merge, getattr(vision, "has_cls", True))
    projector.load_state_dict(torch.load(folder / "projector.pt", weights_only=True))
    lcfg = lora.LoRAConfig(r=cfg.lora_r, alpha=cfg.lora_alpha)
    if cfg.stage2 == "full":
        lm.load_state_dict(torch.load(folder / "lm.pt", weights_only=True))
    else:
        lora.apply_lora(lm, lcfg)
        lora.load_adapter(lm, folder / "lora")
    model = LlavaLite(vision.eval(), projector.eval(), lm.eval(), tok, cfg.chatml)
    return model, make_scenes(cfg.n_heldout, "heldout", cfg.seed, cfg.image_size), run


# ============================================================================ cache
def cache_key(cfg: Config) -> str:
    """sha256 over this file, the composed labs' solution.py, the LM's key, the config and library versions."""
    from labkit import REPO_ROOT

    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    for lab in COMPOSED_LABS:
        h.update((REPO_ROOT / lab / "solution.py").read_bytes())
    if cfg.lm in ("main", "draft"):
        from labkit.curriculum import cache_key as base_key

        h.update(base_key(cfg.lm).encode())
    else:
        h.update(cfg.lm.encode())
    h.update(cfg.to_json().encode())
    h.update(lib_versions().encode())
    return h.hexdigest()


def model_dir(name: str = "small") -> Path:
    """The cached run of config ``name`` (``.cache/models/capstone06-<name>-<key16>/``), built once under
    an ``fcntl`` lock into a temporary folder renamed into place (a crash leaves no half run)."""
    from labkit.cache import build_once
    from labkit.data import cache_dir

    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; known: {sorted(CONFIGS)}")
    cfg = CONFIGS[name]
    key = cache_key(cfg)
    models = cache_dir() / "models"
    final = models / f"capstone06-{name}-{key[:16]}"
    return build_once(final, lambda tmp: train_all(cfg, tmp), key=key, ready="run.json",
                      message=f"[capstone 6] training the {name} model into {final} (once) ...")


# ============================================================================ reporting
def scorecard_table(run: dict) -> str:
    lines = ["| question type | held-out n | accuracy | images shuffled (blind) | chance |",
             "|---|---|---|---|---|"]
    for t in ANSWERS:
        if t not in run["vqa"]["per_type"]:
            continue
        v, b = run["vqa"]["per_type"][t], run["blind"]["per_type"][t]
        lines.append(f"| {t} | {v['n']} | **{v['accuracy']:.1%}** | {b['accuracy']:.1%} | {v['chance']:.1%} |")
    lines.append(f"| all | {run['n_heldout_questions']} | **{run['vqa']['overall']:.1%}** | "
                 f"{run['blind']['overall']:.1%} | |")
    return "\n".join(lines)


def scorecard_ok(run: dict, margin: float = 0.1) -> list[str]:
    """The capstone's claims as failures (empty = all hold): every question type at least twice
    chance and ``margin`` above it, and above its images-shuffled score; recall@1 at least 5x chance;
    losses fall in every stage."""
    problems = []
    for t, v in run["vqa"]["per_type"].items():
        if v["accuracy"] < max(2 * v["chance"], v["chance"] + margin):
            problems.append(f"{t}: accuracy {v['accuracy']:.3f} is not well above chance {v['chance']:.3f}")
        if v["accuracy"] <= run["blind"]["per_type"][t]["accuracy"]:
            problems.append(f"{t}: accuracy {v['accuracy']:.3f} is no better with the right image than with a "
                            f"shuffled one ({run['blind']['per_type'][t]['accuracy']:.3f})")
    r = run["retrieval"]
    if r and min(r["recall_i2t"], r["recall_t2i"]) < 5 * r["chance"]:
        problems.append(f"recall@1 {r['recall_i2t']:.3f}/{r['recall_t2i']:.3f} is under 5x chance {r['chance']:.3f}")
    for stage, c in run["curves"].items():
        if len(c) >= 10 and np.mean(c[-5:]) >= np.mean(c[:5]):
            problems.append(f"{stage} loss did not fall ({np.mean(c[:5]):.3f} -> {np.mean(c[-5:]):.3f})")
    return problems


def plot_curves(run: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from labkit.plots import savefig

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    titles = {"clip": "stage 0: CLIP InfoNCE (ViT from scratch)", "stage1": "stage 1: alignment (projector)",
              "stage2": "stage 2: instruction tuning (proj + " + ("LM)" if run["config"]["stage2"] == "full" else "LoRA)")}
    for ax, (k, title) in zip(axes, titles.items()):
        c = run["curves"][k]
        ax.plot(c, lw=1)
        ax.set(title=title, xlabel="step", ylabel="loss (nats)")
    ax = axes[3]
    types = [t for t in ANSWERS if t in run["vqa"]["per_type"]]
    x = np.arange(len(types))
    ax.bar(x - 0.2, [run["vqa"]["per_type"][t]["accuracy"] for t in types], 0.4, label="with the image")
    ax.bar(x + 0.2, [run["blind"]["per_type"][t]["accuracy"] for t in types], 0.4, label="images shuffled")
    ax.scatter(x, [CHANCE[t] for t in types], marker="_", s=600, c="k", label="chance", zorder=3)
    ax.set(xticks=x, xticklabels=types, ylim=(0, 1), title="held-out VQA accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return savefig(fig, path)


def plot_examples(run: dict, scenes: SceneSet, path: Path, n: int = 12) -> Path:
    import matplotlib.pyplot as plt

    from labkit.plots import savefig

    rows = run["heldout_rows"]
    pick, seen = [], set()
    for t in ANSWERS:  # a spread of types, wrong answers included when there are some
        typed = [r for r in rows if r["type"] == t]
        pick += typed[: n // 4 - 1] + [r for r in typed if r["pred"] != r["answer"]][:1]
    pick = [r for r in pick if not (id(r) in seen or seen.add(id(r)))][:n]
    fig, axes = plt.subplots(2, (len(pick) + 1) // 2, figsize=(2.2 * ((len(pick) + 1) // 2), 5.4))
    for ax, r in zip(axes.flat, pick):
        ax.imshow(scenes.images[r["image"]].permute(1, 2, 0).numpy(), interpolation="nearest")
        ok = r["pred"] == r["answer"]
        ax.set_title(f"{r['question']}\nmodel: {r['pred'] or '(empty)'}\ngold: {r['answer']}", fontsize=7,
                     color="green" if ok else "red")
        ax.axis("off")
    for ax in list(axes.flat)[len(pick):]:
        ax.axis("off")
    fig.tight_layout()
    return savefig(fig, path)


def print_run(run: dict, folder: Path) -> None:
    c, p = run["config"], run["params"]
    print(f"== capstone 6: LLaVA-style assistant, {c['name']} mode ({folder})")
    s2 = (f"stage 2 trains the projector + every LM weight ({p['stage2_trainable']:,} params)" if c["stage2"] == "full"
          else f"stage 2 trains the projector + LoRA r={c['lora_r']} on {p['lora_modules']} linears "
               f"({p['stage2_trainable']:,} params)")
    print(f"vision: TinyViT {c['image_size']}x{c['image_size']} patch {c['patch']} d={c['vit_d']} depth={c['vit_depth']} "
          f"({p['vision']:,} params); projector {p['projector']:,} params -> {run['image_tokens']} image tokens; "
          f"LM {p['lm']:,} params; {s2}")
    print("CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in run["times_cpu_s"].items()))
    cu = run["curves"]
    for k in ("clip", "stage1", "stage2"):
        if cu[k]:
            print(f"  {k:7s} loss {np.mean(cu[k][:5]):.3f} -> {np.mean(cu[k][-5:]):.3f} over {len(cu[k])} steps")
    r = run["retrieval"]
    if r:
        print(f"\nCLIP-style retrieval on held-out images, {r['rounds']} galleries of {r['gallery']} distinct captions: "
              f"recall@1 image->text {r['recall_i2t']:.1%}, text->image {r['recall_t2i']:.1%} (chance {r['chance']:.1%})")
    print(f"\nheld-out visual questions ({run['n_heldout_questions']}), greedy, exact match:\n{scorecard_table(run)}")
    print("\nheld-out captions after stage 1 (projector only, LM frozen; model | gold):")
    for row in run["captions"][:6]:
        print(f"  {row['pred']!r:34s} | {row['gold']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a seconds-long run into outputs/smoke")
    ap.add_argument("--full", action="store_true", help="the GPU-scale config (64x64 images, bigger ViT, long training)")
    ap.add_argument("--vision", help="'hf:<folder>' uses a pretrained CLIP/SigLIP vision tower instead of the tiny ViT")
    ap.add_argument("--stage2", choices=("full", "lora"), help="stage 2 trains every LM weight or LoRA adapters")
    ap.add_argument("--s2-lr", type=float, help="stage-2 learning rate")
    ap.add_argument("--out", type=Path, help="run folder (default: the cache for small mode, outputs/<mode> otherwise)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1 if not args.full else max(1, os.cpu_count() or 1))
    cfg = FULL if args.full else SMOKE if args.smoke else SMALL
    if args.vision:
        cfg = replace(cfg, vision=args.vision)
    if args.stage2:
        cfg = replace(cfg, stage2=args.stage2)
    if args.s2_lr:
        cfg = replace(cfg, s2_lr=args.s2_lr)
    t0, c0 = time.perf_counter(), time.process_time()
    if cfg == SMALL and args.out is None:
        folder = model_dir("small")
    else:
        folder = args.out or OUTPUTS / cfg.name
        if folder.exists():
            shutil.rmtree(folder)
        train_all(cfg, folder)
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    print_run(run, folder)
    scenes = make_scenes(cfg.n_heldout, "heldout", cfg.seed, cfg.image_size)
    figs = [plot_curves(run, HERE / "figures" / f"curves-{cfg.name}.png"),
            plot_examples(run, scenes, HERE / "figures" / f"examples-{cfg.name}.png")]
    print(f"\nwrote {', '.join(str(f) for f in figs)}")
    print(f"self-test: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU in this process")
    problems = [] if cfg is SMOKE else scorecard_ok(run)
    for p in problems:
        print("FAILED:", p)
    if cfg is SMOKE:
        print("smoke run: toy sizes, the scorecard checks are skipped")
    else:
        print("OK: every question type well above chance, retrieval well above chance, losses fall"
              if not problems else f"{len(problems)} check(s) failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

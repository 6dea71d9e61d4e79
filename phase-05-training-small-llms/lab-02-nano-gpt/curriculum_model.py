"""Build the curriculum's own small model (and its draft) with this lab's code.

Phases 6, 8, 9, 10 and 11 stand on this model; none of them retrains it. Get its folder with
``labkit.curriculum_model_path("main")`` (or ``"draft"``): that helper hashes the producing code,
``curriculum_models.json``, the data files' sha256 and the library versions, and runs this file
in a subprocess when no folder with that key exists yet (``make model`` builds both).

What ``build(name, out_dir)`` does, with the settings of ``curriculum_models.json``:

1. trains lab 5.1's byte-level BPE on TinyStories (``train_prefix_944k.txt`` +
   ``tinystories_10k.txt`` of the data mirror), 4,096 ids, with ``<|endoftext|>`` (0),
   ``<|im_start|>`` (1), ``<|im_end|>`` (2) and ``<|pad|>`` (3) reserved as special tokens
   (deterministic: the draft model gets the same tokenizer);
2. tokenizes the stories with ``<|endoftext|>`` before each one (``data/train.bin``,
   ``data/val.bin``; validation = ``valid_prefix_794k.txt``);
3. trains a Llama-style MiniGPT of lab 4.4 (RMSNorm, SwiGLU, RoPE, GQA, untied head) with
   ``solution.train`` on CPU, seeded, with a fixed thread count (same machine + same threads =
   same bits);
4. writes, into ``out_dir``::

       minigpt.pt        {"config": GPTConfig fields, "state_dict", "step", "val_loss", "train_config"}
       tokenizer/        encoder.json, vocab.bpe, bpe_meta.json  (lab 5.1 BPETokenizer.save / .load)
       hf/               LlamaForCausalLM + PreTrainedTokenizerFast (ChatML chat template),
                         save_pretrained: AutoModelForCausalLM / AutoTokenizer.from_pretrained(hf)
       data/             train.bin, val.bin (uint16), meta.json
       metrics.json      params, losses, val perplexity, unigram baseline, tokens, times, seed
       samples.txt       stories sampled from the model, separated by "\\n\\n---\\n\\n"
       log.jsonl, loss_curve.png, build_config.json

Run: ``python curriculum_model.py --name main --out DIR`` (``labkit.curriculum`` does this).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIG_FILE = HERE / "curriculum_models.json"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def load_config(name: str) -> dict[str, Any]:
    """``{"tokenizer": {...}, "model": {...}, "train": {...}, "seed", "threads"}`` for ``name``."""
    cfg = json.loads(CONFIG_FILE.read_text(encoding="utf-8"))
    if name not in cfg["models"]:
        raise ValueError(f"unknown curriculum model {name!r}; known: {sorted(cfg['models'])}")
    return {"tokenizer": cfg["tokenizer"], **cfg["models"][name]}


def evaluate_tokens(model: Any, ids: Any, block_size: int, batch_size: int = 16) -> float:
    """Mean next-token loss (nats) over ALL of ``ids``, in non-overlapping windows of
    ``block_size`` (each window predicts its ``block_size`` next tokens; a short tail is dropped)."""
    import numpy as np
    import torch

    n = (len(ids) - 1) // block_size
    if n < 1:
        raise ValueError(f"need more than block_size={block_size} tokens, got {len(ids)}")
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            rows = range(s, min(n, s + batch_size))
            x = torch.from_numpy(np.stack([np.asarray(ids[r * block_size: (r + 1) * block_size], dtype=np.int64)
                                           for r in rows]))
            y = torch.from_numpy(np.stack([np.asarray(ids[r * block_size + 1: (r + 1) * block_size + 1],
                                                      dtype=np.int64) for r in rows]))
            _, loss = model(x, y)
            total += loss.item() * y.numel()
            count += y.numel()
    return total / count


def build(name: str, out_dir: str | os.PathLike, max_steps: int | None = None) -> dict[str, Any]:
    """Build curriculum model ``name`` into ``out_dir`` (created; should be empty). Returns metrics.

    ``max_steps`` overrides the configured optimizer steps (for smoke tests; the cached model
    never uses it)."""
    import torch

    from labkit import load_lab, seed_everything

    nano = load_lab(HERE / "solution.py")
    bpe_lab = load_lab(nano.BPE_LAB)
    gpt = nano.gpt
    cfg = load_config(name)
    if max_steps is not None:
        cfg["train"] = {**cfg["train"], "max_steps": max_steps, "eval_interval": max(1, max_steps // 2),
                        "warmup_steps": min(cfg["train"]["warmup_steps"], max_steps)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(cfg["threads"]))
    t_start = time.perf_counter()
    tc = cfg["tokenizer"]

    print(f"[{name}] 1/4 training the BPE tokenizer (vocab {tc['vocab_size']}) ...", flush=True)
    train_docs = [d for f in tc["train_files"] for d in nano.load_documents(f, tc["dataset"])]
    val_docs = nano.load_documents(tc["val_file"], tc["dataset"])
    t0 = time.perf_counter()
    bpe = bpe_lab.train_bpe(train_docs, tc["vocab_size"], tc["special_tokens"])
    bpe_seconds = time.perf_counter() - t0
    bpe.save(out / "tokenizer")
    tok = nano.TextTokenizer.from_bpe(bpe)

    print(f"[{name}] 2/4 tokenizing {len(train_docs)} train / {len(val_docs)} val stories ...", flush=True)
    meta = nano.prepare(train_docs, val_docs, tok, out / "data")
    train_ids, val_ids = nano.load_bin(out / "data" / "train.bin"), nano.load_bin(out / "data" / "val.bin")
    unigram = nano.unigram_entropy(val_ids, tok.vocab_size)

    print(f"[{name}] 3/4 training a Llama-style MiniGPT on {meta['train_tokens']:,} tokens ...", flush=True)
    seed_everything(int(cfg["seed"]))
    model = nano.build_model(tok.vocab_size, style="llama", **cfg["model"])
    n_params = sum(p.numel() for p in model.parameters())
    tcfg = nano.TrainConfig(**cfg["train"], seed=int(cfg["seed"]), progress=sys.stderr.isatty())
    ckpt_dir = out / "train"
    t0, c0 = time.perf_counter(), time.process_time()
    hist = nano.train(model, train_ids, val_ids, tcfg, out_dir=ckpt_dir)
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    best = torch.load(ckpt_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    model.eval()
    torch.save({"config": best["config"], "state_dict": model.state_dict(), "step": best["step"],
                "val_loss": best["val_loss"], "train_config": best["train_config"]}, out / "minigpt.pt")
    shutil.move(str(ckpt_dir / "log.jsonl"), out / "log.jsonl")
    shutil.rmtree(ckpt_dir)
    T = model.config.block_size
    val_loss = evaluate_tokens(model, val_ids, T)
    # train loss on a contiguous train slice as long as val (all of it was trained on)
    train_loss = evaluate_tokens(model, train_ids[: len(val_ids)], T)

    print(f"[{name}] 4/4 exporting to Hugging Face and sampling ...", flush=True)
    specials = bpe.special_tokens
    hf_model = gpt.to_hf_llama(model, bos_token_id=specials["<|endoftext|>"], eos_token_id=specials["<|endoftext|>"],
                               pad_token_id=specials["<|pad|>"])
    hf_model.generation_config.bos_token_id = specials["<|endoftext|>"]
    hf_model.generation_config.eos_token_id = specials["<|endoftext|>"]
    hf_model.generation_config.pad_token_id = specials["<|pad|>"]
    hf_model.save_pretrained(out / "hf")
    hf_tok = bpe.to_hf_tokenizer(bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>",
                                 model_max_length=T)
    hf_tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out / "hf")

    samples = [nano.generate_text(model, tok, "", max_new_tokens=200, temperature=0.8, top_p=0.95, seed=i)
               for i in range(5)]
    samples.append(nano.generate_text(model, tok, "Once upon a time, there was a little dog named",
                                      max_new_tokens=120, temperature=0.8, top_p=0.95, seed=5))
    (out / "samples.txt").write_text("\n\n---\n\n".join(s.strip() for s in samples) + "\n", encoding="utf-8")
    nano.plot_history({name: hist}, out / "loss_curve.png", f"curriculum model '{name}'", unigram)

    metrics = {
        "name": name, "params": n_params, "config": best["config"],
        "train_loss": train_loss, "val_loss": val_loss, "val_ppl": math.exp(val_loss),
        "unigram_entropy_val": unigram, "unigram_ppl_val": math.exp(unigram),
        "best_step": best["step"], "steps": tcfg.max_steps, "tokens_seen": hist["tokens"],
        "train_tokens": meta["train_tokens"], "val_tokens": meta["val_tokens"],
        "epochs": hist["tokens"] / meta["train_tokens"], "vocab_size": tok.vocab_size,
        "special_tokens": specials, "bpe_seconds": bpe_seconds, "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu, "build_seconds": time.perf_counter() - t_start,
        "tokens_per_second": hist["tokens_per_second"], "threads": int(cfg["threads"]), "seed": int(cfg["seed"]),
        "torch": torch.__version__,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (out / "build_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    print(f"[{name}] done in {metrics['build_seconds']:.0f} s: {n_params:,} params, val loss {val_loss:.3f} "
          f"(ppl {metrics['val_ppl']:.1f}; unigram {unigram:.3f}), train loss {train_loss:.3f}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="main", help="a key of curriculum_models.json: main or draft")
    ap.add_argument("--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--max-steps", type=int, default=None, help="override (smoke tests only: changes the model)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    build(args.name, args.out, max_steps=args.max_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())

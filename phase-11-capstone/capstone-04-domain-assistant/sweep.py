"""The hyper-parameter sweep behind the README's "Benchmarks" tables (not part of the graded lab).

Usage: ``python sweep.py '{"tag": "a", "sft": {"sft_lr": 3e-3}, "dpo": {"l1": {"dpo_lr": 1e-4, "dpo_epochs": 1.0}}}'``

Each tag gets ``outputs/sweep/<tag>/`` (the generated data is shared in ``outputs/sweep/data``): one SFT
run (the small config plus the "sft" overrides), base and SFT evaluated once, then a preference stage,
a DPO run and an evaluation for each "dpo" entry (overrides on top of the SFT config).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from labkit import load_lab

SWEEP = Path(__file__).resolve().parent / "outputs" / "sweep"


def run(tag: str, sft_kw: dict, dpo_variants: dict) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    m = load_lab("phase-11-capstone/capstone-04-domain-assistant")
    cfg = replace(m.SMALL, **sft_kw)
    out, data_dir = SWEEP / tag, SWEEP / "data"
    (out / "data").mkdir(parents=True, exist_ok=True)
    if not (data_dir / "data" / "sft.jsonl").exists():
        d = m.generate_dataset(cfg, data_dir)
        print(m.stages_table(d["stages"]), flush=True)
    ex = m._read_jsonl(data_dir / "data" / "sft.jsonl")
    if not (out / "sft" / "config.json").exists():
        t = time.time()
        s = m.train_sft_stage(cfg, ex, out)
        print(tag, "sft", s, f"{time.time() - t:.1f}s", flush=True)
    heldout = m.heldout_problems(cfg.n_heldout, cfg.seed, exclude=[e["instruction"] for e in ex])
    if not (out / "eval_sft.json").exists():
        sc = m.evaluate_models({"base": m.base_model_dir(cfg), "SFT": out / "sft"}, heldout, cfg)
        sc.pop("items")
        (out / "eval_sft.json").write_text(json.dumps(sc))
        print(m.scorecard_table(sc), flush=True)
    for name, kw in dpo_variants.items():
        c2 = replace(cfg, **kw)
        pairs, p = m.preference_stage(c2, ex, out)
        print(tag, name, "prefs", p, flush=True)
        q = m.dpo_stage(c2, pairs, out)
        print(tag, name, "dpo", q, flush=True)
        (out / "dpo").rename(out / f"dpo_{name}")
        sc = m.evaluate_models({"SFT": out / "sft", "DPO": out / f"dpo_{name}"}, heldout, c2)
        print(m.scorecard_table(sc) + "\n" + m.deltas_table(sc), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    spec = json.loads(sys.argv[1])
    run(spec["tag"], spec.get("sft", {}), spec.get("dpo", {}))

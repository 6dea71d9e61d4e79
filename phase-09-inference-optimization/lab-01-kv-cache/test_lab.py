"""Grader for lab 9.1 (KV cache). References: lab 4.4's MiniGPT without a cache (``forward`` and
``generate``), Hugging Face's ``DynamicCache`` and ``generate`` on the curriculum model's HF export,
the storage bytes torch actually allocated, and the hand-derived Llama-3-8B KV-cache sizes."""
from __future__ import annotations

import copy

import pytest
import torch

from labkit import curriculum_model_path, load_lab, seed_everything

V = 97  # a prime vocab size, so no shape accidentally lines up
GIB = 2**30


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: intra-op threads only add overhead (and thrash on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(lab, **kw):
    base = dict(vocab_size=V, block_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=32)
    return lab.GPTConfig.llama_style(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny(lab):
    """A random Llama-style MiniGPT with GQA (4 query heads, 2 key/value heads)."""
    seed_everything(0)
    return lab.MiniGPT(tiny_config(lab)).eval()


@pytest.fixture(scope="module")
def main_model(lab):
    """The trained curriculum model, block_size raised to 512 (RoPE: same weights, longer runs)."""
    torch.set_num_threads(1)
    return lab.load_curriculum_minigpt("main", block_size=512)


@pytest.fixture(scope="module")
def val_ids():
    nano = load_lab("phase-05-training-small-llms/lab-02-nano-gpt")
    data = nano.load_bin(curriculum_model_path("main") / "data" / "val.bin")
    return torch.from_numpy(data[:400].astype("int64"))


@pytest.fixture(scope="module")
def hf_main():
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(curriculum_model_path("main") / "hf").eval()


def storage_bytes(tensors) -> int:
    """What torch really holds for these tensors (a view keeps its whole base alive)."""
    seen, total = set(), 0
    for t in tensors:
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


class SpyCache:
    """Wraps a cache and records the T_new of every update (to see prefill vs decode steps)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def update(self, key, value, layer_idx):
        self.calls.append((layer_idx, key.shape[2]))
        return self.inner.update(key, value, layer_idx)

    def get_seq_length(self, layer_idx=0):
        return self.inner.get_seq_length(layer_idx)


# --------------------------------------------------------------------------- memory math
def test_kv_cache_bytes_llama3_8b_hand_derived(lab):
    # 2 (K, V) * 32 layers * 8 kv heads * 128 d_head * 8,192 tokens * 32 sequences * 2 bytes (bf16)
    gqa = lab.kv_cache_bytes(lab.llama3_8b_config(gqa=True), 8192, 32, torch.bfloat16)
    mha = lab.kv_cache_bytes(lab.llama3_8b_config(gqa=False), 8192, 32, torch.bfloat16)
    assert gqa == 2 * 32 * 8 * 128 * 8192 * 32 * 2 == 32 * GIB, (
        f"Llama-3-8B (GQA, 8 kv heads) at 8,192 tokens x 32 in bf16 is 2*32*8*128*8192*32*2 = 32 GiB, got {gqa:,}: "
        "count K AND V (the 2), use n_kv_head (not n_head) and 2 bytes per bf16 element")
    assert mha == 2 * 32 * 32 * 128 * 8192 * 32 * 2 == 128 * GIB, (
        f"without GQA (32 kv heads) the same cache is 128 GiB, got {mha:,}")
    assert lab.kv_cache_bytes(lab.llama3_8b_config(), 8192, 1, torch.bfloat16) == GIB, \
        "one 8,192-token Llama-3-8B sequence in bf16 caches exactly 1 GiB"


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2),
                                         (torch.float64, 8)])
def test_kv_cache_bytes_formula_and_dtypes(lab, dtype, size):
    cfg = tiny_config(lab, n_layer=3)           # 3 layers, 2 kv heads, d_head 8
    got = lab.kv_cache_bytes(cfg, 17, 5, dtype)
    assert got == 2 * 3 * 2 * 8 * 17 * 5 * size, (
        f"kv_cache_bytes = 2 * n_layer * n_kv_head * d_head * seq_len * batch * bytes per element; for {dtype} "
        f"that is {2 * 3 * 2 * 8 * 17 * 5 * size:,}, got {got:,} (bytes per element: dtype.itemsize)")
    assert lab.kv_cache_bytes(cfg, 0, 5, dtype) == 0, "an empty cache holds 0 bytes"


@pytest.mark.given
@pytest.mark.parametrize("args, exc", [
    ((8, 1, "bf16"), TypeError), ((8, 1, torch.int64), TypeError), ((-1, 1, torch.float32), ValueError),
    ((8, 0, torch.float32), ValueError), ((8.5, 1, torch.float32), ValueError),
])
def test_kv_cache_bytes_rejects_bad_input(lab, args, exc):
    with pytest.raises(exc):
        lab.kv_cache_bytes(tiny_config(lab), *args)
    with pytest.raises(TypeError, match="GPTConfig"):
        lab.kv_cache_bytes({"n_layer": 2}, 8, 1, torch.float32)


def test_measured_bytes_equal_kv_cache_bytes(lab, tiny, main_model, val_ids):
    x = torch.randint(0, V, (3, 20))
    cache = lab.KVCache()
    with torch.no_grad():
        tiny(x, past_key_values=cache)
    want = lab.kv_cache_bytes(tiny.config, 20, 3, torch.float32)
    assert cache.nbytes() == want
    got = storage_bytes(cache.keys + cache.values)
    assert got == want, (
        f"torch holds {got:,} bytes for the cache but kv_cache_bytes says {want:,}. Larger? The value (and key) the "
        "model passes to update() can be a VIEW into its fused qkv activation: storing the view keeps that whole "
        "activation alive. Store a copy (clone) of the first chunk")
    bf16 = copy.deepcopy(main_model).to(torch.bfloat16)
    cache = lab.KVCache()
    with torch.no_grad():
        bf16(val_ids[None, :50], past_key_values=cache)
    want = lab.kv_cache_bytes(main_model.config, 50, 1, torch.bfloat16)
    assert cache.keys[0].dtype == torch.bfloat16
    assert storage_bytes(cache.keys + cache.values) == want, "a bf16 model's cache must cost 2 bytes an element"
    static = lab.StaticKVCache(main_model.config, 3, 40, torch.bfloat16)
    assert storage_bytes(static.keys + static.values) == lab.kv_cache_bytes(main_model.config, 40, 3, torch.bfloat16)


# --------------------------------------------------------------------------- the dynamic cache
def test_dynamic_cache_prefill_then_decode_matches_full_forward(lab, tiny):
    torch.manual_seed(1)
    x = torch.randint(0, V, (2, 30))
    with torch.no_grad():
        full, _ = tiny(x)
        cache = lab.KVCache()
        steps = [tiny(x[:, :10], past_key_values=cache)[0]]
        steps += [tiny(x[:, t:t + 1], past_key_values=cache)[0] for t in range(10, 30)]
    diff = (torch.cat(steps, dim=1) - full).abs().max().item()
    assert diff < 1e-5, (
        f"prefill + one-token steps through KVCache differ from one full forward by {diff:.2e}: does update() "
        "concatenate along the TIME axis (dim 2 of (B, n_kv_head, T, d_head)) and return the whole layer?")
    assert cache.get_seq_length() == 30
    assert cache.keys[0].shape == (2, 2, 30, 8), (
        f"cached keys should be (B, n_kv_head, T, d_head) = (2, 2, 30, 8) (GQA: 2 kv heads, not 4), "
        f"got {tuple(cache.keys[0].shape)}")


def test_cache_equals_hf_dynamic_cache(lab, main_model, hf_main, val_ids):
    from transformers import DynamicCache

    ids = val_ids[None, :40]
    ours, theirs = lab.KVCache(), DynamicCache()
    with torch.no_grad():
        main_model(ids, past_key_values=ours)
        hf_main(ids, past_key_values=theirs, use_cache=True)
        for t in range(40, 43):          # three decode steps on both
            main_model(val_ids[None, t:t + 1], past_key_values=ours)
            hf_main(val_ids[None, t:t + 1], past_key_values=theirs, use_cache=True)
    assert len(ours.keys) == len(theirs.layers) == main_model.config.n_layer
    for i in range(len(ours.keys)):
        for name, a, b in (("keys", ours.keys[i], theirs.layers[i].keys),
                           ("values", ours.values[i], theirs.layers[i].values)):
            assert a.shape == b.shape, f"layer {i} {name}: ours {tuple(a.shape)}, HF DynamicCache {tuple(b.shape)}"
            assert torch.allclose(a, b, atol=1e-5), (
                f"layer {i} {name} differ from HF's DynamicCache by {(a - b).abs().max().item():.2e}: the cache "
                "must store exactly what update() received, oldest position first")
    assert ours.get_seq_length() == theirs.get_seq_length() == 43


# --------------------------------------------------------------------------- generate_cached, the spec's test
@pytest.fixture(scope="module")
def greedy_256(main_model, val_ids):
    prompt = val_ids[None, :8]
    with torch.no_grad():
        ref = main_model.generate(prompt, 256, temperature=0.0)       # lab 4.4: no cache, full forward each step
        teacher, _ = main_model(ref[:, :-1])                          # every step's no-cache logits at once
    return prompt, ref, teacher[0, prompt.shape[1] - 1:]


@pytest.mark.parametrize("kind", ["KVCache", "StaticKVCache"])
def test_greedy_256_tokens_identical_and_logits_within_1e5(lab, main_model, greedy_256, kind):
    prompt, ref, teacher = greedy_256
    cache = lab.KVCache() if kind == "KVCache" else lab.StaticKVCache(main_model.config, 1, 8 + 256)
    steps: list[torch.Tensor] = []
    out = lab.generate_cached(main_model, prompt, 256, cache=cache, step_logits=steps)
    assert out.shape == ref.shape, f"expected (1, 8 + 256) tokens, got {tuple(out.shape)}"
    first_bad = (out != ref)[0].nonzero()
    assert torch.equal(out, ref), (
        f"with {kind} greedy decoding diverges from MiniGPT.generate (no cache) at position "
        f"{int(first_bad[0]) if len(first_bad) else '?'}: RoPE offsets (get_seq_length must count the cached "
        "positions), or a token fed twice / skipped?")
    assert len(steps) == 256, "step_logits must get one (B, vocab) tensor per generated token"
    diff = (torch.cat(steps) - teacher).abs().max().item()
    assert diff < 1e-5, f"per-step logits differ from the no-cache forward by {diff:.2e} (> 1e-5)"


def test_greedy_equals_hf_generate(lab, main_model, hf_main, val_ids):
    prompt = val_ids[None, :12]
    ours = lab.generate_cached(main_model, prompt, 40)
    theirs = hf_main.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False,
                              pad_token_id=3, eos_token_id=None)
    assert torch.equal(ours, theirs), "greedy generate_cached differs from HF generate on the exported model"


def test_prefill_is_one_pass_then_one_token_per_step(lab, tiny):
    prompt = torch.randint(0, V, (2, 11))
    spy = SpyCache(lab.KVCache())
    out = lab.generate_cached(tiny, prompt, 6, cache=spy)
    assert out.shape == (2, 17)
    n_layer = tiny.config.n_layer
    sizes = [t for _, t in spy.calls]
    assert sizes[:n_layer] == [11] * n_layer, (
        f"the prefill must run the whole 11-token prompt through the model in ONE forward pass, saw update sizes "
        f"{sizes[:n_layer]}")
    assert sizes[n_layer:] == [1] * (len(sizes) - n_layer), (
        "each decode step must feed only the newest token (T = 1) through the model: the cache holds the rest")
    assert len(sizes) == n_layer * 6, (
        f"6 new tokens need 6 forward passes (1 prefill + 5 decode steps; the last token is never fed), "
        f"saw {len(sizes) // n_layer}")
    assert spy.get_seq_length() == 16


def test_sampling_matches_generate_with_the_same_generator(lab, tiny):
    prompt = torch.randint(0, V, (3, 5))
    for kw in (dict(temperature=1.0), dict(temperature=0.7, top_k=10), dict(temperature=1.3, top_p=0.8)):
        ours = lab.generate_cached(tiny, prompt, 20, generator=torch.Generator().manual_seed(3), **kw)
        ref = tiny.generate(prompt, 20, generator=torch.Generator().manual_seed(3), **kw)
        assert torch.equal(ours, ref), (
            f"sampling with {kw} differs from MiniGPT.generate with the same generator: use sample_next_token on the "
            "last position's logits, one draw per step")


def test_a_cache_holding_a_prefix_is_continued(lab, tiny):
    prompt = torch.randint(0, V, (1, 16))
    ref = lab.generate_cached(tiny, prompt, 10)
    cache = lab.KVCache()
    with torch.no_grad():
        tiny(prompt[:, :9], past_key_values=cache)             # a reused prefix (prefix caching)
    out = lab.generate_cached(tiny, prompt, 10, cache=cache)
    assert torch.equal(out, ref), (
        "with a cache that already holds the first 9 prompt tokens, prefill only idx[:, cache.get_seq_length():]")


def test_left_padded_batch_matches_each_row_alone(lab, tiny):
    rows = [torch.randint(0, V, (n,)) for n in (12, 7, 3)]
    idx = torch.zeros(3, 12, dtype=torch.long)
    mask = torch.zeros(3, 12, dtype=torch.long)
    for b, r in enumerate(rows):
        idx[b, 12 - len(r):] = r
        mask[b, 12 - len(r):] = 1
    out = lab.generate_cached(tiny, idx, 8, attention_mask=mask)
    for b, r in enumerate(rows):
        alone = lab.generate_cached(tiny, r[None], 8)
        assert torch.equal(out[b, 12:], alone[0, len(r):]), (
            f"row {b} (left-padded from {len(r)} tokens) generates differently in the batch: extend the "
            "attention_mask by a column of ones at every decode step")


def test_eos_stops_generation(lab, tiny):
    prompt = torch.randint(0, V, (1, 4))
    free = lab.generate_cached(tiny, prompt, 12)
    eos = int(free[0, 6])                                       # the 3rd generated token
    out = lab.generate_cached(tiny, prompt, 12, eos_token_id=eos)
    first = int((free[0, 4:] == eos).nonzero()[0]) + 4
    assert torch.equal(out, free[:, :first + 1]), "generation must stop right after every row produced eos_token_id"


@pytest.mark.given
def test_generate_cached_rejects_bad_input(lab, tiny):
    x = torch.randint(0, V, (1, 10))
    with pytest.raises(ValueError, match="block_size"):
        lab.generate_cached(tiny, x, 60)                      # 10 + 60 > 64
    with pytest.raises(ValueError, match="temperature"):
        lab.generate_cached(tiny, x, 2, temperature=float("nan"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        lab.generate_cached(tiny, x, -1)
    with pytest.raises(TypeError):
        lab.generate_cached(tiny, x.float(), 2)
    with pytest.raises(TypeError, match="MiniGPT"):
        lab.generate_cached(torch.nn.Linear(2, 2), x, 2)
    cache = lab.StaticKVCache(tiny.config, 1, 32)
    cache.lengths = [10] * tiny.config.n_layer                 # as if the prompt were already cached
    with pytest.raises(ValueError, match="already holds"):
        lab.generate_cached(tiny, x, 2, cache=cache)
    assert torch.equal(lab.generate_cached(tiny, x, 0), x)


# --------------------------------------------------------------------------- the preallocated cache
def test_static_cache_writes_in_place(lab, tiny):
    cfg = tiny.config
    cache = lab.StaticKVCache(cfg, 2, 24)
    ptrs = [k.data_ptr() for k in cache.keys]
    assert cache.nbytes() == lab.kv_cache_bytes(cfg, 24, 2, torch.float32)
    x = torch.randint(0, V, (2, 15))
    with torch.no_grad():
        tiny(x[:, :10], past_key_values=cache)
        assert cache.get_seq_length() == 10, (
            f"after a 10-token prefill get_seq_length() must be 10 (positions written), got "
            f"{cache.get_seq_length()}: it is NOT the buffer size max_seq_len")
        for t in range(10, 15):
            tiny(x[:, t:t + 1], past_key_values=cache)
    assert [k.data_ptr() for k in cache.keys] == ptrs, (
        "the StaticKVCache buffers were replaced: write into them in place (buf[:, :, start:end] = key), "
        "never torch.cat")
    k, v = cache.update(torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8), 0)
    assert k.shape == (2, 2, 16, 8) and k.data_ptr() == ptrs[0], (
        "update must return views of the filled part of the buffer: (B, n_kv_head, length, d_head)")
    dyn = lab.KVCache()
    with torch.no_grad():
        tiny(x, past_key_values=dyn)
    for i in range(cfg.n_layer):
        assert torch.allclose(cache.keys[i][:, :, :15], dyn.keys[i], atol=1e-6), \
            f"layer {i}: the preallocated buffer holds other keys than the dynamic cache"
        assert torch.allclose(cache.values[i][:, :, :15], dyn.values[i], atol=1e-6)
    assert cache.nbytes() == lab.kv_cache_bytes(cfg, 24, 2, torch.float32), "a static cache never grows"


@pytest.mark.given
def test_static_cache_rejects_overflow_and_wrong_dtype(lab, tiny):
    cfg = tiny.config
    cache = lab.StaticKVCache(cfg, 1, 4)
    with pytest.raises(ValueError, match="cache full"):
        cache.update(torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8), 0)
    with pytest.raises(TypeError, match="dtype"):
        cache.update(torch.zeros(1, 2, 1, 8, dtype=torch.float64), torch.zeros(1, 2, 1, 8, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="n_kv_head"):
        cache.update(torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 1, 8), 0)
    with pytest.raises(ValueError):
        lab.StaticKVCache(cfg, 0, 4)
    with pytest.raises(TypeError):
        lab.StaticKVCache(cfg, 1, 4, dtype=torch.int64)


def test_static_cache_generation_equals_dynamic(lab, tiny):
    prompt = torch.randint(0, V, (2, 9))
    a = lab.generate_cached(tiny, prompt, 20)
    b = lab.generate_cached(tiny, prompt, 20, cache=lab.StaticKVCache(tiny.config, 2, 9 + 20))
    assert torch.equal(a, b), "generation with StaticKVCache must equal generation with KVCache"
    with pytest.raises(ValueError, match="cache full"):
        lab.generate_cached(tiny, prompt, 20, cache=lab.StaticKVCache(tiny.config, 2, 20))


# --------------------------------------------------------------------------- rollback (speculative decoding)
@pytest.mark.parametrize("kind", ["KVCache", "StaticKVCache"])
def test_crop_rolls_back(lab, tiny, kind):
    torch.manual_seed(2)
    x = torch.randint(0, V, (2, 20))
    other = torch.randint(0, V, (2, 4))               # a different continuation after position 12
    cache = lab.KVCache() if kind == "KVCache" else lab.StaticKVCache(tiny.config, 2, 32)
    with torch.no_grad():
        tiny(x, past_key_values=cache)
        cache.crop(12)
        assert cache.get_seq_length() == 12, f"crop(12) must leave 12 positions, got {cache.get_seq_length()}"
        got, _ = tiny(other, past_key_values=cache)
        want, _ = tiny(torch.cat([x[:, :12], other], dim=1))
    diff = (got - want[:, 12:]).abs().max().item()
    assert diff < 1e-5, (
        f"after crop(12) the next tokens must see positions 0..11 only (diff {diff:.2e}): every layer's keys AND "
        "values must be cut to 12 positions")
    assert cache.get_seq_length() == 16
    cache.crop(-6)                                     # HF convention: drop the last 6
    assert cache.get_seq_length() == 10, "crop(-6) must drop the last 6 positions (16 -> 10)"
    assert all(cache.get_seq_length(i) == 10 for i in range(tiny.config.n_layer)), "crop every layer"


@pytest.mark.given
def test_crop_rejects_bad_lengths(lab, tiny):
    dynamic = lab.KVCache()
    dynamic.keys = [torch.zeros(1, 2, 5, 8) for _ in range(2)]
    dynamic.values = [torch.zeros(1, 2, 5, 8) for _ in range(2)]
    static = lab.StaticKVCache(tiny.config, 1, 8)
    static.lengths = [5, 5]
    for cache in (dynamic, static):
        for bad in (6, -6, 2.0):
            with pytest.raises(ValueError):
                cache.crop(bad)


@pytest.mark.given
def test_batch_select_keeps_rows(lab, tiny):
    dynamic = lab.KVCache()
    dynamic.keys = [torch.randn(3, 2, 6, 8) for _ in range(2)]
    dynamic.values = [torch.randn(3, 2, 6, 8) for _ in range(2)]
    static = lab.StaticKVCache(tiny.config, 3, 8)
    static.keys = [torch.randn(3, 2, 8, 8) for _ in range(2)]
    for cache in (dynamic, static):
        before = cache.keys[0][2].clone()
        cache.batch_select_indices([2, 0])
        assert cache.keys[0].shape[0] == 2 and torch.equal(cache.keys[0][0], before)

"""Grader for lab 9.2 (quantization). References: the round-to-nearest error bounds, bitsandbytes
0.50 (NF4 codebook and codes, double quantization, LLM.int8() row quantization and its
``Linear8bitLt`` / ``Linear4bit`` layers, all on CPU), torch.autograd's Hessian, and the
curriculum model's own layers (GPTQ and AWQ against round-to-nearest INT4 on held-out activations)."""
from __future__ import annotations

import math

import pytest
import torch

from labkit import seed_everything

bnb = pytest.importorskip("bitsandbytes")
bnbF = pytest.importorskip("bitsandbytes.functional")

GS = 32  # the INT4 group size used on the curriculum model (its layers have 128 or 384 inputs)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scaled_rows(out=64, n_in=256, seed=0):
    """A Gaussian weight whose rows span two orders of magnitude (like real layers' channels)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, n_in, generator=g) * torch.logspace(-1, 1, out)[:, None]


@pytest.fixture(scope="module")
def curriculum(lab):
    """The curriculum model, calibration windows from train.bin, held-out windows from val.bin,
    and every block linear's inputs for both (collected once on the fp32 model)."""
    torch.set_num_threads(1)
    seed_everything(0)
    model, train, val = lab.load_curriculum()
    calib = lab.calibration_ids(train, 32, 128, seed=0)
    held = lab.calibration_ids(val, 8, 128, seed=1)
    layers = []
    for bi, block in enumerate(model.blocks):
        xin = lab.collect_linear_inputs(model, block, calib)
        xho = lab.collect_linear_inputs(model, block, held)
        for name, lin in block.named_modules():
            if isinstance(lin, torch.nn.Linear):
                layers.append((f"{bi}.{name}", lin.weight.data.clone(), xin[name], xho[name]))
    return dict(model=model, train=train, val=val, calib=calib, layers=layers)


# ----------------------------------------------------------------------------- INT8 absmax / zero-point
@pytest.mark.parametrize("per_channel", [False, True])
def test_absmax_error_within_half_a_step(lab, per_channel):
    w = scaled_rows()
    q, scale = lab.absmax_quantize(w, 8, per_channel=per_channel)
    assert q.dtype == torch.int8, f"codes should be int8, got {q.dtype}"
    assert int(q.abs().max()) == 127, "the largest |w| should map to code +-127: is scale = absmax / 127?"
    expect_shape = (w.shape[0], 1) if per_channel else ()
    assert tuple(scale.shape) == expect_shape, f"scale shape {tuple(scale.shape)}, expected {expect_shape}"
    err = (lab.absmax_dequantize(q, scale) - w).abs()
    bound = (scale / 2).expand_as(w)
    assert (err <= bound * (1 + 1e-5) + 1e-7).all(), (
        "round-to-nearest must be within half a step (scale / 2) of every weight: are you using floor/trunc "
        "instead of round, or dividing by the wrong max?")
    z, _ = lab.absmax_quantize(torch.zeros(3, 4))
    assert (z == 0).all(), "an all-zero tensor must quantize to zeros (scale 1, not 0/0 = NaN)"


def test_per_channel_beats_per_tensor(lab):
    w = scaled_rows()
    e_t = (lab.absmax_dequantize(*lab.absmax_quantize(w)) - w).abs().mean()
    e_c = (lab.absmax_dequantize(*lab.absmax_quantize(w, per_channel=True)) - w).abs().mean()
    assert e_c < e_t / 3, (f"per-channel error {e_c:.4f} should be far below per-tensor {e_t:.4f} on rows of "
                           "different scale: is the per-channel absmax taken over dim=1 (each row)?")


@pytest.mark.parametrize("per_channel", [False, True])
def test_zeropoint_error_bound_and_range(lab, per_channel):
    w = scaled_rows() + 3.0                         # shifted: the range does not straddle zero evenly
    q, scale, zero = lab.zeropoint_quantize(w, 8, per_channel=per_channel)
    assert q.dtype == torch.uint8, f"zero-point codes are unsigned (uint8), got {q.dtype}"
    assert torch.equal(zero, zero.round()) and zero.min() >= 0 and zero.max() <= 255, \
        "the zero point must be an integer code in [0, 255]"
    err = (lab.zeropoint_dequantize(q, scale, zero) - w).abs()
    assert (err <= (scale / 2).expand_as(w) * (1 + 1e-5) + 1e-6).all(), \
        "zero-point round-trip above scale / 2: did you round w / scale BEFORE adding the zero point?"
    zq, zs, zz = lab.zeropoint_quantize(torch.tensor([[0.0, 1.0, 2.0, -0.5]]), 8)
    assert lab.zeropoint_dequantize(zq, zs, zz)[0, 0] == 0, "0.0 must be exactly representable (q == zero)"


def test_zeropoint_uses_the_whole_grid_on_one_sided_data(lab):
    w = torch.relu(scaled_rows(seed=1)[:8] * 0 + torch.rand(8, 256))   # all in [0, 1)
    e_abs = (lab.absmax_dequantize(*lab.absmax_quantize(w)) - w).abs().max()
    e_zp = (lab.zeropoint_dequantize(*lab.zeropoint_quantize(w)) - w).abs().max()
    assert e_zp < 0.6 * e_abs, (f"on non-negative data zero-point ({e_zp:.5f}) should halve absmax's error "
                                f"({e_abs:.5f}): is scale = (max - min) / 255 over all 256 codes?")


# ----------------------------------------------------------------------------- group-wise INT4
def test_groupwise_int4_bound_and_layout(lab):
    w = scaled_rows(out=16, n_in=128)
    q, scale, zero = lab.groupwise_quantize(w, 4, 32)
    assert q.shape == w.shape and q.dtype == torch.uint8 and int(q.max()) <= 15, \
        "INT4 codes are (out, in) uint8 in [0, 15]"
    assert scale.shape == (16, 4) and zero.shape == (16, 4), \
        f"one scale and zero per (row, group of 32): expected (16, 4), got {tuple(scale.shape)}"
    err = (lab.groupwise_dequantize(q, scale, zero) - w).abs().reshape(16, 4, 32)
    assert (err <= scale[..., None] / 2 * (1 + 1e-5) + 1e-6).all(), \
        "an element is off by more than half of ITS GROUP's step: are groups consecutive input columns?"
    g = w.reshape(16, 4, 32)
    assert torch.allclose(scale, (g.amax(2).clamp(min=0) - g.amin(2).clamp(max=0)) / 15), \
        "INT4 scale should be (max - min) / 15 over each group (range stretched to contain 0)"


def test_smaller_groups_smaller_error_and_per_channel_limit(lab):
    w = torch.randn(32, 256) * torch.rand(1, 256) * 3      # columns of different scale
    errs = [(lab.groupwise_dequantize(*lab.groupwise_quantize(w, 4, g)) - w).pow(2).mean() for g in (256, 64, 16)]
    assert errs[0] > errs[1] > errs[2], f"MSE should fall as groups shrink (256, 64, 16): {errs}"
    q, s, z = lab.groupwise_quantize(w, 8, 256)
    q2, s2, z2 = lab.zeropoint_quantize(w, 8, per_channel=True)
    assert torch.equal(q, q2), "one group per row must be exactly per-channel zero-point quantization"


@pytest.mark.given
def test_pack_int4_matches_bitsandbytes_layout(lab):
    codes = torch.randint(0, 16, (1000,), dtype=torch.uint8)
    packed = lab.pack_int4(codes)
    assert packed.numel() == 500 and torch.equal(lab.unpack_int4(packed, 1000), codes)
    assert int(packed[0]) == (int(codes[0]) << 4) | int(codes[1])


# ----------------------------------------------------------------------------- LLM.int8()
def outlier_activations(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 256, generator=g)
    x[:, [5, 77, 200]] *= 30.0
    return x


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_vectorwise_quant_equals_bitsandbytes(lab, threshold):
    x = outlier_activations()
    q, stats, cols = lab.int8_vectorwise_quant(x, threshold)
    rq, rstats, rcols = bnbF.int8_vectorwise_quant(x.clone(), threshold=threshold)
    assert torch.equal(stats, rstats.float()), \
        "row absmax differs from bitsandbytes': are outlier ENTRIES excluded (zeroed) before taking the max?"
    assert torch.equal(q, rq), "int8 codes differ from bitsandbytes': q = round(x * 127 / row_absmax)"
    if threshold:
        assert torch.equal(cols, rcols), f"outlier columns {cols.tolist()} != bitsandbytes' {rcols.tolist()}"
        assert (q[:, cols] == 0).all(), "the outlier columns' codes must be zeroed (they go through fp)"


def test_llm_int8_matmul_outlier_split(lab):
    x = outlier_activations()
    w = torch.randn(96, 256) * 0.05
    exact = x @ w.T
    plain = (lab.llm_int8_matmul(x, w, threshold=0.0) - exact).abs().mean()
    split = (lab.llm_int8_matmul(x, w, threshold=6.0) - exact).abs().mean()
    assert split < plain / 3, (f"the outlier split should cut the error (plain {plain:.4f}, split {split:.4f}): "
                               "do the outlier columns go through a float matmul and get ADDED back?")
    assert lab.llm_int8_matmul(torch.randn(8, 256), w, 0.0).shape == (8, 96)
    # against bitsandbytes' Linear8bitLt (int8 weights only: its outlier part uses the dequantized weight)
    layer = bnb.nn.Linear8bitLt(256, 96, bias=False, has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu").eval()          # eval: the inference path (MatMul8bitLt)
    with torch.no_grad():
        ref = layer(x)
    w8 = lab.absmax_dequantize(*lab.absmax_quantize(w, 8, per_channel=True))
    ours = lab.llm_int8_matmul(x, w8, 6.0)
    # bitsandbytes casts the activations to fp16 first, so the two agree closely, not bit for bit
    gap = ((ours - ref).abs().mean() / ref.abs().mean()).item()
    assert gap < 0.01, f"LLM.int8() output is {gap:.1%} (mean relative) away from bitsandbytes' Linear8bitLt"


# ----------------------------------------------------------------------------- NF4 + double quantization
def test_nf4_codebook_equals_bitsandbytes(lab):
    ours = lab.nf4_codebook()
    ref = bnbF.get_4bit_type("nf4", device="cpu")
    assert ours.shape == (16,) and ours.dtype == torch.float32
    assert (ours == 0).sum() == 1 and ours[0] == -1 and ours[-1] == 1, "NF4 has -1, 1 and exactly one 0"
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0), (
        f"codebook differs from bitsandbytes' by {(ours - ref).abs().max():.2e}: 8 positive quantiles from "
        "linspace(0.9677083, 0.5, 9), 7 negative from linspace(..., 8), then divide by the max")


@pytest.mark.parametrize("shape", [(64, 128), (33, 70)])
def test_nf4_codes_equal_bitsandbytes(lab, shape):
    w = torch.randn(*shape) * 0.02
    t = lab.nf4_quantize(w, 64, double_quant=False)
    ref_packed, ref_state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(t.absmax, ref_state.absmax), "block absmax differs from bitsandbytes' (blocks of 64 of "\
        "the FLATTENED tensor, the last one shorter)"
    assert torch.equal(t.packed, ref_packed.reshape(-1)), \
        "NF4 codes differ from bitsandbytes': is each value mapped to the NEAREST code (midpoint boundaries)?"
    ref_deq = bnbF.dequantize_4bit(ref_packed, ref_state)
    assert torch.allclose(lab.nf4_dequantize(t), ref_deq, atol=1e-7)
    err = (lab.nf4_dequantize(t) - w).abs().reshape(-1)
    blocks = torch.nn.functional.pad(err, (0, t.absmax.numel() * 64 - err.numel())).reshape(-1, 64)
    half_gap = lab.nf4_codebook().diff().max() / 2                 # 0.152, between -1 and -0.696
    assert (blocks <= t.absmax[:, None] * half_gap + 1e-7).all(), \
        "NF4 error above absmax * (largest code gap / 2)"


@pytest.mark.given
def test_dynamic_map_equals_bitsandbytes(lab):
    assert torch.equal(lab.dynamic_map(), bnbF.create_dynamic_map(signed=True))


def test_double_quantization_against_bitsandbytes(lab):
    w = torch.randn(512, 300) * 0.02
    single = lab.nf4_quantize(w, 64, double_quant=False)
    _, ref_state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    idx, absmax2, offset = lab.double_quantize(single.absmax)
    assert torch.allclose(offset, ref_state.offset), "subtract the MEAN of the scales before quantizing them"
    assert torch.equal(absmax2, ref_state.state2.absmax), "second-level absmax per block of 256 scales"
    ok, n_equal, _ = lab.double_quant_agreement(single.absmax, ref_state)
    assert ok and n_equal >= 0.99 * idx.numel(), (
        f"only {n_equal}/{idx.numel()} scale codes equal bitsandbytes' (its CPU kernel differs from exact "
        "round-to-nearest only at near-ties): nearest dynamic-map code of (absmax - mean) / absmax2?")
    back = lab.double_dequantize(idx, absmax2, offset)
    assert (back - single.absmax).abs().max() < 0.02 * single.absmax.max(), "double dequantization is off"
    dq = lab.nf4_quantize(w, 64, double_quant=True)
    bits = 8 * dq.nbytes / w.numel()
    assert abs(bits - (4 + 8 / 64 + 32 / (64 * 256))) < 0.01, f"{bits:.3f} bits per weight, expected ~4.127"


# ----------------------------------------------------------------------------- GPTQ
def test_gptq_hessian_is_the_objectives_hessian(lab):
    X = torch.randn(50, 6, dtype=torch.float64)
    w = torch.randn(6, dtype=torch.float64)
    H_auto = torch.autograd.functional.hessian(lambda v: ((X @ (w - v)) ** 2).mean(), torch.zeros(6, dtype=torch.float64))
    H = lab.gptq_hessian(X.float())
    assert torch.allclose(H, H_auto.float(), atol=1e-4), \
        "H should be the Hessian of mean((X(w - w_hat))^2): 2 X^T X / N"


def test_gptq_with_uncorrelated_inputs_is_rtn(lab):
    W = scaled_rows(32, 128)
    q, s, z = lab.gptq_quantize(W, 3.0 * torch.eye(128), 4, 32, percdamp=0.0)
    rq, rs, rz = lab.groupwise_quantize(W, 4, 32)
    assert torch.equal(q, rq) and torch.allclose(s, rs), (
        "with H proportional to I there is nothing to compensate (U is diagonal): GPTQ must give RTN's codes; "
        "check the group scale/zero fit and the quantizer")


def test_gptq_lazy_batches_do_not_change_the_result(lab, curriculum):
    name, W, X, _ = curriculum["layers"][4]                          # 0.mlp.proj, 384 inputs
    H = lab.gptq_hessian(X)
    a = lab.groupwise_dequantize(*lab.gptq_quantize(W, H, 4, GS, block_size=32))
    b = lab.groupwise_dequantize(*lab.gptq_quantize(W, H, 4, GS, block_size=128))
    mismatch = (~torch.isclose(a, b, atol=1e-4)).float().mean().item()
    assert mismatch < 0.005, (f"{mismatch:.1%} of weights change with the lazy-batch size: after a block, update "
                              "the columns to its right with Err @ U[block, later] (the block's accumulated errors)")


def test_gptq_beats_rtn_on_every_curriculum_layer(lab, curriculum):
    worse = []
    for name, W, X, Xh in curriculum["layers"]:
        rtn = lab.groupwise_dequantize(*lab.groupwise_quantize(W, 4, GS))
        gq = lab.groupwise_dequantize(*lab.gptq_quantize(W, lab.gptq_hessian(X), 4, GS))
        e_rtn, e_gptq = lab.layer_error(W, rtn, Xh), lab.layer_error(W, gq, Xh)
        if not e_gptq < 0.95 * e_rtn:
            worse.append(f"{name}: GPTQ {e_gptq:.3f} vs RTN {e_rtn:.3f}")
    assert not worse, ("GPTQ's held-out ||XW^T - XW_hat^T|| should be below RTN INT4 (same group size) on every "
                       "layer: is the error divided by U[i, i] and propagated with U's row i? " + "; ".join(worse))


# ----------------------------------------------------------------------------- AWQ
def test_awq_alpha_zero_is_rtn(lab):
    W, X = torch.randn(16, 64), torch.randn(200, 64)
    s, alpha, errs = lab.awq_search_scale(W, X, 4, 32, n_grid=1)
    assert alpha == 0 and torch.allclose(s, torch.ones(64)), "alpha = 0 means s = 1 (plain RTN)"
    rtn = lab.groupwise_dequantize(*lab.groupwise_quantize(W, 4, 32))
    assert math.isclose(errs[0], lab.layer_error(W, rtn, X), rel_tol=1e-6)


def test_awq_beats_rtn_on_salient_channels(lab, curriculum):
    worse, total_worse = [], []
    for name, W, X, Xh in curriculum["layers"][:10]:
        s, alpha, errs = lab.awq_search_scale(W, X, 4, GS)
        assert len(errs) == 20 and min(errs) <= errs[0] + 1e-9, "the search must keep the best alpha"
        x_mean = X.abs().mean(0)
        if alpha > 0:
            order = x_mean.argsort()
            assert s[order[-1]] > s[order[0]], "s must grow with the channel's mean |activation| (mean|x|^alpha)"
        aw = lab.awq_quantize(W, s, 4, GS)[3]
        rtn = lab.groupwise_dequantize(*lab.groupwise_quantize(W, 4, GS))
        sal = x_mean.topk(max(1, W.shape[1] // 100)).indices
        e_aw = lab.layer_error(W[:, sal], aw[:, sal], Xh[:, sal])
        e_rtn = lab.layer_error(W[:, sal], rtn[:, sal], Xh[:, sal])
        if not e_aw < e_rtn:
            worse.append(f"{name}: AWQ {e_aw:.4f} vs RTN {e_rtn:.4f}")
        if lab.layer_error(W, aw, X) > lab.layer_error(W, rtn, X) * (1 + 1e-6):
            total_worse.append(name)
    assert not total_worse, f"AWQ's calibration error is above RTN's on {total_worse}: alpha = 0 (RTN) is in the grid"
    assert not worse, ("AWQ should protect the salient (largest mean |x|) input channels better than RTN: "
                       "scale W's columns by s and divide the activations by s. " + "; ".join(worse))


# ----------------------------------------------------------------------------- the quantized model
@pytest.fixture(scope="module")
def model_results(lab, curriculum):
    model = curriculum["model"]
    ev = curriculum["val"][: 8 * 256 + 1]
    out = {}
    for method in ("fp32", "int8", "int4-rtn", "gptq", "awq", "nf4", "bnb-nf4"):
        qm = lab.quantize_model(model, method, curriculum["calib"], group_size=GS)
        out[method] = (qm, lab.perplexity(qm, ev), lab.model_bytes(qm))
    return out


def test_quantized_model_quality_and_bytes(lab, model_results):
    ppl = {m: r[1] for m, r in model_results.items()}
    nbytes = {m: r[2] for m, r in model_results.items()}
    assert abs(ppl["int8"] - ppl["fp32"]) < 0.002 * ppl["fp32"], f"INT8 should not move perplexity: {ppl}"
    assert ppl["gptq"] < ppl["int4-rtn"], f"GPTQ's perplexity should beat RTN INT4's: {ppl}"
    assert ppl["awq"] < ppl["int4-rtn"], f"AWQ's perplexity should beat RTN INT4's: {ppl}"
    assert nbytes["fp32"] > nbytes["int8"] > nbytes["awq"] > nbytes["int4-rtn"] > nbytes["nf4"], \
        f"bytes should order fp32 > int8 > awq (int4 + input scales) > int4 (group 32) > nf4 (~4.13 bits): {nbytes}"
    n_lin = sum(m.weight.numel() for b in model_results["fp32"][0].blocks for m in b.modules()
                if isinstance(m, torch.nn.Linear))
    saved = nbytes["fp32"] - nbytes["nf4"]
    assert abs(saved - n_lin * (4 - 4.127 / 8)) < 0.01 * saved, "NF4 should store ~4.127 bits per block weight"


def test_our_nf4_model_equals_bitsandbytes_linear4bit(lab, model_results, curriculum):
    ids = curriculum["val"][None, :64]
    with torch.no_grad():
        ours = model_results["nf4"][0](ids)[0]
        ref = model_results["bnb-nf4"][0](ids)[0]
        fp = model_results["fp32"][0](ids)[0]
    # not bit-equal: bitsandbytes' CPU kernel rounds a few double-quantized scales the other way (near ties)
    gap, quant_effect = (ours - ref).abs().max(), (ref - fp).abs().max()
    assert gap < 0.05 * quant_effect, (
        f"our NF4 model's logits are {gap:.2e} from the same model with bitsandbytes' Linear4bit (nf4, double "
        f"quant) layers, against {quant_effect:.2e} between that and fp32: they should be nearly identical")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.given
def test_bad_input(lab):
    with pytest.raises(ValueError, match="NaN"):
        lab.absmax_quantize(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError):
        lab.absmax_quantize(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="bits"):
        lab.zeropoint_quantize(torch.ones(2, 2), bits=9)
    with pytest.raises(ValueError, match="divide"):
        lab.groupwise_quantize(torch.ones(4, 10), 4, 3)
    with pytest.raises(ValueError, match="empty"):
        lab.nf4_quantize(torch.ones(0, 4))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        lab.gptq_quantize(torch.ones(4, 8), torch.eye(4), 4, 4)
    with pytest.raises(ValueError, match="block_size"):
        lab.gptq_quantize(torch.ones(4, 64), torch.eye(64), 4, 32, block_size=48)
    with pytest.raises(ValueError, match="method"):
        lab.quantize_model(torch.nn.Linear(2, 2), "int3")
    with pytest.raises(ValueError, match="calib"):
        lab.quantize_model(torch.nn.Linear(2, 2), "gptq")


# ----------------------------------------------------------------------------- maintained libraries (GPU only)
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_gptqmodel_library_against_ours(lab, curriculum, method, tmp_path):
    """GPTQModel (ModelCloud; `pip install gptqmodel`, CUDA) quantizes the curriculum model's HF export
    with GPTQ / AWQ at INT4, group 32, on the same calibration windows; its perplexity should land near
    ours and below RTN's. Not run on the CPU machine this lab was written on (no GPU there): the
    library call follows GPTQModel's documented API (QuantizeConfig, GPTQModel.load/quantize/save)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gptqmodel = pytest.importorskip("gptqmodel")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labkit import curriculum_model_path

    hf_path = curriculum_model_path("main") / "hf"
    tok = AutoTokenizer.from_pretrained(hf_path)
    texts = [tok.decode(row.tolist()) for row in curriculum["calib"]]
    kw = dict(bits=4, group_size=GS)
    if method == "awq":
        try:
            from gptqmodel.quantization import METHOD
            cfg = gptqmodel.QuantizeConfig(**kw, quant_method=METHOD.AWQ)
        except (ImportError, TypeError, AttributeError) as e:
            pytest.skip(f"this gptqmodel version configures AWQ differently: {e}")
    else:
        cfg = gptqmodel.QuantizeConfig(**kw)
    model = gptqmodel.GPTQModel.load(str(hf_path), cfg)
    model.quantize(texts, batch_size=8)
    model.save(str(tmp_path / method))
    qmodel = gptqmodel.GPTQModel.load(str(tmp_path / method), device="cuda:0")
    ev = curriculum["val"][: 8 * 256 + 1]

    class Wrap(torch.nn.Module):                 # perplexity() expects MiniGPT's (logits, loss) tuple
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return (self.m(input_ids=ids.to("cuda:0")).logits.float().cpu(), None)

    lib_ppl = lab.perplexity(Wrap(qmodel.model).eval(), ev)
    fp_ppl = lab.perplexity(Wrap(AutoModelForCausalLM.from_pretrained(hf_path).to("cuda:0")).eval(), ev)
    ours = lab.perplexity(lab.quantize_model(curriculum["model"], method, curriculum["calib"], group_size=GS), ev)
    rtn = lab.perplexity(lab.quantize_model(curriculum["model"], "int4-rtn", group_size=GS), ev)
    print(f"{method}: fp32 {fp_ppl:.3f}, gptqmodel {lib_ppl:.3f}, ours {ours:.3f}, RTN {rtn:.3f}")
    assert lib_ppl < fp_ppl * 1.05 and abs(lib_ppl - ours) < 0.02 * fp_ppl

"""The f32 engine against transformers (torch CPU) on tiny random checkpoints converted at f32:
llama relu, llama silu, mistral, qwen2 with q/k/v biases, tied embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from pi_backend.convert import convert
from pi_backend.model import Model

VARIANTS = ["llama_relu", "llama_silu", "mistral_silu", "qwen2_bias", "llama_tied"]
TOKENS = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 200, 31]


@pytest.fixture(scope="module")
def converted(hf_model, tmp_path_factory):
    """variant -> (split f32 GGUF, dense f32 GGUF, transformers logits [len(TOKENS), vocab])."""
    import torch
    import transformers
    out = {}
    d = tmp_path_factory.mktemp("engine_hf")
    for v in VARIANTS:
        src = hf_model(v)
        split, dense = d / f"{v}.gguf", d / f"{v}.dense.gguf"
        convert(src, split, outtype="f32")
        convert(src, dense, outtype="f32", dense=True)
        hf = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        with torch.no_grad():
            ref = hf(torch.tensor([TOKENS])).logits[0].numpy()
        out[v] = (split, dense, ref)
    return out


# A plain llama.cpp (--dense) file has no activation key, so llama.cpp and we read it as SwiGLU:
# ReLU models are checked on the split layout only.
@pytest.mark.parametrize("variant,layout", [(v, "split") for v in VARIANTS] +
                         [(v, "dense") for v in VARIANTS if v != "llama_relu"])
def test_f32_logits_match_transformers(converted, variant, layout):
    split, dense, ref = converted[variant]
    m = Model(str(split if layout == "split" else dense))
    ours = m.new_context(32, 2).eval(TOKENS, 0, logits_all=True)
    assert np.abs(ours - ref).max() <= 1e-3, np.abs(ours - ref).max()


@pytest.mark.parametrize("variant", ["llama_relu", "qwen2_bias"])
def test_kv_cache_decode_equals_full_recompute(converted, variant):
    m = Model(str(converted[variant][0]))
    full = m.new_context(32, 2).eval(TOKENS, 0, logits_all=True)
    ctx = m.new_context(32, 1)
    steps = np.stack([ctx.eval([t], i) for i, t in enumerate(TOKENS)])
    np.testing.assert_allclose(steps, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_threshold_zero_reproduces_dense(converted, variant):
    m = Model(str(converted[variant][0]))
    assert "threshold" in m.ffn_modes
    dense = m.new_context(32, 2, ffn_mode="dense").eval(TOKENS, 0, logits_all=True)
    ctx = m.new_context(32, 2, ffn_mode="threshold")  # thresholds default to 0
    thr = ctx.eval(TOKENS, 0, logits_all=True)
    np.testing.assert_allclose(thr, dense, atol=1e-5, rtol=0)
    s = ctx.stats()
    if variant == "llama_relu":
        # the oracle mask: exactly the neurons with relu(gate) > 0 are computed
        assert 0.2 < s["ffn_sparsity"] < 0.8
    else:
        assert s["ffn_sparsity"] == 0.0


def test_relu_split_runs_sparse_and_dense_equal_per_token(converted):
    """Token by token, the oracle-masked ReLU FFN gives the dense logits at every step."""
    m = Model(str(converted["llama_relu"][0]))
    a, b = m.new_context(32, 1, ffn_mode="dense"), m.new_context(32, 2, ffn_mode="threshold")
    for i, t in enumerate(TOKENS[:6]):
        np.testing.assert_allclose(b.eval([t], i), a.eval([t], i), atol=1e-5, rtol=0)


def test_switching_back_to_dense_is_exact(converted):
    """A context that ran sparse, then dense, gives the dense logits of a fresh context."""
    m = Model(str(converted["llama_silu"][0]))
    fresh = m.new_context(32, 1).eval(TOKENS, 0, logits_all=True)
    ctx = m.new_context(32, 1, ffn_mode="threshold")
    m.set_thresholds(np.full(m.n_layer, 0.05, np.float32))
    ctx.eval(TOKENS, 0)
    assert ctx.stats()["ffn_sparsity"] > 0
    ctx.set_ffn_mode("dense")
    np.testing.assert_array_equal(ctx.eval(TOKENS, 0, logits_all=True), fresh)

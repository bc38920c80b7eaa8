"""The f32 engine against transformers (torch CPU) on tiny random checkpoints converted at f32
(split and --dense): llama relu, llama silu, mistral, qwen2 with q/k/v biases, tied embeddings,
llama 3 RoPE scaling (rope_freqs), qwen3 (q/k norms, head_dim * n_head != n_embd); and against
llama-cpp-python on the same --dense files."""
from __future__ import annotations

import numpy as np
import pytest

from pi_backend.convert import convert
from pi_backend.model import Model

from hf_ref import hf_logits, load_f16_attention
from peer import divergence, ref_logits

VARIANTS = ["llama_relu", "llama_silu", "mistral_silu", "qwen2_bias", "llama_tied", "llama3_rope",
            "qwen3", "gemma3"]
# q/k norms bring queries and keys to unit size (Qwen3, Gemma 3: scores of order 1, not 0.1), and
# Gemma's norms after attention and after the FFN rescale those blocks' outputs to unit size:
# both magnify the f16 rounding of the KV cache, queries and probabilities (llama.cpp's, and the
# engine's). Against plain transformers these are held to twice what those roundings alone move
# transformers' own logits (measured in this run; Qwen3 about 1e-3, Gemma 3 about 1.3e-3, where
# the engine is within 1e-4 and 5e-4 of transformers with those roundings), the others to 1e-3.
F16_MAGNIFIED = {"qwen3", "gemma3"}
# A plain llama.cpp (--dense) file has no activation key, so llama.cpp and we read it with the
# architecture's own activation: ReLU models are checked on the split layout only.
DENSE_VARIANTS = [v for v in VARIANTS if v != "llama_relu"]
TOKENS = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 200, 31]
# teacher-forced text for the llama.cpp comparison: long enough for top-1 agreement to mean
# something, short enough for the tiny context
PEER_TOKENS = [int(t) for t in np.random.default_rng(1).integers(3, 300, 48)]


@pytest.fixture(scope="module")
def converted(hf_model, tmp_path_factory):
    """variant -> (split f32 GGUF, dense f32 GGUF, transformers model in f32, the same in f64
    with the engine's f16 roundings in attention)."""
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
        out[v] = (split, dense, hf, load_f16_attention(src))
    return out


@pytest.mark.parametrize("variant,layout", [(v, "split") for v in VARIANTS] +
                         [(v, "dense") for v in DENSE_VARIANTS])
def test_f32_logits_match_transformers(converted, variant, layout):
    split, dense, hf, hf16 = converted[variant]
    m = Model(str(split if layout == "split" else dense))
    ours = m.new_context(32, 2).eval(TOKENS, 0, logits_all=True)
    ref = hf_logits(hf, TOKENS)
    bound = 1e-3
    if variant in F16_MAGNIFIED:
        bound = max(bound, 2 * np.abs(hf_logits(hf16, TOKENS) - ref).max())
    err = np.abs(ours - ref).max()
    print(f"\n{variant} {layout}: max |ours - transformers| {err:.3g} (bound {bound:.3g})")
    assert err <= bound


@pytest.mark.parametrize("variant", VARIANTS)
def test_f32_logits_match_transformers_with_f16_attention(converted, variant):
    """With llama.cpp's f16 roundings in its attention, transformers (in f64) computes what the
    engine does within 1e-3 for every architecture: what remains is f32 arithmetic and the
    occasional f16 rounding that f32 and f64 take to different sides."""
    split, _, _, hf16 = converted[variant]
    ours = Model(str(split)).new_context(32, 2).eval(TOKENS, 0, logits_all=True)
    err = np.abs(ours - hf_logits(hf16, TOKENS)).max()
    print(f"\n{variant}: max |ours - transformers with f16 attention| {err:.3g}")
    assert err <= 1e-3


@pytest.mark.parametrize("variant", DENSE_VARIANTS)
def test_dense_file_matches_llama_cpp(converted, variant):
    """Teacher-forced on the --dense file, our logits are as close to llama-cpp-python's as
    transformers' are (twice their divergence, measured in this run; the KL floor 1e-9 is far
    below what one f32 rounding of the logits could move it)."""
    import llama_cpp
    _, dense, hf, _ = converted[variant]
    ref = llama_cpp.Llama(str(dense), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    try:
        theirs = ref_logits(ref, PEER_TOKENS)
    finally:
        ref.close()
    ours = Model(str(dense)).new_context(64, 2).eval(PEER_TOKENS, 0, logits_all=True)
    d = divergence(ours, theirs)
    peer = divergence(hf_logits(hf, PEER_TOKENS), theirs)
    print(f"\n{variant}: ours vs llama.cpp {d}; transformers vs llama.cpp {peer}")
    assert 1 - d["top1"] <= 2 * (1 - peer["top1"]), (d, peer)
    assert d["kl"] <= 2 * peer["kl"] + 1e-9, (d, peer)


@pytest.mark.parametrize("variant", ["llama_relu", "qwen2_bias", "llama3_rope", "qwen3", "gemma3"])
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


# ---- llama 3 RoPE scaling ----------------------------------------------------------------------
def test_llama3_rope_freqs_are_transformers_frequencies(converted):
    """The file's rope_freqs divide the plain RoPE frequencies into transformers' llama3 ones;
    at this head size and original context they are 1 for the fastest frequencies, `factor` for
    the slowest and smoothed between (so the test exercises all three)."""
    import gguf
    from conftest import LLAMA3_ROPE
    split, dense, hf, _ = converted["llama3_rope"]
    for path in (split, dense):
        t = {t.name: t for t in gguf.GGUFReader(path).tensors}["rope_freqs.weight"]
        ff = np.asarray(t.data, np.float32)
        hd = hf.config.hidden_size // hf.config.num_attention_heads
        assert ff.shape == (hd // 2,)
        assert ff[0] == 1 and ff[-1] == LLAMA3_ROPE["factor"]
        assert np.any((ff > 1) & (ff < LLAMA3_ROPE["factor"])), ff
        plain = 1.0 / LLAMA3_ROPE["rope_theta"] ** (np.arange(0, hd, 2) / hd)
        np.testing.assert_allclose(plain / ff, hf.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)


@pytest.mark.parametrize("variant", ["llama3_rope", "qwen3", "gemma3"])
def test_llama_cpp_file_as_source_gives_the_same_model(converted, tmp_path, variant):
    """A llama.cpp-layout file (the --dense one: Llama 3's rope_freqs, Qwen3's and Gemma 3's
    norms and keys, the plain ffn_down; it runs as it is: test_f32_logits_match_transformers)
    converts to a split file that computes exactly what the file made from the checkpoint
    does."""
    split, dense, _, _ = converted[variant]
    again = tmp_path / "from_gguf.gguf"
    convert(dense, again, outtype="f32")
    want = Model(str(split)).new_context(32, 2).eval(TOKENS, 0, logits_all=True)
    got = Model(str(again)).new_context(32, 2).eval(TOKENS, 0, logits_all=True)
    np.testing.assert_array_equal(got, want)


def rewrite(src, dst, arch: str | None = None, drop=(), kv=None):
    """A copy of the GGUF file src at dst: of architecture `arch` (its keys renamed), without
    the tensors in `drop`, with the string keys `kv` added."""
    import gguf
    from pi_backend.format import field_types, field_value
    r = gguf.GGUFReader(src)
    old = field_value(r.fields["general.architecture"])
    arch = arch or old
    w = gguf.GGUFWriter(dst, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        name = arch + key[len(old):] if key.startswith(old + ".") else key
        w.add_key_value(name, field_value(f, text=False), *field_types(f))
    for k, v in (kv or {}).items():
        w.add_string(k, v)
    for t in r.tensors:
        if t.name not in drop:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def one_line_model_error(path) -> str:
    from pi_backend.model import ModelError
    with pytest.raises(ModelError) as e:
        Model(str(path))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_unsupported_rope_scaling_is_one_line(converted, tmp_path):
    """yarn (and any other rope.scaling.type but none and linear) is refused, naming the key
    and what is supported."""
    out = rewrite(converted["llama_silu"][0], tmp_path / "yarn.gguf",
                  kv={"llama.rope.scaling.type": "yarn"})
    msg = one_line_model_error(out)
    assert "llama.rope.scaling.type = 'yarn'" in msg and "supported: none, linear" in msg


def test_unsupported_architecture_is_one_line(converted, tmp_path):
    out = rewrite(converted["llama_silu"][0], tmp_path / "phi3.gguf", arch="phi3")
    msg = one_line_model_error(out)
    assert "unsupported architecture 'phi3'" in msg
    assert "supported: llama, qwen2, qwen3, gemma3" in msg


@pytest.mark.parametrize("variant,tensor", [("qwen3", "blk.1.attn_k_norm.weight"),
                                            ("llama_silu", "blk.0.ffn_gate.weight")])
def test_missing_required_tensor_is_one_line(converted, tmp_path, variant, tensor):
    """A tensor the architecture requires is named, with the architecture; the same norm is
    optional in a llama file (the engine applies what is there)."""
    out = rewrite(converted[variant][0], tmp_path / "m.gguf", drop={tensor})
    msg = one_line_model_error(out)
    arch = "qwen3" if variant == "qwen3" else "llama"
    assert f"model is missing tensor {tensor} ({arch} requires it)" in msg
    if variant == "qwen3":   # as a llama file, q/k norms are optional: it loads without them
        Model(str(rewrite(out, tmp_path / "as_llama.gguf", arch="llama")))


# ---- Gemma 3 -----------------------------------------------------------------------------------
def test_gemma3_file_has_sliding_layers_that_matter(converted):
    """The tiny Gemma 3 slides on layers 0 and 1 (period 3) over 4 positions, fewer than the
    tokens the tests run, each kind of layer with its own RoPE base; the global layer's linear
    RoPE scaling and the attention scale are in the file."""
    import gguf
    from conftest import GEMMA3
    split, dense, hf, _ = converted["gemma3"]
    for path in (split, dense):
        f = {k: v.contents() for k, v in gguf.GGUFReader(path).fields.items()}
        assert f["gemma3.attention.sliding_window"] == GEMMA3["sliding_window"] < len(TOKENS)
        assert f["gemma3.attention.sliding_window_pattern"] == 3
        assert f["gemma3.rope.freq_base_swa"] == 10000.0 and f["gemma3.rope.freq_base"] == 1e6
        assert f["gemma3.rope.scaling.type"] == "linear" and f["gemma3.rope.scaling.factor"] == 2.0
        assert f["gemma3.attention.scale"] == pytest.approx(GEMMA3["query_pre_attn_scalar"] ** -0.5)
    assert hf.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]


def test_gemma3_softcap_and_attention_scale(hf_model, tmp_path):
    """A Gemma 3 with final logit soft-capping and a query_pre_attn_scalar that is not its head
    size: both as transformers applies them. llama.cpp computes the scale from the head size,
    so --dense warns that llama.cpp will not reproduce it."""
    import torch
    import transformers
    from conftest import build_tiny_hf_model, tokenizer_vocab_size
    src = hf_model("gemma3")
    tok = tmp_path / "tok"
    tok.mkdir()
    for f in src.iterdir():
        if f.name.startswith("tokenizer"):
            (tok / f.name).write_bytes(f.read_bytes())
    hf_dir = build_tiny_hf_model("gemma3", tmp_path / "hf", tok, tokenizer_vocab_size(tok),
                                 final_logit_softcapping=1.5, query_pre_attn_scalar=64)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ref, ref16 = hf_logits(hf, TOKENS), hf_logits(load_f16_attention(hf_dir), TOKENS)
    assert np.abs(ref).max() < 1.5    # the cap is in force
    convert(hf_dir, tmp_path / "m.gguf", outtype="f32")
    ours = Model(str(tmp_path / "m.gguf")).new_context(32, 2).eval(TOKENS, 0, logits_all=True)
    assert np.abs(ours - ref16).max() <= 1e-3
    assert np.abs(ours - ref).max() <= max(1e-3, 2 * np.abs(ref16 - ref).max())
    summary = convert(hf_dir, tmp_path / "d.gguf", outtype="f32", dense=True)
    assert any("ignores gemma3.attention.scale" in w for w in summary.warnings), summary.warnings

"""Tests of pi-convert (convert/): tiny random HF models at every output type, the SmolLM2 GGUF,
tokenizers, predictors and the command line's handling of bad inputs. Everything offline."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT

from conftest import HF_VARIANTS, REPO, TINY_SPECIALS
from pi_backend.convert import ConvertError, convert
from pi_backend.convert.layout import OUTTYPES, encode
from pi_backend.convert.model import permute_qk

TYPES = [t for t, qt in OUTTYPES.items() if qt is not None]   # "auto": test_auto_*
SILU_VARIANTS = [v for v in HF_VARIANTS if v != "llama_relu"]
# max |logit error| / max |logit| of llama.cpp on the --dense file vs transformers (fp32 weights)
LOGIT_TOL = {"f32": 3e-3, "f16": 6e-3, "q8_0": 6e-2, "q4_0": 0.6, "q4_1": 0.6}
# same, when transformers runs on the weights the file holds (quantized then dequantized):
# what remains is llama.cpp's own arithmetic (activations quantized to 8 bits for q* matmuls)
FAKEQ_TOL = {"f32": 3e-3, "f16": 3e-3, "q8_0": 3e-2, "q4_0": 3e-2, "q4_1": 3e-2}
PROMPT_IDS = [5, 77, 100, 3, 250, 12, 40, 41, 90, 300, 7, 64]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pi_backend.convert", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


class GGUFFile:
    def __init__(self, path: Path):
        self.reader = gguf.GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}

    def kv(self, key: str):
        f = self.reader.fields.get(key)
        return None if f is None else f.contents()

    def keys(self) -> set[str]:
        return set(self.reader.fields)

    def qtype(self, name: str) -> QT:
        return QT(self.tensors[name].tensor_type)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in reversed(self.tensors[name].shape.tolist()))

    def raw(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name].data)

    def f32(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        return gguf.quants.dequantize(np.asarray(t.data), QT(t.tensor_type)).reshape(self.shape(name)).astype(np.float32)


def roundtrip(w: np.ndarray, qtype: QT) -> np.ndarray:
    """What a tensor of `qtype` holds for float32 data w."""
    if qtype == QT.F32:
        return w.astype(np.float32)
    if qtype == QT.F16:
        return w.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(encode(w, qtype), qtype).reshape(w.shape)


@pytest.fixture(scope="session")
def hf_weights(hf_model):
    """variant -> (transformers model in fp32, its state dict as float32 numpy)."""
    import torch
    import transformers
    cache = {}

    def get(variant):
        if variant not in cache:
            m = transformers.AutoModelForCausalLM.from_pretrained(hf_model(variant), dtype=torch.float32).eval()
            sd = {k: v.detach().float().numpy().copy() for k, v in m.state_dict().items()}
            cache[variant] = (m, sd)
        return cache[variant]
    return get


@pytest.fixture(scope="session")
def converted(hf_model, tmp_path_factory):
    """converted(variant, outtype, dense=False) -> GGUF path (cached per session)."""
    out = tmp_path_factory.mktemp("converted")
    cache = {}

    def get(variant, outtype, dense=False):
        key = (variant, outtype, dense)
        if key not in cache:
            p = out / f"{variant}.{outtype}{'.dense' if dense else ''}.gguf"
            convert(hf_model(variant), p, outtype, dense=dense)
            cache[key] = p
        return cache[key]
    return get


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(path), verbose=False, logits_all=True, n_ctx=64, n_threads=1, n_threads_batch=1)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


# --------------------------------------------------------------------------------------------
# structure of the split files
# --------------------------------------------------------------------------------------------
# What the converter must make of each checkpoint, written out here (not read from it):
# Hugging Face class -> our architecture; HF activation -> pi.ffn_activation; a layer's HF
# tensors -> ours (Gemma's four norms: post_attention_layernorm follows attention there, and
# every Gemma norm w is stored as 1 + w, what its RMSNorm multiplies by).
ARCH_OF = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
           "Qwen3ForCausalLM": "qwen3", "Gemma3ForCausalLM": "gemma3"}
ACT_OF = {"silu": "silu", "relu": "relu", "gelu_pytorch_tanh": "gelu_tanh"}
HF_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
            "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
            "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
            "mlp.down_proj": "ffn_down_t"}
HF_LAYER_GEMMA = {**HF_LAYER, "post_attention_layernorm": "post_attention_norm",
                  "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}


@pytest.mark.parametrize("outtype", TYPES)
@pytest.mark.parametrize("variant", list(HF_VARIANTS))
def test_split_structure(variant, outtype, converted, hf_weights, hf_model):
    path = converted(variant, outtype)
    g = GGUFFile(path)
    _, sd = hf_weights(variant)
    cfg = json.loads((hf_model(variant) / "config.json").read_text())
    arch = ARCH_OF[cfg["architectures"][0]]
    gemma = arch == "gemma3"
    shift = 1.0 if gemma else 0.0
    qt = OUTTYPES[outtype]
    d, n_ff, n_layer = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // n_head
    n_vocab = cfg["vocab_size"]

    # metadata
    assert g.kv("general.architecture") == arch
    assert g.kv(f"{arch}.embedding_length") == d
    assert g.kv(f"{arch}.feed_forward_length") == n_ff
    assert g.kv(f"{arch}.block_count") == n_layer
    assert g.kv(f"{arch}.attention.head_count") == n_head
    assert g.kv(f"{arch}.attention.head_count_kv") == n_kv
    assert g.kv(f"{arch}.attention.key_length") == (None if hd == d // n_head else hd)
    assert g.kv(f"{arch}.context_length") == cfg["max_position_embeddings"]
    assert g.kv("pi.format_version") == 1
    assert g.kv("pi.ffn_layout") == "split"
    assert g.kv("pi.ffn_activation") == ACT_OF[cfg.get("hidden_act") or cfg["hidden_activation"]]
    assert g.kv("pi.sparse_mode") == "dense"
    assert g.kv("pi.neuron_order") is False
    assert "pi.predictor.ranks" not in g.keys() and "powerinfer.sparse_threshold" not in g.keys()
    assert g.kv("tokenizer.ggml.model") == "gpt2"
    assert g.kv("tokenizer.ggml.pre") == "gpt-2"
    assert len(g.kv("tokenizer.ggml.tokens")) == n_vocab
    assert len(g.kv("tokenizer.ggml.merges")) > 0
    assert g.kv("tokenizer.ggml.bos_token_id") == TINY_SPECIALS.index("<s>")
    assert g.kv("tokenizer.ggml.eos_token_id") == TINY_SPECIALS.index("</s>")
    assert "{% for m in messages %}" in g.kv("tokenizer.chat_template")

    # tensor set: each HF tensor under its name here
    names = {}   # ours -> HF
    layer_map = HF_LAYER_GEMMA if gemma else HF_LAYER
    for k in sd:
        parts = k.split(".")
        if parts[:2] == ["model", "layers"]:
            base, kind = ".".join(parts[3:-1]), parts[-1]
            names[f"blk.{parts[2]}.{layer_map[base]}.{kind}"] = k
    names.update({"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"})
    tied = "lm_head.weight" not in sd or cfg.get("tie_word_embeddings")
    if not tied:
        names["output.weight"] = "lm_head.weight"
    expect = set(names)
    if (cfg.get("rope_parameters") or {}).get("rope_type") == "llama3":
        expect.add("rope_freqs.weight")   # its values: test_engine_hf.py
    assert set(g.tensors) == expect

    # shapes and types
    shapes = {"attn_q.weight": (n_head * hd, d), "attn_k.weight": (n_kv * hd, d),
              "attn_v.weight": (n_kv * hd, d), "attn_output.weight": (d, n_head * hd),
              "ffn_gate.weight": (n_ff, d), "ffn_up.weight": (n_ff, d), "ffn_down_t.weight": (n_ff, d),
              "attn_q.bias": (n_head * hd,), "attn_k.bias": (n_kv * hd,), "attn_v.bias": (n_kv * hd,),
              "attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,),
              "token_embd.weight": (n_vocab, d), "output.weight": (n_vocab, d),
              "rope_freqs.weight": (hd // 2,)}
    for name in g.tensors:
        key = name.split(".", 2)[2] if name.startswith("blk.") else name
        want = shapes.get(key, (d,) if key.endswith("norm.weight") else None)
        assert g.shape(name) == want, name
        want_t = QT.F32 if len(want) == 1 else output_qtype(name, qt)
        assert g.qtype(name) == want_t, name

    # contents: exactly the source weights, laid out and quantized as FORMAT.md says
    for name, hf in names.items():
        w = sd[hf]
        if name.endswith("ffn_down_t.weight"):
            down_t = g.f32(name)                                        # [n_ff][d]
            # the transpose happened before quantizing: the stored blocks are those of W_down^T
            assert np.array_equal(g.raw(name), encode(w.T.copy(), qt).reshape(g.raw(name).shape))
            tol = {"f32": 0, "f16": 1e-3, "q8_0": 1.5e-2, "q4_0": 0.2, "q4_1": 0.1}[outtype]
            assert np.abs(down_t - w.T).max() <= tol * np.abs(w).max() + 1e-7
            continue
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            w = permute_qk(w, n_head if "attn_q" in name else n_kv)
        if w.ndim == 1:   # norms (Gemma's as 1 + w) and biases: f32 as they are
            want = w + np.float32(shift) if name.endswith("norm.weight") else w
            np.testing.assert_array_equal(g.f32(name), want, err_msg=name)
        else:
            np.testing.assert_array_equal(g.f32(name), roundtrip(w, output_qtype(name, qt)), err_msg=name)


HF_OUTPUT = ("model.embed_tokens.weight", "lm_head.weight")


def output_qtype(name: str, qt):
    """4-bit files keep the output projection (token_embd / output) at q8_0."""
    if name in ("token_embd.weight", "output.weight") and qt in (QT.Q4_0, QT.Q4_1):
        return QT.Q8_0
    return qt


def test_permutation_matches_llama_cpp_convention():
    """HF rotate-half rows (i, i+hd/2) become adjacent pairs (2i, 2i+1) within each head."""
    n_head, hd = 2, 8
    w = np.arange(n_head * hd, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    p = permute_qk(w, n_head)[:, 0].astype(int).tolist()
    assert p == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


# --------------------------------------------------------------------------------------------
# the split files compute the same model (numpy forward pass over the GGUF tensors)
# --------------------------------------------------------------------------------------------
def _rope(x: np.ndarray, base: float, neox: bool) -> np.ndarray:
    """x: [T][H][hd]; llama.cpp's rope: adjacent pairs (llama) or halves (neox, qwen2)."""
    T, _, hd = x.shape
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        x0, x1 = x[..., : hd // 2], x[..., hd // 2:]
        return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x, dtype=np.float64)
    out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    return out


def split_forward(path: Path, ids: list[int]) -> np.ndarray:
    g = GGUFFile(path)
    arch = g.kv("general.architecture")
    n_layer, n_head = g.kv(f"{arch}.block_count"), g.kv(f"{arch}.attention.head_count")
    n_kv, eps = g.kv(f"{arch}.attention.head_count_kv"), g.kv(f"{arch}.attention.layer_norm_rms_epsilon")
    base = g.kv(f"{arch}.rope.freq_base")
    act = g.kv("pi.ffn_activation")
    W = {n: g.f32(n).astype(np.float64) for n in g.tensors}
    rms = lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w  # noqa: E731
    x = W["token_embd.weight"][ids]
    T = len(ids)
    for i in range(n_layer):
        b = f"blk.{i}."
        h = rms(x, W[b + "attn_norm.weight"])
        q, k, v = (h @ W[b + f"attn_{n}.weight"].T + W.get(b + f"attn_{n}.bias", 0) for n in "qkv")
        hd = q.shape[1] // n_head
        q = _rope(q.reshape(T, n_head, hd), base, arch == "qwen2")
        k = _rope(k.reshape(T, n_kv, hd), base, arch == "qwen2")
        v = v.reshape(T, n_kv, hd)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, 1), np.repeat(v, rep, 1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        s = s + np.triu(np.full((T, T), -np.inf), 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", p, v).reshape(T, -1)
        x = x + o @ W[b + "attn_output.weight"].T
        h = rms(x, W[b + "ffn_norm.weight"])
        gate = h @ W[b + "ffn_gate.weight"].T
        a = (np.maximum(gate, 0) if act == "relu" else gate / (1 + np.exp(-gate))) * (h @ W[b + "ffn_up.weight"].T)
        x = x + a @ W[b + "ffn_down_t.weight"]          # row i of ffn_down_t = neuron i's output
    x = rms(x, W["output_norm.weight"])
    return x @ W.get("output.weight", W["token_embd.weight"]).T


@pytest.mark.parametrize("variant", ["llama_relu", "qwen2_bias", "llama_tied"])
def test_split_file_computes_the_hf_model(variant, converted, hf_weights):
    model, _ = hf_weights(variant)
    ref = hf_logits(model, PROMPT_IDS)
    got = split_forward(converted(variant, "f32"), PROMPT_IDS)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


# --------------------------------------------------------------------------------------------
# --dense files in llama.cpp
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("outtype", TYPES)
@pytest.mark.parametrize("variant", SILU_VARIANTS)
def test_dense_logits_match_transformers(variant, outtype, converted, hf_weights):
    pytest.importorskip("llama_cpp")
    import torch
    path = converted(variant, outtype, dense=True)
    g = GGUFFile(path)
    assert not any(k.startswith("pi.") for k in g.keys())
    assert not any("ffn_down_t" in n or ".fc" in n for n in g.tensors)
    assert g.shape("blk.0.ffn_down.weight") == (64, 128)
    got = llama_cpp_logits(path, PROMPT_IDS)
    model, sd = hf_weights(variant)
    ref = hf_logits(model, PROMPT_IDS)
    scale = np.abs(ref).max()
    err = np.abs(got - ref).max() / scale
    assert err <= LOGIT_TOL[outtype], f"relative logit error {err:.3g}"
    # against transformers running the very weights the file holds
    qt = OUTTYPES[outtype]
    out_qt = output_qtype("token_embd.weight", qt)
    fake = {k: torch.from_numpy(roundtrip(v, out_qt if k in HF_OUTPUT else qt)) if v.ndim == 2
            else torch.from_numpy(v) for k, v in sd.items()}
    if "lm_head.weight" in fake and getattr(model.config, "tie_word_embeddings", False):
        fake["lm_head.weight"] = fake["model.embed_tokens.weight"]
    orig = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(fake)
        ref_q = hf_logits(model, PROMPT_IDS)
    finally:
        model.load_state_dict(orig)
    err_q = np.abs(got - ref_q).max() / np.abs(ref_q).max()
    assert err_q <= FAKEQ_TOL[outtype], f"relative logit error vs same weights {err_q:.3g}"


# --------------------------------------------------------------------------------------------
# predictors
# --------------------------------------------------------------------------------------------
def make_predictor_dir(path: Path, n_layer: int, d: int, n_ff: int, rank: int, threshold=0.25,
                       bad_layer: int | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    import torch
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    out = {}
    for i in range(n_layer):
        fc1 = torch.randn(rank, d, generator=gen)
        fc2 = torch.randn(n_ff if i != bad_layer else n_ff + 1, rank, generator=gen)
        torch.save({"fc1.weight": fc1, "fc2.weight": fc2}, path / f"model_{i}.pt")
        out[i] = (fc1.numpy(), fc2.numpy())
    if threshold is not None:
        (path / "config.json").write_text(json.dumps({"sparse_threshold": threshold}))
    return out


@pytest.mark.parametrize("outtype", ["f32", "q4_0"])
def test_predictors_roundtrip(outtype, hf_model, tmp_path):
    pytest.importorskip("torch")
    src = hf_model("llama_relu")
    preds = make_predictor_dir(tmp_path / "preds", 2, 64, 128, rank=16, threshold=0.25)
    out = tmp_path / "p.gguf"
    convert(src, out, outtype, predictors=tmp_path / "preds")
    g = GGUFFile(out)
    assert g.kv("pi.sparse_mode") == "sparse"
    assert g.kv("pi.predictor.ranks") == [16, 16]
    assert np.allclose(g.kv("pi.thresholds"), [0.25, 0.25])
    assert g.kv("powerinfer.sparse_threshold") == pytest.approx(0.25)
    want_t = QT.F32 if outtype == "f32" else QT.F16
    for i, (fc1, fc2) in preds.items():
        assert g.shape(f"blk.{i}.fc1.weight") == (16, 64)
        assert g.shape(f"blk.{i}.fc2.weight") == (128, 16)
        assert g.qtype(f"blk.{i}.fc1.weight") == want_t
        np.testing.assert_array_equal(g.f32(f"blk.{i}.fc1.weight"), roundtrip(fc1, want_t))
        np.testing.assert_array_equal(g.f32(f"blk.{i}.fc2.weight"), roundtrip(fc2, want_t))
    # the engine runs them (plain f32/f16 rows in its fused sparse job): the neurons it computes
    # are those whose logit, from the FFN input it recorded, is above the threshold
    from pi_backend.model import Model
    m = Model(str(out))
    ctx = m.new_context(n_ctx=32, ffn_mode="sparse")
    rec = ctx.record(list(range(3, 19)), 0, gate=False, h=False)["ffn_in"]   # [n, L, d]
    st = ctx.stats()
    want = 0
    for i in range(2):
        w1, w2 = (g.f32(f"blk.{i}.fc{k}.weight").astype(np.float64) for k in (1, 2))
        want += int((np.maximum(rec[:, i] @ w1.T, 0) @ w2.T > 0.25).sum())
    ctx.close()
    m.close()
    assert abs(st["ffn_active"] - want) <= 0.01 * st["ffn_neurons"], (st, want)
    assert 0 < st["ffn_active"] < st["ffn_neurons"]


def test_predictors_default_threshold_and_errors(hf_model, tmp_path):
    pytest.importorskip("torch")
    src = hf_model("llama_relu")
    make_predictor_dir(tmp_path / "p", 2, 64, 128, rank=8, threshold=None)
    convert(src, tmp_path / "ok.gguf", "q8_0", predictors=tmp_path / "p")
    assert GGUFFile(tmp_path / "ok.gguf").kv("powerinfer.sparse_threshold") == 0.0
    make_predictor_dir(tmp_path / "bad", 2, 64, 128, rank=8, bad_layer=1)
    with pytest.raises(ConvertError, match="inconsistent shapes"):
        convert(src, tmp_path / "bad.gguf", "q8_0", predictors=tmp_path / "bad")
    (tmp_path / "p" / "model_1.pt").unlink()
    with pytest.raises(ConvertError, match="model_1.pt"):
        convert(src, tmp_path / "bad.gguf", "q8_0", predictors=tmp_path / "p")
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == ["ok.gguf"]


# --------------------------------------------------------------------------------------------
# SmolLM2 (an existing llama.cpp GGUF)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2_converted(smollm2_path, default_model, tmp_path_factory):
    """The --dense q8_0 conversion, and the split q4_1 one: the suite's default model (pi-chat's
    first-run conversion, with --keep-down)."""
    dense = tmp_path_factory.mktemp("smollm2") / "smollm2.dense.q8_0.gguf"
    convert(smollm2_path, dense, "q8_0", dense=True)
    return {"dense": dense, "split": default_model}


def test_smollm2_split_structure(smollm2_path, smollm2_converted):
    src, g = GGUFFile(smollm2_path), GGUFFile(smollm2_converted["split"])
    for key in ("llama.embedding_length", "llama.feed_forward_length", "llama.block_count",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
                "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.chat_template", "general.name"):
        assert g.kv(key) == src.kv(key), key
    assert g.kv("tokenizer.ggml.tokens") == src.kv("tokenizer.ggml.tokens")
    assert g.kv("tokenizer.ggml.merges") == src.kv("tokenizer.ggml.merges")
    assert g.kv("tokenizer.ggml.token_type") == src.kv("tokenizer.ggml.token_type")
    assert g.kv("general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q4_1)
    assert g.kv("pi.ffn_activation") == "silu" and g.kv("pi.ffn_layout") == "split"
    assert "SmolLM2" in g.kv("pi.source")
    n_layer = src.kv("llama.block_count")
    # every source tensor, plus ffn_down_t beside the plain ffn_down it keeps (--keep-down), and
    # the sparse head's output preview (its two factors)
    assert len(g.tensors) == len(src.tensors) + n_layer + 2
    assert g.qtype("output_preview_a.weight") == g.qtype("output_preview_b.weight") == QT.Q8_0
    for i in range(n_layer):
        assert g.qtype(f"blk.{i}.ffn_down.weight") == src.qtype(f"blk.{i}.ffn_down.weight")
        assert np.array_equal(g.raw(f"blk.{i}.ffn_down.weight"), src.raw(f"blk.{i}.ffn_down.weight"))
    for i in (0, n_layer - 1):
        down = src.f32(f"blk.{i}.ffn_down.weight")                       # [576][1536]
        t = f"blk.{i}.ffn_down_t.weight"
        # a 4-bit source keeps ffn_down_t at q8_0 (re-quantizing along d to 4 bits loses much more)
        assert g.shape(t) == (1536, 576) and g.qtype(t) == QT.Q8_0
        assert np.array_equal(g.raw(t), encode(down.T.copy(), QT.Q8_0))
        for n in ("attn_q", "attn_k", "ffn_gate"):      # Q4_1 -> Q4_1 along the same rows: exact
            np.testing.assert_array_equal(g.f32(f"blk.{i}.{n}.weight"), src.f32(f"blk.{i}.{n}.weight"))
    # token_embd: Q8_0 in the source, kept at q8_0 (same blocks: bit-identical)
    assert g.qtype("token_embd.weight") == QT.Q8_0
    np.testing.assert_array_equal(g.f32("token_embd.weight"), src.f32("token_embd.weight"))


def _greedy(llm, prompt: bytes, n: int) -> list[int]:
    toks = llm.tokenize(prompt, add_bos=False, special=True)
    out = []
    for t in llm.generate(toks, temp=0.0, top_k=1, reset=True):
        out.append(t)
        if len(out) == n:
            break
    return out


def test_smollm2_dense_q8_0_follows_the_original(smollm2_path, smollm2_converted):
    """The --dense q8_0 file, run by llama.cpp, follows the original along the original's greedy
    continuation, teacher-forced.

    Requantizing Q4_1 weights to q8_0 moves each weight by up to 1/254 of its block's max, and
    llama.cpp multiplies q4_1 and q8_0 weights with differently quantized activations, so the
    logits differ slightly (about as much as for an exact f32 copy of the weights: mean
    |dlogit| ~0.2). The converted file picks the same token as the original except at the
    original's near-ties. (Generated text is not compared: one near-tie changes everything after
    it, and where one falls depends on the CPU's summation order.)"""
    llama_cpp = pytest.importorskip("llama_cpp")
    prompt = (b"<|im_start|>user\nExplain what a CPU does.<|im_end|>\n<|im_start|>assistant\n")
    kw = dict(verbose=False, n_ctx=256, n_threads=1, n_threads_batch=1, logits_all=True)
    a = llama_cpp.Llama(str(smollm2_path), **kw)
    b = llama_cpp.Llama(str(smollm2_converted["dense"]), **kw)
    try:
        toks = a.tokenize(prompt, add_bos=False, special=True)
        assert toks == b.tokenize(prompt, add_bos=False, special=True)
        ga = _greedy(a, prompt, 32)
        seq = toks + ga
        logits = []
        for llm in (a, b):
            llm.reset()
            llm.eval(seq)
            logits.append(np.array(llm.scores[len(toks) - 1:len(seq) - 1], dtype=np.float32))
        la, lb = logits
        srt = np.sort(la, -1)
        margin = srt[:, -1] - srt[:, -2]
        flips = np.nonzero(la.argmax(-1) != lb.argmax(-1))[0]
        assert all(margin[i] < 0.5 for i in flips), (flips, margin[flips])
        assert np.abs(la - lb).mean() < 0.5
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------
_BASE_STRINGS = [
    "", " ", "  ", "\n", "\n\n\n", "\t", " \t \n ", "Hello world", "hello  world", "  leading",
    "trailing   ", "a  b   c\t\td\n\n\ne", "héllo wörld naïve café", "Ünïcödé façade", "日本語のテキスト",
    "中文分词测试，标点。", "한국어 문장", "Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם",
    "हिन्दी पाठ", "👍🏽 🚀 emoji 🎉🎉", "🇫🇷🇯🇵", "e\u0301 combining", "zero\u200bwidth", "ﬁ ligature",
    "def f(x):\n    return x**2  # square\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "if x!=y and y>=z: pass", "console.log(`${a} + ${b}`);", "SELECT * FROM t WHERE id=42;",
    "<div class=\"x\">&nbsp;</div>", "1234567 3.14159 1e-9 0xFF", "1,000,000.00$ 50% €9.99",
    "2024-01-31T12:34:56Z", "I'm you're they'll it's we've he'd", "DON'T SHOUT", "CamelCaseIdentifier",
    "snake_case_identifier", "https://example.com/a?b=c&d=e#f", "user@example.com", "~!@#$%^&*()_+{}|:<>?",
    "\r\n windows\r\nline", "    four spaces", "\t\ttabs\t", "x" * 60, "ab" * 30, "...", "?!?!",
]
_FRAGMENTS = _BASE_STRINGS[7:] + ["the", "The", " of", "neurons", "sparse", "42", "007", "  ", "\n",
                                  "ç", "ß", "ø", "日", "🙂", "'s", "'ll", "--", "==", "->", "::"]


def tokenizer_strings(n: int = 300, specials: list[str] = ()) -> list[str]:
    rng = random.Random(1234)
    out = list(_BASE_STRINGS)
    chars = [chr(c) for r in ((0x20, 0x7f), (0xa0, 0x17f), (0x391, 0x3c9), (0x410, 0x44f),
                              (0x3040, 0x309f), (0x4e00, 0x4e40), (0x1f600, 0x1f64f)) for c in range(*r)]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.5:
            parts = [rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 4))]
            seps = [rng.choice(["", " ", "  ", "\n", "\t", " \n ", "\r\n", "   "]) for _ in parts]
            out.append("".join(p + s for p, s in zip(parts, seps)))
        elif kind < 0.8:
            out.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 24))))
        else:
            sp = list(specials) or ["<s>"]
            out.append(rng.choice(_FRAGMENTS) + rng.choice(sp) + rng.choice(["", " ", "\n"]) + rng.choice(_FRAGMENTS))
    return out


def _assert_same_tokens(strings, ref_fn, got_fn):
    bad = [(s, ref_fn(s), got_fn(s)) for s in strings if ref_fn(s) != got_fn(s)]
    assert not bad, f"{len(bad)}/{len(strings)} strings differ, e.g. {bad[:3]}"


def test_tokenizer_hf_tiny_bpe(converted, hf_model):
    llama_cpp = pytest.importorskip("llama_cpp")
    from tokenizers import Tokenizer
    hf = Tokenizer.from_file(str(hf_model("llama_silu") / "tokenizer.json"))
    llm = llama_cpp.Llama(str(converted("llama_silu", "q8_0")), vocab_only=True, verbose=False)
    _assert_same_tokens(tokenizer_strings(300, TINY_SPECIALS),
                        lambda s: hf.encode(s, add_special_tokens=False).ids,
                        lambda s: llm.tokenize(s.encode(), add_bos=False, special=True))


def test_tokenizer_hf_smollm2_bpe(smollm2_hf_tokenizer_model, tmp_path):
    """A HF directory with SmolLM2's tokenizer.json: pre-tokenizer detected as `smollm`."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from tokenizers import Tokenizer
    out = tmp_path / "t.gguf"
    convert(smollm2_hf_tokenizer_model, out, "q8_0")
    g = GGUFFile(out)
    assert g.kv("tokenizer.ggml.pre") == "smollm"
    assert g.kv("tokenizer.chat_template").startswith("{% for message in messages %}")
    hf = Tokenizer.from_file(str(smollm2_hf_tokenizer_model / "tokenizer.json"))
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    _assert_same_tokens(tokenizer_strings(300, ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
                        lambda s: hf.encode(s, add_special_tokens=False).ids,
                        lambda s: llm.tokenize(s.encode(), add_bos=False, special=True))


def test_tokenizer_gguf_source(smollm2_path, smollm2_converted):
    llama_cpp = pytest.importorskip("llama_cpp")
    a = llama_cpp.Llama(str(smollm2_path), vocab_only=True, verbose=False)
    b = llama_cpp.Llama(str(smollm2_converted["split"]), vocab_only=True, verbose=False)
    _assert_same_tokens(tokenizer_strings(300, ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
                        lambda s: a.tokenize(s.encode(), add_bos=False, special=True),
                        lambda s: b.tokenize(s.encode(), add_bos=False, special=True))


# --------------------------------------------------------------------------------------------
# command line and bad inputs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("outtype", ["f32", "q4_1"])
def test_keep_down_holds_both_layouts(outtype, converted, hf_model, tmp_path):
    """--keep-down: the split file also holds the plain ffn_down, byte for byte the --dense
    file's; dense mode reads it (the --dense file's logits exactly), and so does threshold mode
    while few neurons are dropped (at threshold 0: dense exactly); at high sparsity threshold
    mode runs the AXPY over ffn_down_t, as the split file without ffn_down does."""
    from pi_backend.model import Model
    out = tmp_path / "both.gguf"
    r = run_cli(hf_model("llama_silu"), "--outfile", out, "--outtype", outtype, "--keep-down")
    assert r.returncode == 0, r.stderr
    both, dense = GGUFFile(out), GGUFFile(converted("llama_silu", outtype, dense=True))
    split = GGUFFile(converted("llama_silu", outtype))
    for i in range(2):
        name = f"blk.{i}.ffn_down.weight"
        assert np.array_equal(both.raw(name), dense.raw(name))
        t = f"blk.{i}.ffn_down_t.weight"
        assert np.array_equal(both.raw(t), split.raw(t))
    ids = PROMPT_IDS
    m_both, m_dense = Model(str(out)), Model(str(converted("llama_silu", outtype, dense=True)))
    m_split = Model(str(converted("llama_silu", outtype)))
    assert m_both.ffn_modes == ("dense", "threshold")
    got = m_both.new_context(n_ctx=64).eval(ids, 0, logits_all=True)
    ref = m_dense.new_context(n_ctx=64).eval(ids, 0, logits_all=True)
    np.testing.assert_array_equal(got, ref)
    thr0 = m_both.new_context(n_ctx=64, ffn_mode="threshold").eval(ids, 0, logits_all=True)
    np.testing.assert_array_equal(thr0, ref)
    gate = m_both.new_context(n_ctx=64).record(ids, 0, ffn_in=False, h=False)["gate"]
    silu = np.abs(gate / (1 + np.exp(-gate)))
    high = np.quantile(silu, 0.9, axis=(0, 2)).astype(np.float32)  # ~90% dropped per layer
    for m in (m_both, m_split):
        m.set_thresholds(high)
    ctx_b = m_both.new_context(n_ctx=64, ffn_mode="threshold")
    sparse_both = ctx_b.eval(ids, 0, logits_all=True)
    sparse_split = m_split.new_context(n_ctx=64, ffn_mode="threshold").eval(ids, 0, logits_all=True)
    assert ctx_b.stats()["ffn_sparsity"] > 0.8
    np.testing.assert_array_equal(sparse_both, sparse_split)
    m_both.close(), m_dense.close(), m_split.close()
    r = run_cli(hf_model("llama_silu"), "--outfile", tmp_path / "x.gguf", "--dense", "--keep-down")
    assert r.returncode != 0 and "--keep-down" in r.stderr and len(r.stderr.splitlines()) == 1


def test_cli_success(hf_model, tmp_path):
    out = tmp_path / "m.gguf"
    r = run_cli(hf_model("llama_relu"), "--outfile", out, "--outtype", "q4_1")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "q4_1" in r.stdout and "MiB" in r.stdout
    assert len(r.stdout.splitlines()) <= 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    assert GGUFFile(out).kv("pi.ffn_activation") == "relu"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(d: Path, **changes) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


BAD_INPUTS = {
    # name: (builder(hf_model, tmp) -> argv, expected message fragment)
    "missing_input": (lambda hf, t: [t / "nope", "--outfile", t / "out" / "x.gguf"], "does not exist"),
    "unsupported_arch": (lambda hf, t: [_edit_config(_copy(hf("llama_silu"), t / "m"), architectures=["GPT2LMHeadModel"]),
                                        "--outfile", t / "out" / "x.gguf"], "unsupported architecture"),
    "unsupported_activation": (lambda hf, t: [_edit_config(_copy(hf("llama_silu"), t / "m"), hidden_act="gelu"),
                                              "--outfile", t / "out" / "x.gguf"], "unsupported activation"),
    "inconsistent_shapes": (lambda hf, t: [_edit_config(_copy(hf("llama_silu"), t / "m"), intermediate_size=96),
                                           "--outfile", t / "out" / "x.gguf"], "inconsistent shapes"),
    "bad_outtype": (lambda hf, t: [hf("llama_silu"), "--outfile", t / "out" / "x.gguf", "--outtype", "q5_k"], "outtype"),
    "missing_output_dir": (lambda hf, t: [hf("llama_silu"), "--outfile", t / "nodir" / "x.gguf"], "output directory"),
    "missing_shard": (lambda hf, t: [_rm(_copy(hf("llama_bf16_sharded"), t / "m"), "model-00002-of-*.safetensors"),
                                     "--outfile", t / "out" / "x.gguf"], "missing shard"),
    "no_weights": (lambda hf, t: [_rm(_copy(hf("llama_silu"), t / "m"), "*.safetensors"),
                                  "--outfile", t / "out" / "x.gguf"], "no *.safetensors"),
    "not_a_model": (lambda hf, t: [_write(t / "x.bin", b"junk"), "--outfile", t / "out" / "x.gguf"], "neither"),
    "truncated_weights": (lambda hf, t: [_truncate(_copy(hf("llama_silu"), t / "m") / "model.safetensors"),
                                         "--outfile", t / "out" / "x.gguf"], "truncated"),
    "dense_with_predictors": (lambda hf, t: [hf("llama_silu"), "--outfile", t / "out" / "x.gguf", "--dense",
                                             "--predictors", t], "--dense"),
    "missing_predictors": (lambda hf, t: [hf("llama_silu"), "--outfile", t / "out" / "x.gguf",
                                          "--predictors", t / "nopreds"], "predictor directory"),
}


def _rm(d: Path, pattern: str) -> Path:
    for p in d.glob(pattern):
        p.unlink()
    return d


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _truncate(p: Path) -> Path:
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size - 4096)
    return p.parent


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_one_line_error(case, hf_model, tmp_path):
    build, fragment = BAD_INPUTS[case]
    (tmp_path / "out").mkdir()
    argv = build(hf_model, tmp_path)
    r = run_cli(*argv)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith("pi-convert: error:"), r.stderr
    assert fragment in errors[0], errors[0]
    # nothing half-written
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_inputs_api_raises(hf_model, tmp_path):
    with pytest.raises(ConvertError, match="unknown output type"):
        convert(hf_model("llama_silu"), tmp_path / "x.gguf", "q3_k")
    with pytest.raises(ConvertError, match="overwrite"):
        p = tmp_path / "same.gguf"
        convert(hf_model("llama_silu"), p, "f16")
        convert(p, p, "f16")


def test_pyproject_declares_console_script():
    text = (REPO / "pyproject.toml").read_text()
    assert 'pi-convert = "pi_backend.convert.__main__:main"' in text


# --------------------------------------------------------------------------------------------
# --outtype auto (the default): a quantized GGUF keeps its types; only ffn_down_t is made
# --------------------------------------------------------------------------------------------
def _logits(path, tokens):
    from pi_backend.model import Model
    m = Model(str(path))
    try:
        return m.new_context(len(tokens) + 8, 2, ffn_mode="dense").eval(tokens, 0, logits_all=True)
    finally:
        m.close()


def test_auto_keeps_a_quantized_source_and_re_lays_only_ffn_down(tiny256_f32, tmp_path):
    from peer import divergence
    from quant_files import quantized
    src_path = quantized(tiny256_f32, "Q4_K_M")
    out = tmp_path / "auto.gguf"
    summary = convert(src_path, out)            # the default: auto
    src, g = GGUFFile(src_path), GGUFFile(out)
    assert g.kv("general.file_type") == src.kv("general.file_type")
    down_types = set()
    for name in src.tensors:
        if ".ffn_down." in name:
            assert name not in g.tensors
            t = name.replace(".ffn_down.", ".ffn_down_t.")
            down_types.add(src.qtype(name).name)
            # transposed, then q8_0 along d: exactly what encoding the dequantized transpose gives
            assert g.qtype(t) == QT.Q8_0 and g.shape(t) == src.shape(name)[::-1]
            assert np.array_equal(g.raw(t), encode(src.f32(name).T.copy(), QT.Q8_0))
        else:   # everything else: the source's type and bytes
            assert g.qtype(name) == src.qtype(name), name
            assert np.array_equal(g.raw(name), src.raw(name)), name
    assert down_types == {"Q4_K", "Q6_K"}       # llama.cpp's Q4_K_M mix
    text = summary.text()
    assert "as in the source" in text
    for t in down_types:
        assert f"ffn_down ({t}) transposed and re-quantized along d" in text, text
    # the choice of q8_0: closer to the source than the next smaller type, q5_0
    lower = tmp_path / "q5_0.gguf"
    convert(src_path, lower, down_type="q5_0")
    tokens = list(range(3, 131))
    ref = _logits(src_path, tokens)
    kl_auto = divergence(_logits(out, tokens), ref)["kl"]
    kl_q5_0 = divergence(_logits(lower, tokens), ref)["kl"]
    assert kl_auto < kl_q5_0, (kl_auto, kl_q5_0)


def test_auto_from_a_checkpoint_is_f16(hf_model, tmp_path):
    s = convert(hf_model("llama_silu"), tmp_path / "a.gguf")
    assert set(s.types) == {"f16", "f32"}
    assert "--outtype auto from floating-point weights" in s.text()


@pytest.mark.parametrize("args,message", [
    (["--down-type", "q3_k"], "invalid choice"),
    (["--down-type", "q8_0", "--dense"], "--down-type is for split files"),
])
def test_down_type_errors(hf_model, tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "pi_backend.convert", str(hf_model("llama_silu")),
                        "--outfile", str(tmp_path / "x.gguf"), *args], capture_output=True, text=True)
    assert r.returncode != 0 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr

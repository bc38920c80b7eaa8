"""pi-convert's reading of Hugging Face configs of the architectures beyond llama: the config.json
forms transformers has written (Gemma 3 as published, with rope_local_base_freq and
sliding_window_pattern; as transformers 5 saves it, with layer_types and rope_parameters per
layer type) and the options it refuses, one line each."""
from __future__ import annotations

import math

import pytest

from pi_backend.convert import ConvertError
from pi_backend.convert.hf import read_hparams

# google/gemma-3-1b-it's config.json as published (transformers 4.50)
GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attn_logit_softcapping": None,
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152, "intermediate_size": 6912, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26,
    "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": 512, "sliding_window_pattern": 6, "vocab_size": 262144}


def test_gemma3_as_published():
    hp = read_hparams(GEMMA3_1B)
    assert (hp.arch, hp.activation, hp.head_dim) == ("gemma3", "gelu_tanh", 256)
    assert (hp.n_head, hp.n_head_kv) == (4, 1)
    assert (hp.n_swa, hp.swa_period) == (512, 6)
    assert (hp.rope_theta, hp.rope_theta_swa, hp.rope_scaling) == (1e6, 10000.0, None)
    assert hp.attn_scale == 1 / 16 and hp.final_softcap == 0


def test_gemma3_linear_scaling_is_the_global_layers():
    """Gemma 3 4B's linear RoPE scaling (factor 8) belongs to its global layers; the sliding
    ones keep plain RoPE at their own base."""
    hp = read_hparams({**GEMMA3_1B, "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    assert hp.rope_scaling == {"rope_type": "linear", "factor": 8.0}
    assert hp.rope_theta_swa == 10000.0 and hp.n_swa == 512


def test_gemma3_as_transformers_5_saves_it():
    layer_types = ["sliding_attention"] * 5 + ["full_attention"]
    old = ("rope_local_base_freq", "rope_theta", "rope_scaling", "sliding_window_pattern")
    cfg = {k: v for k, v in GEMMA3_1B.items() if k not in old}
    cfg.update(num_hidden_layers=12, layer_types=layer_types * 2, query_pre_attn_scalar=168,
               final_logit_softcapping=30.0,
               rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 5000.0},
                                "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                   "rope_theta": 1e6}})
    hp = read_hparams(cfg)
    assert (hp.n_swa, hp.swa_period, hp.rope_theta_swa, hp.rope_theta) == (512, 6, 5000.0, 1e6)
    assert hp.rope_scaling["factor"] == 4.0 and hp.final_softcap == 30.0
    assert hp.attn_scale == pytest.approx(1 / math.sqrt(168))
    # every layer global: no sliding window at all; every layer sliding: period 0
    full = read_hparams({**cfg, "layer_types": ["full_attention"] * 12})
    assert full.n_swa == 0
    assert read_hparams({**cfg, "layer_types": ["sliding_attention"] * 12}).swa_period == 0


@pytest.mark.parametrize("change,message", [
    ({"layer_types": ["full_attention", "sliding_attention"] * 13},
     "is not a sliding-window pattern"),
    ({"layer_types": ["sliding_attention"] * 3}, "for each of the 26 layers"),
    ({"attn_logit_softcapping": 50.0}, "unsupported option attn_logit_softcapping=50.0"),
    ({"hidden_activation": "gelu"}, "unsupported activation 'gelu'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope scaling 'yarn'"),
])
def test_gemma3_refusals_are_one_line(change, message):
    with pytest.raises(ConvertError) as e:
        read_hparams({**GEMMA3_1B, **change})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_qwen3_head_dim_and_refusals():
    cfg = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024, "intermediate_size": 3072,
           "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
           "head_dim": 128, "hidden_act": "silu", "vocab_size": 151936, "rope_theta": 1e6,
           "use_sliding_window": False, "sliding_window": None, "tie_word_embeddings": True}
    hp = read_hparams(cfg)
    assert (hp.arch, hp.head_dim, hp.n_head * hp.head_dim, hp.n_embd) == ("qwen3", 128, 2048, 1024)
    assert hp.n_swa == 0 and hp.attn_scale is None
    with pytest.raises(ConvertError, match="unsupported option use_sliding_window=True"):
        read_hparams({**cfg, "use_sliding_window": True})
    with pytest.raises(ConvertError, match=r"unsupported architecture 'Phi3ForCausalLM'.*"
                       r"supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                       r"Qwen3ForCausalLM, Gemma3ForCausalLM"):
        read_hparams({**cfg, "architectures": ["Phi3ForCausalLM"]})

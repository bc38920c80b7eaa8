"""bench.qwen_sparsity's byte accounting: what a decoded token reads by part, and the speedup the
bytes allow; checked against pi-bench's own accounting of threshold mode."""
import pytest

from bench.qwen_sparsity import speedup_cap, token_bytes, weight_parts
from pi_backend.bench import bytes_by_part

# a file's weight bytes by role, as pi_backend.bench._gguf_info reports them (made-up sizes)
PLAIN = {"ffn_gate": 70.0, "ffn_up": 70.0, "ffn_down": 72.0, "ffn_down_t": 0.0,
         "predictor": 0.0, "attn": 31.0, "output": 145.0, "preview": 0.0, "other": 0.1}
DOWN_T = 111.0


def test_dense_reads_every_weight_once():
    w = weight_parts(PLAIN)
    b = token_bytes(w, kv=2.0)
    assert sum(b.values()) == pytest.approx(sum(PLAIN.values()) + 2.0)
    assert b["ffn_down"] == PLAIN["ffn_down"]


@pytest.mark.parametrize("s", [0.0, 0.25, 0.6, 1.0])
def test_threshold_mode_matches_pi_bench(s):
    split = dict(PLAIN, ffn_down=0.0, ffn_down_t=DOWN_T)
    info = {"bytes": split, "has_predictors": False}
    ref = bytes_by_part(info, "threshold", s, s)
    ours = token_bytes(weight_parts(split), s, "axpy")
    assert ours["ffn_gate"] + ours["ffn_up"] + ours["ffn_down"] == pytest.approx(ref["ffn"])
    assert ours["head"] == ref["head"] and ours["attention"] == ref["attention"]


def test_caps():
    w = dict(weight_parts(PLAIN), down_t=DOWN_T)
    total = sum(PLAIN.values())
    # an ffn_down_t wider than the plain down reads more at sparsity 0
    assert speedup_cap(w, 0.0) == pytest.approx(total / (total - 72.0 + DOWN_T))
    # threshold mode skips only down rows: the cap is the file without its down weights
    assert speedup_cap(w, 1.0) == pytest.approx(total / (total - 72.0))
    # break-even where the kept ffn_down_t rows weigh what the plain down does
    s_even = 1.0 - 72.0 / DOWN_T
    assert speedup_cap(w, s_even) == pytest.approx(1.0)
    # skipping gate and up rows too: only attention, head and the rest remain at sparsity 1
    w_src = dict(w, down_t=72.0)
    assert speedup_cap(w_src, 1.0, skip_gate_up=True) == pytest.approx(total / (31.0 + 145.0 + 0.1))
    caps = [speedup_cap(w, s) for s in (0.0, 0.2, 0.5, 0.8)]
    assert caps == sorted(caps)
    # the AXPY's extra cost per byte lowers the cap; the KV cache dilutes it
    assert speedup_cap(w, 0.5, axpy_cost=1.5) < speedup_cap(w, 0.5)
    assert speedup_cap(w, 0.9, kv=100.0) < speedup_cap(w, 0.9)


def test_bad_arguments():
    w = weight_parts(PLAIN)
    with pytest.raises(ValueError):
        token_bytes(w, 0.5, "rows")
    with pytest.raises(ValueError):
        token_bytes(w, 1.5, "axpy")

"""Several sequences in one context (pi_context_create_seqs, pi_decode_seqs): each sequence's
logits are those of running it alone, bit for bit, however the steps mix them (prompts that join
between steps, sequences that leave, a cache rewound, chunks smaller than the step); bad
sequences and positions fail in one line before anything runs."""
from __future__ import annotations

import numpy as np
import pytest

from pi_backend import format as F
from pi_backend._lib import PiError
from pi_backend.model import ContextOverflowError, Model
from pi_backend.tokenizer import Tokenizer

PROMPTS = ["The quick brown fox jumps over the lazy dog because",
           "def fibonacci(n):\n    if n < 2:",
           "In 1905 Albert Einstein published four papers that",
           "Bonjour, je m'appelle"]


@pytest.fixture(scope="module")
def prompts(smollm2_path):
    tok = Tokenizer(str(smollm2_path))
    ids = [tok.tokenize(p.encode(), add_bos=False) for p in PROMPTS]
    tok.close()
    return ids


def alone(model, ids, ffn_mode=F.FFN_DENSE, head_mode=F.HEAD_DENSE):
    """Each position's logits of `ids` run one token at a time in a context of its own."""
    ctx = model.new_context(n_ctx=64, n_threads=2, ffn_mode=ffn_mode, head_mode=head_mode)
    try:
        return np.stack([ctx.eval([t], i) for i, t in enumerate(ids)])
    finally:
        ctx.close()


def schedule(model, prompts, n_batch=512, ffn_mode=F.FFN_DENSE, head_mode=F.HEAD_DENSE):
    """Continuous batching over 3 slots: sequences 0 and 1 start together (whole prompts in one
    step), sequence 2 joins at step 3 with its prompt in two chunks, 0 leaves after step 5 and
    prompt 3 takes its slot; every step also advances every running sequence by its next
    (teacher-forced) token. Returns, per prompt, the logits of each of its positions."""
    ctx = model.new_context(n_ctx=64, n_threads=2, n_batch=n_batch, ffn_mode=ffn_mode,
                            head_mode=head_mode, n_seq=3)
    slot_of = {0: 0, 1: 1}                               # running prompt: its slot
    joins, leaves = {3: [(2, 2)], 6: [(3, 0)]}, {6: [0]}  # step: (prompt, slot) / prompts
    done = {i: 0 for i in range(len(prompts))}          # positions of prompt i run so far
    got = {i: [] for i in range(len(prompts))}
    try:
        for step in range(16):
            for p in leaves.get(step, []):
                del slot_of[p]
            for p, slot in joins.get(step, []):
                slot_of[p] = slot
            toks, seq, pos, want, owner = [], [], [], [], []
            for p, slot in slot_of.items():
                ids = prompts[p]
                # a prompt starts with most of its tokens at once (prompt 2: half of them),
                # then one token a step
                n = (len(ids) // 2 if p == 2 else len(ids) - 2) if done[p] == 0 else 1
                n = max(1, min(n, len(ids) - done[p]))
                if done[p] >= len(ids):
                    continue
                for k in range(n):
                    toks.append(ids[done[p] + k])
                    seq.append(slot)
                    pos.append(done[p] + k)
                    want.append(True)
                    owner.append(p)
                done[p] += n
            if not toks:
                break
            out = ctx.decode_seqs(toks, seq, pos, want)
            for row, p in zip(out, owner):
                got[p].append(row)
        assert ctx.seq_len(1) == len(prompts[1])
    finally:
        ctx.close()
    return {p: np.stack(v) for p, v in got.items() if v}


def test_each_sequence_as_if_alone(smollm2_path, prompts):
    m = Model(str(smollm2_path))
    try:
        got = schedule(m, prompts)
        assert set(got) == {0, 1, 2, 3}
        for p, logits in got.items():
            ref = alone(m, prompts[p][:len(logits)])
            np.testing.assert_array_equal(logits, ref, err_msg=f"prompt {p}")
        # chunks of 3 tokens: the steps are split across sequences, the bits stay
        small = schedule(m, prompts, n_batch=3)
        for p in got:
            np.testing.assert_array_equal(small[p], got[p])
    finally:
        m.close()


def test_sparse_modes_and_head(default_model, prompts):
    """Threshold mode (per token, its own active neurons) and the sparse head (a step that wants
    one row) keep each sequence's logits those of running it alone."""
    m = Model(str(default_model))
    try:
        assert F.FFN_THRESHOLD in m.ffn_modes and F.HEAD_SPARSE in m.head_modes
        got = schedule(m, prompts, ffn_mode=F.FFN_THRESHOLD)
        for p, logits in got.items():
            np.testing.assert_array_equal(logits, alone(m, prompts[p][:len(logits)], F.FFN_THRESHOLD),
                                          err_msg=f"prompt {p}")
        ctx = m.new_context(n_ctx=32, n_threads=2, n_seq=2, head_mode=F.HEAD_SPARSE)
        ids = prompts[0]
        ctx.decode_seqs(ids[:-1], [1] * (len(ids) - 1), list(range(len(ids) - 1)),
                        [False] * (len(ids) - 1))
        one = ctx.decode_seqs([ids[-1]], [1], [len(ids) - 1], [True])[0]
        assert ctx.stats()["head_steps"] == 1
        single = m.new_context(n_ctx=32, n_threads=2, head_mode=F.HEAD_SPARSE)
        single.eval(ids[:-1], 0)
        np.testing.assert_array_equal(one, single.eval([ids[-1]], len(ids) - 1))
        single.close()
        ctx.close()
    finally:
        m.close()


def test_threshold_mixed_down_as_if_alone(default_model, prompts):
    """Threshold mode on a file that keeps the plain ffn_down: each token takes the dense down
    product or the AXPY over its kept ffn_down_t rows by its own count (the two give different
    bits), so a step mixes both; each sequence's logits stay those of it alone. The thresholds
    keep about half the neurons, near where the dense product starts to pay."""
    m = Model(str(default_model))
    try:
        ctx = m.new_context(n_ctx=64, n_threads=2)
        gates = np.concatenate([ctx.record(p, 0, ffn_in=False, h=False)["gate"] for p in prompts])
        ctx.close()
        act = np.abs(gates / (1.0 + np.exp(-gates.astype(np.float64))))   # |silu(gate)|
        m.set_thresholds([np.quantile(act[:, l], 0.53) for l in range(act.shape[1])])
        got = schedule(m, prompts, ffn_mode=F.FFN_THRESHOLD)
        for p, logits in got.items():
            np.testing.assert_array_equal(logits, alone(m, prompts[p][:len(logits)], F.FFN_THRESHOLD),
                                          err_msg=f"prompt {p}")
        # one step of all four prompts: some tokens took the dense down product (n_ff rows
        # counted), others the AXPY over their kept rows only
        ctx = m.new_context(n_ctx=64, n_threads=2, n_seq=4, ffn_mode=F.FFN_THRESHOLD)
        toks = [t for p in prompts for t in p[:6]]
        ctx.decode_seqs(toks, [s for s in range(4) for _ in range(6)], list(range(6)) * 4, [True] * 24)
        st = ctx.stats()
        ctx.close()
        assert st["ffn_active"] < st["ffn_down_active"] < st["ffn_neurons"], st
    finally:
        m.close()


def test_rewind_and_bad_positions(smollm2_path, prompts):
    m = Model(str(smollm2_path))
    ctx = m.new_context(n_ctx=16, n_threads=1, n_seq=2)
    try:
        ids = prompts[1][:6]
        first = ctx.decode_seqs(ids, [0] * 6, list(range(6)), [True] * 6)
        assert ctx.seq_len(0) == 6 and ctx.seq_len(1) == 0
        bad = [([1], [2], [0], "sequence 2 out of range"),
               ([1], [0], [7], "does not follow its cache"),          # a gap after 6
               ([1, 2], [1, 1], [0, 2], "does not follow"),            # not one after another
               ([1], [0], [16], "context overflow"),
               ([99999], [0], [0], "out of range")]
        for toks, seq, pos, msg in bad:
            err = ContextOverflowError if pos[0] >= 16 else PiError
            with pytest.raises(err, match=msg if err is PiError else "exceed context"):
                ctx.decode_seqs(toks, seq, pos, [True] * len(toks))
            assert ctx.seq_len(0) == 6                               # nothing ran
        with pytest.raises(ValueError, match="one of each per token"):
            ctx.decode_seqs([1, 2], [0], [6, 7], [True, True])
        # rewind sequence 0 to position 3: the same tokens give the same logits again
        again = ctx.decode_seqs(ids[3:], [0] * 3, [3, 4, 5], [True] * 3)
        np.testing.assert_array_equal(again, first[3:])
        with pytest.raises(PiError, match="out of range"):
            ctx.seq_len(2)
    finally:
        ctx.close()
        m.close()


@pytest.fixture(scope="module")
def relu_predictors(tmp_path_factory):
    """The ReLU test model with closed-form predictors (tests/powerinfer_files.py): sparse mode."""
    import powerinfer_files as pf
    return pf.with_predictors(tmp_path_factory.mktemp("batch") / "relu-pred.gguf", pf.predictors(rank=16))


@pytest.mark.parametrize("mode", [F.FFN_SPARSE, F.FFN_THRESHOLD])
def test_relu_sparse_modes_as_if_alone(relu_predictors, mode):
    """Sparse (predictor) and threshold mode on a ReLU model: a step's tokens pick different
    neurons (the union of their rows is read once), yet each sequence's logits are those of it
    alone, bit for bit."""
    byte_prompts = [list(p.encode()) for p in PROMPTS]   # byte-level vocabulary
    m = Model(str(relu_predictors))
    try:
        assert mode in m.ffn_modes
        got = schedule(m, byte_prompts, ffn_mode=mode)
        for p, logits in got.items():
            np.testing.assert_array_equal(logits, alone(m, byte_prompts[p][:len(logits)], mode),
                                          err_msg=f"prompt {p}")
        # four sequences' first 8 tokens in one step: their active sets differ, the union is
        # larger than any token's set and smaller than their sum
        ctx = m.new_context(n_ctx=16, n_threads=2, n_seq=4, ffn_mode=mode)
        toks = [t for p in byte_prompts for t in p[:8]]
        out = ctx.decode_seqs(toks, [s for s in range(4) for _ in range(8)], list(range(8)) * 4,
                              [True] * 32)
        st = ctx.stats()
        ctx.close()
        assert st["ffn_pass_neurons"] * 32 == st["ffn_neurons"]
        assert st["ffn_active"] / 32 < st["ffn_pass_active"] < st["ffn_active"], st
        assert 0 < st["ffn_pass_down"] <= st["ffn_pass_active"] and st["ffn_bytes"] > 0, st
        for s in range(4):
            np.testing.assert_array_equal(out[8 * s:8 * s + 8], alone(m, byte_prompts[s][:8], mode),
                                          err_msg=f"sequence {s}, one step")
    finally:
        m.close()

"""pi_backend.format against the C engine's own tables (ggml_ext/model.c), and the one field
reader on a real file."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pi_backend import _lib
from pi_backend import format as F

MODEL_C = (Path(__file__).resolve().parents[1] / "ggml_ext" / "model.c").read_text()
SPEC_ROW = re.compile(r'\{"([^"]+)",\s*[LG]\(\w+\),\s*K_(\w+),\s*D_(\w+),\s*D_(\w+),\s*(0|R_\w+)\}')
ARCH_ROW = re.compile(r'\[PI_ARCH_(\w+)\] = \{"(\w+)", ([\w |]+)\}')


def c_table(name: str) -> list[tuple[str, str, str, str, str]]:
    """The rows (name, kind, rows, cols, need) of model.c's tensor_spec array `name`, the enum
    values lower-cased without their K_ / D_ / R_ prefix, as the format module spells them (need
    "" for 0: optional)."""
    m = re.search(rf"static const tensor_spec {name}\[\] = \{{(.*?)\n\}};", MODEL_C, re.S)
    assert m, f"no table {name} in model.c"
    rows = [(n, k.lower(), r.lower(), c.lower(), "" if q == "0" else q[2:].lower())
            for n, k, r, c, q in SPEC_ROW.findall(m.group(1))]
    assert len(rows) == m.group(1).count('{"'), f"a row of {name} did not parse"
    return rows


@pytest.mark.parametrize("table,specs", [("layer_specs", F.LAYER_TENSORS),
                                         ("global_specs", F.GLOBAL_TENSORS)])
def test_tensor_specs_match_the_engine(table, specs):
    assert c_table(table) == [(s.name, s.kind, s.rows, s.cols, s.need) for s in specs]


def test_architecture_needs_match_the_engine():
    """model.c's arch_table: the architectures in pi.h's order, named as the format names them,
    each with the requirements the format gives it (which tensors pi_model_finalize requires)."""
    m = re.search(r"\} arch_table\[PI_N_ARCHS\] = \{(.*?)\n\};", MODEL_C, re.S)
    assert m, "no arch_table in model.c"
    rows = ARCH_ROW.findall(m.group(1))
    assert [(e.lower(), n) for e, n, _ in rows] == [(a, a) for a in F.ARCHS]
    for _, name, needs in rows:
        assert sorted(b.strip()[2:].lower() for b in needs.split("|")) == sorted(F.ARCHS[name].needs)
    assert len(F.ARCHS) == _lib.PI_N_ARCHS and len(F.ACTIVATIONS) == _lib.PI_N_ACTS


def test_enums_follow_pi_h_order():
    """The format's FFN modes, activations and architectures in the order of pi.h's ids."""
    from pi_backend.model import ACTS, ARCHS, FFN_MODES
    assert list(FFN_MODES) == list(F.FFN_MODES)
    assert [FFN_MODES[m] for m in F.FFN_MODES] == [_lib.PI_FFN_DENSE, _lib.PI_FFN_SPARSE,
                                                   _lib.PI_FFN_THRESHOLD]
    assert [ACTS[a] for a in F.ACTIVATIONS] == [_lib.PI_ACT_SILU, _lib.PI_ACT_RELU,
                                                _lib.PI_ACT_GELU_TANH]
    assert list(ARCHS) == list(F.ARCHS)
    assert [ARCHS[a] for a in F.ARCHS] == [_lib.PI_ARCH_LLAMA, _lib.PI_ARCH_QWEN2,
                                           _lib.PI_ARCH_QWEN3, _lib.PI_ARCH_GEMMA3]


def test_activation_names_match_the_engine():
    """kernels.c's pi_acts spells the activations as pi.ffn_activation does."""
    kernels_c = (Path(__file__).resolve().parents[1] / "ggml_ext" / "kernels.c").read_text()
    rows = re.findall(r'\[PI_ACT_(\w+)\] = \{"(\w+)"', kernels_c)
    assert [(e.lower(), n) for e, n in rows] == [(a, a) for a in F.ACTIVATIONS]


def test_names_and_shapes():
    assert F.split_name(F.layer_name(12, F.T.FFN_DOWN_T)) == (12, F.T.FFN_DOWN_T)
    assert F.split_name(F.T.TOKEN_EMBD) == (None, F.T.TOKEN_EMBD)
    assert F.split_name("blk.x.ffn_up.weight") == (None, "blk.x.ffn_up.weight")
    d = F.dims(n_embd=64, n_ff=256, n_vocab=100, n_head=4, n_head_kv=2, head_dim=16, rank=8)
    assert F.SPECS[F.T.ATTN_K].shape(d) == (32, 64)
    assert F.SPECS[F.T.ATTN_OUT].shape(d) == (64, 64)
    assert F.SPECS[F.T.FFN_DOWN].shape(d) == (64, 256)
    assert F.SPECS[F.T.FFN_DOWN_T].shape(d) == (256, 64)
    assert F.SPECS[F.T.FC2].shape(d) == (256, 8)
    assert F.SPECS[F.T.ATTN_V_BIAS].shape(d) == (32,)
    assert F.SPECS[F.T.OUTPUT_NORM].shape(d) == (64,)


def test_field_value_reads_every_kind(tmp_path):
    import gguf
    from gguf import GGUFValueType as VT
    path = tmp_path / "kv.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32(F.Keys.FORMAT_VERSION, F.FORMAT_VERSION)
    w.add_string(F.Keys.FFN_ACTIVATION, "relu")
    w.add_bool(F.Keys.NEURON_ORDER, True)
    w.add_key_value(F.Keys.THRESHOLDS, [0.5, -1.25], VT.ARRAY, VT.FLOAT32)
    w.add_key_value("test.words", ["a", "\u00e9t\u00e9"], VT.ARRAY, VT.STRING)
    w.add_tensor("t", gguf.np.zeros(4, dtype=gguf.np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    fields = gguf.GGUFReader(path).fields
    assert F.field_value(fields[F.Keys.ARCHITECTURE]) == "llama"
    assert F.field_value(fields[F.Keys.FORMAT_VERSION]) == F.FORMAT_VERSION
    assert F.field_value(fields[F.Keys.FFN_ACTIVATION]) == "relu"
    assert F.field_value(fields[F.Keys.FFN_ACTIVATION], text=False) == b"relu"
    assert F.field_value(fields[F.Keys.NEURON_ORDER]) is True
    assert F.field_value(fields[F.Keys.THRESHOLDS]) == [0.5, -1.25]
    assert F.field_value(fields["test.words"]) == ["a", "\u00e9t\u00e9"]
    assert F.field_value(fields["test.words"], text=False) == [b"a", "\u00e9t\u00e9".encode()]
    assert F.field_types(fields["test.words"]) == (VT.ARRAY, VT.STRING)
    assert F.field_types(fields[F.Keys.FORMAT_VERSION]) == (VT.UINT32, None)

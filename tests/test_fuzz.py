"""Hostile GGUF files: a seeded mutation corpus through `Model` + a 3-token eval and through
pi-convert (tests/gguf_fuzz.py, each case in a worker subprocess under a memory limit and a
timeout), and hand-made files for each check of pi_backend/gguf_check.py.

`make fuzz` runs the same corpus with thousands of cases."""
from __future__ import annotations

import struct

import numpy as np
import pytest

import gguf_fuzz
from pi_backend.gguf_check import GGUFFormatError, check_file
from pi_backend.model import Model, ModelError

SEED = 20240611


@pytest.mark.parametrize("source, n_cases", [("relu", 300), ("plain", 200), ("convert", 40),
                                             ("pwri", 200)])
def test_mutation_corpus_gives_clean_errors_or_finite_logits(source, n_cases, tmp_path):
    out = gguf_fuzz.run_corpus(source, SEED, n_cases, tmp_path, batch=80)
    assert sorted(out) == list(range(n_cases))
    bad = {i: o for i, o in out.items() if o[0] in gguf_fuzz.FAILURES}
    assert not bad, f"{len(bad)} failures, e.g. " + "; ".join(
        f"case {i}: {k}: {d}" for i, (k, d) in list(bad.items())[:5])
    counts = gguf_fuzz.summary(out)
    # the corpus exercises both sides: mutants that load and run, and mutants refused
    assert counts["ok"] > 0 and counts["error"] > n_cases // 2, counts


# ---- hand-made hostile files --------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple[bytes, "gguf.GGUFReader"]:
    import gguf
    p = gguf_fuzz.write_plain_gguf(tmp_path_factory.mktemp("plain") / "plain.gguf")
    return p.read_bytes(), gguf.GGUFReader(p)


def _at(reader, part) -> int:
    return part.ctypes.data - reader.data.ctypes.data


def _patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def _tensor(reader, name):
    return next(t for t in reader.tensors if t.name == name)


def _field_value_at(reader, key) -> int:
    f = reader.fields[key]
    return _at(reader, f.parts[f.data[0]])


def _array_count_at(reader, key) -> int:
    return _at(reader, reader.fields[key].parts[4])  # key len, key, type, item type, count


def _load_error(tmp_path, data: bytes) -> str:
    p = tmp_path / "hostile.gguf"
    p.write_bytes(data)
    with pytest.raises(ModelError) as e:
        Model(str(p))
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    return msg


HOSTILE = {
    # name: (patch(data, reader) -> data, expected message fragment)
    "array_count_flipped": (lambda d, r: _patch(d, _array_count_at(r, "tokenizer.ggml.token_type"),
                                                "<Q", 40 | 1 << 40),
                            "array of 1099511627816 INT32 elements does not fit"),
    "string_array_count_huge": (lambda d, r: _patch(d, _array_count_at(r, "tokenizer.ggml.tokens"),
                                                    "<Q", (1 << 64) - 1), "does not fit"),
    "kv_count_huge": (lambda d, r: _patch(d, 16, "<Q", 1 << 62), "more than the"),
    "misaligned_offset": (lambda d, r: _patch(d, _at(r, _tensor(r, "blk.0.ffn_up.weight").field.parts[5]),
                                              "<Q", int(_tensor(r, "blk.0.ffn_up.weight").data_offset
                                                        - r.data_offset) + 1),
                          "is not a multiple of the alignment"),
    "offset_wraps": (lambda d, r: _patch(d, _at(r, _tensor(r, "blk.0.ffn_up.weight").field.parts[5]),
                                         "<Q", (1 << 64) - 32), "runs past the end of the file"),
    "overlapping_tensor": (lambda d, r: _patch(d, _at(r, _tensor(r, "blk.0.ffn_up.weight").field.parts[5]),
                                               "<Q", 0), "overlaps tensor"),
    # Q8_0 -> Q4_0: the tensor would read a part of its own bytes; F16 -> F32: its neighbour's
    "type_shrinks": (lambda d, r: _patch(d, _at(r, _tensor(r, "blk.0.ffn_gate.weight").field.parts[4]),
                                         "<I", 2), "expected"),
    "type_grows": (lambda d, r: _patch(d, _at(r, _tensor(r, "blk.0.attn_output.weight").field.parts[4]),
                                       "<I", 0), "overlaps tensor"),
    "unknown_type": (lambda d, r: _patch(d, _at(r, _tensor(r, "blk.0.ffn_gate.weight").field.parts[4]),
                                         "<I", 4), "unknown ggml type 4"),
    "zero_dim": (lambda d, r: _patch(d, _at(r, _tensor(r, "blk.0.ffn_gate.weight").field.parts[3]) + 8,
                                     "<Q", 0), "must be positive"),
    "five_dims": (lambda d, r: _patch(d, _at(r, _tensor(r, "output_norm.weight").field.parts[2]),
                                      "<I", 5), "n_dims = 5"),
    "bad_alignment": (None, "general.alignment"),
    "head_count_zero": (lambda d, r: _patch(d, _field_value_at(r, "llama.attention.head_count"), "<I", 0),
                        "llama.attention.head_count = 0 is out of range"),
    "block_count_huge": (lambda d, r: _patch(d, _field_value_at(r, "llama.block_count"), "<I", 1 << 31),
                         "llama.block_count = 2147483648 is out of range"),
    "eps_nan": (lambda d, r: _patch(d, _field_value_at(r, "llama.attention.layer_norm_rms_epsilon"),
                                    "<f", float("nan")), "must be finite"),
    "freq_base_inf": (lambda d, r: _patch(d, _field_value_at(r, "llama.rope.freq_base"), "<f",
                                          float("inf")), "llama.rope.freq_base = inf"),
    "big_endian": (lambda d, r: _patch(d, 4, ">I", 3), "big-endian"),
    "truncated_in_data": (lambda d, r: d[:-100], "runs past the end of the file"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_is_a_one_line_error(case, plain, tmp_path):
    data, reader = plain
    patch, fragment = HOSTILE[case]
    if patch is None:  # general.alignment = 0: a file the gguf writer will not write
        import gguf
        p = tmp_path / "align.gguf"
        w = gguf.GGUFWriter(str(p), "llama")
        w.add_uint32("general.alignment", 0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        data = p.read_bytes()
    else:
        data = patch(data, reader)
    assert fragment in _load_error(tmp_path, data)


def test_the_plain_file_passes_every_check(plain, tmp_path):
    data, reader = plain
    p = tmp_path / "plain.gguf"
    p.write_bytes(data)
    assert check_file(p) == reader.data_offset
    m = Model(str(p))
    assert np.all(np.isfinite(m.new_context(8, 1).eval([1, 2, 3], 0)))
    m.close()


def test_gguf_format_error_is_a_value_error():
    assert issubclass(GGUFFormatError, ValueError)


def test_non_finite_weights_are_an_error_at_eval(plain, tmp_path):
    """A structurally valid file with an inf norm weight loads (no value is scanned at load) but
    its logits would not be finite: eval raises ModelError instead of returning them."""
    data, reader = plain
    norm = _tensor(reader, "output_norm.weight")
    p = tmp_path / "inf.gguf"
    p.write_bytes(_patch(data, int(norm.data_offset), "<f", float("inf")))
    m = Model(str(p))
    ctx = m.new_context(8, 1)
    for tokens, logits_all in (([1], False), ([1, 2], False), ([1, 2], True)):
        with pytest.raises(ModelError, match="logits are not finite"):
            ctx.eval(tokens, 0, logits_all=logits_all)
    m.close()


def test_convert_refuses_a_hostile_gguf_and_leaves_nothing(plain, tmp_path):
    from pi_backend.convert import ConvertError, convert
    data, reader = plain
    p = tmp_path / "in.gguf"
    p.write_bytes(HOSTILE["array_count_flipped"][0](data, reader))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvertError, match="does not fit"):
        convert(p, out / "x.gguf", "q8_0")
    p.write_bytes(HOSTILE["block_count_huge"][0](data, reader))
    with pytest.raises(ConvertError, match="llama.block_count = 2147483648 is out of range"):
        convert(p, out / "x.gguf", "q8_0")
    assert list(out.iterdir()) == []

"""SmolLM2 quantized to Q5_0 and Q5_1 by llama.cpp's own quantizer (through llama-cpp-python), from
a plain f16 conversion of the Q4_1 file: our engine loads each file and its teacher-forced logits
are as close to llama-cpp-python's on the same file as llama.cpp's one-token path is to its
batched path (the peer noise, measured in this run on that file)."""
from __future__ import annotations

import collections

import gguf
import numpy as np
import pytest

from pi_backend import kernels as K
from pi_backend.bench import DEFAULT_TEXT
from pi_backend.convert import convert
from pi_backend.model import Model

from peer import divergence, llama_quantize, ref_logits, ref_logits_one_by_one, within_peer_noise

FTYPES = {"q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1"}


@pytest.fixture(scope="session")
def smollm2_f16_path(tmp_path_factory, smollm2_path):
    """The Q4_1 SmolLM2 as a plain llama.cpp GGUF in f16 (made once per session)."""
    out = tmp_path_factory.mktemp("smollm2_f16") / "smollm2-f16.gguf"
    convert(smollm2_path, out, "f16", dense=True)
    return out


@pytest.fixture(scope="module", params=list(FTYPES))
def q5_path(request, tmp_path_factory, smollm2_f16_path):
    """The f16 file quantized by llama.cpp to the ftype of the parameter."""
    import llama_cpp
    out = tmp_path_factory.mktemp(f"smollm2_{request.param}") / f"smollm2-{request.param}.gguf"
    llama_quantize(smollm2_f16_path, out, getattr(llama_cpp, FTYPES[request.param]), nthread=2)
    return request.param, out


def tensor_types(path) -> collections.Counter:
    return collections.Counter(t.tensor_type.name.lower() for t in gguf.GGUFReader(path).tensors)


def test_llama_cpp_quantizes_the_matrices_to_q5_and_we_take_every_type(q5_path):
    """The matrices are of the ftype's type; llama.cpp keeps the norms f32 and, where a K-quant
    does not fit the 576 columns, token_embd (tied to the output) at q8_0: all types we take."""
    name, path = q5_path
    types = tensor_types(path)
    assert types[name] == 30 * 7  # q, k, v, o, gate, up, down of 30 layers
    assert set(types) <= set(K.weight_types())


def test_teacher_forced_logits_match_llama_cpp(q5_path):
    import llama_cpp
    name, path = q5_path
    ref = llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    model = Model(str(path))
    try:
        tokens = ref.tokenize(DEFAULT_TEXT.read_text().encode(), add_bos=False)[:256]
        batched = ref_logits(ref, tokens)
        peer = divergence(ref_logits_one_by_one(ref, tokens), batched)
        ours = model.new_context(n_ctx=512, n_threads=2).eval(tokens, 0, logits_all=True)
        d = divergence(ours, batched)
        print(f"{name}: ours vs llama.cpp {d}; llama.cpp one-token vs batched {peer}")
        assert np.all(np.isfinite(ours))
        assert within_peer_noise(d, peer), (d, peer)
    finally:
        model.close()
        ref.close()

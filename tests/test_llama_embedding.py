"""Embeddings (Llama(embedding=True): embed, create_embedding) against llama_cpp.Llama(embedding=
True) on the same SmolLM2 file: the same shapes and pooling (per token: a llama file has no
pooling key), vectors of cosine similarity close to 1, normalization, truncation, counts."""
from __future__ import annotations

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from pi_backend import Llama  # noqa: E402

TEXTS = ["Hello world, this is a test.", "Sparse activations make inference fast.", "Hi"]


@pytest.fixture(scope="module")
def emb(smollm2_path):
    m = Llama(str(smollm2_path), n_ctx=256, n_batch=64, n_threads=2, verbose=False,
              embedding=True)
    yield m
    m.close()


@pytest.fixture(scope="module")
def ref(smollm2_path):
    m = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=256, n_batch=64, n_threads=2,
                        verbose=False, embedding=True)
    yield m
    m.close()


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_pooling_matches_llama_cpp(emb, ref):
    assert emb.pooling_type() == ref.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE


def test_embed_matches_llama_cpp(emb, ref):
    ours, n = emb.embed(TEXTS, return_count=True)
    _, n_ref = ref.embed(TEXTS, return_count=True)
    assert n == n_ref == sum(len(emb.tokenize(t.encode())) for t in TEXTS)
    # llama-cpp-python reads the per-token vectors of a list's later texts from the wrong
    # offset (it advances by tokens, not floats), so its reference is one text per call
    theirs = [ref.embed(t) for t in TEXTS]
    assert [np.shape(o) for o in ours] == [np.shape(t) for t in theirs]
    cos = np.concatenate([cosines(o, t) for o, t in zip(ours, theirs)])
    assert cos.min() > 0.999, cos.min()
    # one text alone gives the same vectors (each sequence runs from position 0 on its own)
    single = emb.embed(TEXTS[1])
    assert np.array_equal(single, ours[1])
    assert isinstance(single[0][0], float)


def test_normalize_and_truncate(emb, ref):
    unit = emb.embed(TEXTS[0], normalize=True)
    assert np.allclose(np.linalg.norm(unit, axis=-1), 1.0, atol=1e-6)
    assert cosines(unit, ref.embed(TEXTS[0], normalize=True)).min() > 0.999
    long = "word " * 200
    cut = emb.embed(long)                  # truncated to n_batch tokens
    assert len(cut) == emb.n_batch == len(ref.embed(long))
    with pytest.raises(ValueError, match="exceed batch size"):
        emb.embed(long, truncate=False)


def test_create_embedding_shape_matches_llama_cpp(emb, ref):
    ours = emb.create_embedding(TEXTS[:2], model="m")
    theirs = ref.create_embedding(TEXTS[:2], model="m")
    assert {k: v for k, v in ours.items() if k != "data"} == \
        {k: v for k, v in theirs.items() if k != "data"}
    assert [(d["object"], d["index"], np.shape(d["embedding"])) for d in ours["data"]] == \
        [(d["object"], d["index"], np.shape(d["embedding"])) for d in theirs["data"]]


@pytest.mark.parametrize("pooling", [1, 2, 3])
def test_pooled_embeddings_match_llama_cpp(smollm2_path, emb, pooling):
    ours = Llama(str(smollm2_path), n_ctx=128, n_threads=2, verbose=False, embedding=True,
                 pooling_type=pooling)
    theirs = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=128, n_threads=2,
                             verbose=False, embedding=True, pooling_type=pooling)
    try:
        a, b = ours.embed(TEXTS[0]), theirs.embed(TEXTS[0])
        assert np.shape(a) == np.shape(b) == (ours.n_embd(),)
        assert cosines(a, b) > 0.999
        per_token = np.array(emb.embed(TEXTS[0]))
        want = {1: per_token.mean(0), 2: per_token[0], 3: per_token[-1]}[pooling]
        assert np.allclose(a, want, rtol=1e-5, atol=1e-5)
    finally:
        ours.close()
        theirs.close()


def test_embed_needs_embedding_true_and_clears_the_cache(smollm2_path, emb):
    plain = Llama(str(smollm2_path), n_ctx=64, n_threads=1, verbose=False)
    try:
        with pytest.raises(RuntimeError, match="embedding=True"):
            plain.embed("x")
    finally:
        plain.close()
    emb.eval(emb.tokenize(b"The sky is"))
    emb.embed("Hello")
    assert emb.n_tokens == 0
    with pytest.raises(ValueError, match="pooling_type"):
        Llama(str(smollm2_path), n_ctx=64, verbose=False, embedding=True, pooling_type=4)

"""pi-bench in a tiny configuration on the default model: it runs end to end, writes the JSON
and the plot, prints the table, and the calibrated thresholds reach the requested sparsity."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench_run(default_model, tmp_path_factory):
    from pi_backend import bench
    out = tmp_path_factory.mktemp("bench")
    argv = ["--reps", "1", "--gen-tokens", "4", "--prompt-tokens", "8", "--sparsity", "0,0.3",
            "--calib-tokens", "128", "--ppl-tokens", "64", "--warmup", "0", "--bw-mib", "64",
            "--quiet", "--out", str(out)]
    return bench, out, argv


def test_pi_bench_tiny(bench_run, capsys):
    bench, out, argv = bench_run
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "pi_bench.json").read_text())
    assert (out / "pi_bench.png").stat().st_size > 1000

    # the table: a header and one line per configuration
    labels = [r["label"] for r in res["rows"]]
    assert labels == ["llama-cpp-python dense", "ours dense (plain)", "ours dense",
                      "ours dense, sampled", "ours dense, sparse head", "ours threshold 0",
                      "ours threshold 0, sparse head", "ours threshold 0.3",
                      "ours threshold 0.3, sparse head"]
    assert "decode t/s" in printed and "dppl%" in printed
    for label in labels:
        assert label in printed

    c = res["config"]
    assert c["threads"] == 2 and c["prompt_tokens"] == 8 and c["gen_tokens"] == 4
    assert 0.1 < res["read_bandwidth_gbs"] < 10_000   # GB/s: a unit slip would leave this range
    by = {r["label"]: r for r in res["rows"]}
    llama_tps = by["llama-cpp-python dense"]["decode_tps"]
    for r in res["rows"]:
        # the medians and ratios are those of the recorded repetitions
        assert r["decode_tps"] == r["decode_tps_reps"][0] and len(r["decode_tps_reps"]) == 1
        assert r["prompt_tps"] == r["prompt_tps_reps"][0]
        assert len(r["generated"]) == 5
        assert r["effective_gbs"] == pytest.approx(r["bytes_per_token"] * r["decode_tps"] / 1e9)
        assert r["decode_vs_llama"] == pytest.approx(r["decode_tps"] / llama_tps)
        assert (r["ppl"] > 1 and r["dppl_pct"] is not None) if (
            r["sampling"] is None and r["head_mode"] == "dense") else "ppl" not in r
        # the sampled row: ours dense's perplexity, not measured twice; the sparse head rows:
        # perplexity needs every token's logits (the full head)
        parts = r["bytes_by_part"]
        assert set(parts) == {"attention", "ffn", "head", "kv_cache", "other"}
        assert sum(parts.values()) - parts["kv_cache"] == pytest.approx(r["bytes_per_token"])
    # dense decode reads every weight once: at least the file's matrices (the tied output, the
    # 30 layers: about 92 MiB for SmolLM2 Q4_1, FACTS), at most the whole file
    from pi_backend.default_model import source_path
    size = source_path().stat().st_size
    assert 0.9 * size < by["ours dense"]["bytes_per_token"] <= size
    assert by["llama-cpp-python dense"]["decode_vs_llama"] == pytest.approx(1.0)
    assert by["ours dense"]["decode_vs_dense"] == pytest.approx(1.0)
    assert by["ours dense"]["dppl_pct"] == pytest.approx(0.0)
    # the sampled row: llama.cpp's chain with create_chat_completion's defaults, seed 0
    sampled = by["ours dense, sampled"]
    assert sampled["sampling"] == {"temperature": 0.2, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
    assert sampled["decode_vs_dense"] == pytest.approx(
        sampled["decode_tps"] / by["ours dense"]["decode_tps"])
    assert sampled["bytes_per_token"] == by["ours dense"]["bytes_per_token"]
    assert "ours dense, sampled" in printed

    # threshold 0 keeps every neuron: no sparsity, the dense output
    t0 = by["ours threshold 0"]
    assert t0["sparsity"]["decode"] == 0 and t0["sparsity"]["calib"] == 0
    assert abs(t0["dppl_pct"]) < 1e-6
    # calibrated at the 0.3 quantile: ~30% of the neurons dropped on the calibration text
    t3 = by["ours threshold 0.3"]
    assert t3["target_sparsity"] == 0.3 and len(t3["thresholds"]) == 30
    assert abs(t3["sparsity"]["calib"] - 0.3) <= 0.05, t3["sparsity"]
    assert 0.1 < t3["sparsity"]["decode"] < 0.5
    # threshold 0 reads what dense reads (the file keeps the plain ffn_down, which threshold mode
    # uses while the AXPY over ffn_down_t would read more); sparsity never reads more
    assert t0["bytes_per_token"] == by["ours dense"]["bytes_per_token"]
    assert t3["bytes_per_token"] <= t0["bytes_per_token"]
    # the sparse head: each step's preview and exact rows, far fewer bytes than the output matrix
    sh = by["ours dense, sparse head"]
    assert sh["head_mode"] == "sparse" and sh["head"]["steps"] == 4
    # the head's bytes: each step's preview and exact rows, the whole matrix on a fallback (a
    # few steps: any share may fall back); a step that does not reads under half the matrix
    h, full = sh["head"], by["ours dense"]["bytes_by_part"]["head"]
    step = h["preview_bytes"] + h["exact_rows"] * h["row_bytes"]
    assert sh["bytes_by_part"]["head"] == pytest.approx((1 - h["fallback"]) * step
                                                        + h["fallback"] * (full + h["preview_bytes"]))
    assert 0 < step < 0.5 * full, (step, full)
    assert sh["bytes_by_part"]["ffn"] == by["ours dense"]["bytes_by_part"]["ffn"]
    assert "sparse head" in printed and "kv_cache" in printed
    assert (out / "pi_bench_bytes.png").stat().st_size > 1000
    # the split file keeps the Q8_0 output matrix: dense, it reads what the plain file reads
    assert by["ours dense (plain)"]["bytes_per_token"] == by["ours dense"]["bytes_per_token"]


def test_pi_bench_rejects_bad_arguments(capsys):
    from pi_backend import bench
    with pytest.raises(SystemExit):
        bench.main(["--sparsity", "0,1.5"])
    with pytest.raises(SystemExit):
        bench.main(["--modes", "dense,fast"])
    with pytest.raises(SystemExit):
        bench.main(["--head-modes", "dense,fast"])
    assert bench.main(["--text", "/nonexistent/text.txt", "--quiet"]) == 2
    assert "text file not found" in capsys.readouterr().err


def test_relu_large_builder_tiny():
    """bench/relu_large's model builder at a tiny size: the bias channel and the fitted gate
    biases give ~90% zeros per layer on tokens the fit did not see, with input-dependent
    patterns; the constant channel survives the layers; without the bias column about half the
    neurons fire (the trick, not the random weights, makes the sparsity)."""
    torch = pytest.importorskip("torch")
    import numpy as np
    from bench import relu_large as R
    vocab, d = 300, 64
    model = R.build_model(d=d, n_ff=256, n_layer=2, n_head=4, n_head_kv=2, vocab=vocab, seed=3,
                          fit_seqs=4, fit_len=64, threads=1)
    toks = np.random.default_rng(11).integers(0, vocab, size=(4, 64))   # not the fit's tokens
    st = R.activation_stats(model, toks)
    assert len(st["zeros"]) == 2
    for z, jac in zip(st["zeros"], st["jaccard"]):
        assert 0.85 <= z <= 0.95, st
        # independent 10% sets overlap by about 0.05; the same set for every input would be 1
        assert jac < 0.2, st
    assert st["dead_neurons"] < 0.05 and st["always_on"] == 0.0, st
    # different tokens, different patterns: at least one per distinct token in each layer
    acts = []
    hooks = [l.mlp.act_fn.register_forward_hook(lambda m, i, o: acts.append(o > 0))
             for l in model.model.layers]
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(toks), output_hidden_states=True)
    for h in hooks:
        h.remove()
    for a in acts:
        pats = {bytes(np.packbits(r)) for r in a.reshape(-1, a.shape[-1]).numpy()}
        assert len(pats) >= len(np.unique(toks))
    # the bias channel: the same value at every position after every layer
    c = R.BIAS_CHANNEL
    for hs in out.hidden_states[:-1]:      # the last one is after the final norm
        assert torch.allclose(hs[..., c], torch.full_like(hs[..., c], R.BIAS_SCALE * d ** 0.5))
    # without the bias column the sparsity is gone
    with torch.no_grad():
        for l in model.model.layers:
            l.mlp.gate_proj.weight[:, c] = 0
    plain = R.activation_stats(model, toks)
    assert all(z < 0.7 for z in plain["zeros"]), plain


def test_batch_sparsity_tiny(default_model, tmp_path, capsys):
    """bench.batch_sparsity end to end on SmolLM2 alone: the table, the JSON, the plot; one
    token's set is the union at B = 1, and the union grows with B."""
    from bench import batch_sparsity
    assert batch_sparsity.main(["--no-relu", "--reps", "1", "--steps", "2", "--prompt", "8",
                                "--batches", "1,4", "--sparsities", "0.8", "--quiet",
                                "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "batch_sparsity.json").read_text())
    assert (tmp_path / "batch_sparsity.png").stat().st_size > 1000
    thr = {r["B"]: r for r in res["rows"] if r["workload"] == "SmolLM2 threshold 80%"}
    assert thr[1]["union"] == pytest.approx(thr[1]["active"]) and thr[4]["union"] > thr[1]["union"]
    assert "SmolLM2 threshold 80%" in capsys.readouterr().out

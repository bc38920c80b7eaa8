"""pi-bench in a tiny configuration on the default model: it runs end to end, writes the JSON
and the plot, prints the table, and the calibrated thresholds reach the requested sparsity."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench_run(smollm2_path, tmp_path_factory):
    pytest.importorskip("matplotlib")
    from pi_backend.default_model import converted_path, default_model_path
    if default_model_path(progress=False, quiet=True) != converted_path():
        pytest.skip("the default model cannot be converted to the split-FFN format here")
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
                      "ours dense, sampled", "ours threshold 0", "ours threshold 0.3"]
    assert "decode t/s" in printed and "dppl%" in printed
    for label in labels:
        assert label in printed

    c = res["config"]
    assert c["threads"] == 2 and c["prompt_tokens"] == 8 and c["gen_tokens"] == 4
    assert res["read_bandwidth_gbs"] > 0
    by = {r["label"]: r for r in res["rows"]}
    for r in res["rows"]:
        assert r["decode_tps"] > 0 and r["prompt_tps"] > 0
        assert len(r["decode_tps_reps"]) == 1 and len(r["generated"]) == 5
        assert r["bytes_per_token"] > 0 and r["effective_gbs"] > 0
        assert (r["ppl"] > 1 and r["dppl_pct"] is not None) if r["sampling"] is None else \
            "ppl" not in r  # the sampled row: ours dense's perplexity, not measured twice
        assert r["decode_vs_llama"] > 0
    assert by["llama-cpp-python dense"]["decode_vs_llama"] == pytest.approx(1.0)
    assert by["ours dense"]["decode_vs_dense"] == pytest.approx(1.0)
    assert by["ours dense"]["dppl_pct"] == pytest.approx(0.0)
    # the sampled row: llama.cpp's chain with create_chat_completion's defaults, seed 0
    sampled = by["ours dense, sampled"]
    assert sampled["sampling"] == {"temperature": 0.2, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
    assert sampled["decode_vs_dense"] > 0 and sampled["bytes_per_token"] == \
        by["ours dense"]["bytes_per_token"]
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
    # the split file keeps the Q8_0 output matrix: dense, it reads what the plain file reads
    assert by["ours dense (plain)"]["bytes_per_token"] == by["ours dense"]["bytes_per_token"]


def test_pi_bench_rejects_bad_arguments(capsys):
    from pi_backend import bench
    with pytest.raises(SystemExit):
        bench.main(["--sparsity", "0,1.5"])
    with pytest.raises(SystemExit):
        bench.main(["--modes", "dense,fast"])
    assert bench.main(["--text", "/nonexistent/text.txt", "--quiet"]) == 2
    assert "text file not found" in capsys.readouterr().err

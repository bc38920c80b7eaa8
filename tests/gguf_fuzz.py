"""A seeded mutation fuzzer for the GGUF loaders: `Model` + a 3-token eval, and pi-convert.

Each case is a copy of a source GGUF with one to three mutations: bit flips, bytes set to
boundary values, truncation, header integers (counts, lengths, value types, KV values, tensor
n_dims, dims, types and offsets) set to boundary or huge values, and bit flips in the tensor data.
A case is reproducible from (source, seed, index) alone.

Cases run in worker subprocesses under an address-space limit, many per worker; the worker
announces each case before running it, so a hang (no answer within the case timeout) or a crash
(the worker dies) is attributed to that case, which is then run again alone to confirm, and a
fresh worker carries on with the next one.

Outcomes: error (a clean one-line ModelError/ValueError, or ConvertError with nothing left in
the output directory), ok (loaded, finite logits), and the failures nan, wrong (any other
exception, a multi-line message, a partial output file), memory, hang, crash.

Sources: relu (the ReLU test model), plain (a tiny llama.cpp-style file), convert (the plain file
through pi-convert), pwri (the ReLU model with predictors as a PowerInfer file, magic PWRI:
tests/powerinfer_files.py).

    python tests/gguf_fuzz.py run --source relu|plain|convert|pwri --cases N [--seed S]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RELU_GGUF = REPO / "tests" / "data" / "relu-shakespeare.q8_0.gguf"
FAILURES = ("nan", "wrong", "memory", "hang", "crash")
ADDRESS_SPACE = 4 << 30          # per worker: far above a clean load of these files
U32_VALUES = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
              0x7FC00000, 0x7F800000, 0xFF800000, 0xBF800000)  # NaN, inf, -inf, -1.0f
U64_VALUES = (0, 1, 2, 1 << 31, 1 << 32, 1 << 40, 1 << 62, 1 << 63, (1 << 64) - 1,
              (1 << 64) - 32, 0x7FF8000000000000, 0x7FF0000000000000)  # NaN, inf as f64


# ---- sources ----------------------------------------------------------------------------------
def write_plain_gguf(path: Path, arch: str = "llama", drop: str | None = None,
                     reshape: str | None = None, f32: bool = False,
                     raw_type: tuple[str, int, int] | None = None) -> Path:
    """A tiny plain llama.cpp-style GGUF (1 layer; Q8_0, F16 and F32 tensors, or F32 alone with
    f32; a tokenizer with string, float and int arrays), written with the gguf package. For the
    loader's errors: arch names the architecture, the tensor named by drop is left out, the one
    named by reshape has one row more; raw_type (name, ggml type, bytes per row) stores that
    tensor as random bytes of another type."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    d, ff, nh, nkv, nv = 32, 64, 4, 2, 40
    hd = d // nh
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("fuzz-plain")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(nv)])
    w.add_token_types([1] * nv)
    w.add_token_merges(["t 1", "t 2"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": ((nv, d), Q.Q8_0), "output_norm.weight": ((d,), Q.F32),
              "blk.0.attn_norm.weight": ((d,), Q.F32), "blk.0.attn_q.weight": ((nh * hd, d), Q.Q8_0),
              "blk.0.attn_k.weight": ((nkv * hd, d), Q.Q8_0),
              "blk.0.attn_v.weight": ((nkv * hd, d), Q.Q8_0),
              "blk.0.attn_output.weight": ((d, nh * hd), Q.F16),
              "blk.0.ffn_norm.weight": ((d,), Q.F32), "blk.0.ffn_gate.weight": ((ff, d), Q.Q8_0),
              "blk.0.ffn_up.weight": ((ff, d), Q.Q8_0), "blk.0.ffn_down.weight": ((d, ff), Q.Q8_0)}
    for name, (shape, qtype) in shapes.items():
        if name == drop:
            continue
        if name == reshape:
            shape = (shape[0] + 1,) + shape[1:]
        a = (rng.standard_normal(shape) * 0.3 + (1.0 if len(shape) == 1 else 0.0)).astype(np.float32)
        if raw_type is not None and name == raw_type[0]:
            rows = rng.integers(0, 256, (shape[0], raw_type[2]), dtype=np.uint8)
            w.add_tensor(name, rows, raw_dtype=Q(raw_type[1]))
        elif qtype == Q.F32 or f32:
            w.add_tensor(name, a)
        elif qtype == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_pwri(path: Path) -> Path:
    import powerinfer_files
    return powerinfer_files.powerinfer_file(path, powerinfer_files.predictors())


def source_path(name: str, workdir: Path) -> Path:
    if name == "relu":
        return RELU_GGUF
    p = workdir / f"{name}.gguf"
    if not p.exists():
        tmp = workdir / f".{name}.{os.getpid()}.gguf"
        os.replace({"plain": write_plain_gguf, "pwri": write_pwri}[name](tmp), p)
    return p


# ---- the mutator -----------------------------------------------------------------------------
class Mutator:
    """Knows where the integers of a pristine GGUF sit (from gguf's reader) and mutates copies."""

    def __init__(self, path: Path):
        from pi_backend.model import read_gguf   # GGUF or PWRI
        self.data = path.read_bytes()
        r = read_gguf(str(path))
        base = r.data.ctypes.data
        self.data_offset = r.data_offset
        self.header_ints = [(4, 4), (8, 8), (16, 8)]   # version, tensor count, KV count
        for name, f in r.fields.items():
            if not name.startswith("GGUF."):
                # key length, value type, then the value or array type, count, first element
                self.header_ints += [(p.ctypes.data - base, p.dtype.itemsize) for p in f.parts[:6]
                                     if p.size == 1 and p.dtype.itemsize in (4, 8)]
        self.tensor_ints = []
        for t in r.tensors:
            name_len, _name, n_dims, dims, ttype, offset = t.field.parts
            self.tensor_ints += [(name_len.ctypes.data - base, 8), (n_dims.ctypes.data - base, 4),
                                 (ttype.ctypes.data - base, 4), (offset.ctypes.data - base, 8)]
            self.tensor_ints += [(dims.ctypes.data - base + 8 * i, 8) for i in range(dims.size)]

    def case(self, seed: int, index: int) -> bytes:
        rng = random.Random(seed * 1_000_003 + index)
        b = bytearray(self.data)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            b = getattr(self, "_" + rng.choice(("flip", "flip", "byte", "truncate", "int", "int",
                                                "tensor", "tensor", "data")))(rng, b)
        return bytes(b)

    def _pos(self, rng, b, header=0.8) -> int:
        end = self.data_offset if rng.random() < header else len(b)
        return rng.randrange(max(1, min(end, len(b))))

    def _flip(self, rng, b):
        if b:
            b[self._pos(rng, b)] ^= 1 << rng.randrange(8)
        return b

    def _byte(self, rng, b):
        if b:
            b[self._pos(rng, b)] = rng.choice((0, 0xFF, 0x7F, 0x80))
        return b

    def _truncate(self, rng, b):
        return b[:self._pos(rng, b, header=0.5)]

    def _set_int(self, rng, b, off, size):
        if off + size > len(b):
            return b
        old = int.from_bytes(b[off:off + size], "little")
        mask = (1 << (8 * size)) - 1
        v = rng.choice((U32_VALUES if size == 4 else U64_VALUES) +
                       (old + 1, old - 1, old * 2, old << rng.randrange(1, 40),
                        old ^ (1 << rng.randrange(8 * size)), rng.getrandbits(8 * size)))
        b[off:off + size] = (v & mask).to_bytes(size, "little")
        return b

    def _int(self, rng, b):
        return self._set_int(rng, b, *rng.choice(self.header_ints))

    def _tensor(self, rng, b):
        off, size = rng.choice(self.tensor_ints)
        if size == 4 and rng.random() < 0.5:  # a tensor type (or n_dims) set to another small id
            b[off:off + 4] = rng.randrange(0, 42).to_bytes(4, "little")
            return b
        if size == 8 and rng.random() < 0.5:  # an offset or dim moved by a small step
            old = int.from_bytes(b[off:off + 8], "little")
            new = old + rng.choice((-64, -32, -1, 1, 32, 64, 4096))
            b[off:off + 8] = (new % (1 << 64)).to_bytes(8, "little")
            return b
        return self._set_int(rng, b, off, size)

    def _data(self, rng, b):
        for _ in range(rng.randrange(1, 8)):
            if len(b) > self.data_offset:
                b[rng.randrange(self.data_offset, len(b))] ^= 1 << rng.randrange(8)
        return b


# ---- one case, in a worker --------------------------------------------------------------------
def _one_line(e: BaseException) -> bool:
    s = str(e)
    return bool(s.strip()) and "\n" not in s


def run_model_case(path: Path) -> tuple[str, str]:
    from pi_backend.model import Model, ModelError
    try:
        m = Model(str(path))
        try:
            ctx = m.new_context(16, 1)
            logits = ctx.eval([t % m.n_vocab for t in (1, 2, 3)], 0)
            return ("ok", "") if np.all(np.isfinite(logits)) else ("nan", "non-finite logits")
        finally:
            m.close()
    except MemoryError:
        return "memory", "MemoryError"
    except (ModelError, ValueError) as e:
        return ("error" if _one_line(e) else "wrong"), f"{type(e).__name__}: {e}"[:300]
    except Exception as e:  # noqa: BLE001 - every other kind is a finding
        return "wrong", f"{type(e).__name__}: {e}"[:300]


def run_convert_case(path: Path) -> tuple[str, str]:
    from pi_backend.convert import ConvertError, convert
    out_dir = path.parent / "out"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "converted.gguf"
    try:
        convert(path, out, "q8_0", progress=False)
    except MemoryError:
        return "memory", "MemoryError"
    except ConvertError as e:
        left = os.listdir(out_dir)
        if left:
            return "wrong", f"partial output left after ConvertError: {left}"
        return ("error" if _one_line(e) else "wrong"), f"ConvertError: {e}"[:300]
    except Exception as e:  # noqa: BLE001
        return "wrong", f"{type(e).__name__}: {e}"[:300]
    try:
        return run_model_case(out)   # what the converter wrote must load and run finite
    finally:
        out.unlink(missing_ok=True)


def worker(source: str, seed: int, indices: list[int], workdir: Path) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    src = source_path("plain" if source == "convert" else source, workdir)
    mut = Mutator(src)
    run = run_convert_case if source == "convert" else run_model_case
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for i in indices:
            print(json.dumps({"start": i}), flush=True)
            path = Path(tmp) / f"case{i}.gguf"
            path.write_bytes(mut.case(seed, i))
            kind, detail = run(path)
            path.unlink()
            print(json.dumps({"done": i, "kind": kind, "detail": detail}), flush=True)


# ---- the driver -------------------------------------------------------------------------------
def _spawn(source, seed, indices, workdir, env):
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--source", source,
           "--seed", str(seed), "--workdir", str(workdir), "--indices", ",".join(map(str, indices))]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            cwd=REPO, start_new_session=True, bufsize=0)


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run_worker(source, seed, indices, workdir, env, case_timeout):
    """Runs indices in one worker until it finishes, hangs or dies. Returns (outcomes,
    (index, 'hang'|'crash', detail) of the case it stopped on, or None)."""
    proc = _spawn(source, seed, indices, workdir, env)
    outcomes, current, pending = {}, None, b""
    fd = proc.stdout.fileno()
    try:
        while True:
            # unbuffered: every line read is handled before waiting on the pipe again
            ready, _, _ = select.select([fd], [], [], case_timeout)
            if not ready:
                return outcomes, (current, "hang", f"no answer in {case_timeout:g} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                rc = proc.wait()
                if current is None or current in outcomes:
                    return outcomes, None if rc == 0 else (current, "crash", f"worker exit {rc}")
                return outcomes, (current, "crash", f"worker died with status {rc}")
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "start" in msg:
                    current = msg["start"]
                else:
                    outcomes[msg["done"]] = (msg["kind"], msg["detail"])
    finally:
        if proc.poll() is None:
            _kill(proc)


def run_corpus(source: str, seed: int, n_cases: int, workdir: Path, *, batch: int = 100,
               case_timeout: float = 20.0, env: dict | None = None) -> dict[int, tuple[str, str]]:
    """Every case's (kind, detail)."""
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHONPATH", str(REPO))
    source_path("plain" if source == "convert" else source, workdir)  # once, before the workers
    todo = list(range(n_cases))
    outcomes: dict[int, tuple[str, str]] = {}
    while todo:
        chunk = todo[:batch]
        got, stopped = _run_worker(source, seed, chunk, workdir, env, case_timeout)
        outcomes.update(got)
        if stopped is None:
            missing = [i for i in chunk if i not in outcomes]
            if missing:  # the worker ended without a word about these
                for i in missing:
                    outcomes[i] = ("crash", "worker ended early")
            todo = todo[len(chunk):]
            continue
        i, kind, detail = stopped
        if i is None:  # died before its first case
            raise RuntimeError(f"fuzz worker failed to start: {detail}")
        alone, alone_stop = _run_worker(source, seed, [i], workdir, env, case_timeout)
        again = f"; alone: {alone_stop[1] if alone_stop else alone.get(i, ('?',))[0]}"
        outcomes[i] = (kind, detail + again)
        todo = [j for j in todo if j not in outcomes]
    return outcomes


def summary(outcomes: dict[int, tuple[str, str]]) -> collections.Counter:
    return collections.Counter(kind for kind, _ in outcomes.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("run", "worker"))
    p.add_argument("--source", choices=("relu", "plain", "convert", "pwri"), default="relu")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--indices", default="")
    p.add_argument("--case-timeout", type=float, default=20.0)
    a = p.parse_args(argv)
    if a.mode == "worker":
        worker(a.source, a.seed, [int(i) for i in a.indices.split(",") if i], a.workdir)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        out = run_corpus(a.source, a.seed, a.cases, Path(tmp), case_timeout=a.case_timeout)
    counts = summary(out)
    print(f"{a.source}, seed {a.seed}, {a.cases} cases in {time.time() - t0:.0f} s: "
          + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("error", "ok") + FAILURES))
    for i, (kind, detail) in sorted(out.items()):
        if kind in FAILURES:
            print(f"  case {i}: {kind}: {detail}")
    return 1 if any(counts.get(k) for k in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())

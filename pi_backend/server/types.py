"""Request bodies of the OpenAI-compatible routes: llama_cpp.server's fields and defaults
(OpenAI's plus llama.cpp's sampling extras), checked by pydantic; unknown fields are ignored,
as OpenAI's and llama_cpp.server's servers ignore them."""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: Optional[bool] = False


class _Sampling(_Body):
    model: Optional[str] = None
    max_tokens: Optional[int] = None
    min_tokens: int = Field(0, ge=0)
    temperature: float = 0.8
    top_p: float = 0.95
    min_p: float = 0.05
    stop: Optional[Union[str, List[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: Optional[float] = 0.0
    frequency_penalty: Optional[float] = 0.0
    logit_bias: Optional[Dict[str, float]] = None
    logit_bias_type: Optional[Literal["input_ids", "tokens"]] = None
    seed: Optional[int] = None
    n: Optional[int] = Field(1, ge=1)    # choices, each its own sequence in the engine
    user: Optional[str] = None
    # llama.cpp's
    top_k: int = 40
    repeat_penalty: float = 1.1
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    grammar: Optional[str] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, List[str], List[int]] = ""
    suffix: Optional[str] = None
    max_tokens: Optional[int] = Field(16, ge=0)
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0)
    best_of: Optional[int] = 1


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "function", "developer"]
    content: Optional[Union[str, List[Dict[str, Any]]]] = None


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    functions: Optional[List[Dict[str, Any]]] = None
    function_call: Optional[Union[str, Dict[str, Any]]] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Union[str, Dict[str, Any]]] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(None, ge=0)
    response_format: Optional[Dict[str, Any]] = None


class EmbeddingRequest(_Body):
    model: Optional[str] = None
    input: Union[str, List[str]]
    user: Optional[str] = None


class TokenizeRequest(_Body):
    model: Optional[str] = None
    input: str


class DetokenizeRequest(_Body):
    model: Optional[str] = None
    tokens: List[int]

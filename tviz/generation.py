"""The Generation contract in Python: validated requests and proto conversion.

Replicas and the gateway both speak `tviz.v1.Generation`; this module is where a
GenerateRequest becomes a validated `GenerationInput` + `Sampling`, and where engine output
becomes GenerateChunk messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tviz.errors import InvalidArgument, NotFound, format_validation_error
from tviz.v1 import generation_pb2

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "stop_string", "abort"]

FINISH_TO_PROTO = {
    "stop": generation_pb2.FINISH_REASON_STOP,
    "length": generation_pb2.FINISH_REASON_LENGTH,
    "stop_string": generation_pb2.FINISH_REASON_STOP_STRING,
    "abort": generation_pb2.FINISH_REASON_ABORT,
}


class Sampling(BaseModel):
    """Validated sampling parameters (field names are those of the proto)."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: tuple[str, ...] = Field(default=(), max_length=16)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in v):
            raise ValueError("stop strings must not be empty")
        return v

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0.0 or self.seed is not None


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationInput:
    """Exactly one of chat, prompt or token_ids."""

    chat: tuple[Message, ...] = ()
    prompt: str | None = None
    token_ids: tuple[int, ...] = ()


def parse_sampling(msg: generation_pb2.SamplingParams) -> Sampling:
    values: dict[str, object] = {
        "top_k": msg.top_k,
        "stop": tuple(msg.stop),
        "logprobs": msg.logprobs,
        "top_logprobs": msg.top_logprobs,
    }
    for name in ("temperature", "top_p", "max_tokens", "seed"):
        if msg.HasField(name):
            values[name] = getattr(msg, name)
    try:
        return Sampling.model_validate(values)
    except ValidationError as exc:
        raise InvalidArgument("sampling." + format_validation_error(exc)) from None


def parse_input(msg: generation_pb2.GenerateRequest) -> GenerationInput:
    kind = msg.WhichOneof("input")
    if kind == "chat":
        if not msg.chat.messages:
            raise InvalidArgument("chat: no messages")
        try:
            turns = tuple(Message(role=m.role, content=m.content) for m in msg.chat.messages)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise InvalidArgument("chat.messages." + format_validation_error(exc)) from None
        return GenerationInput(chat=turns)
    if kind == "prompt":
        if not msg.prompt:
            raise InvalidArgument("prompt: empty")
        return GenerationInput(prompt=msg.prompt)
    if kind == "token_ids":
        if not msg.token_ids.ids:
            raise InvalidArgument("token_ids: empty")
        return GenerationInput(token_ids=tuple(msg.token_ids.ids))
    raise InvalidArgument("input: set one of chat, prompt or token_ids")


def check_model(requested: str, served: str) -> None:
    if requested and requested != served:
        raise NotFound(f"model: {requested!r} is not served here (this service serves {served!r})")


def resolve_max_tokens(sampling: Sampling, prompt_len: int, max_context: int) -> int:
    """max_tokens within the remaining context; unset means min(256, remaining)."""
    remaining = max_context - prompt_len
    if remaining < 1:
        raise InvalidArgument(
            f"input: the prompt has {prompt_len} tokens; the context limit is {max_context}"
        )
    if sampling.max_tokens is None:
        return min(256, remaining)
    if sampling.max_tokens > remaining:
        raise InvalidArgument(
            f"sampling.max_tokens: {sampling.max_tokens} exceeds the remaining context "
            f"({max_context} - {prompt_len} prompt tokens = {remaining})"
        )
    return sampling.max_tokens


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    text: str


@dataclass
class PositionLogprobs:
    chosen: TokenLogprob
    top: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Delta:
    """New output of one engine step for one request."""

    text: str
    token_ids: list[int]
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


def _lp(t: TokenLogprob) -> generation_pb2.TokenLogprob:
    return generation_pb2.TokenLogprob(token_id=t.token_id, logprob=t.logprob, text=t.text)


def chunk(delta: Delta, request_id: str = "") -> generation_pb2.GenerateChunk:
    msg = generation_pb2.GenerateChunk(
        text=delta.text,
        token_ids=delta.token_ids,
        logprobs=[
            generation_pb2.PositionLogprobs(chosen=_lp(p.chosen), top=[_lp(t) for t in p.top])
            for p in delta.logprobs
        ],
        request_id=request_id,
    )
    if delta.finish_reason is not None:
        msg.finish_reason = FINISH_TO_PROTO[delta.finish_reason]
        msg.usage.CopyFrom(
            generation_pb2.Usage(
                prompt_tokens=delta.prompt_tokens,
                completion_tokens=delta.completion_tokens,
                cached_tokens=delta.cached_tokens,
            )
        )
    return msg

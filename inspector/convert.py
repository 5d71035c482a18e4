"""All conversion between the inspector's protobuf messages and its engine's values."""

from __future__ import annotations

import math

import torch

from inspector.engine import ChatTurn, DecodeItem, ModelInputValue, StateItem, TapItem
from tviz.convert import to_tensor, wire_dtype
from tviz.errors import InvalidArgument
from tviz.v1 import inspector_pb2, tensor_pb2

VALID_ROLES = ("system", "user", "assistant")


def model_input(msg: inspector_pb2.ModelInput) -> ModelInputValue:
    kind = msg.WhichOneof("input")
    if kind == "prompt":
        return msg.prompt
    if kind == "chat":
        if not msg.chat.messages:
            raise InvalidArgument("input.chat: no messages")
        turns = []
        for i, m in enumerate(msg.chat.messages):
            if m.role not in VALID_ROLES:
                raise InvalidArgument(
                    f"input.chat.messages[{i}].role: {m.role!r} is not one of {VALID_ROLES}"
                )
            turns.append(ChatTurn(m.role, m.content))
        return turns
    if kind == "token_ids":
        if not msg.token_ids.ids:
            raise InvalidArgument("input.token_ids: empty")
        return list(msg.token_ids.ids)
    raise InvalidArgument("input: set one of prompt, chat or token_ids")


def check_size(name: str, tensor: torch.Tensor, dtype: int, max_bytes: int) -> None:
    itemsize = 2 if dtype == tensor_pb2.DTYPE_FLOAT16 else 4
    size = tensor.numel() * itemsize
    if size > max_bytes - 1024:
        raise InvalidArgument(
            f"{name}: {size} bytes exceed the {max_bytes}-byte message limit; "
            "select fewer heads or query_rows, or ask for float16"
        )


def tap_tensor(item: TapItem, dtype: int) -> inspector_pb2.TapTensor:
    return inspector_pb2.TapTensor(
        name=item.name, layer=item.layer, tensor=to_tensor(item.tensor, dtype)
    )


def tokens(ids: list[int], texts: list[str]) -> list[inspector_pb2.Token]:
    return [inspector_pb2.Token(id=i, text=t) for i, t in zip(ids, texts, strict=True)]


def summary(x: torch.Tensor) -> inspector_pb2.Summary:
    """Statistics over the finite elements (masked scores hold -inf above the diagonal)."""
    v = x.float().flatten()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return inspector_pb2.Summary(min=math.nan, max=math.nan, mean=math.nan, std=math.nan)
    return inspector_pb2.Summary(
        min=float(v.min()),
        max=float(v.max()),
        mean=float(v.mean()),
        std=float(v.std()) if v.numel() > 1 else 0.0,
        norm=float(v.norm()),
    )


def step_state(item: StateItem, include_tensor: bool, dtype: int) -> inspector_pb2.StepState:
    msg = inspector_pb2.StepState(
        index=item.index,
        name=item.name,
        description=item.description,
        layer=item.layer,
        shape=list(item.tensor.shape),
        summary=summary(item.tensor),
    )
    if include_tensor:
        msg.tensor.CopyFrom(to_tensor(item.tensor, dtype))
    for token_id, text, p in item.next_tokens:
        msg.next_tokens.add(token=inspector_pb2.Token(id=token_id, text=text), probability=p)
    return msg


def decode_step(item: DecodeItem, dtype: int) -> inspector_pb2.DecodeStep:
    return inspector_pb2.DecodeStep(
        step=item.step,
        token=inspector_pb2.Token(id=item.token_id, text=item.token_text),
        cache_length=item.cache_length,
        cache_bytes=item.cache_bytes,
        attention=[tap_tensor(a, dtype) for a in item.attention],
        step_ms=item.step_ms,
        last=item.last,
    )


FLOAT_DTYPES = (tensor_pb2.DTYPE_FLOAT16, tensor_pb2.DTYPE_FLOAT32)


def request_dtype(dtype: int, default: int) -> int:
    """Activations travel as float16 or float32."""
    resolved = wire_dtype(dtype, default)
    if resolved not in FLOAT_DTYPES:
        raise InvalidArgument(f"dtype: {dtype} is not a float type (use float16 or float32)")
    return resolved

"""All conversion between protobuf messages and Python/NumPy/torch values lives here."""

from __future__ import annotations

import numpy as np
import torch

from tviz.errors import InvalidArgument
from tviz.model.config import ModelConfig
from tviz.v1 import model_pb2, tensor_pb2

_NP_DTYPES: dict[int, np.dtype] = {
    tensor_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DTYPE_INT64: np.dtype("<i8"),
}


def wire_dtype(dtype: int, default: int = tensor_pb2.DTYPE_FLOAT16) -> int:
    """Resolve a requested DType (unspecified → default); unknown values are rejected."""
    if dtype == tensor_pb2.DTYPE_UNSPECIFIED:
        return default
    if dtype not in _NP_DTYPES:
        raise InvalidArgument(f"dtype: unknown value {dtype}")
    return dtype


def to_tensor(
    value: torch.Tensor | np.ndarray, dtype: int = tensor_pb2.DTYPE_FLOAT32
) -> tensor_pb2.Tensor:
    """Encode as a little-endian row-major Tensor of the given wire dtype."""
    if isinstance(value, torch.Tensor):
        value = (
            value.detach()
            .to("cpu", torch.float32 if value.is_floating_point() else torch.int64)
            .numpy()
        )
    np_dtype = _NP_DTYPES[wire_dtype(dtype)]
    array = np.asarray(value, dtype=np_dtype)
    if array.ndim:  # ascontiguousarray would turn a scalar into shape (1,)
        array = np.ascontiguousarray(array)
    return tensor_pb2.Tensor(shape=list(array.shape), dtype=dtype, data=array.tobytes())  # type: ignore[arg-type]


def model_info(
    name: str, digest: str, cfg: ModelConfig, max_context: int, engine: int, engine_version: str
) -> model_pb2.ModelInfo:
    """What every service reports in GetModelInfo: the model, its weights digest, its shape."""
    return model_pb2.ModelInfo(
        name=name,
        weights_digest=digest,
        max_context=max_context,
        engine=engine,  # type: ignore[arg-type]
        engine_version=engine_version,
        num_layers=cfg.n_layers,
        num_heads=cfg.n_heads,
        num_kv_heads=cfg.n_kv_heads,
        d_model=cfg.d_model,
        vocab_size=cfg.vocab_size,
    )


def from_tensor(msg: tensor_pb2.Tensor) -> np.ndarray:
    """Decode a Tensor message, checking that its bytes match its shape."""
    if msg.dtype not in _NP_DTYPES:
        raise InvalidArgument(f"tensor dtype: unknown value {msg.dtype}")
    np_dtype = _NP_DTYPES[msg.dtype]
    shape = tuple(int(s) for s in msg.shape)
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if len(msg.data) != expected:
        raise InvalidArgument(
            f"tensor data has {len(msg.data)} bytes, shape {list(shape)} needs {expected}"
        )
    return np.frombuffer(msg.data, dtype=np_dtype).reshape(shape)

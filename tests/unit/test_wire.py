import numpy as np
import pytest
import torch

from tviz.convert import from_tensor, to_tensor, wire_dtype
from tviz.errors import InvalidArgument
from tviz.v1 import tensor_pb2


@pytest.mark.parametrize(
    ("dtype", "np_dtype", "tol"),
    [(tensor_pb2.DTYPE_FLOAT32, np.float32, 0.0), (tensor_pb2.DTYPE_FLOAT16, np.float16, 1e-3)],
)
def test_float_tensors_round_trip_with_shape(dtype: int, np_dtype: type, tol: float) -> None:
    x = torch.randn(3, 4, 5)
    msg = to_tensor(x, dtype)
    wire = tensor_pb2.Tensor.FromString(msg.SerializeToString())
    assert list(wire.shape) == [3, 4, 5]
    assert wire.dtype == dtype
    assert len(wire.data) == 60 * np.dtype(np_dtype).itemsize
    back = from_tensor(wire)
    assert back.dtype == np_dtype and back.shape == (3, 4, 5)
    np.testing.assert_allclose(back.astype(np.float32), x.numpy(), rtol=tol, atol=tol)


def test_bytes_are_little_endian_row_major() -> None:
    msg = to_tensor(np.array([[1.0, 2.0]], dtype=np.float32), tensor_pb2.DTYPE_FLOAT32)
    assert msg.data == np.array([1.0, 2.0], dtype="<f4").tobytes()


def test_int64_and_scalar() -> None:
    ids = to_tensor(torch.tensor([5, 7, 9]), tensor_pb2.DTYPE_INT64)
    assert from_tensor(ids).tolist() == [5, 7, 9]
    scalar = to_tensor(np.float32(2.5), tensor_pb2.DTYPE_FLOAT32)
    assert list(scalar.shape) == [] and float(from_tensor(scalar)) == 2.5


def test_negative_infinity_survives_float16() -> None:
    back = from_tensor(to_tensor(torch.tensor([float("-inf"), 0.5]), tensor_pb2.DTYPE_FLOAT16))
    assert np.isneginf(back[0]) and back[1] == np.float16(0.5)


def test_mismatched_bytes_are_rejected() -> None:
    msg = tensor_pb2.Tensor(shape=[2, 2], dtype=tensor_pb2.DTYPE_FLOAT32, data=b"\0" * 12)
    with pytest.raises(InvalidArgument, match="12 bytes"):
        from_tensor(msg)


def test_unknown_dtype_is_rejected() -> None:
    assert wire_dtype(tensor_pb2.DTYPE_UNSPECIFIED) == tensor_pb2.DTYPE_FLOAT16
    with pytest.raises(InvalidArgument, match="dtype"):
        wire_dtype(42)

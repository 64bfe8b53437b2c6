"""Frames of serialized values: arrays framed directly, everything else pickled, zero-copy reads."""

from __future__ import annotations

import struct
import threading

import numpy as np
import pytest

from ember._system.fresh_copy import SKEW_MIN, address
from ember._system.serialization import ARRAY, PICKLED, deserialize, serialize
from ember.exceptions import SerializationError

ARRAYS = [
    np.ones(1 << 16, dtype=np.uint8), np.arange(12.0).reshape(3, 4), np.array(3.5),
    np.array(["a", "bc"]), np.array([b"xy"]), np.ones((2, 3), dtype=">i4"),
    np.ones(3, dtype=bool), np.ones(2, dtype=np.complex64), np.float16([1, 2]),
]
PICKLED_ARRAYS = [
    np.zeros((0, 5)), np.arange(10)[::2], np.asfortranarray(np.ones((3, 4))),
    np.zeros(3, dtype=[("x", "i4")]), np.array([1, None], dtype=object),
    np.datetime64("2020-01-01") + np.arange(3), np.ma.array([1, 2], mask=[0, 1]),
]


def roundtrip(value):
    frame = serialize(value)
    return frame, deserialize(memoryview(frame.to_bytes()).toreadonly())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_plain_arrays_use_array_frames_and_come_back_read_only(array):
    frame, back = roundtrip(array)
    assert frame.kind == ARRAY
    assert type(back) is np.ndarray and back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array) and not back.flags.writeable


@pytest.mark.timeout(30)
@pytest.mark.parametrize("array", PICKLED_ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_other_arrays_are_pickled_and_equal(array):
    frame, back = roundtrip(array)
    assert frame.kind == PICKLED
    assert type(back) is type(array) and back.dtype == array.dtype and back.shape == array.shape
    if isinstance(array, np.ma.MaskedArray):
        assert np.array_equal(back.mask, array.mask)
    assert list(back.ravel()) == list(array.ravel())


@pytest.mark.timeout(30)
def test_nested_values_and_unpicklable_parts():
    value = {"a": [1, 2.5, None, "s"], "arr": np.arange(4), "t": (b"x", {"k": True})}
    _, back = roundtrip(value)
    assert back["a"] == value["a"] and back["t"] == value["t"]
    assert np.array_equal(back["arr"], value["arr"])
    with pytest.raises(SerializationError, match=r"\['lock'\]"):
        serialize({"lock": threading.Lock()}, "the test value")


def _tensors():
    torch = pytest.importorskip("torch")
    return torch, [
        torch.arange(1 << 16, dtype=torch.float32), torch.arange(10).reshape(2, 5)[:, ::2],
        torch.tensor(3.5), torch.zeros(0, 3), torch.ones(3, dtype=torch.bfloat16),
        torch.tensor([True, False]), torch.randn(4, dtype=torch.complex64),
    ]


@pytest.mark.timeout(30)
def test_cpu_tensors_travel_out_of_band_and_come_back_writable():
    torch, tensors = _tensors()
    for tensor in tensors:
        frame = serialize(tensor)
        assert len(frame.buffers) == 1   # the bytes, out of band (Note [tensor frames])
        data = memoryview(frame.to_bytes()).toreadonly()
        out = deserialize(data)
        assert type(out) is torch.Tensor and out.dtype == tensor.dtype
        assert out.shape == tensor.shape and torch.equal(out, tensor)
        out.zero_()   # the reader's own memory: the frame still holds the value
        assert torch.equal(deserialize(data), tensor)
    _, nested = roundtrip({"w": [tensors[0], tensors[0][:4]], "s": "x"})
    assert torch.equal(nested["w"][1], tensors[0][:4]) and nested["s"] == "x"


@pytest.mark.timeout(30)
def test_autograd_and_parameters_keep_their_flags():
    torch, _ = _tensors()
    _, param = roundtrip(torch.nn.Parameter(torch.ones(2)))
    assert type(param) is torch.nn.Parameter and param.requires_grad
    _, leaf = roundtrip(torch.ones(2, requires_grad=True))
    assert leaf.requires_grad and torch.equal(leaf.detach(), torch.ones(2))


@pytest.mark.parametrize("kind", ["bytes", "array", "pickled"])
def test_large_buffers_land_half_a_page_from_their_source_at_any_offset(kind):
    """Note [copy skew]: wherever the frame starts, its large buffer lies (dst - src) mod 4096
    in (2048 - 64, 2048] bytes from its source, and the value reads back equal."""
    array = np.arange(SKEW_MIN, dtype=np.uint8)
    value = {"bytes": array.tobytes(), "array": array, "pickled": {"a": array, "n": 3}}[kind]
    source = address(memoryview(array if kind != "bytes" else value))
    frame = serialize(value)
    slab = np.zeros(frame.frame_size + 4096, dtype=np.uint8)
    for start in range(0, 4096, 64 * 7):
        dest = memoryview(slab)[start:start + frame.frame_size]
        frame.write_into(dest)
        out = deserialize(dest.toreadonly())
        if kind == "bytes":
            assert out == value
            nbuf, _, meta_len = struct.unpack_from("<IIQ", dest)
            landed = address(dest) + ((16 + 8 * nbuf + meta_len + 63) & ~63)
        else:
            got = out if kind == "array" else out["a"]
            assert np.array_equal(got, array) and (kind == "array" or out["n"] == 3)
            landed = got.ctypes.data
        assert 2048 - 64 < (landed - source) % 4096 <= 2048

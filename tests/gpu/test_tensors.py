"""Splitting values into metadata and tensors, rebuilding them, and type-hint checks."""

from __future__ import annotations

import dataclasses
import pickle
from collections import OrderedDict, namedtuple

import pytest

torch = pytest.importorskip("torch")

from ember.exceptions import TensorTransportError  # noqa: E402
from ember.gpu.tensors import (TensorMeta, TensorPlaceholder, TorchTensorType,  # noqa: E402
                               check_tensors, merge_tensors, split_tensors)

Pair = namedtuple("Pair", "left right")


@dataclasses.dataclass
class Batch:
    tokens: object
    labels: object
    name: str = "b"


@dataclasses.dataclass(frozen=True)
class Frozen:
    tensor: object
    step: int


@pytest.mark.timeout(10)
def test_nested_value_round_trips_through_pickle():
    a, b, c, d = torch.arange(4), torch.ones(2, 3), torch.zeros(()), torch.eye(2)[:, 0]
    value = {"batch": Batch(a, [b, (c, 7)]), "pair": Pair(d, "x"), "frozen": Frozen(a, 3),
             "ordered": OrderedDict(z=b), "plain": [1, "two"]}
    skeleton, tensors = split_tensors(value)
    assert len(tensors) == 6 and tensors[0] is a
    assert pickle.loads(pickle.dumps(skeleton)) == skeleton  # metadata has no tensors left
    assert skeleton["batch"].tokens == TensorPlaceholder(0)
    assert skeleton["plain"] is value["plain"]  # tensor-free parts are not copied
    assert isinstance(skeleton["pair"], Pair) and isinstance(skeleton["ordered"], OrderedDict)
    assert value["batch"].tokens is a  # the input is left alone
    rebuilt = merge_tensors(pickle.loads(pickle.dumps(skeleton)), [t.clone() for t in tensors])
    assert torch.equal(rebuilt["batch"].labels[1][0], c) and rebuilt["batch"].labels[1][1] == 7
    assert isinstance(rebuilt["frozen"], Frozen) and torch.equal(rebuilt["frozen"].tensor, a)
    assert torch.equal(rebuilt["pair"].left, d) and rebuilt["pair"].right == "x"
    assert [m.shape for m in map(TensorMeta.of, tensors)] == [(4,), (2, 3), (), (2,), (4,), (2, 3)]


@pytest.mark.timeout(10)
def test_bare_tensor_select_and_no_tensor():
    t = torch.ones(3)
    assert split_tensors(t) == (TensorPlaceholder(0), [t])
    assert merge_tensors(TensorPlaceholder(0), [t]) is t
    value = [t, torch.zeros(2, dtype=torch.int64)]
    skeleton, tensors = split_tensors(value, select=lambda x: x.is_floating_point())
    assert tensors == [t] and skeleton[1] is value[1]
    plain = {"a": [1, 2]}
    assert split_tensors(plain) == (plain, []) and split_tensors(plain)[0] is plain
    with pytest.raises(TensorTransportError, match="only 1 tensors arrived"):
        merge_tensors([TensorPlaceholder(0), TensorPlaceholder(1)], [t])


@pytest.mark.timeout(10)
def test_meta():
    meta = TensorMeta.of(torch.zeros(2, 5, dtype=torch.float16))
    assert meta == TensorMeta((2, 5), torch.float16, "cpu") and meta.nbytes == 20
    assert pickle.loads(pickle.dumps(meta)) == meta


@pytest.mark.timeout(10)
def test_type_hint_mismatch_is_a_clear_error():
    hint = TorchTensorType(shape=(2, None), dtype=torch.float32, transport="nccl")
    hint.check(torch.zeros(2, 7))
    check_tensors([torch.zeros(2, 1), TensorMeta((2, 3), torch.float32, "cuda:0")], hint, "a.f -> b.g")
    with pytest.raises(TensorTransportError, match=r"a\.f -> b\.g tensor 1 has shape \(3, 3\).*\(2, None\)"):
        check_tensors([torch.zeros(2, 1), torch.zeros(3, 3)], hint, "a.f -> b.g")
    with pytest.raises(TensorTransportError, match="dtype torch.int64 .* declares torch.float32"):
        hint.check(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(TensorTransportError, match="shape"):
        hint.check(torch.zeros(2))
    check_tensors([torch.zeros(9)], None)  # no hint, no check
    assert not hint.static and "nccl" in repr(hint)


@pytest.mark.timeout(10)
def test_static_hint_gives_metadata_ahead():
    hint = TorchTensorType(shape=(4, 4), dtype=torch.bfloat16)
    assert hint.static and hint.transport == "auto"
    assert hint.meta("cuda:0") == TensorMeta((4, 4), torch.bfloat16, "cuda:0")
    with pytest.raises(ValueError, match="does not fix"):
        TorchTensorType(shape=(4, None), dtype=torch.float32).meta("cpu")
    with pytest.raises(ValueError, match="transport 'rdma'"):
        TorchTensorType(transport="rdma")


def test_split_and_merge_leave_no_reference_cycle_holding_the_tensors():
    """A received tensor must be freed when its last user drops it, not at the next GC."""
    import gc
    import weakref

    tensor = torch.ones(4)
    gone = weakref.ref(tensor)
    gc.disable()
    try:
        skeleton, tensors = split_tensors({"a": [tensor, 1]})
        value = merge_tensors(skeleton, tensors)
        assert value["a"][0] is tensor
        del tensor, tensors, value
        assert gone() is None
    finally:
        gc.enable()

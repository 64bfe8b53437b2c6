"""Turn values into bytes and back: cloudpickle with pickle protocol 5 out-of-band buffers.

A serialized value is a small pickle stream (``meta``) plus the raw buffers of any numpy arrays
or tensors it holds. Laid out in one contiguous frame, the buffers can be read back zero-copy:
``deserialize`` over a read-only memoryview gives read-only numpy arrays that view the frame.

Frame layout (little endian)::

    u32 nbuf | u32 kind | u64 meta_len | u64 buf_len * nbuf | meta | pad | buf0 | pad | buf1 ...

Buffers start at 64-byte aligned offsets from the frame start. ``kind`` is PICKLED, ARRAY for
a bare numpy array (Note [array frames]), or BYTES / BYTEARRAY for a large bare one of those
(Note [bytes frames]).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from typing import Any, Callable

import cloudpickle

from ember._system.fresh_copy import (SKEW_MIN, SKEW_SLACK, address, bytearray_from, bytes_from,
                                      skew)
from ember.exceptions import SerializationError

ALIGN = 64
PICKLED, ARRAY, BYTES, BYTEARRAY = 0, 1, 2, 3
_HEAD = struct.Struct("<IIQ")
_PADDING = bytes(ALIGN)
_LENGTHS = [struct.Struct(f"<{n}Q") for n in range(17)]   # the buffer lengths of small frames


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def _lengths(nbuf: int) -> struct.Struct:
    """The layout of the buffer lengths of a frame with ``nbuf`` buffers."""
    return _LENGTHS[nbuf] if nbuf < len(_LENGTHS) else struct.Struct(f"<{nbuf}Q")


def _head(meta: bytes, lengths: list[int], kind: int) -> bytes:
    """The frame's header and pickle stream, padded to where the first buffer starts."""
    head = _HEAD.pack(len(lengths), kind, len(meta))
    if lengths:
        head += _lengths(len(lengths)).pack(*lengths)
    head += meta
    return head + _PADDING[:-len(head) % ALIGN]


class Serialized:
    """A value in framed form: the frame's head (header and pickle stream, padded) and the
    out-of-band buffers that follow it."""

    __slots__ = ("head", "buffers", "frame_size", "_largest")

    def __init__(self, head: bytes, buffers: list[memoryview]) -> None:
        self.head = head
        self.buffers = buffers
        size = len(head)
        largest = -1   # the index of a buffer worth a skewed copy (Note [copy skew]), if any
        for index, buf in enumerate(buffers):
            size = _align(size + buf.nbytes)
            if buf.nbytes >= SKEW_MIN and (
                    largest < 0 or buf.nbytes > buffers[largest].nbytes):
                largest = index
        self._largest = largest
        self.frame_size = size if largest < 0 else size + SKEW_SLACK

    @classmethod
    def of(cls, meta: bytes, buffers: list[memoryview], kind: int = PICKLED) -> "Serialized":
        """Frame the pickle stream ``meta`` and its out-of-band ``buffers``."""
        return cls(_head(meta, [buf.nbytes for buf in buffers], kind), buffers)

    @property
    def kind(self) -> int:
        """PICKLED, ARRAY, BYTES or BYTEARRAY (Notes [array frames] and [bytes frames])."""
        return _HEAD.unpack_from(self.head)[1]

    def pieces(self) -> list[tuple[int, memoryview | bytes]]:
        """(offset, bytes) of every part of the frame, in order."""
        head = self.head
        parts: list[tuple[int, memoryview | bytes]] = [(0, head)]
        offset = len(head)
        for buf in self.buffers:
            parts.append((offset, buf))
            offset = _align(offset + buf.nbytes)
        return parts

    def write_into(self, dest: memoryview) -> None:
        """Write the frame into ``dest`` (at least ``frame_size`` bytes)."""
        head = self.head   # pieces() spelled out: this runs for every channel write
        if self._largest >= 0:
            head = self._skewed_head(dest)
        dest[:len(head)] = head
        offset = len(head)
        for buf in self.buffers:
            dest[offset:offset + buf.nbytes] = buf
            offset = _align(offset + buf.nbytes)

    def _skewed_head(self, dest: memoryview) -> bytes:
        """The head, padded so that the largest buffer lands well in ``dest`` (Note [copy
        skew]): the padding lengthens the pickle stream, whose reader ignores the excess."""
        offset, buf = self.pieces()[self._largest + 1]
        shift = skew(address(dest) + offset, address(buf), ALIGN)
        nbuf, kind, _ = _HEAD.unpack_from(self.head)
        meta_len = len(self.head) + shift - _HEAD.size - 8 * nbuf
        return _HEAD.pack(nbuf, kind, meta_len) + self.head[_HEAD.size:] + bytes(shift)

    def write_to_fd(self, fd: int) -> None:
        """Write the frame into a file with pwrite (no page faults in this process)."""
        for offset, part in self.pieces():
            view = memoryview(part)
            done = 0
            while done < view.nbytes:
                done += os.pwrite(fd, view[done:], offset + done)

    def to_bytes(self) -> bytes:
        """Return the whole frame as one bytes object (for values that travel inline)."""
        if not self.buffers:
            return self.head
        out = bytearray(self.frame_size)
        self.write_into(memoryview(out))
        return bytes(out)


# Note [plain pickle fast path]: cloudpickle costs ~3 us even for 100 bytes, ten times plain
# pickle. Values of these exact types, numpy arrays without Python objects, and small tuples,
# lists and dicts of them pickle the same way with both, so they skip cloudpickle; anything else
# may hold code or classes defined in __main__, which only cloudpickle sends by value.
_PLAIN_TYPES = frozenset({bytes, bytearray, str, int, float, complex, bool, type(None)})


def _is_plain(value: Any, depth: int = 0) -> bool:
    cls = type(value)
    if cls in _PLAIN_TYPES:
        return True
    if cls is tuple or cls is list:
        if depth > 2 or len(value) > 16:
            return False
        for item in value:
            if not _is_plain(item, depth + 1):
                return False
        return True
    if cls is dict:
        if depth > 2 or len(value) > 16:
            return False
        for key, item in value.items():
            if type(key) is not str or not _is_plain(item, depth + 1):
                return False
        return True
    return (cls.__name__ == "ndarray" and cls.__module__ == "numpy"
            and not value.dtype.hasobject)


# Note [array frames]: a bare, C-contiguous numpy array of a plain dtype (the common pipeline
# value) is framed as its dtype and shape plus its bytes, without pickle's reduce machinery:
# 10x cheaper to write and to read back, which matters in a loop that moves arrays between
# actors. Subclasses, empty arrays, dtypes other than numbers and strings (objects, records,
# datetimes) and other layouts go through pickle. A loop sends the same dtype and shape again
# and again, so the frame head of each (dtype, shape) and the decoded layout of each head are
# kept (up to _CACHE_LIMIT of each).
_ARRAY_HEADS: dict[tuple[Any, tuple], bytes] = {}   # (dtype, shape) -> head of its frames
_ARRAY_METAS: dict[bytes, tuple] = {}   # pickle stream -> (numpy dtype, shape, numpy functions)
_ARRAY_DTYPES: dict[Any, bool] = {}   # numpy dtype -> whether array frames take it
_CACHE_LIMIT = 1024


def _array_frame(value: Any) -> Serialized | None:
    cls = type(value)
    if cls.__name__ != "ndarray" or cls.__module__ != "numpy":
        return None
    dtype = value.dtype
    plain = _ARRAY_DTYPES.get(dtype)
    if plain is None:
        plain = _ARRAY_DTYPES[dtype] = (dtype.kind in "biufcSU" and dtype.fields is None
                                        and dtype.subdtype is None)
    if not plain:
        return None
    view = memoryview(value)
    if not view.c_contiguous or not view.nbytes:
        return None
    key = (dtype, view.shape)    # not dtype.str, which formats a new string at every call
    head = _ARRAY_HEADS.get(key)
    if head is None:
        if len(_ARRAY_HEADS) >= _CACHE_LIMIT:
            _ARRAY_HEADS.clear()
        meta = pickle.dumps((dtype.str, view.shape), protocol=5)
        head = _ARRAY_HEADS[key] = _head(meta, [view.nbytes], ARRAY)
    return Serialized(head, [view.cast("B")])


def _array_from_frame(meta: memoryview, buffer: Any) -> Any:
    key = bytes(meta)
    layout = _ARRAY_METAS.get(key)
    if layout is None:
        import numpy
        if len(_ARRAY_METAS) >= _CACHE_LIMIT:
            _ARRAY_METAS.clear()
        dtype, shape = pickle.loads(key)
        dtype = numpy.dtype(dtype)
        as_is = dtype == numpy.uint8 and len(shape) == 1    # the bytes already are the array
        layout = _ARRAY_METAS[key] = (dtype, shape, as_is, numpy.ndarray, numpy.frombuffer)
    dtype, shape, as_is, ndarray, frombuffer = layout
    if type(buffer) is ndarray:   # deserialize's ``root`` array: uint8, over the array's bytes
        return buffer if as_is else buffer.view(dtype).reshape(shape)
    return frombuffer(buffer, dtype).reshape(shape)


# Note [tensor frames]: torch pickles a CPU tensor's storage in-band, through torch.save's format:
# 0.7 s to write and 0.3 s to read 100 MiB, ten times a memory copy. A plain, dense CPU
# torch.Tensor instead travels as its bytes out of band (a PickleBuffer over a uint8 view: no copy
# until the segment write) plus its dtype and shape; the reader copies the bytes into a tensor of
# its own (writable, which a view of the read-only segment would not be). Views of one storage
# arrive as separate tensors. Tensors that need autograd, other layouts (sparse, quantized,
# conjugate or negative bits), other devices and subclasses (nn.Parameter) pickle as torch does.
class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle, with plain CPU tensors framed out of band (Note [tensor frames])."""

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls.__name__ == "Tensor" and cls.__module__ == "torch":
            reduced = _reduce_tensor(obj)
            if reduced is not None:
                return reduced
        return super().reducer_override(obj)


def _reduce_tensor(tensor: Any) -> tuple | None:
    import torch  # loaded already: ``tensor`` is one (the dynamic layer does not import it)
    if (tensor.device.type != "cpu" or tensor.requires_grad or tensor.layout != torch.strided
            or tensor.is_quantized or tensor.is_conj() or tensor.is_neg()):
        return None
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return (_tensor_from_bytes, (pickle.PickleBuffer(data), str(tensor.dtype)[6:],
                                 tuple(tensor.shape)))


def _tensor_from_bytes(buffer: Any, dtype: str, shape: tuple) -> Any:
    import numpy
    import torch
    source = numpy.frombuffer(buffer, numpy.uint8)
    out = torch.empty(source.nbytes, dtype=torch.uint8)
    out.numpy()[:] = source
    return out.view(getattr(torch, dtype)).reshape(shape)


# Note [bytes frames]: pickle copies a bytes value into its stream and again out of it, and
# the frame's head would copy the stream once more: for 256 MiB, 0.2 s each. A bare bytes or
# bytearray of _BYTES_MIN bytes or more is framed as its raw bytes instead (one buffer, no
# pickle stream), so writing it is one copy into the frame, and reading it one copy out of it
# into the new object (fresh_copy: Note [huge-page copies]). Smaller ones pickle in-band as
# before, which is cheaper for them.
_BYTES_MIN = 64 * 1024
_BYTES_KINDS = {bytes: BYTES, bytearray: BYTEARRAY}


def _bytes_frame(value: bytes | bytearray) -> Serialized:
    return Serialized(_head(b"", [len(value)], _BYTES_KINDS[type(value)]), [memoryview(value)])


def serialize(value: Any, what: str = "value") -> Serialized:
    """Pickle ``value`` with out-of-band buffers; raise SerializationError naming ``what``."""
    cls = type(value)
    if cls in _PLAIN_TYPES:   # nothing out of band: small bytearrays pickle in-band too
        if cls in _BYTES_KINDS and len(value) >= _BYTES_MIN:
            return _bytes_frame(value)
        return Serialized(_head(pickle.dumps(value, protocol=5), [], PICKLED), [])
    frame = _array_frame(value)
    if frame is not None:
        return frame
    buffers: list[memoryview] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        buffers.append(buf.raw())
        return False

    if _is_plain(value):
        return Serialized.of(pickle.dumps(value, protocol=5, buffer_callback=keep), buffers)
    try:
        with io.BytesIO() as out:
            _Pickler(out, protocol=5, buffer_callback=keep).dump(value)
            meta = out.getvalue()
    except Exception as exc:  # noqa: BLE001 - any pickling failure becomes one clear error
        culprit = find_unpicklable(value)
        raise SerializationError(
            f"Could not serialize {what}: {culprit} cannot be pickled ({type(exc).__name__}: "
            f"{exc}). Pass a picklable value, or create the object inside the remote function "
            f"or actor instead of sending it.") from exc
    return Serialized.of(meta, buffers)


def deserialize(frame: memoryview | bytes, what: str = "value",
                root: Callable[[memoryview], Any] | None = None) -> Any:
    """Unpickle a frame made by ``Serialized.write_into``; buffers are views of ``frame``.

    With ``root``, a frame that has buffers passes one view to it (the array's bytes for an
    array frame, else the whole frame), and the value is built on the uint8 array it returns
    (the buffers are slices of it), so that the caller can tell how long they are used.
    """
    view = frame if isinstance(frame, memoryview) else memoryview(frame)
    nbuf, kind, meta_len = _HEAD.unpack_from(view, 0)
    offset = _HEAD.size
    buffers = []
    if nbuf:
        lengths = _lengths(nbuf).unpack_from(view, offset)
        offset += 8 * nbuf
        meta = view[offset:offset + meta_len]
        offset = _align(offset + meta_len)
        if kind == BYTES:
            return bytes_from(view[offset:offset + lengths[0]])
        if kind == BYTEARRAY:
            return bytearray_from(view[offset:offset + lengths[0]])
        if kind == ARRAY:
            data = view[offset:offset + lengths[0]]
            buffers.append(data if root is None else root(data))
        else:
            source = view if root is None else root(view)
            for n in lengths:
                buffers.append(source[offset:offset + n])
                offset = _align(offset + n)
    else:
        meta = view[offset:offset + meta_len]
    try:
        if kind == ARRAY:
            return _array_from_frame(meta, buffers[0])
        return pickle.loads(meta, buffers=buffers)
    except Exception as exc:  # noqa: BLE001
        raise SerializationError(
            f"Could not deserialize {what} ({type(exc).__name__}: {exc}). Make sure the module "
            f"that defines its type can be imported in every process.") from exc


def find_unpicklable(value: Any, depth: int = 0) -> str:
    """Describe the innermost part of ``value`` that cannot be pickled."""
    parts: list[tuple[str, Any]] = []
    if depth < 4:
        if isinstance(value, dict):
            parts = [(f"[{k!r}]", v) for k, v in value.items()]
        elif isinstance(value, (list, tuple, set, frozenset)):
            parts = [(f"[{i}]", v) for i, v in enumerate(value)]
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            parts = [(f".{k}", v) for k, v in vars(value).items()]
    for label, part in parts:
        try:
            cloudpickle.dumps(part, protocol=5)
        except Exception:  # noqa: BLE001
            inner = find_unpicklable(part, depth + 1)
            return f"{label} of {type(value).__name__} -> {inner}" if inner else label
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (type {type(value).__module__}.{type(value).__qualname__})"

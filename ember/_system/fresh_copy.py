"""Copy large buffers at memory speed: into a new ``bytes`` or ``bytearray``, or into a frame.

Note [huge-page copies]
~~~~~~~~~~~~~~~~~~~~~~~
A new 256 MiB ``bytes`` is fresh memory from mmap: every 4 KiB page faults on first touch, and in
a VM those faults cost more than the copy (``bytes(view)`` of 256 MiB: ~160 ms, ``np.copy``:
~40 ms, because numpy asks for transparent huge pages). So a large copy makes the object
uninitialised (``PyBytes_FromStringAndSize(NULL, n)``, which touches only its first and last
page), advises huge pages for its data (``MADV_HUGEPAGE``, which the usual THP mode "madvise"
needs) and faults the range in with one call (``MADV_POPULATE_WRITE``), then copies into it
with one ``memmove``: one fault per 2 MiB instead of per 4 KiB, and no trap per fault. The
object is filled before anyone else sees it. Where the advice fails (no THP) the copy is still
right, only slower.

Note [copy skew]
~~~~~~~~~~~~~~~~
glibc's memmove of 256 MiB or more runs up to 4x slower when the destination lies a little
ahead of the source modulo the 4 KiB page ((dst - src) mod 4096 in (0, ~600]: loads alias the
pages of recent stores), and a frame's first buffer, 64 bytes into a page-aligned slot, lies
exactly there for a ``bytes`` (data 48 bytes into its page) or a numpy array (16): two of the
four copies of a 256 MiB bytes round trip ran at a third of the speed of the other two. So a
frame whose largest buffer is large keeps one page of slack, and its writer, which knows both
addresses, shifts the buffers within it so that the distance is half a page (``skew``); the
reader finds them where the frame's header says (the shift is padding at the end of the
pickle stream, which unpickling ignores).
"""

from __future__ import annotations

import ctypes

from ember._system.shm import POPULATE_WRITE, madvise

_LARGE = 4 << 20         # below this, fresh pages cost little next to the call overhead
_HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_new_bytes.restype = ctypes.py_object
_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_new_bytearray.restype = ctypes.py_object
_BYTES_DATA = bytes.__basicsize__ - 1    # offset of ob_sval: the header, less the trailing NUL


SKEW_MIN = 16 << 20      # copies of 128 MiB measured at one speed wherever they land
SKEW_SLACK = 4096        # one page: room for any shift


def address(view: memoryview) -> int:
    """The address of a contiguous buffer's first byte (ctypes will not take read-only ones)."""
    import numpy    # only large copies need it
    return numpy.frombuffer(view, dtype=numpy.uint8).ctypes.data


def _fill(dest: int, view: memoryview, nbytes: int) -> None:
    """Advise huge pages for ``nbytes`` at ``dest`` (whole pages inside it), then copy."""
    start = (dest + _HUGE - 1) & ~(_HUGE - 1)
    end = (dest + nbytes) & ~(_HUGE - 1)
    if end > start:   # best effort both: without THP or on an old kernel, the same result
        madvise(start, end - start, _MADV_HUGEPAGE)
        madvise(start, end - start, POPULATE_WRITE)
    ctypes.memmove(dest, address(view), nbytes)


def bytes_from(view: memoryview) -> bytes:
    """``bytes(view)`` for a contiguous byte view, fast when large (Note [huge-page copies])."""
    nbytes = view.nbytes
    if nbytes < _LARGE:
        return bytes(view)
    out = _new_bytes(None, nbytes)
    _fill(id(out) + _BYTES_DATA, view, nbytes)
    return out


def bytearray_from(view: memoryview) -> bytearray:
    """``bytearray(view)`` for a contiguous byte view, fast when large."""
    nbytes = view.nbytes
    if nbytes < _LARGE:
        return bytearray(view)
    out = _new_bytearray(None, nbytes)
    _fill(ctypes.addressof(ctypes.c_char.from_buffer(out)), view, nbytes)
    return out


def skew(dest: int, src: int, align: int) -> int:
    """How far past ``dest`` (a multiple of ``align``) to copy from ``src`` (Note [copy skew])."""
    return (SKEW_SLACK // 2 - (dest - src)) % SKEW_SLACK // align * align

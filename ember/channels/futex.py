"""Futex wait and wake on a 32-bit word in shared memory, through ctypes ``syscall(SYS_futex)``.

The operations are the shared (non-PRIVATE) ones, so that processes mapping the same file at
different addresses wait on the same word: the kernel keys a shared futex by the page behind
the address, not by the address itself. ``fence`` is the memory barrier a waker needs before it
decides whether anyone sleeps (see Note [channel waiting] in shared_memory.py).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import platform
import threading

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
WAKE_ALL = 0x7FFFFFFF

_MACHINE = platform.machine().lower()
if _MACHINE not in _SYS_FUTEX:
    raise ImportError(f"futex: unsupported machine {_MACHINE!r}; ember channels need Linux on "
                      f"x86-64 or aarch64")
_NR_FUTEX = _SYS_FUTEX[_MACHINE]
_LIBC = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _bind(name: str, argtypes: list, restype: type = ctypes.c_int):
    """Return a fresh function object for libc ``name`` (fresh: ``syscall`` is bound twice)."""
    function = _LIBC[name]
    function.argtypes = argtypes
    function.restype = restype
    return function


_futex_wait = _bind("syscall", [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32,
                                ctypes.POINTER(_Timespec)], ctypes.c_long)
_futex_wake = _bind("syscall", [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int],
                    ctypes.c_long)
_FENCE_LOCK = threading.Lock()


def word_address(buffer: mmap.mmap | bytearray, offset: int) -> int:
    """Return the address of the 32-bit word at ``offset`` (4-byte aligned) in a writable buffer."""
    if offset % 4:
        raise ValueError(f"futex word offset {offset} is not 4-byte aligned")
    return ctypes.addressof(ctypes.c_uint32.from_buffer(buffer, offset))


def wait(address: int, expected: int, timeout_s: float | None) -> bool:
    """Sleep while the word at ``address`` equals ``expected``, at most ``timeout_s`` seconds.

    ``timeout_s=None`` sleeps without limit. Return False when the timeout ran out, True
    otherwise (woken, the value already differed, or a signal interrupted the wait); callers
    re-check their condition either way.
    """
    if timeout_s is None:
        spec = None
    else:
        timeout_s = max(timeout_s, 0.0)
        sec = int(timeout_s)
        spec = ctypes.byref(_Timespec(sec, int((timeout_s - sec) * 1e9)))
    if _futex_wait(_NR_FUTEX, address, _FUTEX_WAIT, expected, spec) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ETIMEDOUT:
        return False
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    raise OSError(err, f"futex wait failed: {errno.errorcode.get(err, err)}")


def fence() -> None:
    """Full memory barrier: later loads wait for earlier stores.

    Taking and dropping a free lock are atomic read-modify-writes in CPython's lock (on x86-64 a
    ``lock``-prefixed instruction, which is a full barrier), and cost half a foreign call through
    ctypes when the caches are cold, as a channel's are after a large copy (2.4 against 5 us).
    """
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()


def wake(address: int, count: int = WAKE_ALL) -> int:
    """Wake up to ``count`` waiters on the word at ``address``; return how many were woken."""
    woken = _futex_wake(_NR_FUTEX, address, _FUTEX_WAKE, count)
    if woken < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"futex wake failed: {errno.errorcode.get(err, err)}")
    return woken

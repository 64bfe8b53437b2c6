"""Named shared-memory segments in /dev/shm, all under one per-session prefix.

Every segment ember makes is named ``ember_<session>_<kind>_<id>``, so the one owner of a
session (its node manager, see ``cleanup_session``) can remove everything the session left,
even after a crash. Segments are plain files in /dev/shm mapped with mmap: an unlinked segment
stays valid for every process that still maps it.
"""

from __future__ import annotations

import ctypes
import glob
import mmap
import os
import uuid

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
_SESSION_ENV = "EMBER_SESSION"
POPULATE_READ, POPULATE_WRITE = 22, 23   # MADV_POPULATE_*, Linux 5.14
_madvise = ctypes.CDLL(None, use_errno=True).madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def madvise(address: int, length: int, advice: int) -> bool:
    """``madvise(2)`` on a range, without holding the GIL (a ctypes call releases it), so that
    faulting in a large range stalls no other thread of the process; False where the kernel
    refuses the advice (best effort: the memory is right either way)."""
    return _madvise(address, length, advice) == 0


def populate(mapping: mmap.mmap, advice: int = POPULATE_WRITE) -> bool:
    """Set up the page tables of a whole writable mapping in one call instead of one page fault
    per 4 KiB page on first touch (``mmap(MAP_POPULATE)`` does the same holding the GIL)."""
    anchor = ctypes.c_char.from_buffer(mapping)
    try:
        return madvise(ctypes.addressof(anchor), len(mapping), advice)
    finally:
        del anchor


def session_id() -> str:
    """Return this process's session id, creating one for a process that starts a session."""
    sid = os.environ.get(_SESSION_ENV)
    if not sid:
        sid = uuid.uuid4().hex[:12]
        os.environ[_SESSION_ENV] = sid
    return sid


def set_session_id(sid: str) -> None:
    """Adopt ``sid`` as this process's session (children inherit it through the environment)."""
    os.environ[_SESSION_ENV] = sid


def segment_path(kind: str, ident: str) -> str:
    """Return the /dev/shm path of segment ``ident`` of ``kind`` in this session."""
    return os.path.join(SHM_DIR, f"ember_{session_id()}_{kind}_{ident}")


class Segment:
    """One mapped shared-memory file; ``buf`` is a writable memoryview of all of it."""

    __slots__ = ("path", "size", "mmap", "buf")

    def __init__(self, path: str, size: int, mm: mmap.mmap) -> None:
        self.path = path
        self.size = size
        self.mmap = mm
        self.buf = memoryview(mm)

    @classmethod
    def create(cls, path: str, size: int) -> "Segment":
        """Create a new segment of ``size`` bytes (fails if ``path`` exists)."""
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, max(size, 1))
            mm = mmap.mmap(fd, max(size, 1))
        except BaseException:
            os.close(fd)
            unlink(path)
            raise
        os.close(fd)
        return cls(path, size, mm)

    @classmethod
    def open(cls, path: str) -> "Segment":
        """Map an existing segment; raises FileNotFoundError if it is gone."""
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(path, size, mm)

    def close(self) -> None:
        """Unmap; views handed out keep the memory alive until they are released."""
        try:
            self.buf.release()
            self.mmap.close()
        except BufferError:
            pass  # a zero-copy view still uses the mapping; it is unmapped when collected

    def unlink(self) -> None:
        """Remove the name; processes that map it keep their view."""
        unlink(self.path)


def unlink(path: str) -> None:
    """Remove a segment's name if it exists; processes that map it keep their view."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def cleanup_session(sid: str) -> int:
    """Unlink every segment of session ``sid``; return how many were removed."""
    paths = glob.glob(os.path.join(SHM_DIR, f"ember_{sid}_*"))
    for path in paths:
        unlink(path)
    return len(paths)

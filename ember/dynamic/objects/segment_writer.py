"""Writing large objects into new shared-memory segments at memory-copy speed.

Note [spare segments]: the first touch of a fresh tmpfs page costs a fault and a zeroing, which
makes a put into a new, mmap'd segment run at a third of memcpy speed. So the writer keeps one
*spare* segment the size of its last large put, prepared by a background thread between puts:
allocated (posix_fallocate) and mapped with its pages populated. The next put that fits renames
the spare to the object's name and copies into the mapping at full memcpy speed. The mapping
stays open until the object is freed (``release``, where unmapping costs the freeing thread a
few ms instead of the put, and cannot stall a concurrent mmap of a reader of this process), or
until more than ``_MAX_MAPPED`` are open (a worker's task results are freed by their owner), then
the oldest is closed by the background thread. Without a fitting spare the writer pwrites. A
spare was never named as an object, so nobody can see its reuse. Spares live under the session
prefix, so the node manager's cleanup removes them too. The background thread runs at the
lowest CPU priority and makes spares without holding the GIL (``shm.populate``): it must not
slow down the transfer or the copy it prepares for.

Note [recycled pulls]: fresh memory is the dearest part of pulling a large object from another
node (zeroing plus, in a VM, the host backing each page: ~1 GB/s here, slower than the socket),
so a pull's buffer comes back. ``receive_buffer`` hands out a mapping of an unlinked segment
(the put spare when it fits, else a new one) through a numpy array whose finalizer returns the
mapping once the last view of the pulled value is gone; the next pull adopts it, its pages
still populated. Nothing else maps it, and no file names it, so a reader that dies leaves
nothing behind.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import itertools
import mmap
import os
import threading
import weakref
from collections import OrderedDict

import numpy

from ember._system import shm
from ember._system.serialization import Serialized

SPARE_MIN = 8 * 1024 * 1024
_ROUND = 1024 * 1024
_MAX_MAPPED = 2


class _Spare:
    """A pre-allocated, mapped segment waiting for the next large put."""

    __slots__ = ("path", "size", "mapping")

    def __init__(self, path: str, size: int, mapping: mmap.mmap) -> None:
        self.path = path
        self.size = size
        self.mapping = mapping


class SegmentWriter:
    """Creates object segments for one process, with a spare for the next large put."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted = threading.Condition(self._lock)
        self._spare: _Spare | None = None
        self._recycled: mmap.mmap | None = None    # Note [recycled pulls]
        self._returned: collections.deque[mmap.mmap] = collections.deque()  # by finalizers
        self._want_size = 0
        self._to_close: list[mmap.mmap] = []
        self._mapped: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._names = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def write(self, path: str, ser: Serialized) -> None:
        """Create segment ``path`` holding the frame of ``ser``."""
        size = ser.frame_size
        spare = self._take(size)
        if spare is not None:
            os.rename(spare.path, path)
            with memoryview(spare.mapping) as view:
                ser.write_into(view)
            self._keep_mapped(path, spare.mapping)
        else:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, size)
                ser.write_to_fd(fd)
            except BaseException:
                shm.unlink(path)
                raise
            finally:
                os.close(fd)
        if size >= SPARE_MIN:
            self._prepare(size)

    def receive_buffer(self, size: int) -> memoryview:
        """A writable buffer of ``size`` bytes, its pages populated, private to this process, for
        a pull to fill straight from a socket (objects/transfer.py); its memory comes back once
        the value read from it is gone (Note [recycled pulls])."""
        with self._lock:
            self._adopt_returned()
            mapping, self._recycled = self._recycled, None
            if mapping is not None and not _fits(size, len(mapping)):
                self._close_later(mapping)
                mapping = None
        if mapping is None:
            spare = self._take(size)
            if spare is not None:
                shm.unlink(spare.path)
                mapping = spare.mapping
            else:
                path = self._spare_path()
                try:
                    mapping = _populated(path, -(-max(size, 1) // _ROUND) * _ROUND)
                finally:
                    shm.unlink(path)
        holder = numpy.frombuffer(mapping, numpy.uint8, count=size)
        weakref.finalize(holder, self._returned.append, mapping).atexit = False
        return memoryview(holder)

    def release(self, path: str) -> None:
        """The object at ``path`` is freed: unmap it here if this writer still maps it."""
        with self._lock:
            mapping = self._mapped.pop(path, None)
        if mapping is not None:
            mapping.close()

    def close(self) -> None:
        """Stop the background thread, unmap what it wrote and remove the spare."""
        with self._lock:
            self._closed = True
            self._adopt_returned()
            spare, self._spare = self._spare, None
            mapped, self._mapped = list(self._mapped.values()), OrderedDict()
            mapped += self._to_close + ([self._recycled] if self._recycled else [])
            self._to_close, self._recycled = [], None
            self._wanted.notify()
        for mapping in mapped:
            mapping.close()
        if spare is not None:
            shm.unlink(spare.path)
            spare.mapping.close()

    def _take(self, size: int) -> _Spare | None:
        with self._lock:
            spare = self._spare
            if spare is None or not _fits(size, spare.size):
                return None
            self._spare = None
            return spare

    def _adopt_returned(self) -> None:
        """Keep the largest pull buffer that came back for the next pull, close the others
        (lock held)."""
        while self._returned:
            back = self._returned.popleft()
            if self._recycled is None or len(back) > len(self._recycled):
                back, self._recycled = self._recycled, back
            if back is not None:
                self._close_later(back)

    def _close_later(self, mapping: mmap.mmap) -> None:
        """Have the background thread unmap ``mapping`` (lock held)."""
        self._to_close.append(mapping)
        self._start()
        self._wanted.notify()

    def _prepare(self, size: int) -> None:
        with self._lock:
            self._want_size = -(-size // _ROUND) * _ROUND
            self._start()
            self._wanted.notify()

    def _keep_mapped(self, path: str, mapping: mmap.mmap) -> None:
        with self._lock:
            self._mapped[path] = mapping
            while len(self._mapped) > _MAX_MAPPED:
                self._close_later(self._mapped.popitem(last=False)[1])

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ember-spare-segment",
                                            daemon=True)
            self._thread.start()

    def _idle(self) -> bool:
        return not self._to_close and (self._want_size == 0 or (
            self._spare is not None and self._spare.size == self._want_size))

    def _run(self) -> None:
        # Background work: the spare thread yields the CPU to the process's other threads and
        # to other processes (a thread is a task of its own to setpriority on Linux).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            with self._lock:
                while not self._closed and self._idle():
                    self._wanted.wait()
                if self._closed:
                    return
                to_close, self._to_close = self._to_close, []
                size, old = self._want_size, self._spare
                if old is not None and old.size == size:
                    size = 0
                elif old is not None:
                    self._spare = None
            for mapping in to_close:
                mapping.close()
            if size == 0:
                continue
            if old is not None:
                shm.unlink(old.path)
                old.mapping.close()
            spare = self._allocate(size)
            with self._lock:
                if spare is None:
                    self._want_size = 0
                elif self._closed:
                    shm.unlink(spare.path)
                    return
                else:
                    self._spare = spare

    def _spare_path(self) -> str:
        return _spare_path(os.getpid(), str(next(self._names)))

    def _allocate(self, size: int) -> _Spare | None:
        path = self._spare_path()
        try:
            return _Spare(path, size, _populated(path, size))
        except OSError:
            return None


def remove_spares(pid: int) -> None:
    """Unlink the spares that process ``pid`` of this session left when it died."""
    for path in glob.glob(_spare_path(pid, "*")):
        shm.unlink(path)


def _spare_path(pid: int, name: str) -> str:
    """The path of spare ``name`` of process ``pid`` (a glob pattern for ``name="*"``)."""
    return shm.segment_path("spare", f"{pid:x}_{name}")


def _fits(size: int, capacity: int) -> bool:
    """Whether ``size`` bytes should go into a buffer of ``capacity`` (not too large either)."""
    return size <= capacity <= size + size // 4 + _ROUND


def _populated(path: str, size: int) -> mmap.mmap:
    """Create segment ``path`` of ``size`` bytes, allocated and mapped with its pages populated
    (Note [spare segments]), neither step holding the GIL (a spare made in the background must
    not stall the process's other threads: ``MAP_POPULATE`` would hold it for ~10 ms per
    100 MB); nothing is left behind if that fails."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        mapping = mmap.mmap(fd, size)
        shm.populate(mapping)
        return mapping
    except BaseException:
        shm.unlink(path)
        raise
    finally:
        os.close(fd)

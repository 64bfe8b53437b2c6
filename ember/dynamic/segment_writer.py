"""Writing large objects into new shared-memory segments at memory-copy speed.

Note [spare segments]: the first touch of a fresh tmpfs page costs a fault and a zeroing, which
makes a put into a new, mmap'd segment run at a third of memcpy speed. So the writer keeps one
*spare* segment the size of its last large put, prepared by a background thread between puts:
allocated (posix_fallocate) and mapped with its pages populated. The next put that fits renames
the spare to the object's name and copies into the mapping at full memcpy speed. The mapping
stays open until the object is freed (``release``, where unmapping costs the freeing thread a
few ms instead of the put, and cannot stall a concurrent mmap of a reader of this process), or
until more than ``_MAX_MAPPED`` are open (a worker's task results are freed by their owner), then
the oldest is closed by the background thread. Without a fitting spare the writer pwrites. A spare was never named as an object, so nobody can see
its reuse. Spares live under the session prefix, so the node manager's cleanup removes them too.
"""

from __future__ import annotations

import itertools
import mmap
from collections import OrderedDict
import os
import threading

from ember.dynamic import shm
from ember.dynamic.serialization import Serialized

SPARE_MIN = 8 * 1024 * 1024
_ROUND = 1024 * 1024
_MAX_MAPPED = 2
_POPULATE = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


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

    def new_mapping(self, path: str, size: int) -> memoryview:
        """A writable view of ``size`` bytes of a new segment ``path``, its pages populated: a
        spare when one fits (Note [spare segments]), else a new one. The mapping lives as long
        as views of it do; a pull fills it straight from a socket (object_transfer.py)."""
        spare = self._take(size)
        if spare is not None:
            os.rename(spare.path, path)
            mapping = spare.mapping
        else:
            mapping = _populated(path, max(size, 1))
        if size >= SPARE_MIN:
            self._prepare(size)
        return memoryview(mapping)[:size]

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
            spare, self._spare = self._spare, None
            mapped, self._mapped = list(self._mapped.values()), OrderedDict()
            self._wanted.notify()
        for mapping in mapped:
            mapping.close()
        if spare is not None:
            shm.unlink(spare.path)
            spare.mapping.close()

    def _take(self, size: int) -> _Spare | None:
        with self._lock:
            spare = self._spare
            if spare is None or not size <= spare.size <= size + size // 4 + _ROUND:
                return None
            self._spare = None
            return spare

    def _prepare(self, size: int) -> None:
        with self._lock:
            self._want_size = -(-size // _ROUND) * _ROUND
            self._start()
            self._wanted.notify()

    def _keep_mapped(self, path: str, mapping: mmap.mmap) -> None:
        with self._lock:
            self._mapped[path] = mapping
            while len(self._mapped) > _MAX_MAPPED:
                self._to_close.append(self._mapped.popitem(last=False)[1])
                self._wanted.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ember-spare-segment",
                                            daemon=True)
            self._thread.start()

    def _idle(self) -> bool:
        return not self._to_close and (self._want_size == 0 or (
            self._spare is not None and self._spare.size == self._want_size))

    def _run(self) -> None:
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

    def _allocate(self, size: int) -> _Spare | None:
        path = shm.segment_path("spare", f"{os.getpid():x}_{next(self._names)}")
        try:
            return _Spare(path, size, _populated(path, size))
        except OSError:
            return None


def _populated(path: str, size: int) -> mmap.mmap:
    """Create segment ``path`` of ``size`` bytes, allocated and mapped with its pages populated
    (Note [spare segments]); nothing is left behind if that fails."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size, flags=_POPULATE)
    except BaseException:
        shm.unlink(path)
        raise
    finally:
        os.close(fd)

"""Writing large objects into new shared-memory segments at memory-copy speed.

Note [spare segments]: the first touch of a fresh tmpfs page costs a fault and a zeroing, which
makes a put into a new, mmap'd segment run at a third of memcpy speed. So the writer pwrites
(no faults in this process), and keeps one *spare* segment the size of its last large put,
allocated with posix_fallocate by a background thread between puts. The next put that fits
renames the spare to the object's name and writes at copy speed. A spare was never mapped or
named as an object before, so nobody can observe its reuse. Spares live under the session
prefix, so the node manager's cleanup removes them too.
"""

from __future__ import annotations

import itertools
import os
import threading

from ember.dynamic import shm
from ember.dynamic.serialization import Serialized

SPARE_MIN = 8 * 1024 * 1024
_ROUND = 1024 * 1024


class SegmentWriter:
    """Creates object segments for one process, with a spare for the next large put."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted = threading.Condition(self._lock)
        self._spare: tuple[str, int] | None = None
        self._want_size = 0
        self._names = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def write(self, path: str, ser: Serialized) -> None:
        """Create segment ``path`` holding the frame of ``ser``."""
        size = ser.frame_size
        spare = self._take(size)
        if spare is not None:
            os.rename(spare, path)
            fd = os.open(path, os.O_RDWR)
        else:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            if spare is None:
                os.ftruncate(fd, size)
            ser.write_to_fd(fd)
        except BaseException:
            os.close(fd)
            shm.unlink(path)
            raise
        os.close(fd)
        if size >= SPARE_MIN:
            self._prepare(size)

    def close(self) -> None:
        """Stop the background thread and remove the spare."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
            self._wanted.notify()
        if spare is not None:
            shm.unlink(spare[0])

    def _take(self, size: int) -> str | None:
        with self._lock:
            if self._spare is None or not size <= self._spare[1] <= size + size // 4 + _ROUND:
                return None
            path, self._spare = self._spare[0], None
            return path

    def _prepare(self, size: int) -> None:
        with self._lock:
            self._want_size = -(-size // _ROUND) * _ROUND
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ember-spare-segment",
                                                daemon=True)
                self._thread.start()
            self._wanted.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (self._want_size == 0 or (
                        self._spare is not None and self._spare[1] == self._want_size)):
                    self._wanted.wait()
                if self._closed:
                    return
                size, old, self._spare = self._want_size, self._spare, None
            if old is not None:
                shm.unlink(old[0])
            path = shm.segment_path("spare", f"{os.getpid():x}_{next(self._names)}")
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                try:
                    os.posix_fallocate(fd, 0, size)
                finally:
                    os.close(fd)
            except OSError:
                shm.unlink(path)
                with self._lock:
                    self._want_size = 0
                continue
            with self._lock:
                if self._closed:
                    shm.unlink(path)
                    return
                self._spare = (path, size)

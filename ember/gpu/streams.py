"""A dedicated CUDA stream for communication, ordered with compute by events; a no-op on CPU."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch


# Note [overlap]
# With overlap on, sends/recvs/collectives of an actor run on one communication stream while its
# methods run on the compute (current) stream. Two events keep them honest: before communicating,
# the communication stream waits for what compute has queued so far (the tensors it is about to
# send); before computing on received tensors, compute waits for what communication has queued.
# Tensors made on one stream and used on the other are marked with record_stream so the caching
# allocator does not reuse their memory early. One event per direction suffices: a wait captures
# the event's latest record at the time of the call.
class CommStream:
    """Orders communication after compute and compute after communication (see Note [overlap])."""

    def __init__(self, device: str | int | torch.device | None = None, overlap: bool = False) -> None:
        self._comm: torch.cuda.Stream | None = None
        self._device: torch.device | None = None
        if overlap and torch.cuda.is_available():
            if device is None:
                device = torch.device("cuda", torch.cuda.current_device())
            device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
            if device.type == "cuda":
                self._device = device
                self._comm = torch.cuda.Stream(device=device)
                self._compute_done = torch.cuda.Event()
                self._comm_done = torch.cuda.Event()

    @property
    def enabled(self) -> bool:
        """Whether a separate communication stream is in use."""
        return self._comm is not None

    @property
    def stream(self) -> "torch.cuda.Stream | None":
        """The communication stream, or None when disabled."""
        return self._comm

    def after_compute(self) -> None:
        """Make the communication stream wait for the work compute has queued so far."""
        if self._comm is not None:
            self._compute_done.record(torch.cuda.current_stream(self._device))
            self._comm.wait_event(self._compute_done)

    def before_compute(self, tensors: Iterable[torch.Tensor] = ()) -> None:
        """Make compute wait for queued communication; ``tensors`` made on the comm stream become usable."""
        if self._comm is not None:
            compute = torch.cuda.current_stream(self._device)
            self._comm_done.record(self._comm)
            compute.wait_event(self._comm_done)
            for tensor in tensors:
                if tensor.is_cuda:
                    tensor.record_stream(compute)

    def communicating(self, tensors: Iterable[torch.Tensor] = ()) -> AbstractContextManager[None]:
        """A context that runs its body on the communication stream, after compute (no-op when disabled)."""
        if self._comm is None:
            return nullcontext()
        return self._on_comm(tensors)

    @contextmanager
    def _on_comm(self, tensors: Iterable[torch.Tensor]) -> Iterator[None]:
        """Switch to the communication stream; ``tensors`` from compute stay alive until it is done."""
        self.after_compute()
        for tensor in tensors:
            if tensor.is_cuda:
                tensor.record_stream(self._comm)
        with torch.cuda.stream(self._comm):
            yield

    def synchronize(self) -> None:
        """Block the host until queued communication is done (teardown)."""
        if self._comm is not None:
            self._comm.synchronize()


_process_streams: dict[tuple[bool, int], CommStream] = {}
_process_streams_lock = threading.Lock()


def process_comm_stream(overlap: bool) -> CommStream:
    """This process's CommStream for its current CUDA device, shared by every graph (disabled
    without ``overlap`` or without CUDA)."""
    device = torch.cuda.current_device() if overlap and torch.cuda.is_available() else -1
    with _process_streams_lock:
        stream = _process_streams.get((overlap, device))
        if stream is None:
            stream = _process_streams[(overlap, device)] = CommStream(
                None if device < 0 else device, overlap=overlap)
        return stream

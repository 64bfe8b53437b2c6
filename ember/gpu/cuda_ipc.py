"""CUDA IPC transport: tensors between processes on one GPU through a device buffer shared once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

from ember.exceptions import TensorTransportError
from ember.gpu.tensors import TensorMeta

ALIGNMENT = 256  # bytes; every tensor starts on a boundary that suits any dtype and the copy kernels
_STORAGE_DEVICE_ARG = 6  # position of storage_device in rebuild_cuda_tensor's arguments


# Note [CUDA IPC protocol]
# The writer owns `num_slots` device buffers (slot = seq % num_slots), each with one interprocess
# "ready" event and one "done" event per reader; all are created by the writer, shared once, and
# re-shared only when a slot grows. write(seq): the writer's stream waits every reader's "done"
# event of the slot, copies the tensors in, records "ready", and returns an IpcMessage (plain
# picklable data; it carries a slot's handles only the first time and after growth). read(msg):
# the reader opens new handles, its stream waits "ready", and it gets zero-copy views into the
# slot. release(): the reader records its "done" event on its stream. Neither side blocks the host.
#
# Host-side contract (the CPU channel that carries the messages gives it): write(n) may start only
# after every reader's release() of message n - num_slots returned. A ring channel with the same
# number of slots whose readers ack a value after release() does exactly this. Without it the
# writer's wait would see an older record of "done" and overwrite a slot still being read.
# The views a reader returns stay valid until its release() (or its next read, which releases);
# clone() them to keep them longer.


@dataclass(frozen=True)
class IpcSlotHandle:
    """The shareable handles of one slot: its buffer (torch's rebuild arguments) and its events."""

    slot: int
    generation: int
    buffer: tuple
    ready_event: bytes
    done_events: tuple[bytes, ...]


@dataclass(frozen=True)
class IpcMessage:
    """One write: where each tensor lies in which slot; picklable and small."""

    seq: int
    slot: int
    generation: int
    gpu_uuid: str
    metas: tuple[TensorMeta, ...]
    offsets: tuple[int, ...]
    new_slot: IpcSlotHandle | None = None


def _require_cuda(device: str | int | torch.device | None) -> torch.device:
    """The CUDA device to use, or a clear error on a machine without CUDA."""
    if not torch.cuda.is_available():
        raise TensorTransportError("the CUDA IPC transport needs a CUDA device; use the 'cpu' "
                                   "transport for CPU tensors")
    if device is None:
        return torch.device("cuda", torch.cuda.current_device())
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type != "cuda":
        raise TensorTransportError(f"the CUDA IPC transport needs a CUDA device, got {device}")
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def _gpu_uuid(device: torch.device) -> str:
    """The physical GPU's UUID, the same in every process whatever CUDA_VISIBLE_DEVICES says."""
    return str(torch.cuda.get_device_properties(device).uuid)


def _view(buffer: torch.Tensor, offset: int, meta: TensorMeta) -> torch.Tensor:
    """The tensor described by ``meta`` at byte ``offset`` of a uint8 ``buffer``."""
    return buffer[offset:offset + meta.nbytes].view(meta.dtype).view(meta.shape)


def _layout(metas: Sequence[TensorMeta]) -> tuple[tuple[int, ...], int]:
    """Aligned byte offsets of ``metas`` packed in one buffer, and the bytes needed."""
    offsets, end = [], 0
    for meta in metas:
        offsets.append(end)
        end += -(-meta.nbytes // ALIGNMENT) * ALIGNMENT
    return tuple(offsets), end


class CudaIpcWriter:
    """The writing end: copies tensors into shared device buffers (see Note [CUDA IPC protocol])."""

    def __init__(self, device: str | int | torch.device | None = None, num_readers: int = 1,
                 num_slots: int = 1, initial_bytes: int = 0,
                 stream: "torch.cuda.Stream | None" = None) -> None:
        if num_readers < 1 or num_slots < 1:
            raise ValueError(f"need at least one reader and one slot, got {num_readers} and {num_slots}")
        self._device = _require_cuda(device)
        self._uuid = _gpu_uuid(self._device)
        self._num_readers = num_readers
        self._stream = stream
        self._buffers: list[torch.Tensor | None] = [None] * num_slots
        self._generations = [0] * num_slots
        self._ready: list[torch.cuda.Event | None] = [None] * num_slots
        self._done: list[list[torch.cuda.Event]] = [[] for _ in range(num_slots)]
        self._unannounced: dict[int, IpcSlotHandle] = {}  # slot -> handles the readers lack
        self._seq = 0
        self._closed = False
        if initial_bytes > 0:
            for slot in range(num_slots):
                self._allocate(slot, initial_bytes)

    @property
    def device(self) -> torch.device:
        """The GPU the shared buffers live on."""
        return self._device

    def capacity(self, slot: int = 0) -> int:
        """Bytes of ``slot``'s buffer (0 before its first write)."""
        buffer = self._buffers[slot]
        return 0 if buffer is None else buffer.numel()

    def write(self, tensors: Sequence[torch.Tensor]) -> IpcMessage:
        """Copy ``tensors`` into the next slot on the writer's stream and describe them for the readers."""
        if self._closed:
            raise TensorTransportError("write on a closed CUDA IPC writer")
        metas = []
        for i, tensor in enumerate(tensors):
            if tensor.device != self._device:
                raise TensorTransportError(f"tensor {i} is on {tensor.device} but this CUDA IPC "
                                           f"channel carries tensors of {self._device}")
            metas.append(TensorMeta.of(tensor))
        offsets, needed = _layout(metas)
        slot = self._seq % len(self._buffers)
        with torch.cuda.device(self._device):
            if self.capacity(slot) < needed:
                # growth: 1.5x so that slowly growing values do not re-share on every write
                self._allocate(slot, max(needed, self.capacity(slot) * 3 // 2))
            stream = self._stream or torch.cuda.current_stream(self._device)
            current = torch.cuda.current_stream(self._device)
            buffer = self._buffers[slot]
            for done in self._done[slot]:
                stream.wait_event(done)
            if stream != current:
                stream.wait_stream(current)  # the tensors were produced on the current stream
            with torch.cuda.stream(stream):
                for tensor, offset, meta in zip(tensors, offsets, metas):
                    _view(buffer, offset, meta).copy_(tensor, non_blocking=True)
                    if stream != current:
                        tensor.record_stream(stream)
                self._ready[slot].record(stream)
        message = IpcMessage(seq=self._seq, slot=slot, generation=self._generations[slot],
                             gpu_uuid=self._uuid, metas=tuple(metas), offsets=offsets,
                             new_slot=self._unannounced.pop(slot, None))
        self._seq += 1
        return message

    def close(self) -> None:
        """Drop the buffers and events; idempotent. Readers must not use their views afterwards."""
        if self._closed:
            return
        self._closed = True
        with torch.cuda.device(self._device):
            (self._stream or torch.cuda.current_stream(self._device)).synchronize()
        self._buffers = [None] * len(self._buffers)
        self._ready = [None] * len(self._ready)
        self._done = [[] for _ in self._done]
        self._unannounced.clear()
        torch.cuda.ipc_collect()  # free blocks whose readers have let go
        torch.cuda.empty_cache()  # and give the freed buffers back to the driver

    def _allocate(self, slot: int, nbytes: int) -> None:
        """Make ``slot``'s buffer (and events, once) and queue their handles for the next message."""
        stream = self._stream or torch.cuda.current_stream(self._device)
        # the old buffer may still be read: wait the readers before its memory returns to the pool
        for done in self._done[slot]:
            stream.wait_event(done)
        with torch.cuda.stream(stream):
            buffer = torch.empty(nbytes, dtype=torch.uint8, device=self._device)
        if self._ready[slot] is None:
            self._ready[slot] = torch.cuda.Event(interprocess=True)
            self._done[slot] = [torch.cuda.Event(interprocess=True) for _ in range(self._num_readers)]
            for event in (self._ready[slot], *self._done[slot]):
                event.record(stream)  # creates the event on this device before its handle is taken
        self._buffers[slot] = buffer
        self._generations[slot] += 1
        _, rebuild_args = reduce_tensor(buffer)
        self._unannounced[slot] = IpcSlotHandle(
            slot=slot, generation=self._generations[slot], buffer=rebuild_args,
            ready_event=self._ready[slot].ipc_handle(),
            done_events=tuple(event.ipc_handle() for event in self._done[slot]))


class CudaIpcReader:
    """The reading end: opens shared slots once and returns zero-copy views (see Note [CUDA IPC protocol])."""

    def __init__(self, device: str | int | torch.device | None = None, reader_index: int = 0,
                 stream: "torch.cuda.Stream | None" = None) -> None:
        self._device = _require_cuda(device)
        self._uuid = _gpu_uuid(self._device)
        self._index = reader_index
        self._stream = stream
        self._slots: dict[int, tuple[int, torch.Tensor, torch.cuda.Event, torch.cuda.Event]] = {}
        self._held: int | None = None
        self._closed = False

    def read(self, message: IpcMessage) -> list[torch.Tensor]:
        """Views of the tensors of ``message``, ordered after the writer's copy on the reader's stream."""
        if self._closed:
            raise TensorTransportError("read on a closed CUDA IPC reader")
        self.release()  # the previous value's views end here, as Note [CUDA IPC protocol] says
        if message.gpu_uuid != self._uuid:
            raise TensorTransportError(f"CUDA IPC writer is on GPU {message.gpu_uuid} but this reader "
                                       f"is on {self._uuid}; use the 'nccl' transport across GPUs")
        with torch.cuda.device(self._device):
            if message.new_slot is not None:
                self._open(message.new_slot)
            entry = self._slots.get(message.slot)
            if entry is None or entry[0] != message.generation:
                raise TensorTransportError(
                    f"message {message.seq} uses slot {message.slot} generation {message.generation}, "
                    f"but this reader has {None if entry is None else entry[0]}: a message that "
                    f"announced the slot's buffer was not delivered to this reader")
            _, buffer, ready, _ = entry
            (self._stream or torch.cuda.current_stream(self._device)).wait_event(ready)
            self._held = message.slot
            return [_view(buffer, offset, meta) for offset, meta in zip(message.offsets, message.metas)]

    def release(self) -> None:
        """Give the slot of the last read back to the writer, once the reader's stream is done with it."""
        if self._held is None:
            return
        _, _, _, done = self._slots[self._held]
        with torch.cuda.device(self._device):
            done.record(self._stream or torch.cuda.current_stream(self._device))
        self._held = None

    def close(self) -> None:
        """Release and drop every opened buffer and event; idempotent."""
        if self._closed:
            return
        self.release()
        self._closed = True
        with torch.cuda.device(self._device):
            (self._stream or torch.cuda.current_stream(self._device)).synchronize()
        self._slots.clear()

    def _open(self, handle: IpcSlotHandle) -> None:
        """Map the writer's buffer and events of one slot into this process."""
        if self._index >= len(handle.done_events):
            raise TensorTransportError(f"reader index {self._index} but the writer has "
                                       f"{len(handle.done_events)} readers")
        args = list(handle.buffer)
        args[_STORAGE_DEVICE_ARG] = self._device.index  # the same GPU may have another index here
        buffer = rebuild_cuda_tensor(*args)
        ready = torch.cuda.Event.from_ipc_handle(self._device, handle.ready_event)
        done = torch.cuda.Event.from_ipc_handle(self._device, handle.done_events[self._index])
        self._slots[handle.slot] = (handle.generation, buffer, ready, done)

"""A channel for values that hold tensors: metadata over a CPU channel, tensor data over a GPU transport.

``TensorChannel`` wraps the CPU channel it is given (shared memory between processes) and a
``TensorEdge`` that says, per reader, how the tensors travel:

* ``"nccl"``: ``Communicator.send`` / ``recv`` of the edge's group (NCCL on GPUs, gloo on CPU);
* ``"ipc"``:  a CUDA IPC buffer shared once (``CudaIpcWriter`` / ``CudaIpcReader``);
* ``"cpu"``:  host copies inside the CPU message (a reader without the GPU, such as the driver).

Note [tensor messages]
~~~~~~~~~~~~~~~~~~~~~~
A write splits the value with ``split_tensors``: the tensors on the edge's device are taken out
and the rest (the skeleton) travels pickled in one ``TensorPacket`` over the CPU channel, with
the tensors' metadata (only their count when the type hint is static: the reader builds the
metadata from the hint), the IPC message for IPC readers and host copies for CPU readers. Only
then does the writer send the tensors to each "nccl" reader, in reader order; a reader reads the
packet first, so it knows what to receive. The writer checks the type hint before writing
anything, so a mismatch raises ``TensorTransportError`` in the writer (which the graph turns into
an error value) and never leaves a reader waiting for a tensor of another shape.

Note [IPC slots]
~~~~~~~~~~~~~~~~
The CUDA IPC protocol (Note [CUDA IPC protocol] in cuda_ipc.py) needs the writer's write(n) to
start after every reader's release() of message n - S, with S the number of IPC slots. A reader
here releases its previous IPC slot before it reads the next packet, and a shared-memory reader
acks a packet (plain data) as soon as it reads it; with K CPU slots, write(n) starts only after
every reader read packet n - K, hence released message n - K - 1. So the writer takes S = K + 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ember.channels.interface import Channel, ChannelReader, ChannelType, ChannelWriter
from ember.exceptions import ChannelError, TensorTransportError
from ember.gpu.communicator import Communicator, communicator_registry
from ember.gpu.cuda_ipc import CudaIpcReader, CudaIpcWriter, IpcMessage
from ember.gpu.streams import CommStream, process_comm_stream
from ember.gpu.tensors import (CPU, IPC, NCCL, TensorEdge, TensorMeta, merge_tensors, split_tensors)

class TensorPacket(NamedTuple):
    """What travels over the CPU channel (Note [tensor messages])."""

    skeleton: Any
    metas: tuple[TensorMeta, ...] | int      # an int (the count) when the hint is static
    ipc: IpcMessage | None
    host: tuple[torch.Tensor, ...] | None


class TensorChannel(Channel):
    """A CPU channel plus a GPU transport for the tensors of its values; pickles with both."""

    def __init__(self, cpu: Channel, edge: TensorEdge) -> None:
        if len(edge.transports) != cpu.num_readers:
            raise ValueError(f"{len(edge.transports)} reader transports for a channel with "
                             f"{cpu.num_readers} readers")
        self.cpu = cpu
        self.edge = edge
        self.num_readers = cpu.num_readers
        self.num_slots = cpu.num_slots

    def writer(self) -> "TensorChannelWriter":
        """The writing end (in the process that computes the value)."""
        return TensorChannelWriter(self)

    def rendezvous_readers(self) -> tuple[int, ...]:
        """The CPU channel's (Note [tcp channel rendezvous] in channels/tcp.py)."""
        return self.cpu.rendezvous_readers()

    def prepare_reader(self, index: int) -> Any:
        return self.cpu.prepare_reader(index)

    def set_reader_address(self, index: int, address: Any) -> None:
        self.cpu.set_reader_address(index, address)

    def reader(self, index: int = 0) -> "TensorChannelReader":
        """The reading end of reader ``index``."""
        return TensorChannelReader(self, index)

    def close(self) -> None:
        """Close the CPU channel, which wakes every reader and writer."""
        self.cpu.close()

    def destroy(self) -> None:
        """Close and free the CPU channel (GPU buffers belong to the handles' processes)."""
        self.cpu.destroy()

    def __repr__(self) -> str:
        return f"TensorChannel({self.cpu!r}, {'/'.join(self.edge.transports)})"


def _communicator(edge: TensorEdge) -> Communicator:
    """The live communicator of the edge's group in this process."""
    comm = communicator_registry.get(edge.group)
    if comm is None:
        raise TensorTransportError(f"no communicator {edge.group!r} in this process for "
                                   f"{edge.where}; the graph joins its groups at compile time")
    return comm


def _stream(edge: TensorEdge) -> CommStream:
    return process_comm_stream(edge.overlap)


class TensorChannelWriter(ChannelWriter):
    """Writes a value: packet over the CPU channel, then tensors over the GPU transports."""

    def __init__(self, channel: TensorChannel) -> None:
        edge = self._edge = channel.edge
        self._cpu = channel.cpu.writer()
        self._device = edge.device
        self._peers = [rank for t, rank in zip(edge.transports, edge.reader_ranks) if t == NCCL]
        self._comm = _communicator(edge) if self._peers else None
        self._num_ipc = edge.transports.count(IPC)
        self._num_ipc_slots = channel.num_slots + 1   # Note [IPC slots]
        self._ipc: CudaIpcWriter | None = None
        self._host = CPU in edge.transports
        self._stream = _stream(edge)

    def attach(self) -> None:
        self._cpu.attach()

    def write(self, value: Any, timeout: float | None = None) -> None:
        """Send ``value`` to every reader (Note [tensor messages])."""
        device = self._device
        skeleton, tensors = split_tensors(value, lambda t: t.device.type == device)
        hint = self._edge.hint
        if hint is not None:
            for i, tensor in enumerate(tensors):
                hint.check(tensor, f"{self._edge.where} tensor {i}")
        metas = (len(tensors) if hint is not None and hint.static
                 else tuple(TensorMeta.of(t) for t in tensors))
        ipc = host = None
        if tensors and self._num_ipc:
            ipc = self._ipc_writer().write(tensors)
        if tensors and self._host:
            host = tuple(t.cpu() for t in tensors)
        self._cpu.write(TensorPacket(skeleton, metas, ipc, host), timeout)
        if tensors and self._peers:
            self._send(tensors)

    def _send(self, tensors: list[torch.Tensor]) -> None:
        """Send every tensor to every "nccl" reader; a failure breaks the channel for good."""
        comm = self._comm
        with self._stream.communicating(tensors):
            for peer in self._peers:
                try:
                    for tensor in tensors:
                        comm.send(tensor, peer)
                except TensorTransportError as exc:
                    raise ChannelError(f"sending {self._edge.where} to rank {peer} failed: "
                                       f"{exc}") from exc

    def _ipc_writer(self) -> CudaIpcWriter:
        if self._ipc is None:
            self._ipc = CudaIpcWriter(num_readers=self._num_ipc, num_slots=self._num_ipc_slots,
                                      stream=self._stream.stream)
        return self._ipc

    def close(self) -> None:
        """Close the whole channel."""
        if self._ipc is not None:
            self._ipc.close()
        self._cpu.close()


class TensorChannelReader(ChannelReader):
    """Reads a value: the packet from the CPU channel, then its tensors from this reader's transport."""

    def __init__(self, channel: TensorChannel, index: int) -> None:
        edge = self._edge = channel.edge
        self._cpu = channel.cpu.reader(index)
        transport = edge.transports[index]
        self._comm = _communicator(edge) if transport == NCCL else None
        self._peer = edge.writer_rank
        self._ipc_index = edge.transports[:index].count(IPC)
        self._ipc: CudaIpcReader | None = None
        self._stream = _stream(edge)
        self._tensors = {CPU: self._host, IPC: self._from_ipc, NCCL: self._recv}[transport]

    def attach(self) -> None:
        self._cpu.attach()

    def read(self, timeout: float | None = None) -> Any:
        """Return the next value with its tensors in place (Note [IPC slots] for the order)."""
        if self._ipc is not None:
            self._ipc.release()
        packet = self._cpu.read(timeout)
        if not packet.metas:
            return packet.skeleton
        return merge_tensors(packet.skeleton, self._tensors(packet))

    @staticmethod
    def _host(packet: TensorPacket) -> tuple[torch.Tensor, ...]:
        """The host copies that came inside the packet (a "cpu" reader)."""
        return packet.host

    def _from_ipc(self, packet: TensorPacket) -> list[torch.Tensor]:
        """The tensors of the writer's CUDA IPC buffer (an "ipc" reader)."""
        tensors = self._ipc_reader().read(packet.ipc)
        self._stream.before_compute(tensors)
        return tensors

    def _recv(self, packet: TensorPacket) -> list[torch.Tensor]:
        """The tensors received from the writer's rank (an "nccl" reader)."""
        metas = packet.metas
        if isinstance(metas, int):
            metas = [self._edge.hint.meta(self._edge.device)] * metas
        with self._stream.communicating():
            tensors = [self._comm.recv(meta, self._peer) for meta in metas]
        self._stream.before_compute(tensors)
        return tensors

    def _ipc_reader(self) -> CudaIpcReader:
        if self._ipc is None:
            self._ipc = CudaIpcReader(reader_index=self._ipc_index, stream=self._stream.stream)
        return self._ipc

    def release(self) -> None:
        """Give back the IPC slot of the value last read."""
        if self._ipc is not None:
            self._ipc.release()

    def close(self) -> None:
        """Close the whole channel."""
        if self._ipc is not None:
            self._ipc.close()
        self._cpu.close()


class TensorType(ChannelType):
    """The type of a hinted edge: ``inner``'s channel for the packets, the edge's GPU
    transports for the tensors (Note [channel choice] in ember/engine/channel_setup.py)."""

    def __init__(self, inner: ChannelType, edge: TensorEdge) -> None:
        self.inner = inner
        self.edge = edge

    def create_channel(self, num_readers: int = 1, *, num_slots: int = 1) -> TensorChannel:
        """A TensorChannel over a new channel of the inner type."""
        return TensorChannel(self.inner.create_channel(num_readers, num_slots=num_slots),
                             self.edge)

    def __repr__(self) -> str:
        return f"TensorType({self.inner!r}, {'/'.join(self.edge.transports)})"

"""CUDA IPC between two processes on one GPU; on CPU machines only the clean refusal is tested."""

from __future__ import annotations

import multiprocessing as mp
import traceback

import pytest

torch = pytest.importorskip("torch")

from ember.exceptions import TensorTransportError  # noqa: E402
from ember.gpu.cuda_ipc import ALIGNMENT, CudaIpcReader, CudaIpcWriter, _layout, _view  # noqa: E402
from ember.gpu.tensors import TensorMeta  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL, LARGE = 256, 100 * 1024 * 1024 // 4  # float32 elements: 1 KiB and 100 MiB


def _values(step: int) -> list:
    """The tensors written at ``step``: sizes that make the buffer grow, then shrink back."""
    n = LARGE if step in (3, 4) else SMALL + step
    base = torch.arange(n, dtype=torch.float32, device="cuda") + step
    return [base, (base[:7] * 2).to(torch.int16).reshape(7, 1), torch.tensor(step, device="cuda")]


def _reader(conn, reader_index: int, steps: int) -> None:
    """Read ``steps`` messages, compare every value with the expected one, ack after release; close."""
    try:
        reader = CudaIpcReader(reader_index=reader_index)
        for step in range(steps):
            views = reader.read(conn.recv())
            same = all(torch.equal(got, want) for got, want in zip(views, _values(step)))
            reader.release()
            conn.send(("ok" if same else f"values differ at step {step}", None))
        reader.close()
        conn.send(("ok", "closed"))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


def _check(reply: tuple) -> None:
    """Fail with the reader's traceback or mismatch."""
    status, error = reply
    assert status == "ok", error or status


def _writer(readers: list, result, steps: int, num_slots: int, initial_bytes: int) -> None:
    """Write ``steps`` values to the reader pipes, honouring the ack contract; report memory facts."""
    try:
        writer = CudaIpcWriter(num_readers=len(readers), num_slots=num_slots,
                               initial_bytes=initial_bytes)
        pending = 0
        for step in range(steps):
            if pending == num_slots:  # write(n) only after every release(n - num_slots)
                for conn in readers:
                    _check(conn.recv())
                pending -= 1
            message = writer.write(_values(step))
            for conn in readers:
                conn.send(message)
            pending += 1
        for _ in range(pending + 1):  # the last acks, then each reader's "closed"
            for conn in readers:
                _check(conn.recv())
        capacity = writer.capacity()
        torch.cuda.synchronize()
        before = torch.cuda.memory_reserved()
        writer.close()
        writer.close()  # idempotent
        torch.cuda.empty_cache()
        result.send(("ok", {"capacity": capacity, "freed": before - torch.cuda.memory_reserved()}))
    except BaseException:
        result.send(("error", traceback.format_exc()))


def _run_pair(steps: int, num_slots: int, readers: int, initial_bytes: int = 0) -> dict:
    """Run a writer process and ``readers`` reader processes; the writer's report."""
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe() for _ in range(readers)]
    result_out, result_in = ctx.Pipe(duplex=False)
    procs = [ctx.Process(target=_reader, args=(reader_end, i, steps), daemon=True)
             for i, (_, reader_end) in enumerate(pipes)]
    procs.append(ctx.Process(target=_writer, daemon=True,
                             args=([writer_end for writer_end, _ in pipes], result_in, steps,
                                   num_slots, initial_bytes)))
    for proc in procs:
        proc.start()
    try:
        assert result_out.poll(150), "the writer did not finish in 150 s"
        status, report = result_out.recv()
        assert status == "ok", report
        return report
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


@needs_cuda
@pytest.mark.timeout(180)
def test_small_and_100mb_tensors_arrive_equal_and_the_buffer_grows():
    report = _run_pair(steps=6, num_slots=1, readers=1)
    assert report["capacity"] >= LARGE * 4
    assert report["freed"] >= LARGE * 4  # teardown gives the shared buffer back


@needs_cuda
@pytest.mark.timeout(180)
def test_two_slots_two_readers_preallocated():
    _run_pair(steps=6, num_slots=2, readers=2, initial_bytes=4096)


@needs_cuda
@pytest.mark.timeout(60)
def test_wrong_device_tensor_is_refused():
    writer = CudaIpcWriter()
    with pytest.raises(TensorTransportError, match="carries tensors of cuda"):
        writer.write([torch.zeros(2)])
    writer.close()
    with pytest.raises(TensorTransportError, match="closed"):
        writer.write([torch.zeros(2, device="cuda")])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.timeout(10)
def test_without_cuda_the_transport_refuses_cleanly():
    with pytest.raises(TensorTransportError, match="needs a CUDA device"):
        CudaIpcWriter()
    with pytest.raises(TensorTransportError, match="needs a CUDA device"):
        CudaIpcReader()


@pytest.mark.timeout(10)
def test_layout_aligns_every_tensor():
    metas = [TensorMeta((3,), torch.float32, "cuda:0"), TensorMeta((0,), torch.int8, "cuda:0"),
             TensorMeta((), torch.float64, "cuda:0"), TensorMeta((300,), torch.uint8, "cuda:0")]
    offsets, total = _layout(metas)
    assert offsets == (0, ALIGNMENT, ALIGNMENT, 2 * ALIGNMENT) and total == 4 * ALIGNMENT


@pytest.mark.timeout(10)
def test_packing_round_trips_every_dtype_and_shape():
    # the writer's copy-in and the reader's views, run on a CPU byte buffer
    values = [torch.arange(6.0).reshape(2, 3).t(), torch.tensor(True),
              torch.zeros(0, 3, dtype=torch.int64), torch.tensor(3.5, dtype=torch.float64),
              torch.randn(5, dtype=torch.complex64), torch.ones(3, dtype=torch.bfloat16)]
    metas = [TensorMeta.of(value) for value in values]
    offsets, total = _layout(metas)
    buffer = torch.empty(total, dtype=torch.uint8)
    for value, offset, meta in zip(values, offsets, metas):
        _view(buffer, offset, meta).copy_(value)
    for value, offset, meta in zip(values, offsets, metas):
        assert torch.equal(_view(buffer, offset, meta), value)

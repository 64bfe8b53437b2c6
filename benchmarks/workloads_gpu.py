"""GPU workloads: tensors between actors and allreduce inside a compiled graph; skip without CUDA."""

from __future__ import annotations

import importlib
import multiprocessing
import statistics
import time
from types import ModuleType
from typing import Any

from benchmarks.harness import (
    GB,
    MiB,
    Config,
    Row,
    compiled,
    dag_module,
    latency_row,
    sample_latencies,
    spawned,
    workload,
)

GPU_ACTOR = {"num_gpus": 0.5, "num_cpus": 0}  # two actors share one GPU when only one exists


def cuda_missing() -> str | None:
    """Why GPU rows cannot run here, or None when torch sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return "skipped: no CUDA (torch not installed)"
    return None if torch.cuda.is_available() else "skipped: no CUDA"


def skipped(names: tuple[str, ...], units: tuple[str, ...], why: str) -> list[Row]:
    """Placeholder rows with no value and the reason in `note`."""
    return [Row(name, unit, None, note=why) for name, unit in zip(names, units)]


def collective_module(rt: ModuleType) -> ModuleType:
    """Where allreduce lives: ember.dag.collective, or ray.experimental.collective."""
    if rt.__name__ == "ray":
        return importlib.import_module("ray.experimental.collective")
    return importlib.import_module(f"{rt.__name__}.dag.collective")


class GpuWorker:
    """An actor holding one CUDA buffer: it produces it, or consumes a tensor it is sent."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.buf = None

    def ready(self) -> bool:
        """Answer once the actor is up (and CUDA is initialised)."""
        self.torch.zeros(1, device="cuda")
        return True

    def produce(self, nbytes: int) -> Any:
        """A CUDA float32 tensor of nbytes (allocated once, reused every execution)."""
        numel = max(1, nbytes // 4)
        if self.buf is None or self.buf.numel() != numel:
            self.buf = self.torch.ones(numel, dtype=self.torch.float32, device="cuda")
        return self.buf

    def consume(self, tensor: Any) -> int:
        """Wait for the tensor's data to be on this GPU; return its size in bytes."""
        self.torch.cuda.synchronize()
        return tensor.numel() * tensor.element_size()


def p2p_dag(rt: ModuleType, sender: Any, receiver: Any) -> Any:
    """InputNode(nbytes) -> sender.produce -> (GPU transport "auto") -> receiver.consume."""
    with dag_module(rt).InputNode() as inp:
        tensor = sender.produce.bind(inp).with_tensor_transport("auto")
        return receiver.consume.bind(tensor)


@workload("gpu_p2p_small", "gpu_p2p_100mb")
def gpu_p2p(rt: ModuleType, cfg: Config) -> list[Row]:
    """A CUDA tensor between two actors through a compiled graph: 100 B (µs) and 100 MiB (GB/s)."""
    if why := cuda_missing():
        return skipped(("gpu_p2p_small", "gpu_p2p_100mb"), ("us", "GB/s"), why)
    with spawned(rt, GpuWorker, 2, **GPU_ACTOR) as (sender, receiver):
        with compiled(p2p_dag(rt, sender, receiver)) as cdag:
            small = sample_latencies(
                lambda: rt.get(cdag.execute(100)), cfg.n(200, 20), cfg.n(2000, 200)
            )
        with compiled(p2p_dag(rt, sender, receiver)) as cdag:
            big = sample_latencies(
                lambda: rt.get(cdag.execute(100 * MiB)), cfg.n(5, 2), cfg.n(50, 10)
            )
    big_row = latency_row("gpu_p2p_100mb", big)
    big_row.unit, big_row.value = "GB/s", round(100 * MiB / GB / (big_row.p50_us * 1e-6), 2)
    return [latency_row("gpu_p2p_small", small), big_row]


@workload("gpu_allreduce_100mb", "torch_allreduce_100mb")
def gpu_allreduce_100mb(rt: ModuleType, cfg: Config) -> list[Row]:
    """allreduce of a 100 MiB tensor across 2 actors in a compiled graph (GB/s), beside torch."""
    names, units = ("gpu_allreduce_100mb", "torch_allreduce_100mb"), ("GB/s", "GB/s")
    if why := cuda_missing():
        return skipped(names, units, why)
    allreduce = collective_module(rt).allreduce
    dag_mod = dag_module(rt)
    with spawned(rt, GpuWorker, 2, **GPU_ACTOR) as workers:
        with dag_mod.InputNode() as inp:
            reduced = allreduce.bind([w.produce.bind(inp) for w in workers])
            dag = dag_mod.MultiOutputNode([w.consume.bind(t) for w, t in zip(workers, reduced)])
        with compiled(dag) as cdag:
            samples = sample_latencies(
                lambda: rt.get(cdag.execute(100 * MiB)), cfg.n(5, 2), cfg.n(30, 5)
            )
    row = latency_row(names[0], samples)
    row.unit, row.value = "GB/s", round(100 * MiB / GB / (row.p50_us * 1e-6), 2)
    row.note = "algbw = bytes / p50 time; busbw equals algbw for 2 ranks"
    return [row, torch_allreduce_reference(cfg)]


def _torch_allreduce_rank(rank: int, port: int, iters: int, out: Any) -> None:
    """One rank of the bare torch.distributed NCCL allreduce reference."""
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    buf = torch.ones(100 * MiB // 4, dtype=torch.float32, device="cuda")
    times = []
    for i in range(iters + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dist.all_reduce(buf)
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(statistics.median(times))
    dist.destroy_process_group()


def torch_allreduce_reference(cfg: Config) -> Row:
    """Bare torch.distributed NCCL allreduce of 100 MiB between 2 processes on 2 GPUs; GB/s."""
    import socket

    import torch

    if torch.cuda.device_count() < 2:
        return Row("torch_allreduce_100mb", "GB/s", None,
                   note="skipped: needs 2 GPUs (NCCL cannot put two ranks on one GPU)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_torch_allreduce_rank, args=(r, port, cfg.n(30, 5), out))
             for r in range(2)]
    for p in procs:
        p.start()
    seconds = out.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
    return Row("torch_allreduce_100mb", "GB/s", round(100 * MiB / GB / seconds, 2),
               note="reference: bare torch.distributed NCCL, 2 GPUs")

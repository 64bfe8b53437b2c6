"""GPU workloads: tensors between actors and allreduce inside a compiled graph (skip without CUDA),
and their CPU twins over gloo, which run everywhere."""

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
CPU_ACTOR = {"num_cpus": 0}


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

    def d2d_copy_seconds(self, nbytes: int, iters: int, to_host: bool = False) -> float:
        """Median seconds of a plain copy of nbytes on this GPU (to pinned host memory if to_host)."""
        src = self.produce(nbytes)
        dst = (self.torch.empty(src.shape, dtype=src.dtype, pin_memory=True) if to_host
               else self.torch.empty_like(src))
        times = []
        for _ in range(iters + 3):
            self.torch.cuda.synchronize()
            start = time.perf_counter()
            dst.copy_(src)
            self.torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times[3:])


class CpuWorker:
    """GpuWorker's CPU twin: CPU tensors, for the gloo rows."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.buf = None

    def ready(self) -> bool:
        """Answer once the actor is up."""
        return True

    def produce(self, nbytes: int) -> Any:
        """A CPU float32 tensor of nbytes (allocated once, reused every execution)."""
        numel = max(1, nbytes // 4)
        if self.buf is None or self.buf.numel() != numel:
            self.buf = self.torch.ones(numel, dtype=self.torch.float32)
        return self.buf

    def consume(self, tensor: Any) -> int:
        """Return the tensor's size in bytes."""
        return tensor.numel() * tensor.element_size()


def p2p_dag(rt: ModuleType, sender: Any, receiver: Any, transport: str = "auto") -> Any:
    """InputNode(nbytes) -> sender.produce -> (tensor transport) -> receiver.consume."""
    with dag_module(rt).InputNode() as inp:
        tensor = sender.produce.bind(inp).with_tensor_transport(transport)
        return receiver.consume.bind(tensor)


def gbps_row(name: str, samples: list[float], nbytes: int) -> Row:
    """A GB/s row from latency samples of moving nbytes (value = nbytes / p50)."""
    row = latency_row(name, samples)
    row.unit, row.value = "GB/s", round(nbytes / GB / (row.p50_us * 1e-6), 2)
    return row


def allreduce_dag(rt: ModuleType, workers: list[Any]) -> Any:
    """InputNode(nbytes) -> each worker.produce -> allreduce -> each worker.consume."""
    dag_mod = dag_module(rt)
    with dag_mod.InputNode() as inp:
        reduced = collective_module(rt).allreduce.bind([w.produce.bind(inp) for w in workers])
        return dag_mod.MultiOutputNode([w.consume.bind(t) for w, t in zip(workers, reduced)])


@workload("gpu_p2p_small", "gpu_p2p_100mb", "gpu_d2d_copy_100mb")
def gpu_p2p(rt: ModuleType, cfg: Config) -> list[Row]:
    """A CUDA tensor between two actors through a compiled graph: 100 B (µs) and 100 MiB (GB/s),
    beside a plain device-to-device copy of the same 100 MiB in one of the actors."""
    names, units = ("gpu_p2p_small", "gpu_p2p_100mb", "gpu_d2d_copy_100mb"), ("us", "GB/s", "GB/s")
    if why := cuda_missing():
        return skipped(names, units, why)
    with spawned(rt, GpuWorker, 2, **GPU_ACTOR) as (sender, receiver):
        with compiled(p2p_dag(rt, sender, receiver)) as cdag:
            small = sample_latencies(
                lambda: rt.get(cdag.execute(100)), cfg.n(200, 20), cfg.n(2000, 200)
            )
            big = sample_latencies(
                lambda: rt.get(cdag.execute(100 * MiB)), cfg.n(5, 2), cfg.n(50, 10)
            )
        copy_s = rt.get(sender.d2d_copy_seconds.remote(100 * MiB, cfg.n(50, 10)))
    copy = Row(names[2], "GB/s", round(100 * MiB / GB / copy_s, 2),
               note="reference: one tensor.copy_ on the sender's GPU")
    return [latency_row(names[0], small), gbps_row(names[1], big, 100 * MiB), copy]


@workload("gpu_to_driver_100mb", "gpu_d2h_copy_100mb")
def gpu_to_driver_100mb(rt: ModuleType, cfg: Config) -> list[Row]:
    """A 100 MiB CUDA tensor from an actor to the driver through a compiled graph (GB/s), beside
    one device-to-host copy of the same bytes into pinned memory in the actor."""
    names, units = ("gpu_to_driver_100mb", "gpu_d2h_copy_100mb"), ("GB/s", "GB/s")
    if why := cuda_missing():
        return skipped(names, units, why)
    with spawned(rt, GpuWorker, 1, **GPU_ACTOR) as (sender,):
        with dag_module(rt).InputNode() as inp:
            dag = sender.produce.bind(inp).with_tensor_transport("auto")
        with compiled(dag) as cdag:
            samples = sample_latencies(
                lambda: rt.get(cdag.execute(100 * MiB)), cfg.n(3, 1), cfg.n(30, 5)
            )
        copy_s = rt.get(sender.d2d_copy_seconds.remote(100 * MiB, cfg.n(30, 5), True))
    copy = Row(names[1], "GB/s", round(100 * MiB / GB / copy_s, 2),
               note="reference: one tensor.copy_ into pinned host memory in the actor")
    return [gbps_row(names[0], samples, 100 * MiB), copy]


@workload("gpu_memory_after_teardown")
def gpu_memory_after_teardown(rt: ModuleType, cfg: Config) -> list[Row]:
    """Growth of the GPU's used memory (NVML, MiB) across 100 compile/execute/teardown cycles of
    a same-GPU tensor graph, after one warm-up cycle; the target is zero."""
    name = "gpu_memory_after_teardown"
    if why := cuda_missing():
        return skipped((name,), ("MiB",), why)
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)

        def used() -> int:
            return pynvml.nvmlDeviceGetMemoryInfo(handle).used

        cycles = cfg.n(100, 10)
        with spawned(rt, GpuWorker, 2, **GPU_ACTOR) as (sender, receiver):
            for i in range(cycles + 1):
                with compiled(p2p_dag(rt, sender, receiver)) as cdag:
                    rt.get(cdag.execute(1 * MiB))
                if i == 0:
                    start = used()
            growth = used() - start
    finally:
        pynvml.nvmlShutdown()
    return [Row(name, "MiB", round(growth / MiB, 1),
                note=f"NVML used memory after {cycles} cycles minus after the first")]


@workload("cpu_p2p_small_gloo")
def cpu_p2p_small_gloo(rt: ModuleType, cfg: Config) -> list[Row]:
    """A 100-byte CPU tensor between two actors over transport "nccl", which is gloo on CPU; p50 µs."""
    if rt.__name__ != "ember":
        return skipped(("cpu_p2p_small_gloo",), ("us",), "skipped: ember's gloo path only")
    with spawned(rt, CpuWorker, 2, **CPU_ACTOR) as (sender, receiver):
        with compiled(p2p_dag(rt, sender, receiver, "nccl")) as cdag:
            samples = sample_latencies(
                lambda: rt.get(cdag.execute(100)), cfg.n(200, 20), cfg.n(2000, 200)
            )
    return [latency_row("cpu_p2p_small_gloo", samples)]


@workload("gpu_allreduce_100mb", "torch_allreduce_100mb")
def gpu_allreduce_100mb(rt: ModuleType, cfg: Config) -> list[Row]:
    """allreduce of a 100 MiB tensor across 2 actors in a compiled graph (GB/s), beside torch."""
    names, units = ("gpu_allreduce_100mb", "torch_allreduce_100mb"), ("GB/s", "GB/s")
    if why := cuda_missing():
        return skipped(names, units, why)
    import torch

    if torch.cuda.device_count() < 2:
        return skipped(names, units, "skipped: needs 2 GPUs (NCCL cannot put two ranks on one GPU)")
    samples = allreduce_samples(rt, GpuWorker, {"num_gpus": 1, "num_cpus": 0},
                                cfg.n(5, 2), cfg.n(30, 5))
    row = gbps_row(names[0], samples, 100 * MiB)
    row.note = "algbw = bytes / p50 time; busbw equals algbw for 2 ranks"
    return [row, torch_reference(cfg, "nccl")]


def allreduce_samples(rt: ModuleType, worker: Any, options: dict, warmup: int, iters: int
                      ) -> list[float]:
    """Latencies of a compiled allreduce of 100 MiB across 2 actors of class ``worker``."""
    with spawned(rt, worker, 2, **options) as workers:
        with compiled(allreduce_dag(rt, workers)) as cdag:
            return sample_latencies(lambda: rt.get(cdag.execute(100 * MiB)), warmup, iters)


@workload("cpu_allreduce_100mb_gloo", "torch_gloo_allreduce_100mb")
def cpu_allreduce_100mb_gloo(rt: ModuleType, cfg: Config) -> list[Row]:
    """allreduce of a 100 MiB CPU tensor across 2 actors in a compiled graph over gloo (GB/s),
    beside bare torch.distributed gloo between 2 processes."""
    names, units = ("cpu_allreduce_100mb_gloo", "torch_gloo_allreduce_100mb"), ("GB/s", "GB/s")
    if rt.__name__ != "ember":
        return skipped(names, units, "skipped: ember's gloo path only")
    samples = allreduce_samples(rt, CpuWorker, CPU_ACTOR, cfg.n(3, 1), cfg.n(20, 5))
    row = gbps_row(names[0], samples, 100 * MiB)
    row.note = "algbw = bytes / p50 time, execute + get of the whole graph"
    return [row, torch_reference(cfg, "gloo")]


def _torch_reference_rank(rank: int, port: int, iters: int, backend: str, op: str,
                          out: Any) -> None:
    """One rank of a bare torch.distributed reference (NCCL on GPUs, gloo on CPU): an allreduce
    of 100 MiB, or ``op="sendrecv"``: rank 0 sends 100 MiB and waits for a 1-element answer."""
    import torch
    import torch.distributed as dist

    cuda = backend == "nccl"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    device = "cuda" if cuda else "cpu"
    buf = torch.ones(100 * MiB // 4, dtype=torch.float32, device=device)
    ack = torch.zeros(1, dtype=torch.float32, device=device)
    times = []
    for i in range(iters + 3):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        if op == "allreduce":
            dist.all_reduce(buf)
        elif rank == 0:
            dist.send(buf, 1)
            dist.recv(ack, 1)
        else:
            dist.recv(buf, 0)
            dist.send(ack, 0)
        if cuda:
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(statistics.median(times))
    dist.destroy_process_group()


_REFERENCE_NAMES = {("nccl", "allreduce"): "torch_allreduce_100mb",
                    ("gloo", "allreduce"): "torch_gloo_allreduce_100mb",
                    ("nccl", "sendrecv"): "torch_p2p_100mb_nccl",
                    ("gloo", "sendrecv"): "torch_gloo_p2p_100mb"}


def torch_reference(cfg: Config, backend: str, op: str = "allreduce") -> Row:
    """Bare torch.distributed allreduce or send/recv of 100 MiB between 2 processes (NCCL: on
    2 GPUs); GB/s."""
    import socket

    name = _REFERENCE_NAMES[backend, op]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    iters = cfg.n(30, 5) if backend == "nccl" else cfg.n(20, 5)
    procs = [ctx.Process(target=_torch_reference_rank, args=(r, port, iters, backend, op, out))
             for r in range(2)]
    for p in procs:
        p.start()
    seconds = out.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
    where = "2 GPUs" if backend == "nccl" else "CPU tensors"
    return Row(name, "GB/s", round(100 * MiB / GB / seconds, 2),
               note=f"reference: bare torch.distributed {backend} {op}, 2 processes, {where}")


# --- GPU objects in the dynamic layer (Ray Direct Transport's API) -----------------------------

def tensor_worker_class(rt: ModuleType, transport: str, base: type = CpuWorker) -> type:
    """An actor class whose ``produce`` keeps its tensor in the actor with ``transport`` (Ray's
    RDT under Ray), or returns it through the object store for "object_store"."""
    decorate = (lambda fn: fn) if transport == "object_store" and rt.__name__ == "ray" else (
        rt.method(tensor_transport=transport))

    class TensorWorker(base):
        @decorate
        def produce(self, nbytes: int) -> Any:
            """A float32 tensor of nbytes (one buffer, reused)."""
            return base.produce(self, nbytes)

    return TensorWorker


def dyn_tensor_samples(rt: ModuleType, cfg: Config, transport: str, backend: str = "torch_gloo",
                       base: type = CpuWorker, options: dict = CPU_ACTOR) -> tuple[list, list]:
    """Latencies of get(b.consume.remote(a.produce.remote(n))) for 1 KiB and 100 MiB tensors."""
    cls = tensor_worker_class(rt, transport, base)
    with spawned(rt, cls, 2, **options) as (a, b):
        group = None
        if transport not in ("object_store", "ipc"):
            collective = importlib.import_module(f"{rt.__name__}.experimental.collective")
            group = collective.create_collective_group([a, b], backend=backend)

        def move(nbytes: int) -> Any:
            return rt.get(b.consume.remote(a.produce.remote(nbytes)))

        small = sample_latencies(lambda: move(1024), cfg.n(100, 20), cfg.n(1000, 100))
        big = sample_latencies(lambda: move(100 * MiB), cfg.n(3, 1), cfg.n(20, 5))
        if group is not None and rt.__name__ != "ray":
            collective.destroy_collective_group(group)
    return small, big


@workload("dyn_tensor_p2p_small", "dyn_tensor_p2p_100mb",
          "dyn_tensor_p2p_small_object_store", "dyn_tensor_p2p_100mb_object_store",
          "torch_gloo_p2p_100mb")
def cpu_dyn_tensor_p2p(rt: ModuleType, cfg: Config) -> list[Row]:
    """A CPU tensor from one actor method to another through the dynamic layer: kept in the
    producer and sent over a gloo collective group (tensor_transport="gloo"), 1 KiB p50 µs and
    100 MiB GB/s, beside the same calls through the object store."""
    small, big = dyn_tensor_samples(rt, cfg, "gloo")
    store_small, store_big = dyn_tensor_samples(rt, cfg, "object_store")
    rows = [latency_row("dyn_tensor_p2p_small", small),
            gbps_row("dyn_tensor_p2p_100mb", big, 100 * MiB),
            latency_row("dyn_tensor_p2p_small_object_store", store_small),
            gbps_row("dyn_tensor_p2p_100mb_object_store", store_big, 100 * MiB)]
    for row in rows:
        row.note = ("whole call: produce + consume + get; " + (
            "through the object store" if "object_store" in row.name else "tensor over gloo"))
    return rows + [torch_reference(cfg, "gloo", "sendrecv")]


@workload("dyn_tensor_p2p_small_ipc", "dyn_tensor_p2p_100mb_ipc", "dyn_tensor_p2p_100mb_nccl",
          "torch_p2p_100mb_nccl")
def dyn_tensor_p2p_gpu(rt: ModuleType, cfg: Config) -> list[Row]:
    """GPU objects between two actors: CUDA IPC on one GPU (1 KiB p50 µs, 100 MiB GB/s; compare
    with gpu_d2d_copy_100mb of the same run) and NCCL across two GPUs (100 MiB GB/s, beside bare
    torch.distributed send/recv)."""
    names = ("dyn_tensor_p2p_small_ipc", "dyn_tensor_p2p_100mb_ipc",
             "dyn_tensor_p2p_100mb_nccl", "torch_p2p_100mb_nccl")
    units = ("us", "GB/s", "GB/s", "GB/s")
    if why := cuda_missing():
        return skipped(names, units, why)
    if rt.__name__ != "ember":
        return skipped(names, units, "skipped: ember's transport names ('ipc') only")
    import torch

    small, big = dyn_tensor_samples(rt, cfg, "ipc", base=GpuWorker, options=GPU_ACTOR)
    rows = [latency_row(names[0], small), gbps_row(names[1], big, 100 * MiB)]
    if torch.cuda.device_count() < 2:
        return rows + skipped(names[2:], units[2:], "skipped: needs 2 GPUs")
    _, big = dyn_tensor_samples(rt, cfg, "nccl", "nccl", GpuWorker, {"num_gpus": 1, "num_cpus": 0})
    return rows + [gbps_row(names[2], big, 100 * MiB), torch_reference(cfg, "nccl", "sendrecv")]

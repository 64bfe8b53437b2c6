"""Data-parallel training with an allreduce inside a compiled graph.

Each worker actor computes the gradient of a linear model on its shard of a batch; an allreduce
node averages the gradients across workers (NCCL on GPUs, gloo on CPU tensors here), and each
worker applies the same update. The compiled graph runs one training step per execution.
Needs PyTorch (``pip install -e ".[torch]"``); runs on CPU when no GPU is present.
"""

import sys

import ember
from ember.dag import InputNode, MultiOutputNode
from ember.dag.collective import allreduce

try:
    import torch
except ImportError:
    sys.exit("this example needs PyTorch: pip install -e '.[torch]'")


@ember.remote
class Worker:
    """One data-parallel replica of a linear model."""

    def __init__(self, rank: int, dim: int) -> None:
        self.rank = rank
        self.w = torch.zeros(dim)
        self.true_w = torch.arange(dim, dtype=torch.float32) / dim

    def gradient(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 * step + self.rank)
        x = torch.randn(64, self.w.numel(), generator=g)
        y = x @ self.true_w
        return 2 * x.T @ (x @ self.w - y) / len(x)

    def apply(self, grad: torch.Tensor) -> float:
        self.w -= 0.1 * grad
        return float((self.w - self.true_w).norm())


def main() -> None:
    workers, dim, steps = 2, 8, 40
    ember.init()
    actors = [Worker.remote(rank, dim) for rank in range(workers)]
    with InputNode() as step:
        grads = [a.gradient.bind(step).with_tensor_transport("nccl") for a in actors]
        averaged = allreduce.bind(grads, op="avg")
        dag = MultiOutputNode([a.apply.bind(g) for a, g in zip(actors, averaged)])
    cdag = dag.compile()
    for i in range(steps):
        errors = ember.get(cdag.execute(i))
    assert len(set(round(e, 6) for e in errors)) == 1, "replicas diverged"
    print(f"{workers} replicas after {steps} allreduce steps: |w - w*| = {errors[0]:.4f}")
    assert errors[0] < 0.05
    cdag.teardown()
    ember.shutdown()


if __name__ == "__main__":
    main()

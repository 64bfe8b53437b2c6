"""GPU objects (Ray Direct Transport's API) on the dynamic layer: a producer actor keeps the
tensors it returns, and a consumer actor receives them straight from it over a collective group
(gloo on CPU, NCCL on two GPUs), not through the object store. The driver can still get them."""

import torch

import ember
from ember.experimental.collective import create_collective_group, destroy_collective_group

ON_GPUS = torch.cuda.is_available() and torch.cuda.device_count() >= 2
DEVICE = "cuda" if ON_GPUS else "cpu"


@ember.remote(num_gpus=1 if ON_GPUS else 0)
class Worker:
    @ember.method(tensor_transport="nccl" if ON_GPUS else "gloo")
    def produce(self, n: int) -> dict:
        return {"weights": torch.arange(n, dtype=torch.float32, device=DEVICE),
                "bias": torch.ones(4, device=DEVICE), "step": 1}

    def consume(self, state: dict) -> float:
        return float(state["weights"].sum() + state["bias"].sum())


def main() -> None:
    ember.init()
    a, b = Worker.remote(), Worker.remote()
    group = create_collective_group([a, b], backend="nccl" if ON_GPUS else "torch_gloo")
    ref = a.produce.remote(1000)
    print("consumed over the group:", ember.get(b.consume.remote(ref)))   # 499504.0
    print("the same ref again:", ember.get(b.consume.remote(ref)))
    state = ember.get(ref)   # a host copy through the object store
    print("at the driver:", state["weights"][:4], state["weights"].device, state["step"])
    destroy_collective_group(group)
    ember.shutdown()


if __name__ == "__main__":
    main()

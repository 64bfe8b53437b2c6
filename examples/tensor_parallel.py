"""Tensor-parallel serving: one request fans out to shard actors, each multiplies by its slice
of the weight, and the driver joins the partial results (MultiOutputNode)."""

import numpy as np

import ember
from ember.dag import InputNode, MultiOutputNode


@ember.remote
class Shard:
    """Holds columns [lo, hi) of the weight matrix."""

    def __init__(self, weight: np.ndarray) -> None:
        self.weight = weight

    def matmul(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight


def main() -> None:
    shards, width = 4, 512
    ember.init()
    weight = np.random.default_rng(0).standard_normal((width, width))
    actors = [Shard.remote(part) for part in np.split(weight, shards, axis=1)]
    with InputNode() as inp:
        dag = MultiOutputNode([a.matmul.bind(inp) for a in actors])
    cdag = dag.compile()
    for i in range(10):
        x = np.random.default_rng(i).standard_normal((8, width))
        y = np.concatenate(ember.get(cdag.execute(x)), axis=1)
        assert np.allclose(y, x @ weight)
    print(f"10 requests served by {shards} shards; results match x @ W")
    cdag.teardown()
    ember.shutdown()


if __name__ == "__main__":
    main()

"""Pipeline-parallel inference: three stage actors, each holding one layer, compiled into a graph.

Runs on CPU with numpy (layers as matrices). The compiled graph keeps several batches in flight;
the result is checked against running the same layers in this process.
"""

import time

import numpy as np

import ember
from ember.dag import InputNode


@ember.remote
class Stage:
    """One pipeline stage: a dense layer with a ReLU."""

    def __init__(self, seed: int, width: int) -> None:
        self.weight = np.random.default_rng(seed).standard_normal((width, width)) / np.sqrt(width)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.weight, 0.0)


def main() -> None:
    width, stages, batches = 256, 3, 64
    ember.init()
    actors = [Stage.remote(seed, width) for seed in range(stages)]
    with InputNode() as inp:
        node = inp
        for actor in actors:
            node = actor.forward.bind(node)
    cdag = node.compile()
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((32, width)) for _ in range(batches)]
    start = time.perf_counter()
    refs = [cdag.execute(x) for x in inputs[:4]]
    outputs = []
    for x in inputs[4:]:
        outputs.append(ember.get(refs.pop(0)))
        refs.append(cdag.execute(x))
    outputs += [ember.get(r) for r in refs]
    elapsed = time.perf_counter() - start
    weights = [np.random.default_rng(s).standard_normal((width, width)) / np.sqrt(width)
               for s in range(stages)]
    for x, y in zip(inputs, outputs):
        for w in weights:
            x = np.maximum(x @ w, 0.0)
        assert np.allclose(x, y)
    print(f"{batches} batches through {stages} stages in {elapsed * 1e3:.1f} ms "
          f"({batches / elapsed:.0f} batches/s); outputs match the local reference")
    cdag.teardown()
    ember.shutdown()


if __name__ == "__main__":
    main()

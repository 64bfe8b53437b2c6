"""Parameter-server training on the dynamic layer: workers compute gradients of a linear model
as tasks, a parameter-server actor applies them, and the loss falls."""

import numpy as np

import ember


@ember.remote
class ParameterServer:
    """Holds the weights and applies averaged gradients."""

    def __init__(self, dim: int, lr: float) -> None:
        self.w = np.zeros(dim)
        self.lr = lr

    def apply(self, *grads: np.ndarray) -> np.ndarray:
        self.w = self.w - self.lr * np.mean(grads, axis=0)
        return self.w

    def weights(self) -> np.ndarray:
        return self.w


@ember.remote
def gradient(w: np.ndarray, seed: int, true_w: np.ndarray) -> np.ndarray:
    """The least-squares gradient on one random batch."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((128, w.size))
    y = x @ true_w
    return 2 * x.T @ (x @ w - y) / len(x)


def main() -> None:
    dim, workers, steps = 16, 4, 30
    ember.init()
    true_w = np.random.default_rng(42).standard_normal(dim)
    ps = ParameterServer.remote(dim, 0.1)
    true_ref = ember.put(true_w)
    w = ps.weights.remote()
    for step in range(steps):
        grads = [gradient.remote(w, step * workers + i, true_ref) for i in range(workers)]
        w = ps.apply.remote(*grads)
    final = ember.get(w)
    error = float(np.linalg.norm(final - true_w))
    print(f"after {steps} steps with {workers} workers: |w - w*| = {error:.4f}")
    assert error < 0.1
    ember.shutdown()


if __name__ == "__main__":
    main()

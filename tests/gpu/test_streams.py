"""The communication stream helper: a no-op on CPU, ordered events on CUDA."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ember.gpu.streams import CommStream  # noqa: E402


@pytest.mark.timeout(10)
def test_disabled_or_cpu_is_a_no_op():
    for streams in (CommStream(overlap=False), CommStream("cpu", overlap=True)):
        assert not streams.enabled and streams.stream is None
        with streams.communicating([torch.ones(2)]):
            pass
        streams.after_compute()
        streams.before_compute([torch.ones(2)])
        streams.synchronize()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.timeout(60)
def test_comm_stream_sees_compute_results_and_compute_sees_comm_results():
    streams = CommStream(overlap=True)
    assert streams.enabled and streams.stream != torch.cuda.current_stream()
    x = torch.ones(1 << 22, device="cuda")
    x.mul_(3)  # queued on compute
    with streams.communicating([x]):
        y = x * 2  # on the comm stream, after the multiply
    streams.before_compute([y])
    assert torch.equal(y, torch.full_like(x, 6))
    streams.synchronize()

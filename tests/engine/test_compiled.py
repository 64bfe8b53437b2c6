"""Compiled graphs over real actor processes: results, pipelining, errors, asyncio, sharing."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import numpy as np
import pytest

import ember
from ember.dag import InputNode, MultiOutputNode
from ember.engine.compiled_dag import _run_in_actor
from ember.engine.actor_side import running_loops
from ember.exceptions import (ChannelTimeoutError, CompileError, DAGTeardownError,
                              GetTimeoutError, TaskError)

from .conftest import channel_files, process_cpu_seconds

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
class Stage:
    def __init__(self, k=1):
        self.k = k
        self.calls = []

    def fwd(self, x):
        self.calls.append(x)
        return x + self.k

    def add(self, x, y, scale=1):
        return (x + y) * scale

    def echo(self, x):
        return x

    def scale(self, arr):
        return arr * 2

    def boom(self, x):
        if x < 0:
            raise ValueError(f"negative input {x}")
        return x

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    @ember.method(num_returns=2)
    def split(self, x):
        return x, x * 10

    def history(self):
        return list(self.calls)

    def reset(self):
        self.calls = []

    def pid(self):
        return os.getpid()


@ember.remote
def double(x):
    return 2 * x


@ember.remote
def combine(x, y, z=0):
    return x * 100 + y + z


@pytest.fixture(scope="module")
def actors(cluster):
    handles = [Stage.remote(1), Stage.remote(10), Stage.remote(100)]
    ember.get([h.pid.remote() for h in handles])
    return handles


@pytest.mark.timeout(60)
def test_linear_pipeline_matches_uncompiled_execute(actors):
    a, b, c = actors
    with InputNode() as inp:
        dag = c.fwd.bind(b.fwd.bind(a.fwd.bind(inp)))
    expected = ember.get(dag.execute(5))
    with dag.compile() as cdag:
        assert expected == 116
        assert cdag.execute(5).get(timeout=10) == 116
        assert ember.get(cdag.execute(6), timeout=10) == 117
        assert ember.get([cdag.execute(i) for i in range(3)]) == [111, 112, 113]


@pytest.mark.timeout(60)
def test_multi_output_kwargs_constants_and_two_returns(actors):
    a, b, _ = actors
    with InputNode() as inp:
        x, y = a.split.bind(inp[0])
        s = b.add.bind(x, inp.offset, scale=3)
        dag = MultiOutputNode([s, y, b.add.bind(y, 1)])
    uncompiled = ember.get(dag.execute(2, offset=5))
    cdag = dag.experimental_compile()
    try:
        assert uncompiled == [21, 20, 21]
        assert cdag.execute(2, offset=5).get(timeout=10) == [21, 20, 21]
        assert cdag.execute(3, offset=0).get(timeout=10) == [9, 30, 31]
        with pytest.raises(TypeError, match="offset"):
            cdag.execute(3)
    finally:
        cdag.teardown()


@pytest.mark.timeout(60)
def test_same_actor_at_several_points_runs_in_bind_order(actors):
    a, b, _ = actors
    ember.get(a.reset.remote())
    with InputNode() as inp:
        first = a.fwd.bind(inp)           # inp + 1
        middle = b.fwd.bind(first)        # + 10
        last = a.fwd.bind(middle)         # + 1, again on a
        dag = a.add.bind(first, last)
    with dag.compile() as cdag:
        assert cdag.execute(0).get(timeout=10) == 1 + 12
        assert ember.get(a.history.remote()) == [0, 11]


@pytest.mark.timeout(60)
def test_several_executions_in_flight_fetched_out_of_order(actors):
    a, b, _ = actors
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp))
    with dag.compile(max_inflight_executions=4) as cdag:
        refs = [cdag.execute(i) for i in range(40)]   # more than in flight: back-pressure
        assert [r.get(timeout=10) for r in reversed(refs)] == [i + 11 for i in reversed(range(40))]
        assert refs[3].get() == 14                    # a second get gives the same value


@pytest.mark.timeout(60)
def test_back_pressure_blocks_execute_then_times_out(actors):
    a, _, _ = actors
    with InputNode() as inp:
        dag = a.sleep.bind(inp)
    with dag.compile(max_inflight_executions=2, submit_timeout=5) as cdag:
        start = time.monotonic()
        refs = [cdag.execute(0.3) for _ in range(3)]   # the third waits for the first
        assert time.monotonic() - start >= 0.25
        assert [r.get(timeout=10) for r in refs] == [0.3] * 3
    with dag.compile(max_inflight_executions=1, submit_timeout=0.2) as cdag:
        ref = cdag.execute(1.0)
        with pytest.raises(ChannelTimeoutError, match="max_inflight_executions"):
            cdag.execute(0)
        assert ref.get(timeout=10) == 1.0
        assert cdag.execute(0).get(timeout=10) == 0


@pytest.mark.timeout(60)
def test_error_travels_downstream_and_the_next_execution_works(actors):
    a, b, _ = actors
    ember.get(b.reset.remote())
    with InputNode() as inp:
        dag = b.fwd.bind(a.boom.bind(inp))
    with dag.compile() as cdag:
        with pytest.raises(ValueError, match="negative input -1") as info:
            cdag.execute(-1).get(timeout=10)
        assert isinstance(info.value, TaskError)
        assert "boom" in info.value.remote_traceback
        assert cdag.execute(2).get(timeout=10) == 12
        assert ember.get(b.history.remote()) == [2]    # fwd did not run on the error


@pytest.mark.timeout(60)
def test_slow_method_get_timeout(actors):
    a, _, _ = actors
    with InputNode() as inp:
        dag = a.sleep.bind(inp)
    with dag.compile() as cdag:
        ref = cdag.execute(1.0)
        with pytest.raises(ChannelTimeoutError) as info:
            ref.get(timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(GetTimeoutError):   # as for an ObjectRef, through ember.get too
            ember.get(ref, timeout=0.2)
        assert ref.get(timeout=10) == 1.0


@pytest.mark.timeout(60)
def test_execute_async_gives_a_future_and_a_ref_is_awaitable(actors):
    a, b, _ = actors
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp))
    cdag = dag.compile()

    async def main():
        fut = await cdag.execute_async(1)            # Ray's form: two awaits
        one = await fut
        futs = [await cdag.execute_async(i) for i in range(6)]
        many = await asyncio.gather(*futs)
        shortcut = await cdag.execute(3)             # ember's one await
        return one, many, shortcut

    try:
        assert asyncio.run(main()) == (12, [11, 12, 13, 14, 15, 16], 14)
    finally:
        cdag.teardown()


@pytest.mark.timeout(60)
def test_function_nodes_run_as_dynamic_tasks_with_uncompiled_results(actors):
    a, b, _ = actors
    with InputNode() as inp:
        x = a.fwd.bind(inp[0])
        y = double.bind(x)
        dag = MultiOutputNode([b.fwd.bind(y), combine.bind(y, x, z=inp[1])])
    expected = ember.get(dag.execute(3, 7))
    with dag.compile() as cdag:
        assert cdag.execute(3, 7).get(timeout=20) == expected == [18, 811]
        assert cdag.execute(0, 0).get(timeout=20) == ember.get(dag.execute(0, 0))


@pytest.mark.timeout(60)
def test_graphs_share_an_actor_whose_methods_stay_callable(actors):
    a, b, c = actors
    with InputNode() as inp:
        prefill = b.fwd.bind(a.fwd.bind(inp))
    with InputNode() as inp:
        decode = c.fwd.bind(a.fwd.bind(inp))
    g1, g2 = prefill.compile(), decode.compile()
    try:
        r1, r2 = g1.execute(0), g2.execute(0)
        assert ember.get(a.echo.remote("still callable"), timeout=10) == "still callable"
        assert (r1.get(timeout=10), r2.get(timeout=10)) == (11, 101)
    finally:
        g1.teardown()
        g2.teardown()


@pytest.mark.timeout(60)
def test_teardown_ends_loops_frees_channels_and_allows_recompiling(actors):
    a, b, _ = actors
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp))
    before = set(channel_files())
    cdag = dag.compile()
    ours = set(channel_files()) - before
    assert len(ours) == 3
    pending = cdag.execute(1)
    loops = ember.get(_run_in_actor(a, running_loops))
    assert cdag._graph_id in loops
    cdag.teardown()
    cdag.teardown()                               # idempotent
    assert not ours & set(channel_files())
    assert cdag._graph_id not in ember.get(_run_in_actor(a, running_loops))
    with pytest.raises(DAGTeardownError):
        cdag.execute(1)
    try:
        pending.get(timeout=5)                    # it may have finished before the teardown
    except DAGTeardownError:
        pass
    with dag.compile() as again:
        assert again.execute(1).get(timeout=10) == 12


@pytest.mark.timeout(60)
def test_large_numpy_values_grow_the_buffers(actors):
    a, b, _ = actors
    with InputNode() as inp:
        dag = b.scale.bind(a.echo.bind(inp))
    with dag.compile(buffer_size_bytes=4096) as cdag:
        for n in (10, 1 << 20, 3 << 20):
            arr = np.arange(n, dtype=np.float32)
            out = cdag.execute(arr).get(timeout=20)
            np.testing.assert_array_equal(out, arr * 2)
        assert not out.flags.writeable             # a zero-copy view of the output slot
        assert cdag.execute(np.ones(4)).get(timeout=10).tolist() == [2.0] * 4


@pytest.mark.timeout(60)
def test_results_kept_by_the_driver_stay_valid_across_many_executions(actors):
    a, b, _ = actors
    with InputNode() as inp:
        dag = b.scale.bind(a.echo.bind(inp))
    with dag.compile(max_inflight_executions=2) as cdag:
        kept = [cdag.execute(np.full(50_000, float(i))).get(timeout=20) for i in range(10)]
        for i, out in enumerate(kept):
            np.testing.assert_array_equal(out, np.full(50_000, 2.0 * i))


@pytest.mark.timeout(60)
def test_inputs_an_actor_keeps_stay_valid_across_many_executions(actors):
    a, _, _ = actors
    ember.get(a.reset.remote())
    with InputNode() as inp:
        dag = a.fwd.bind(inp)                      # keeps every input it gets in a.calls
    with dag.compile(max_inflight_executions=2) as cdag:
        for i in range(10):
            cdag.execute(np.full(50_000, float(i))).get(timeout=20)
    kept = ember.get(a.history.remote())
    ember.get(a.reset.remote())
    assert [float(x[0]) for x in kept] == [float(i) for i in range(10)]
    for i, x in enumerate(kept):
        np.testing.assert_array_equal(x, np.full(50_000, float(i)))


@pytest.mark.timeout(60)
def test_arity_checked_against_the_actor_method(actors):
    a, _, _ = actors
    with InputNode() as inp:
        dag = a.add.bind(inp)
    before = set(channel_files())
    with pytest.raises(CompileError, match=r"Stage\.add.*do not match the signature"):
        dag.compile()
    assert set(channel_files()) == before


@pytest.mark.timeout(60)
def test_visualize_writes_dot_and_an_image_where_graphviz_is_installed(actors, tmp_path):
    a, b, _ = actors
    with InputNode() as inp:
        x = a.fwd.bind(inp)
        dag = MultiOutputNode([b.fwd.bind(x), a.fwd.bind(x), double.bind(x)])
    with dag.compile() as cdag:
        text = cdag.visualize()
        assert text.startswith("digraph") and "Stage.fwd" in text
        assert "shm" in text and "in-process" in text and "driver-tasks" in text
        base = str(tmp_path / "graph")
        if shutil.which("dot"):
            cdag.visualize(base, format="svg")
            assert (tmp_path / "graph.svg").exists()
        else:
            cdag.visualize(base)
        assert (tmp_path / "graph.dot").read_text() == text


@pytest.mark.timeout(60)
def test_an_idle_compiled_graph_uses_no_cpu(actors):
    a, b, _ = actors
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp))
    with dag.compile() as cdag:
        assert cdag.execute(1).get(timeout=10) == 12
        pids = [os.getpid()] + [ember.get(h.pid.remote()) for h in (a, b)]
        time.sleep(0.2)
        before = [process_cpu_seconds(p) for p in pids]
        time.sleep(1.0)
        used = [process_cpu_seconds(p) - t for p, t in zip(pids, before)]
        assert max(used) < 0.05, f"CPU seconds used in 1 s of idling: {used}"


@ember.remote
class Awkward:
    def unpicklable(self, x):
        import threading
        return threading.Lock()

    def fine(self, x):
        return x


@ember.remote
def failing(x):
    raise KeyError(f"no key {x}")


@pytest.mark.timeout(60)
def test_unpicklable_values_become_clear_errors(actors):
    from ember.exceptions import SerializationError
    a, _, _ = actors
    odd = Awkward.remote()
    with InputNode() as inp:
        dag = a.echo.bind(odd.unpicklable.bind(inp))
    cdag = dag.compile()
    try:
        with pytest.raises(SerializationError):
            cdag.execute(1).get(timeout=10)
        import threading
        with pytest.raises(SerializationError):
            cdag.execute(threading.Lock())        # the input itself: nothing is submitted
        with pytest.raises(SerializationError):
            cdag.execute(2).get(timeout=10)
    finally:
        cdag.teardown()
        ember.kill(odd)


@pytest.mark.timeout(60)
def test_function_node_error_reaches_get(actors):
    a, _, _ = actors
    with InputNode() as inp:
        dag = a.fwd.bind(failing.bind(inp))
    with dag.compile() as cdag:
        with pytest.raises(KeyError, match="no key 3"):
            cdag.execute(3).get(timeout=20)


@pytest.mark.timeout(60)
def test_dropped_refs_do_not_pile_up_results(actors):
    a, _, _ = actors
    with InputNode() as inp:
        dag = a.fwd.bind(inp)
    with dag.compile(max_inflight_executions=2) as cdag:
        for i in range(20):
            cdag.execute(i)                       # dropped at once
        assert cdag.execute(100).get(timeout=10) == 101
        assert len(cdag._buffer) <= 2


@pytest.mark.timeout(60)
def test_multi_output_gives_one_ref_per_output_and_an_error_fails_every_output(actors):
    a, b, _ = actors
    with InputNode() as inp:
        dag = MultiOutputNode([a.boom.bind(inp), b.fwd.bind(inp)])
    with dag.compile() as cdag:
        refs = cdag.execute(-5)
        assert isinstance(refs, list) and len(refs) == 2
        with pytest.raises(ValueError, match="negative input -5"):   # fast fail, as Ray
            refs[1].get(timeout=10)
        with pytest.raises(ValueError, match="negative input -5"):
            refs[0].get(timeout=10)
        with pytest.raises(ValueError):
            ember.get(refs)
        later = cdag.execute(1)
        del refs
        assert ember.get(later) == [1, 11]
        assert len(cdag._buffer) == 0


@pytest.mark.timeout(60)
def test_threads_execute_and_get_concurrently(actors):
    from concurrent.futures import ThreadPoolExecutor
    a, b, _ = actors
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp))
    cdag = dag.compile(max_inflight_executions=3)

    def worker(base):
        return [cdag.execute(base + i).get(timeout=20) for i in range(40)]

    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(worker, [0, 1000, 2000, 3000]))
        assert results == [[base + i + 11 for i in range(40)] for base in (0, 1000, 2000, 3000)]
    finally:
        cdag.teardown()


@pytest.mark.timeout(60)
def test_compiled_graph_as_context_manager_tears_down(actors):
    a, _, _ = actors
    with InputNode() as inp:
        dag = a.fwd.bind(inp)
    with dag.compile() as cdag:
        assert cdag.execute(1).get(timeout=10) == 2   # a adds 1
    with pytest.raises(DAGTeardownError):
        cdag.execute(1)

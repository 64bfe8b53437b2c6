"""Compiled graphs with Ray's semantics and names through ``import ember as ray`` (cases adapted
from Ray's test_compiled_graphs and test_dag_error_handling)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

import ember as ray
from ember.dag import DAGContext, InputNode, MultiOutputNode
from ember.exceptions import (ChannelError, DAGTeardownError, RayCgraphCapacityExceeded,
                              RayChannelError, RayChannelTimeoutError, RayTaskError)

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.timeout(90)]


@ray.remote
class Actor:
    def __init__(self, init_value=0):
        self.i = init_value

    def inc(self, x):
        self.i += x
        return self.i

    def echo(self, x):
        return x

    def collect_two(self, x, y):
        return [x, y]

    def collect_three(self, x, y, z):
        return [x, y, z]

    def sleep_and_echo(self, x):
        time.sleep(x)
        return x

    def fail_if_even(self, x):
        if x % 2 == 0:
            raise ValueError("x is even")
        return x

    @ray.method(num_returns=2)
    def return_two(self, x):
        return x, x + 1


@pytest.fixture(scope="module")
def actors(cluster):
    return Actor.remote(0), Actor.remote(0), Actor.remote(0)


def test_execute_async_gives_futures_one_per_output(actors):
    a, b, _ = actors
    with InputNode() as i:
        single = a.echo.bind(i)
    with InputNode() as i:
        multi = MultiOutputNode([a.echo.bind(i), b.echo.bind(i)])
    with single.experimental_compile(enable_asyncio=True) as cdag, \
            multi.experimental_compile(enable_asyncio=True) as mdag:

        async def main():
            fut = await cdag.execute_async(5)
            futs = await mdag.execute_async(6)
            assert len(futs) == 2
            gathered = await asyncio.gather(*futs)
            out_of_order = [await cdag.execute_async(v) for v in ("a", "b")]
            later, first = await out_of_order[1], await out_of_order[0]
            return await fut, gathered, (first, later), await mdag.execute(7)

        assert asyncio.run(main()) == (5, [6, 6], ("a", "b"), [7, 7])


def test_execute_async_waits_for_room_off_the_event_loop(actors):
    a, _, _ = actors
    with InputNode() as i:
        dag = a.sleep_and_echo.bind(i)
    with dag.experimental_compile(_max_inflight_executions=2) as cdag:

        async def main():
            ticks = 0

            async def tick():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.ensure_future(tick())
            await asyncio.sleep(0)
            futs = [await cdag.execute_async(0.2) for _ in range(4)]   # 2 wait for room
            submitted = ticks
            ticker.cancel()
            return [await f for f in futs], submitted

        values, ticks = asyncio.run(main())
        assert values == [0.2] * 4 and ticks > 5


def test_dag_context_gives_compile_defaults_and_ids(actors):
    a, _, _ = actors
    ctx = DAGContext.get_current()
    assert ctx is DAGContext.get_current()
    assert (ctx.max_buffered_results, ctx.get_timeout) == (None, None)
    original = ctx.submit_timeout, ctx.max_inflight_executions
    ctx.submit_timeout, ctx.max_inflight_executions = 3, 2
    try:
        with InputNode() as i:
            dag = a.echo.bind(i)
        with dag.experimental_compile() as cdag, dag.experimental_compile(
                _max_inflight_executions=5) as other:
            assert (cdag._options.submit_timeout, cdag._options.max_inflight_executions) == (3, 2)
            assert other._options.max_inflight_executions == 5
            assert cdag.get_id() != other.get_id()
            ref = cdag.execute(1)
            assert str(ref) == (f"CompiledDAGRef({cdag.get_id()}, execution_index=0, "
                                f"channel_index=None)")
            assert ray.get(ref) == 1
    finally:
        ctx.submit_timeout, ctx.max_inflight_executions = original


def test_max_buffered_results_raises_rays_capacity_error_only_when_asked(actors):
    a, b, _ = actors
    with InputNode() as i:
        dag = a.echo.bind(i)
    with dag.experimental_compile(_max_buffered_results=1) as cdag:
        refs = [cdag.execute(n) for n in range(2)]
        with pytest.raises(RayCgraphCapacityExceeded, match="can't have more than 1 buffered"):
            ray.get(refs[1], timeout=10)
        assert [ray.get(r, timeout=10) for r in refs] == [0, 1]   # usable after the error
    with InputNode() as i:
        multi = MultiOutputNode([a.echo.bind(i), b.echo.bind(i)])
    with multi.experimental_compile(_max_buffered_results=1) as cdag:
        refs = [cdag.execute(n) for n in range(2)]
        assert ray.get(refs[0][0], timeout=10) == 0     # its sibling keeps it buffered
        with pytest.raises(RayCgraphCapacityExceeded):
            ray.get(refs[1][0], timeout=10)
    with dag.experimental_compile(_max_inflight_executions=2) as cdag:   # default: waits
        refs = [cdag.execute(n) for n in range(20)]
        assert ray.get(refs[-1], timeout=10) == 19


@pytest.mark.parametrize("is_async", [False, True])
def test_fast_fail_a_failed_output_fails_the_execution_at_once(cluster, is_async):
    a, b = Actor.remote(), Actor.remote()
    with InputNode() as i:
        dag = MultiOutputNode([a.sleep_and_echo.bind(i), b.fail_if_even.bind(i)])
    with dag.experimental_compile(enable_asyncio=is_async) as cdag:
        start = time.monotonic()
        if is_async:
            async def main():
                futs = await cdag.execute_async(4)
                with pytest.raises(ValueError, match="x is even"):
                    await asyncio.gather(*futs)
            asyncio.run(main())
        else:
            refs = cdag.execute(4)
            with pytest.raises(ValueError, match="x is even"):
                ray.get(refs[0])              # the slow output that did not fail, as Ray
            with pytest.raises(ValueError, match="x is even"):
                ray.get(refs)
            del refs
        assert time.monotonic() - start < 3
        gc.collect()              # a raised error's traceback holds its refs (a cycle)
        assert ray.get(cdag.execute(1), timeout=20) == [1, 1]   # its leftovers are read first
        assert len(cdag._buffer) == 0


def test_rays_compile_errors(actors):
    a, b, _ = actors
    with InputNode() as i:
        first, _ = a.return_two.bind(i)
    with pytest.raises(ValueError, match="There are 1 leaf nodes in the DAG"):
        first.experimental_compile()
    with InputNode() as i:
        dag = a.inc.bind(i)
        a.inc.bind(dag)               # leaf
        a.inc.bind(i)                 # leaf
        dag = MultiOutputNode([a.inc.bind(dag)])
    with pytest.raises(ValueError, match="There are 2 leaf nodes in the DAG"):
        dag.experimental_compile()
    with InputNode() as i:
        branch = a.collect_two.bind(i[0], i[1])
        dag = b.collect_two.bind(i, branch)
    with pytest.raises(ValueError, match=r"All tasks must either use InputNode\(\) directly"):
        dag.experimental_compile()
    with InputNode() as i:
        input1 = i[1]
        a.echo.bind(input1)
        dag = a.collect_two.bind(i[0], i[2])
    with pytest.raises(ValueError, match="all of attributes 0, 1, 2, but 1 is unused"):
        dag.experimental_compile()

    class Outer:
        def __init__(self, ref):
            self.ref = ref

    with InputNode() as i:
        dag = a.echo.bind(Outer(i))
    with pytest.raises(ValueError, match=r"Found 1 DAGNodes from the arg .* any type of "
                                         r"container"):
        dag.experimental_compile()
    with pytest.raises(ValueError, match="already created with Actor.remote"):
        with InputNode() as i:
            Actor.bind(0).echo.bind(i).experimental_compile()


def test_execute_arguments_follow_rays_rules(actors):
    a, b, c = actors
    with InputNode() as i:
        dag = c.collect_three.bind(i[0], i[1], i[0])
    with dag.experimental_compile() as cdag:
        assert ray.get(cdag.execute(1, 2)) == [1, 2, 1]
        for bad, got in (((2, 3),), 1), ((), 0), ((1, 2, 3), 3):
            with pytest.raises(ValueError, match=rf"must be called with 2 positional args, "
                                                 rf"got {got}"):
                cdag.execute(*bad)
    with InputNode() as i:
        dag = c.collect_three.bind(a.echo.bind(i[0]), i.y, b.echo.bind(i.z))
    with dag.experimental_compile() as cdag:
        assert ray.get(cdag.execute(2, y=3, z=4)) == [2, 3, 4]
        with pytest.raises(ValueError, match="must be called with kwarg `y`"):
            cdag.execute(2, z=4)
        with pytest.raises(TypeError):           # also a TypeError, as before
            cdag.execute(2)
    with InputNode() as i:
        dag = c.collect_two.bind(i.y, i.x)
    with dag.experimental_compile() as cdag:
        assert ray.get(cdag.execute(x=2, y=3)) == [3, 2]


def test_use_after_teardown_is_a_ray_channel_error(actors):
    a, _, _ = actors
    with InputNode() as i:
        dag = a.echo.bind(i)
    cdag = dag.experimental_compile()
    ref = cdag.execute(1)
    cdag.teardown()
    with pytest.raises(RayChannelError, match="Channel closed"):
        ray.get(ref)
    with pytest.raises(RayChannelError, match="Channel closed"):
        cdag.execute(1)
    with pytest.raises(DAGTeardownError):
        cdag.execute(1)


def test_exceptions_offer_rays_names():
    assert ray.exceptions.RayChannelError is ChannelError
    assert issubclass(DAGTeardownError, RayChannelError)
    assert issubclass(RayChannelTimeoutError, RayChannelError)
    assert issubclass(RayChannelTimeoutError, TimeoutError)
    assert ray.exceptions.RayTaskError is RayTaskError
    assert issubclass(ray.exceptions.ActorDiedError, ray.exceptions.RayActorError)
    assert issubclass(ray.exceptions.GetTimeoutError, ray.exceptions.RayError)

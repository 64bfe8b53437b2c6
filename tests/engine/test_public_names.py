"""The engine's public names are exactly the ones meant to be public."""

import pytest

import ember.engine


@pytest.mark.timeout(10)
def test_engine_exports():
    assert sorted(ember.engine.__all__) == [
        "CompileOptions", "CompiledDAG", "CompiledDAGFuture", "CompiledDAGRef",
        "CompiledDAGRefList", "compile_dag", "teardown_all"]
    for name in ember.engine.__all__:
        assert getattr(ember.engine, name) is not None


@pytest.mark.timeout(10)
def test_compile_options_accept_ray_spellings_and_refuse_unknown_ones():
    from ember.engine import CompileOptions
    options = CompileOptions.from_kwargs({"_submit_timeout": 3, "_max_inflight_executions": 2,
                                          "_buffer_size_bytes": 1024, "enable_asyncio": True})
    assert (options.submit_timeout, options.max_inflight_executions,
            options.buffer_size_bytes) == (3, 2, 1024)
    with pytest.raises(TypeError, match="unknown option 'bogus'"):
        CompileOptions.from_kwargs({"bogus": 1})
    with pytest.raises(ValueError, match="max_inflight_executions"):
        CompileOptions.from_kwargs({"max_inflight_executions": 0})

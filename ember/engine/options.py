"""The options of ``dag.compile(...)``, checked once, with Ray's spellings accepted."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ember.dag.context import DAGContext


@dataclass
class CompileOptions:
    """Options of ``dag.compile(...)``; every timeout in seconds, None waits without limit.

    The defaults suit a 100-byte value and a 1 GB tensor alike: each channel slot starts at
    ``buffer_size_bytes`` and grows when a larger value is written. Every channel has
    ``max_inflight_executions`` slots (Note [back-pressure] in compiled_dag.py). An option not
    passed to ``compile`` comes from ``DAGContext.get_current()``; the defaults below are the
    context's.
    """

    # execute: wait for room under back-pressure
    submit_timeout: float | None = DAGContext.submit_timeout
    # ref.get() without a timeout of its own
    get_timeout: float | None = DAGContext.get_timeout
    # initial slot size; slots grow on demand
    buffer_size_bytes: int = DAGContext.buffer_size_bytes
    # executions submitted and not yet read
    max_inflight_executions: int = DAGContext.max_inflight_executions
    # results read and not yet fetched; None: no limit, else RayCgraphCapacityExceeded past it
    max_buffered_results: int | None = DAGContext.max_buffered_results
    enable_asyncio: bool = False             # accepted for Ray; execute_async always works
    start_timeout: float = 60.0              # compile: wait for the loops to start
    teardown_timeout: float = DAGContext.teardown_timeout     # teardown: wait for loops to end
    # GPU sends/recvs/collectives on their own stream
    overlap_gpu_communication: bool = DAGContext.overlap_gpu_communication
    # private (``_channel_type``): the ChannelType of edges within a node, None: shared memory;
    # TcpType() runs a graph over TCP on one machine (Note [channel choice] in channel_setup.py)
    channel_type: Any = None

    _ALIASES = {"_submit_timeout": "submit_timeout", "_buffer_size_bytes": "buffer_size_bytes",
                "_max_inflight_executions": "max_inflight_executions",
                "_get_timeout": "get_timeout",
                "_max_buffered_results": "max_buffered_results",
                "_overlap_gpu_communication": "overlap_gpu_communication",
                "_channel_type": "channel_type"}

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "CompileOptions":
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = asdict(DAGContext.get_current())
        for key, value in kwargs.items():
            name = cls._ALIASES.get(key, key)
            if name not in names:
                raise TypeError(f"compile() got an unknown option {key!r}; options are "
                                f"{sorted(names)}")
            if value is not None or name in ("submit_timeout", "get_timeout",
                                             "max_buffered_results"):
                values[name] = value
        options = cls(**values)
        if options.max_inflight_executions < 1:
            raise ValueError(f"max_inflight_executions must be >= 1, got "
                             f"{options.max_inflight_executions}")
        if options.max_buffered_results is not None and options.max_buffered_results < 1:
            raise ValueError(f"max_buffered_results must be >= 1 or None, got "
                             f"{options.max_buffered_results}")
        if options.buffer_size_bytes < 64:
            raise ValueError(f"buffer_size_bytes must be >= 64, got {options.buffer_size_bytes}")
        return options

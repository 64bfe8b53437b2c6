"""The options of ``dag.compile(...)``, checked once, with Ray's spellings accepted."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ember.channels.shared_memory import DEFAULT_SLOT_CAPACITY


@dataclass
class CompileOptions:
    """Options of ``dag.compile(...)``; every timeout in seconds, None waits without limit.

    The defaults suit a 100-byte value and a 1 GB tensor alike: each channel slot starts at
    ``buffer_size_bytes`` and grows when a larger value is written. Every channel has
    ``max_inflight_executions`` slots (Note [back-pressure] in compiled_dag.py).
    """

    submit_timeout: float | None = 30.0      # execute: wait for room under back-pressure
    get_timeout: float | None = None         # ref.get() without a timeout of its own
    buffer_size_bytes: int = DEFAULT_SLOT_CAPACITY  # initial slot size; slots grow on demand
    max_inflight_executions: int = 8         # executions submitted and not yet read
    enable_asyncio: bool = False             # accepted for Ray; execute_async always works
    start_timeout: float = 60.0              # compile: wait for the loops to start
    teardown_timeout: float = 5.0            # teardown: wait for the loops to end
    overlap_gpu_communication: bool = False  # GPU sends/recvs/collectives on their own stream

    _ALIASES = {"_submit_timeout": "submit_timeout", "_buffer_size_bytes": "buffer_size_bytes",
                "_max_inflight_executions": "max_inflight_executions",
                "_get_timeout": "get_timeout",
                "_overlap_gpu_communication": "overlap_gpu_communication"}

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "CompileOptions":
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in kwargs.items():
            name = cls._ALIASES.get(key, key)
            if name not in names:
                raise TypeError(f"compile() got an unknown option {key!r}; options are "
                                f"{sorted(names)}")
            if value is not None or name in ("submit_timeout", "get_timeout"):
                values[name] = value
        options = cls(**values)
        if options.max_inflight_executions < 1:
            raise ValueError(f"max_inflight_executions must be >= 1, got "
                             f"{options.max_inflight_executions}")
        if options.buffer_size_bytes < 64:
            raise ValueError(f"buffer_size_bytes must be >= 64, got {options.buffer_size_bytes}")
        return options

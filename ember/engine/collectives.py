"""Run a collective node inside an executor loop: a status round, then the op on the group's communicator.

Note [collective errors]
~~~~~~~~~~~~~~~~~~~~~~~~
A member whose input is an error value (or not a tensor) cannot take part, yet the others would
wait for it forever. So every member first allreduces a one-element failure flag (max); if any
member failed, none runs the collective and each passes an error value on: its own error, or a
TaskError saying which collective was skipped. The graph then keeps working for the next
execution, as with any method error (Note [errors as values] in executor.py).
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

from ember.engine.schedule import NodeSpec
from ember.exceptions import EmberError, TaskError


def collective_step(values: list, pos: int, spec: NodeSpec, where: str, overlap: bool,
                    raised: type) -> Callable[[], None]:
    """The COMPUTE of collective node ``pos``: ``values[pos] = <op>(values[input])``."""
    import torch

    from ember.gpu.communicator import communicator_registry
    from ember.gpu.streams import process_comm_stream

    comm = communicator_registry.get(spec.group)
    if comm is None:
        raise EmberError(f"{where}: no communicator {spec.group!r} in this process")
    source, kind, op = spec.args[0].pos, spec.name, spec.kwargs["op"]
    stream = process_comm_stream(overlap)
    device = getattr(comm, "device", "cpu")
    flag = torch.zeros(1, dtype=torch.int32, device=device)

    def run(tensor: Any) -> Any:
        if kind == "allgather":
            return comm.allgather(tensor)
        return getattr(comm, kind)(tensor, op)

    def step() -> None:
        value = values[source]
        failure: BaseException | None = None
        if type(value) is raised:
            failure = value.exc
        elif not isinstance(value, torch.Tensor):
            failure = TypeError(f"{kind} takes a torch tensor, got {type(value).__name__}")
            failure = TaskError.wrap(failure, where, f"TypeError: {failure}\n")
        flag.fill_(0 if failure is None else 1)
        with stream.communicating():
            comm.allreduce(flag, "max", out=flag)
        stream.before_compute([flag])
        if flag.item():
            values[pos] = raised(failure if failure is not None else TaskError.wrap(
                EmberError(f"{kind} skipped: the input of another member failed"), where, ""))
            return
        try:
            with stream.communicating([value]):
                result = run(value)
        except Exception as exc:  # noqa: BLE001 - e.g. a shape the op refuses; travels as a value
            values[pos] = raised(TaskError.wrap(exc, where, traceback.format_exc()))
            return
        stream.before_compute([result])
        values[pos] = result
    return step

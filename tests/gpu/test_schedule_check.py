"""The dry-run deadlock check of communication schedules, and the ordering that avoids deadlock."""

from __future__ import annotations

import pytest

from ember.exceptions import CompileError
from ember.gpu.schedule_check import check_schedules, format_schedules, order_schedules


@pytest.mark.timeout(10)
def test_pipeline_finishes_in_rendezvous_order():
    schedules = {
        "a": [("compute", "a.fwd"), ("send", "b", 1)],
        "b": [("recv", "a", 1), ("compute", "b.fwd"), ("send", "c", 2)],
        "c": [("recv", "b", 2), ("compute", "c.fwd")],
    }
    done = check_schedules(schedules)
    assert len(done) == 7
    assert done.index(("a", ("send", "b", 1))) < done.index(("b", ("compute", "b.fwd")))
    assert done.index(("b", ("send", "c", 2))) < done.index(("c", ("compute", "c.fwd")))


@pytest.mark.timeout(10)
def test_crossed_sends_deadlock_and_the_message_names_the_cycle():
    schedules = {"a": [("send", "b", 1), ("recv", "b", 2)],
                 "b": [("send", "a", 2), ("recv", "a", 1)]}
    with pytest.raises(CompileError) as err:
        check_schedules(schedules)
    message = str(err.value)
    assert "deadlocks" in message
    assert "'a' at op 0 send(b, 1) waits for 'b'" in message
    assert "'b' at op 0 send(a, 2) waits for 'a'" in message


@pytest.mark.timeout(10)
def test_collective_needs_every_member():
    ok = {"a": [("collective", "g", "allreduce")], "b": [("collective", "g", "allreduce")]}
    assert len(check_schedules(ok)) == 2
    # a waits in the collective for b, b waits in a recv for a: a cycle through a collective
    bad = {"a": [("collective", "g"), ("send", "b", 1)],
           "b": [("recv", "a", 1), ("collective", "g")]}
    with pytest.raises(CompileError, match=r"'a' at op 0 collective\(g\) waits for 'b'"):
        check_schedules(bad)
    # a member named by the group but absent from the schedule blocks the others
    with pytest.raises(CompileError, match="no matching op left"):
        check_schedules({"a": [("collective", "g")], "b": [("compute", "x")]},
                        groups={"g": ["a", "b"]})


@pytest.mark.timeout(10)
def test_unmatched_and_malformed_ops():
    with pytest.raises(CompileError, match=r"'b' at op 0 recv\(a, 9\) waits for 'a'.*no matching op"):
        check_schedules({"a": [("compute", "f")], "b": [("recv", "a", 9)]})
    with pytest.raises(CompileError, match="not another participant"):
        check_schedules({"a": [("send", "zz", 1)]})
    with pytest.raises(CompileError, match="must be"):
        check_schedules({"a": [("send", "a")]})
    with pytest.raises(CompileError, match="not a non-empty tuple"):
        check_schedules({"a": ["send"]})


@pytest.mark.timeout(10)
def test_three_party_cycle():
    schedules = {"a": [("recv", "c", 3), ("send", "b", 1)],
                 "b": [("recv", "a", 1), ("send", "c", 2)],
                 "c": [("recv", "b", 2), ("send", "a", 3)]}
    with pytest.raises(CompileError) as err:
        check_schedules(schedules)
    assert all(f"'{name}' at op 0" in str(err.value) for name in "abc")


@pytest.mark.timeout(10)
def test_ordering_by_a_global_order_removes_the_deadlock():
    # a graph: a.f -> b.g (edge 1), b.h -> a.k (edge 2), then an allreduce over a and b (node 3);
    # each actor listed its comm ops in its own order, which deadlocks
    order = {"a.f": 0, 1: 1, "b.g": 2, "b.h": 3, 2: 4, "a.k": 5, "g3": 6}

    def key(participant, op):
        return order[op[1]] if op[0] in ("compute", "collective") else order[op[2]]

    schedules = {
        "a": [("compute", "a.f"), ("recv", "b", 2), ("send", "b", 1), ("compute", "a.k"),
              ("collective", "g3")],
        "b": [("collective", "g3"), ("compute", "b.g"), ("compute", "b.h"), ("send", "a", 2),
              ("recv", "a", 1)],
    }
    with pytest.raises(CompileError):
        check_schedules(schedules)
    ordered = order_schedules(schedules, key)
    assert ordered["a"] == [("compute", "a.f"), ("send", "b", 1), ("recv", "b", 2),
                            ("compute", "a.k"), ("collective", "g3")]
    assert len(check_schedules(ordered)) == 10
    assert format_schedules(ordered).splitlines()[1] == (
        "b: recv(a, 1) compute(b.g) compute(b.h) send(a, 2) collective(g3)")

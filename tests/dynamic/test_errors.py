"""Errors raised at ``get``: remote exceptions keep their class, bad values are named."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import ember
from ember.exceptions import EmberError, SerializationError, TaskError

pytestmark = pytest.mark.usefixtures("cluster")


class CustomError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code


@ember.remote
def fail(kind):
    if kind == "value":
        raise ValueError("bad value 42")
    if kind == "custom":
        raise CustomError(7, "custom detail")
    raise Exception("plain")


@pytest.mark.timeout(30)
def test_task_exception_is_task_error_and_original_class():
    with pytest.raises(ValueError) as info:
        ember.get(fail.remote("value"))
    err = info.value
    assert isinstance(err, TaskError) and isinstance(err, EmberError)
    text = str(err)
    assert "bad value 42" in text
    assert "Traceback" in text and "in fail" in text and 'raise ValueError("bad value 42")' in text
    assert isinstance(err.cause, ValueError)


@pytest.mark.timeout(30)
def test_custom_exception_keeps_class_and_attributes():
    with pytest.raises(CustomError) as info:
        ember.get(fail.remote("custom"))
    assert isinstance(info.value, TaskError)
    assert info.value.code == 7
    assert "custom detail" in str(info.value)
    with pytest.raises(TaskError, match="plain"):
        ember.get(fail.remote("plain"))


@pytest.mark.timeout(30)
def test_error_flows_through_dependent_tasks():
    @ember.remote
    def use(x):
        return x

    with pytest.raises(ValueError, match="bad value 42"):
        ember.get(use.remote(fail.remote("value")))


@pytest.mark.timeout(30)
def test_actor_method_exception():
    @ember.remote
    class Thrower:
        def throw(self):
            raise IndexError("index out of range in actor")

    t = Thrower.remote()
    with pytest.raises(IndexError) as info:
        ember.get(t.throw.remote())
    assert isinstance(info.value, TaskError)
    assert "Traceback" in str(info.value) and "in throw" in str(info.value)
    assert "Thrower" in str(info.value)
    assert __file__ in str(info.value)  # Note [code origin]
    assert 'raise IndexError("index out of range in actor")' in str(info.value)


def _helper_that_fails(n):
    return 1 / n


@pytest.mark.timeout(30)
def test_traceback_names_file_and_line_of_helpers_and_scripts(tmp_path):
    """Code shipped by value keeps its file and lines (Note [code origin]), with any cloudpickle."""
    @ember.remote
    def divide(n):
        return _helper_that_fails(n)

    with pytest.raises(ZeroDivisionError) as info:
        ember.get(divide.remote(0))
    text = str(info.value)
    assert text.count(f'File "{__file__}"') >= 2, text
    assert "return 1 / n" in text and "return _helper_that_fails(n)" in text
    script = tmp_path / "user_script.py"
    script.write_text(
        "import ember\n"
        "ember.init(num_cpus=1)\n"
        "@ember.remote\n"
        "def boom():\n"
        "    raise KeyError('from the script')\n"
        "try:\n"
        "    ember.get(boom.remote(), timeout=30)\n"
        "except KeyError as err:\n"
        "    print(err)\n"
        "ember.shutdown()\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=env)
    assert f'File "{script}", line 5, in boom' in out.stdout, out.stdout + out.stderr
    assert "raise KeyError('from the script')" in out.stdout


@pytest.mark.timeout(30)
def test_unpicklable_argument_fails_at_submission():
    @ember.remote
    def take(x):
        return x

    with pytest.raises(SerializationError, match="lock") as info:
        take.remote({"fine": 1, "bad": threading.Lock()})
    assert "['bad']" in str(info.value)
    assert isinstance(info.value, TypeError)
    with pytest.raises(SerializationError, match="lock"):
        take.remote(x=threading.Lock())
    with pytest.raises(SerializationError, match="lock"):
        ember.put([1, threading.Lock()])

    @ember.remote
    class Holder:
        def take(self, x):
            return x

    h = Holder.remote()
    with pytest.raises(SerializationError, match="lock"):
        h.take.remote(threading.Lock())
    assert ember.get(take.remote(1)) == 1  # nothing was left half-submitted


@pytest.mark.timeout(30)
def test_unpicklable_return_value_fails_at_get():
    @ember.remote
    def make_lock():
        return threading.Lock()

    with pytest.raises(SerializationError, match="return value 0 of task") as info:
        ember.get(make_lock.remote())
    assert "lock" in str(info.value)


@pytest.mark.timeout(30)
def test_function_capturing_unpicklable_state():
    lock = threading.Lock()

    @ember.remote
    def uses_lock():
        with lock:
            return 1

    with pytest.raises(SerializationError, match="uses_lock"):
        uses_lock.remote()


@pytest.mark.timeout(30)
def test_unpicklable_exception_arrives_as_text():
    @ember.remote
    def raise_unpicklable():
        err = RuntimeError("carries a lock")
        err.lock = threading.Lock()
        raise err

    with pytest.raises(TaskError, match="carries a lock"):
        ember.get(raise_unpicklable.remote())


@pytest.mark.timeout(30)
def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="num_cpu"):
        ember.remote(num_cpu=1)(lambda: None)
    with pytest.raises(TypeError):
        fail("value")


@pytest.mark.timeout(30)
def test_error_of_a_nested_task_keeps_its_class():
    """As in Ray: get(outer) raises the class the inner task raised, through both layers."""
    @ember.remote
    def inner():
        raise KeyError("inner key")

    @ember.remote
    def outer():
        return ember.get(inner.remote(), timeout=20)

    with pytest.raises(KeyError, match="inner key") as info:
        ember.get(outer.remote(), timeout=20)
    assert isinstance(info.value, TaskError)

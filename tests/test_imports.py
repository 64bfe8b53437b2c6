"""Threads that import ember's packages and their modules at once (Note [lazy exports])."""

from __future__ import annotations

import subprocess
import sys

import pytest

RACE = """
import importlib, threading
import ember.dynamic.worker   # what a worker has loaded before its calls come
names = ["ember.channels.tcp", "ember.engine.channel_setup", "ember.channels",
         "ember.dag", "ember.dag.nodes", "ember.engine.executor", "ember.gpu", "ember.gpu.tensors"]
errors, start = [], threading.Barrier(len(names))
def load(name):
    start.wait()
    try:
        importlib.import_module(name)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=load, args=(name,)) for name in names]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors or "ok")
"""


@pytest.mark.timeout(120)
def test_packages_and_their_modules_import_from_many_threads_at_once():
    """Eight threads import packages and modules of one another at the same moment, in fresh
    interpreters: none gets a partially initialized module (this failed about one run in
    eight while the packages imported their submodules in __init__)."""
    runs = [subprocess.Popen([sys.executable, "-c", RACE], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(16)]
    outputs = [run.communicate(timeout=100)[0].strip() for run in runs]
    assert outputs == ["ok"] * len(runs), [out for out in outputs if out != "ok"]


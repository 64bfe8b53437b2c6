"""Fixtures of the dynamic-layer tests: one real local cluster per test module."""

from __future__ import annotations

import pytest

import ember


@pytest.fixture(scope="module")
def cluster():
    """A running ember with 2 CPUs and a custom resource, shut down after the module."""
    info = ember.init(num_cpus=2, num_gpus=0, resources={"custom": 1})
    yield info
    ember.shutdown()

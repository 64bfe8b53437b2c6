"""Fixtures of the graph-API tests: one real local cluster per test module that asks for it."""

from __future__ import annotations

import pytest

import ember


@pytest.fixture(scope="module")
def cluster():
    """A running ember, shut down after the module."""
    info = ember.init(num_cpus=2)
    yield info
    ember.shutdown()

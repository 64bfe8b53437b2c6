"""ember.gpu exports exactly its public names, and importing it does not need torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ember.gpu

PUBLIC = {"Communicator", "GpuInfo", "TorchTensorType", "list_gpus"}


@pytest.mark.timeout(10)
def test_all_is_exactly_the_public_names():
    assert set(ember.gpu.__all__) == PUBLIC


@pytest.mark.timeout(60)
def test_torch_backed_names_resolve():
    pytest.importorskip("torch")
    for name in PUBLIC:
        assert getattr(ember.gpu, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ember.gpu.nope  # noqa: B018


@pytest.mark.timeout(60)
def test_import_does_not_load_torch():
    code = "import sys, ember.gpu; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(ember.gpu.__file__).parents[2])

"""The ember command line."""

import subprocess
import sys

import pytest


@pytest.mark.timeout(60)
def test_version_and_status():
    version = subprocess.run([sys.executable, "-m", "ember.cli", "--version"],
                             capture_output=True, text=True, check=True)
    assert version.stdout.startswith("ember ")
    status = subprocess.run([sys.executable, "-m", "ember.cli", "status"],
                            capture_output=True, text=True, check=True)
    assert "CPUs:" in status.stdout and "GPUs:" in status.stdout

"""The glibc malloc tuning: on where it can be, off where the user asked or chose another allocator."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

_PROBE = "from cmcrec.training.allocator import tune_cpu_allocator as t; print(t(), t())"


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "CMCREC_MALLOC_TUNING"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=clean | env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc Linux only"
)
def test_tuning_applies_once_on_glibc():
    assert _probe() == "True True"


@pytest.mark.parametrize(
    "env",
    [{"CMCREC_MALLOC_TUNING": "0"}, {"MALLOC_MMAP_THRESHOLD_": "65536"}, {"MALLOC_TRIM_THRESHOLD_": "0"}],
)
def test_tuning_stays_off_when_the_user_decided(env):
    assert _probe(**env) == "False False"

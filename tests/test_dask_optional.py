"""Dask is optional: without ``cluster=`` no Dask module is imported, and without the
extra ``cluster=`` says what to install. Runs whether or not distributed is installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


def test_cluster_without_the_extra_says_what_to_install() -> None:
    code = ("import sys; sys.modules['distributed'] = None\n"
            "import conveyor\n"
            "try:\n"
            "    conveyor.Pool(cluster='local')\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert "pip install 'conveyor[dask]'" in out.stdout, out.stderr
    assert "cluster='local'" in out.stdout


def test_a_local_pool_imports_no_dask() -> None:
    code = ("import sys, conveyor\n"
            "with conveyor.Pool(2) as pool: pool.map(abs, range(10))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "[]", out.stderr

"""The wire protocol and the layering of the C sources.

protocol.h is the one definition of the protocol: the Erlang side's
py_protocol.hrl, the constants the extension exports to Python, and the
other copies (the benchmark floor, the frame fuzzer) must agree with it.
The transport runs without the GIL: its files must compile without
Python.h, which this checks with the system compiler.
"""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "erlang_module")

# The C files that run without the GIL (transport_int.h refuses Python.h).
NO_PYTHON_FILES = ["frame.c", "pool.c", "output.c", "wait.c", "outq.c", "async.c",
                   "helper.c", "spawn.c", "buf.c"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
@pytest.mark.parametrize("name", NO_PYTHON_FILES)
def test_transport_file_compiles_without_python_headers(name):
    # No -I for Python's include dir: an #include <Python.h> would fail.
    r = subprocess.run(
        ["gcc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Werror", "-Wno-unused-parameter",
         "-fsyntax-only", os.path.join(SRC, name)],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_transport_header_refuses_python_h(tmp_path):
    import sysconfig
    inc = sysconfig.get_paths()["include"]
    src = tmp_path / "bad.c"
    src.write_text('#include <Python.h>\n#include "transport_int.h"\n')
    r = subprocess.run(["gcc", "-std=c11", "-D_GNU_SOURCE", "-fsyntax-only", "-I", inc,
                        "-I", SRC, str(src)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "must not include Python.h" in r.stderr

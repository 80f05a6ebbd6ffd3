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
NO_PYTHON_FILES = ["framing.c", "pool.c", "output.c", "wait.c", "outq.c", "async.c",
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


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def _c_int(text):
    return int(text.rstrip("uUlL"), 0)


def protocol_h():
    """protocol.h's constants: {name without ERPY_: value}."""
    out = {}
    for name, value in re.findall(r"^#define ERPY_(\w+)\s+(0x[0-9A-Fa-f]+u?|\d+)\b",
                                  _read("erlang_module", "protocol.h"), re.M):
        out[name] = _c_int(value)
    return out


def protocol_hrl():
    """py_protocol.hrl's constants: {name: value} (Erlang's 16#FF read as hex)."""
    out = {}
    for name, value in re.findall(r"^-define\((\w+),\s*([0-9#A-Fa-f]+)\)\.",
                                  _read("erl_side", "py_protocol.hrl"), re.M):
        base, _, digits = value.rpartition("#")
        out[name] = int(digits, int(base) if base else 10)
    return out


def test_protocol_h_defines_the_kinds_and_header():
    c = protocol_h()
    assert c["HEADER_SIZE"] == 9
    assert c["ASYNC_WORKER"] == 0xFFFFFFFF
    kinds = {k: v for k, v in c.items() if k.startswith("K_")}
    assert len(kinds) == 18
    assert len(set(kinds.values())) == len(kinds), "two kinds share a value"
    assert c["MAILBOX_WINDOW_MSGS"] == 1024 and c["MAILBOX_WINDOW_BYTES"] == 64 << 20


def test_erlang_header_matches_protocol_h():
    c, e = protocol_h(), protocol_hrl()
    kinds_c = {k: v for k, v in c.items() if k.startswith("K_")}
    kinds_e = {k: v for k, v in e.items() if k.startswith("K_")}
    assert kinds_e == kinds_c
    assert e["PY_PROTOCOL_VERSION"] == c["PROTOCOL_VERSION"]
    assert e["ASYNC_WORKER"] == c["ASYNC_WORKER"]
    for name in ("MAILBOX_WINDOW_MSGS", "MAILBOX_WINDOW_BYTES"):
        assert e[name] == c[name], name


def test_extension_exports_protocol_h():
    from erlang import _erlang
    c = protocol_h()
    for name, value in c.items():
        if name.startswith("K_") or name in ("PROTOCOL_VERSION", "HEADER_SIZE", "ASYNC_WORKER",
                                             "MAILBOX_WINDOW_MSGS", "MAILBOX_WINDOW_BYTES"):
            assert getattr(_erlang, name) == value, name
    # Never on the wire: outside the 8-bit kinds the protocol uses.
    assert _erlang.K_RAW_STDERR == 255 and 255 not in c.values()


def test_python_side_uses_the_exported_kinds():
    import erlang
    from erlang import _async, _erlang, _helper
    assert (erlang._K_APPLY, erlang._K_EVAL) == (_erlang.K_APPLY, _erlang.K_EVAL)
    assert (_async.K_APPLY, _async.K_EVAL) == (_erlang.K_APPLY, _erlang.K_EVAL)
    assert _helper._LOG == _erlang.K_LOG
    # No Python file of the package spells a kind as a number.
    for name in os.listdir(SRC):
        if name.endswith(".py"):
            text = _read("erlang_module", name)
            assert not re.search(r"^_?K_\w+\s*=\s*\d", text, re.M), name


def test_benchmark_floor_and_fuzzer_use_protocol_h():
    floor = _read("benchmarks", "floor.c")
    assert '#include "../erlang_module/protocol.h"' in floor
    assert not re.search(r"^#define\s+(K_\w+|HDR)\b", floor, re.M)
    for name in ("fuzz_frames.py", "make_seeds.py"):
        text = _read("fuzz", name)
        assert "_erlang.K_OK" in text, name
        assert not re.search(r"=\s*16,\s*17", text), name
        assert not re.search(r"frame\(\d", text), name

"""Installs of the package that a first user makes: `pip install -e .`
starts a working helper; a package whose helper files are missing says
which file and how to rebuild, without starting erl."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import erlang
from conftest import run_python
from test_packaging import copy_checkout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.dirname(os.path.abspath(erlang.__file__))


def run(argv, timeout=120, **kw):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, "%s\n%s%s" % (argv, proc.stdout, proc.stderr)
    return proc


def test_editable_install_compiles_the_helper_and_calls(tmp_path):
    src = copy_checkout(str(tmp_path / "src"))
    venv = str(tmp_path / "venv")
    run([sys.executable, "-m", "venv", venv])
    py = os.path.join(venv, "bin", "python")
    env = dict(os.environ, ERLANG_DEBUG="1")   # -O0: a quicker build
    env.pop("PYTHONPATH", None)
    # --no-build-isolation: the build uses the venv's setuptools (77+, for
    # the SPDX license string).
    run([py, "-m", "pip", "install", "-q", "setuptools>=77"], env=env)
    run([py, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", src],
        env=env, timeout=240)
    ebin = os.path.join(src, "erlang_module", "priv", "ebin")
    assert os.path.isfile(os.path.join(ebin, "py.app"))
    assert os.path.isfile(os.path.join(ebin, "py_handler.beam"))
    proc = run([py, "-c", textwrap.dedent("""
        import erlang
        print(erlang.__file__)
        print(erlang.apply("lists", "reverse", [[1, 2, 3]]))
        print(erlang.info()["version"])
    """)], cwd=str(tmp_path), env=env, timeout=60)
    lines = proc.stdout.splitlines()
    assert lines[0] == os.path.join(src, "erlang_module", "__init__.py")
    assert lines[1:] == ["[3, 2, 1]", erlang.__version__]


def test_git_ignores_what_an_editable_install_writes():
    if not os.path.exists(os.path.join(ROOT, ".git")) or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    paths = ["erlang_module/priv/ebin/py.beam", "erlang_module/priv/ebin/py.app",
             "erlang_module/priv/build_info.json",
             "erlang_module/_erlang.cpython-311-x86_64-linux-gnu.so"]
    proc = subprocess.run(["git", "-C", ROOT, "check-ignore", "--no-index"] + paths,
                          capture_output=True, text=True, timeout=30)
    assert proc.stdout.split() == paths


def copy_package(tmp_path, remove):
    """A copy of the installed package under tmp_path/pkg with `remove`
    (a path inside it) deleted; returns the directory to put on sys.path."""
    dst = tmp_path / "pkg"
    shutil.copytree(PKG, str(dst / "erlang"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.remove(str(dst / "erlang" / remove))
    return str(dst)


MISSING = """
import os, sys
import erlang
assert erlang.__file__.startswith(sys.argv[1]), erlang.__file__
for how in ("call", "start"):
    try:
        if how == "call":
            erlang.eval("1.")
        else:
            erlang.start()
    except erlang.HelperExited as e:
        print("RESULT", how, e)
    print("RESULT running", erlang.is_running(), erlang._erlang._helper_pid())
"""


@pytest.mark.parametrize("missing", ["priv/ebin/py_handler.beam", "priv/ebin/py.app"])
def test_a_missing_helper_file_is_named_with_the_fix(tmp_path, missing):
    path = copy_package(tmp_path, missing)
    proc = run_python(MISSING, path, env={"PYTHONPATH": path}, cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    want = os.path.join(path, "erlang", missing)
    assert len(lines) == 4, proc.stdout
    for line in lines[0::2]:
        assert want + " is missing" in line, line
        assert "pip install -e ." in line and "pip install ." in line
    # No erl was started at all.
    assert lines[1::2] == ["RESULT running False None"] * 2
    assert "undef" not in proc.stderr

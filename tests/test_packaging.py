"""The distribution: `python -m build` makes an sdist and, from it, a wheel
that carries everything the package needs at run time, with complete
metadata, and prints no deprecation warning."""
import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import erlang

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ERL_MODULES = sorted(n[:-4] for n in os.listdir(os.path.join(ROOT, "erl_side")) if n.endswith(".erl"))

pytest.importorskip("build")


def copy_checkout(dst):
    """The checkout without what builds and installs leave in it."""
    skip = {".git", ".venv", "build", "dist", ".sanitize", ".fuzz", ".hypothesis",
            ".pytest_cache", ".mypy_cache", "__pycache__", "priv"}

    def ignore(d, names):
        return [n for n in names if n in skip or n.endswith((".so", ".o", ".egg-info", ".beam"))]

    shutil.copytree(ROOT, dst, ignore=ignore)
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    src = copy_checkout(str(tmp / "src"))
    out = str(tmp / "out")
    env = dict(os.environ, ERLANG_DEBUG="1")   # -O0: quicker, the same files
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", out, src],
                          capture_output=True, text=True, timeout=300, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    names = os.listdir(out)
    sdist = [n for n in names if n.endswith(".tar.gz")]
    wheel = [n for n in names if n.endswith(".whl")]
    assert len(sdist) == 1 and len(wheel) == 1, names
    return log, os.path.join(out, sdist[0]), os.path.join(out, wheel[0])


def test_build_prints_no_deprecation_or_other_warning(built):
    log = built[0]
    assert not re.search(r"deprecat", log, re.I), log
    # Byte-compiling is skipped under PYTHONDONTWRITEBYTECODE; nothing else warns.
    warnings = [ln for ln in log.splitlines() if re.search(r"warning", ln, re.I)
                and "byte-compiling is disabled" not in ln]
    assert warnings == [], "\n".join(warnings)


def test_wheel_carries_the_helper_stubs_and_license(built):
    with zipfile.ZipFile(built[2]) as z:
        names = set(z.namelist())
        app = z.read("erlang/priv/ebin/py.app").decode()
    version = erlang.__version__
    dist_info = "erlang-%s.dist-info" % version
    for m in ERL_MODULES:
        assert "erlang/priv/ebin/%s.beam" % m in names
    for n in ["erlang/__init__.py", "erlang/__init__.pyi", "erlang/py.typed",
              "erlang/__main__.py", "erlang/_version.py", "erlang/priv/build_info.json",
              dist_info + "/licenses/LICENSE"]:
        assert n in names, n
    assert any(re.match(r"erlang/_erlang\..*\.so$", n) for n in names)
    assert '{vsn, "%s"}' % version in app


def test_wheel_metadata_is_complete(built):
    with zipfile.ZipFile(built[2]) as z:
        meta = email.message_from_bytes(
            z.read("erlang-%s.dist-info/METADATA" % erlang.__version__))
    assert meta["Version"] == erlang.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Author"] == "The erlang authors"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Source", "Issues", "Changelog"}
    assert urls["Homepage"] == "https://github.com/erlang-python/erlang"
    classifiers = meta.get_all("Classifier")
    for prefix in ("Development Status ::", "Programming Language :: Python :: 3.",
                   "Topic ::", "Typing :: Typed"):
        assert any(c.startswith(prefix) for c in classifiers), prefix
    assert meta.get_all("Keywords") or meta["Keywords"]
    assert meta["License-File"] == "LICENSE"


def test_sdist_has_the_sources_and_nothing_built(built):
    with tarfile.open(built[1]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for n in ["LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "setup.py",
              "erlang_module/__init__.pyi", "erlang_module/py.typed", "erlang_module/protocol.h",
              "erlang_module/_version.py", "erlang_module/__main__.py", "erl_side/py.app",
              "tests/typing/check_api.py"]:
        assert n in names, n
    for m in ERL_MODULES:
        assert "erl_side/%s.erl" % m in names
    assert not [n for n in names if n.endswith((".beam", ".so", ".o")) or "/priv/" in n]


def test_license_is_the_apache_license_with_our_copyright():
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("Copyright 2026 The erlang authors\n")
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_version_is_written_in_one_place():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M)
    pkg = os.path.join(ROOT, "erlang_module")
    holders = [n for n in os.listdir(pkg) if n.endswith(".py")
               and re.search(r'__version__\s*=\s*"', open(os.path.join(pkg, n)).read())]
    assert holders == ["_version.py"]
    with open(os.path.join(ROOT, "erl_side", "py.app")) as f:
        assert erlang.__version__ not in f.read()
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        assert "## [%s]" % erlang.__version__ in f.read()

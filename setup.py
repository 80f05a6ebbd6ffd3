"""Build of the `erlang` package.

The C extension `erlang._erlang` is built from erlang_module/*.c and linked
statically against OTP's libei (erl_interface), with libei's symbols kept
private to the extension (-Wl,--exclude-libs).  The helper's Erlang sources in
erl_side/ are compiled with erlc into erlang/priv/ebin inside the built package
(for an editable install, `pip install -e .`, into erlang_module/priv/ebin of
the checkout, where the editable package looks for them; git ignores it).
build_py also writes erlang/priv/build_info.json (the ei directory the extension
was built against, shown by `python -m erlang doctor`).

Environment:
  ERLANG_EI_DIR   erl_interface directory (with include/ and lib/); default:
                  asked from `erl`.
  ERLC            the erlc to use (default: erlc on PATH).
  ERLANG_SANITIZE "address,undefined" (or any -fsanitize= list) builds the
                  extension with sanitizers, for the test suite under ASan.
  ERLANG_DEBUG    1: -O0 -g, and the ERPY_ASSERT contract checks (debug.h).
"""
import functools
import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _erl_output(expr):
    erl = os.environ.get("ERL") or shutil.which("erl")
    if not erl:
        sys.exit(
            "error: `erl` not found. Install Erlang/OTP first, e.g. on Debian:\n"
            "    apt-get install -y erlang-base erlang-dev\n"
            "or set ERLANG_EI_DIR to the erl_interface directory."
        )
    return subprocess.check_output(
        [erl, "-noshell", "-noinput", "-eval", expr + ", halt()."], text=True
    ).strip()


@functools.lru_cache(maxsize=None)
def ei_dir():
    d = os.environ.get("ERLANG_EI_DIR")
    if not d:
        d = _erl_output('io:format("~s", [code:lib_dir(erl_interface)])')
    if not os.path.exists(os.path.join(d, "include", "ei.h")):
        sys.exit(
            "error: ei.h not found under %s/include. On Debian install the "
            "headers and libei with:\n    apt-get install -y erlang-dev" % d
        )
    return d


class BuildExt(build_ext):
    def build_extensions(self):
        d = ei_dir()
        for ext in self.extensions:
            ext.include_dirs.append(os.path.join(d, "include"))
            ext.extra_objects.append(os.path.join(d, "lib", "libei.a"))
        super().build_extensions()


class BuildPy(build_py):
    """Also compiles the helper's Erlang sources into erlang/priv/ebin and
    writes erlang/priv/build_info.json.

    In editable mode build_py copies nothing (the package is the source
    directory, erlang_module/), so the beams go there: without them the
    editable package has no helper to start."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            pkg = os.path.join(HERE, "erlang_module")
        else:
            pkg = os.path.join(self.build_lib, "erlang")
        compile_erl(os.path.join(pkg, "priv", "ebin"))
        write_build_info(pkg)


def package_version():
    """The version from erlang_module/_version.py (its one place)."""
    with open(os.path.join(HERE, "erlang_module", "_version.py")) as f:
        m = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    if not m:
        sys.exit("error: no __version__ in erlang_module/_version.py")
    return m.group(1)


def compile_erl(out):
    os.makedirs(out, exist_ok=True)
    erlc = os.environ.get("ERLC") or shutil.which("erlc")
    if not erlc:
        sys.exit("error: `erlc` not found: apt-get install -y erlang-base")
    srcs = sorted(glob.glob(os.path.join(HERE, "erl_side", "*.erl")))
    subprocess.check_call(
        [erlc, "-Werror", "-I", os.path.join(HERE, "erl_side"), "-o", out] + srcs
    )
    # The .app file carries the package's version, which lives in one place.
    vsn = '{vsn, "%s"}' % package_version()
    for app in glob.glob(os.path.join(HERE, "erl_side", "*.app")):
        with open(app) as f:
            text = re.sub(r'\{vsn, "[^"]*"\}', vsn, f.read())
        with open(os.path.join(out, os.path.basename(app)), "w") as f:
            f.write(text)


def write_build_info(pkg):
    """priv/build_info.json: what the extension was built against (read by
    `python -m erlang doctor`).  Under priv/ so that an sdist made after an
    editable install never picks it up as a module."""
    info = {"ei_dir": ei_dir(), "version": package_version()}
    with open(os.path.join(pkg, "priv", "build_info.json"), "w") as f:
        json.dump(info, f)


cflags = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-fvisibility=hidden"]
ldflags = ["-Wl,--exclude-libs,ALL", "-pthread"]
if os.environ.get("ERLANG_DEBUG"):
    cflags += ["-O0", "-g", "-DERPY_DEBUG"]   # ERPY_ASSERT checks (debug.h)
else:
    cflags += ["-O2"]
san = os.environ.get("ERLANG_SANITIZE")
if san:
    cflags += ["-fsanitize=" + san, "-fno-omit-frame-pointer", "-g"]
    ldflags += ["-fsanitize=" + san]

setup(
    ext_modules=[
        Extension(
            "erlang._erlang",
            sources=sorted(glob.glob("erlang_module/*.c")),
            depends=glob.glob("erlang_module/*.h"),
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ],
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)

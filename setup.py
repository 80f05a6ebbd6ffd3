"""Build of the `erlang` package.

The C extension `erlang._erlang` is built from erlang_module/*.c and linked
statically against OTP's libei (erl_interface), with libei's symbols kept
private to the extension (-Wl,--exclude-libs).  The helper's Erlang sources in
erl_side/ are compiled with erlc into erlang/priv/ebin inside the built package.

Environment:
  ERLANG_EI_DIR   erl_interface directory (with include/ and lib/); default:
                  asked from `erl`.
  ERLC            the erlc to use (default: erlc on PATH).
  ERLANG_SANITIZE "address,undefined" (or any -fsanitize= list) builds the
                  extension with sanitizers, for the test suite under ASan.
  ERLANG_DEBUG    1: -O0 -g.
"""
import glob
import os
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
    """Also compiles the helper's Erlang sources into erlang/priv/ebin."""

    def run(self):
        super().run()
        out = os.path.join(self.build_lib, "erlang", "priv", "ebin")
        compile_erl(out)


def compile_erl(out):
    os.makedirs(out, exist_ok=True)
    erlc = os.environ.get("ERLC") or shutil.which("erlc")
    if not erlc:
        sys.exit("error: `erlc` not found: apt-get install -y erlang-base")
    srcs = sorted(glob.glob(os.path.join(HERE, "erl_side", "*.erl")))
    subprocess.check_call(
        [erlc, "-Werror", "-I", os.path.join(HERE, "erl_side"), "-o", out] + srcs
    )
    for app in glob.glob(os.path.join(HERE, "erl_side", "*.app")):
        shutil.copy(app, out)


cflags = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-fvisibility=hidden"]
ldflags = ["-Wl,--exclude-libs,ALL", "-pthread"]
if os.environ.get("ERLANG_DEBUG"):
    cflags += ["-O0", "-g"]
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

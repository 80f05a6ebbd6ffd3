#!/usr/bin/env bash
# The two commands of the README:
#   bash run.sh example   install what is missing, run the main example
#   bash run.sh test      install what is missing, run the test suite
# Extra words after `test` go to pytest (e.g. `bash run.sh test -m slow`).
# Safe to run again: it installs only what is missing and rebuilds the
# package from this checkout into .venv.
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-}
shift || true

need_erlang=0
command -v erl >/dev/null 2>&1 || need_erlang=1
command -v erlc >/dev/null 2>&1 || need_erlang=1
if [ $need_erlang = 0 ]; then
    ei=$(erl -noshell -noinput -eval 'io:format("~s",[code:lib_dir(erl_interface)]),halt().' 2>/dev/null || true)
    [ -f "$ei/include/ei.h" ] && [ -f "$ei/lib/libei.a" ] || need_erlang=1
fi
if [ $need_erlang = 1 ]; then
    echo "== installing Erlang/OTP (erlang-base, erlang-dev) with apt-get"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q erlang-base erlang-dev
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv || {
        echo "python3 -m venv failed; on Debian: apt-get install -y python3-venv" >&2
        exit 1
    }
fi
echo "== building and installing the package into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check ".[test]"

case "$what" in
example)
    exec .venv/bin/python examples/thread_pool.py
    ;;
test)
    # Run from tests/ so that the installed package, not the source tree, is tested.
    cd tests
    exec ../.venv/bin/python -m pytest -q "$@"
    ;;
*)
    echo "usage: bash run.sh example | bash run.sh test [pytest args]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The benchmark suite, one command:
#   bash benchmarks/run.sh            full run (~3-5 minutes on 2 cores)
#   bash benchmarks/run.sh --quick    short run (< 2 minutes)
# Extra words go to bench.py (e.g. --skip callgrind,strace).
#
# Uses its own virtualenv, benchmarks/.venv (ignored by git through the
# `.venv/` pattern), so the test venv is never touched.  Each run installs the
# package from a snapshot of the checkout (copied to benchmarks/out/src, so
# that a build never races with another `pip install .` in the work tree),
# plus erlpack (C) and erlang_py (pure Python) for the codec comparison only,
# and uvloop for the erlang.asyncio rows.
# erlang_py installs a top-level module named `erlang`, which would shadow
# this package: it goes to benchmarks/.venv/side-erlang-py with
# `pip install --target` and is loaded from there under another name.
# Builds the C floor client benchmarks/out/floor with gcc and floor (a0),
# benchmarks/out/floor_a0.beam, with erlc, runs everything,
# prints the table and writes benchmarks/out/results.json.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv"
out="$here/out"
side="$venv/side-erlang-py"
mkdir -p "$out"

for tool in erl erlc gcc; do
    command -v "$tool" >/dev/null || {
        echo "benchmarks: '$tool' is missing (bash run.sh test installs Erlang; apt-get install -y gcc)" >&2
        exit 1
    }
done
if ! command -v valgrind >/dev/null || ! command -v strace >/dev/null; then
    echo "== installing valgrind and strace (apt-get)"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q valgrind strace; } \
        || echo "benchmarks: could not install valgrind/strace; those sections are skipped" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv"
    "$PY" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)

echo "== installing the package from a snapshot of the checkout"
rm -rf "$out/src"
mkdir -p "$out/src"
(cd "$root" && tar cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=./benchmarks --exclude=./tests --exclude=__pycache__ .) \
    | (cd "$out/src" && tar xf -)
"${pip[@]}" --force-reinstall --no-deps "$out/src"
# Comparison libraries: optional (their columns are left out when missing).
"$venv/bin/python" -c "import erlpack" 2>/dev/null || "${pip[@]}" erlpack \
    || echo "benchmarks: erlpack did not install; its codec column is left out" >&2
[ -f "$side/erlang.py" ] || "${pip[@]}" --target "$side" erlang-py \
    || echo "benchmarks: erlang-py did not install; its codec column is left out" >&2
# uvloop: the erlang.asyncio rows are measured on it too (left out if missing).
"$venv/bin/python" -c "import uvloop" 2>/dev/null || "${pip[@]}" uvloop \
    || echo "benchmarks: uvloop did not install; its asyncio rows are left out" >&2

echo "== building the C floor client"
gcc -O2 -Wall -Wextra -pthread -o "$out/floor" "$here/floor.c"
echo "== compiling floor (a0), the minimal BEAM echo"
erlc -o "$out" "$here/floor_a0.erl"

cd "$out"
exec "$venv/bin/python" "$here/bench.py" --floor "$out/floor" --erlang-py-dir "$side" \
    --out "$out/results.json" "$@"

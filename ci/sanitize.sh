#!/usr/bin/env bash
# Memory-safety runs of the test suite (README: Failure behaviour, item 13).
#
#   bash ci/sanitize.sh asan       build with ASan+UBSan (ERLANG_SANITIZE) into
#                                  its own venv and run the whole default suite
#   bash ci/sanitize.sh valgrind   valgrind memcheck over the core tests
#                                  (-O0 -g build); only reports that involve
#                                  the extension count (ci/valgrind_check.py)
#   bash ci/sanitize.sh all        both (the default)
#
# Extra arguments after the mode go to pytest (e.g. a test selection).
# Exits non-zero on any sanitizer or memcheck report, and on a failing test.
#
# Sanitizer reports of every process of the run (pytest, and the Python
# subprocesses the crash tests start) are written to files under
# $SAN_LOGS (ASAN_OPTIONS/UBSAN_OPTIONS log_path), so a report inside a
# subprocess whose exit code a test expects to be odd is not missed: any
# such file fails the run.  The helper BEAM is started through a wrapper
# ($ERL) that drops LD_PRELOAD: the BEAM is not ours to check, and the
# ASan runtime would only slow it down.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-all}
shift || true
PY=${PYTHON:-python3}
WORK=${SAN_WORK:-$ROOT/.sanitize}
SAN_LOGS=$WORK/logs
mkdir -p "$WORK"

log() { echo "== $*"; }

# The test dependencies, from pyproject.toml's `test` extra (one list).
test_deps() {
    "$PY" -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['test']))"
}

# A copy of the sources without build/ (setuptools would reuse objects built
# without the sanitizer flags: they are newer than the sources).
fresh_source() {
    local dst=$WORK/src-$1
    rm -rf "$dst"
    mkdir -p "$dst"
    tar -C "$ROOT" --exclude=./.git --exclude='./.venv*' --exclude=./build \
        --exclude=./.sanitize --exclude='./*.egg-info' -cf - . | tar -C "$dst" -xf -
    echo "$dst"
}

make_venv() {
    local venv=$1
    [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
}

# Wrapper for the helper: the real erl without the sanitizer runtime.
erl_wrapper() {
    local real
    real=$(command -v erl)
    cat > "$WORK/erl" <<WRAP
#!/bin/sh
unset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS PYTHONMALLOC
exec "$real" "\$@"
WRAP
    chmod +x "$WORK/erl"
    echo "$WORK/erl"
}

check_logs() {
    local what=$1
    if compgen -G "$SAN_LOGS/*" >/dev/null; then
        echo "!! $what reports:" >&2
        for f in "$SAN_LOGS"/*; do
            echo "---- $f" >&2
            head -c 20000 "$f" >&2
        done
        return 1
    fi
    log "$what: no report"
}

run_asan() {
    local venv=$WORK/venv-asan src t0
    t0=$(date +%s)
    make_venv "$venv"
    src=$(fresh_source asan)
    log "building the extension with -fsanitize=address,undefined"
    # shellcheck disable=SC2046
    (cd "$src" && ERLANG_SANITIZE=address,undefined ERLANG_DEBUG=1 \
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall \
        --no-deps . && "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        $(test_deps))
    local so
    so=$("$venv/bin/python" -c "import glob, os, importlib.util as u; \
d = os.path.dirname(u.find_spec('erlang').origin); print(glob.glob(d + '/_erlang*.so')[0])")
    if ! nm -D "$so" | grep __asan_report >/dev/null; then
        echo "!! $so is not instrumented with ASan" >&2
        return 1
    fi
    local libasan
    libasan=$(gcc -print-file-name=libasan.so)
    rm -rf "$SAN_LOGS"
    mkdir -p "$SAN_LOGS"
    local rc=0
    (
        cd "$src/tests"
        export LD_PRELOAD=$libasan
        # CPython leaks by design at exit: leak checking would only report it.
        export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$SAN_LOGS/asan:strict_string_checks=1:detect_stack_use_after_return=0
        export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$SAN_LOGS/ubsan
        export PYTHONMALLOC=malloc     # so that ASan sees every Python object too
        export ERL
        ERL=$(erl_wrapper)
        # Canary: a heap overflow must be caught and logged, or this run
        # could not fail at all.
        "$venv/bin/python" -c "import ctypes; b = ctypes.create_string_buffer(100); \
ctypes.memmove(b, b'x' * 200, 200)" >/dev/null 2>&1 || true
        if ! compgen -G "$SAN_LOGS/asan.*" >/dev/null; then
            echo "!! the ASan canary was not caught: the sanitizer is not active" >&2
            exit 1
        fi
        rm -f "$SAN_LOGS"/*
        log "running the default test suite under ASan+UBSan"
        # Packaging, editable installs and type checking run other tools
        # (pip, the compiler, mypy), not the extension: the plain run
        # covers them.
        "$venv/bin/python" -m pytest -q -p no:cacheprovider --ignore=test_packaging.py \
            --ignore=test_install.py --ignore=test_typing.py "$@"
    ) || rc=$?
    check_logs "ASan/UBSan" || rc=1
    log "asan run: $(( $(date +%s) - t0 )) s, exit $rc"
    return $rc
}

run_valgrind() {
    local venv=$WORK/venv-valgrind src t0
    t0=$(date +%s)
    if ! command -v valgrind >/dev/null; then
        log "installing valgrind"
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q valgrind
    fi
    make_venv "$venv"
    src=$(fresh_source valgrind)
    log "building the extension (-O0 -g) for valgrind"
    (cd "$src" && ERLANG_DEBUG=1 "$venv/bin/python" -m pip install -q \
        --disable-pip-version-check --force-reinstall --no-deps . && \
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "pytest>=7" "hypothesis>=6")
    local tests=("$@")
    # The core tests, and the async paths (pending table, wakers, outbound
    # queue, withdrawing), callbacks (nested workers) and mailboxes through
    # a few tests: the load and fault cases take too long under memcheck.
    local A=test_async.py:: C=test_callbacks.py:: M=test_mailbox.py::
    [ ${#tests[@]} -gt 0 ] || tests=(test_calls.py test_codec.py test_errors.py
        ${C}test_export_forms_and_listing
        ${C}test_twenty_levels_deep_on_one_thread
        ${C}test_a_callback_that_raises_at_level_10
        ${C}test_callback_from_another_process_runs_on_the_pool
        ${M}test_send_and_receive_both_ways
        ${M}test_selective_receive_keeps_the_rest_in_order
        ${M}test_close_with_messages_queued
        ${M}test_killed_from_erlang
        ${M}test_an_undecodable_message_raises_and_the_rest_stay
        ${A}test_call_async_returns_a_future_with_the_result
        ${A}test_an_erlang_exception_fails_only_its_future
        ${A}test_unencodable_arguments_raise_before_anything_is_sent
        ${A}test_cancelling_a_future_kills_the_erlang_process_of_that_call
        ${A}test_a_future_timeout_raises_call_timeout_and_kills_the_call
        ${A}test_map_yields_results_in_input_order
        ${A}test_map_raises_an_error_at_its_item_and_cancels_the_rest
        ${A}test_map_over_a_generator_that_raises_yields_what_came_before)
    log "valgrind memcheck over: ${tests[*]}"
    local rc=0
    (
        cd "$src/tests"
        export PYTHONMALLOC=malloc
        valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
            --num-callers=40 --log-file="$WORK/valgrind.log" \
            --xml=yes --xml-file="$WORK/valgrind.xml" \
            "$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}"
    ) || rc=$?
    # CPython's own reports are filtered out (see ci/valgrind_check.py).
    "$venv/bin/python" "$ROOT/ci/valgrind_check.py" "$WORK/valgrind.xml" || rc=1
    log "valgrind run: $(( $(date +%s) - t0 )) s, exit $rc"
    return $rc
}

case "$MODE" in
asan) run_asan "$@" ;;
valgrind) run_valgrind "$@" ;;
all)
    rc=0
    run_asan "$@" || rc=1
    run_valgrind || rc=1
    exit $rc
    ;;
*)
    echo "usage: bash ci/sanitize.sh asan|valgrind|all [pytest args]" >&2
    exit 2
    ;;
esac
